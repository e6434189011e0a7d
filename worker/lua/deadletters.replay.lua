-- Queue a dead letter again, with a fresh retry window. ARGV[2] ref.
-- Returns 'replayed', or why not: 'missing' (no such dead letter), 'surveyed' (its survey is known
-- to have been sent: a replay would survey the person twice), 'calling' (a survey call of it is
-- still being made: whether it reached Promoter is not known yet), 'expired' (its event is gone).
local ref = ARGV[2]
local key = key_message(ref)
if redis.call('HEXISTS', KEY.dead, ref) == 0 then return 'missing' end
local guard = redis.call('HGET', key, 'survey') or ''
if guard == 'sent' then return 'surveyed' end
local deadline = string.match(guard, '^inflight:(.*)$')
if deadline and tonumber(deadline) > NOW then return 'calling' end
if redis.call('EXISTS', key_event(ref)) == 0 then return 'expired' end
redis.call('HDEL', KEY.dead, ref)
redis.call('ZREM', KEY.dead_index, ref)
-- The operator decided: an unknown survey outcome is sent again, an unchanged contact is re-sent.
redis.call('HDEL', key, 'survey', 'survey_unknown', 'survey_need', 'survey_state', 'survey_detail',
  'sync', 'sync_detail', 'held_under')
redis.call('HSET', key, 'since', NOW, 'attempts', 0, 'force', '1')
set_state(ref, 'received', 'replayed from dead letters', true)
redis.call('EXPIRE', key_event(ref), CONFIG.status_ttl)
requeue(ref)
redis.call('LREM', KEY.recent, 0, ref)
redis.call('LPUSH', KEY.recent, ref)
redis.call('LTRIM', KEY.recent, 0, RECENT_LIMIT - 1)
count('replayed')
return 'replayed'
