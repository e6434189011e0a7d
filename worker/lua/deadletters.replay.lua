-- deadletters.replay: queue a dead letter again, with a fresh retry window. A contact change it was
-- is filed again, so this person's surveys (a replayed track among them) wait for it once more.
-- KEYS: none.  ARGV: [1] now, [2] ref.
-- Returns: REPLAY.* (REPLAYED, or why not).
local ref = ARGV[2]
local key = key_message(ref)
if redis.call('HEXISTS', KEY.dead, ref) == 0 then return REPLAY.MISSING end
local guard = redis.call('HGET', key, 'survey') or ''
if guard == SURVEY.SENT then return REPLAY.SURVEYED end
local deadline = string.match(guard, '^inflight:(.*)$')
if deadline and tonumber(deadline) > NOW then return REPLAY.CALLING end
if redis.call('EXISTS', key_event(ref)) == 0 then return REPLAY.EXPIRED end
redis.call('HDEL', KEY.dead, ref)
redis.call('ZREM', KEY.dead_index, ref)
-- The operator decided: an unknown survey outcome is sent again, an unchanged contact is re-sent.
redis.call('HDEL', key, 'survey', 'survey_unknown', 'survey_need', 'survey_state', 'survey_detail',
  'survey_email', 'survey_first', 'survey_last', 'sync', 'sync_detail', 'held_under', 'solo')
redis.call('HSET', key, 'since', NOW, 'attempts', 0, 'force', '1')
local filed = redis.call('HMGET', key, 'barrier', 'repeats')
for i, pending in ipairs({key_barrier, key_repeats}) do
  for _, identity in ipairs(filed[i] and cjson.decode(filed[i]) or {}) do
    redis.call('ZADD', pending(identity), NOW, ref)
    redis.call('EXPIRE', pending(identity), CONFIG.status_ttl)
  end
end
set_state(ref, STATE.RECEIVED, 'replayed from dead letters', true)
redis.call('EXPIRE', key_event(ref), CONFIG.status_ttl)
requeue(ref)
recent(ref)
count(REPLAY.REPLAYED)
return REPLAY.REPLAYED
