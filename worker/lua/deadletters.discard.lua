-- deadletters.discard: drop dead letters for good (their status records stay, saying so).
-- KEYS: none.  ARGV: [1] now, [2] why ('discarded', 'expired' or 'cap'), [3..] refs.
-- Returns: how many were dropped.
local why = ARGV[2]
local dropped = 0
for i = 3, #ARGV do
  local ref = ARGV[i]
  redis.call('ZREM', KEY.dead_index, ref)
  if redis.call('HDEL', KEY.dead, ref) == 1 then
    dropped = dropped + 1
    redis.call('DEL', key_event(ref))
    local key = key_message(ref)
    if redis.call('EXISTS', key) == 1 then
      redis.call('HSET', key, 'detail', 'dead letter ' .. why .. ' (was: ' .. (redis.call('HGET', key, 'detail') or '') .. ')')
      note(ref, STATE.DEAD, 'dead letter ' .. why)
      redis.call('EXPIRE', key, CONFIG.status_ttl)
      keep_record_indexed(ref, CONFIG.status_ttl)
    end
  end
end
if dropped > 0 then count('dead_dropped:' .. why, dropped) end
return dropped
