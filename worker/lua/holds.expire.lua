-- Messages held longer than their TTL. ARGV[2] which holds ('u' | 'a'), [3] cutoff (held before it
-- expire), [4] most identities to look at, [5] 'skip' or 'dead-letter'.
-- Returns {expired, 1 if more are due}.
local index = ARGV[2] == 'a' and KEY.holds_anonymous or KEY.holds_users
local cutoff, limit, outcome = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local expired = 0
for _, identity in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', cutoff, 'LIMIT', 0, limit)) do
  local list = key_held(identity)
  while true do
    local item = redis.call('LINDEX', list, 0)
    if not item then break end
    local at, ref = string.match(item, '^([^|]*)|(.*)$')
    if tonumber(at) > cutoff then break end
    redis.call('LPOP', list)
    redis.call('DECR', KEY.held_count)
    if redis.call('HGET', key_message(ref), 'state') == 'held' then
      if outcome == 'skip' then
        set_state(ref, 'skipped', 'never identified')
      else
        bury(ref, 'never identified', '')
      end
      expired = expired + 1
    end
  end
  local first = redis.call('LINDEX', list, 0)
  if first then
    redis.call('ZADD', index, tonumber(string.match(first, '^[^|]+')), identity)
  else
    redis.call('ZREM', index, identity)
  end
end
local more = #redis.call('ZRANGEBYSCORE', index, '-inf', cutoff, 'LIMIT', 0, 1) > 0
return {expired, more and 1 or 0}
