-- schedule.later: come back to a message later (a retry, or a wait for budget). It leaves no
-- Celery ETA behind, only an entry in our schedule, moved to its queue by beat when due.
-- KEYS: none.  ARGV: [1] now, [2] ref, [3] due (epoch seconds), [4] detail, [5] attempts to add
-- (-1 for a wait, which is not an attempt).
-- Returns: the message's state afterwards (not 'retrying' when it was final already).
local ref, due, detail, delta = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
if not state_of(ref) then return '' end
local state = set_state(ref, STATE.RETRYING, detail)
if state ~= STATE.RETRYING then return state end
if delta ~= 0 then redis.call('HINCRBY', key_message(ref), 'attempts', delta) end
redis.call('ZADD', KEY.schedule, due, ref)
redis.call('ZADD', KEY.pending, due, ref)
return state
