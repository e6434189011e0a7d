-- Come back to a message later (a retry, or a wait for budget): it leaves no Celery ETA behind,
-- only an entry in our schedule, moved to its queue by beat when due.
-- ARGV[2] ref, [3] due (epoch seconds), [4] detail, [5] attempts to add (-1 for a wait).
local ref, due, detail, delta = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
if not set_state(ref, 'retrying', detail) then return 0 end
if delta ~= 0 then redis.call('HINCRBY', key_message(ref), 'attempts', delta) end
redis.call('ZADD', KEY.schedule, due, ref)
redis.call('ZADD', KEY.pending, due, ref)
return 1
