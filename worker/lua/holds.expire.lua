-- holds.expire: messages held longer than their TTL end: a user's track as a dead letter ("never
-- identified"), an anonymous visitor's as skipped (or a dead letter, by ANONYMOUS_HOLD_EXPIRY). A
-- track of a person Promoter knows, held behind a contact change still on its way (which has bounds
-- of its own: its retry window, its budget), was identified: it waits on for that change.
-- KEYS: none.
-- ARGV: [1] now, [2] which holds ('u' | 'a'), [3] cutoff (held before it expire), [4] most identities
--       to look at, [5] 'skip' or 'dead-letter'.
-- Returns: {expired, 1 if more are due}.
local index = ARGV[2] == 'a' and KEY.holds_anonymous or KEY.holds_users
local cutoff, limit, outcome = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local expired = 0
for _, identity in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', cutoff, 'LIMIT', 0, limit)) do
  local list = key_held(identity)
  local person, record = resolve(identity)
  local behind_change = is_synced(record) and changes_pending(identities_of(person, record), record)
  local kept = {}
  while true do
    local item = redis.call('LINDEX', list, 0)
    if not item then break end
    local at, ref = string.match(item, '^([^|]*)|(.*)$')
    if tonumber(at) > cutoff then break end
    redis.call('LPOP', list)
    local key = key_message(ref)
    if behind_change and redis.call('HGET', key, 'state') == STATE.HELD then
      kept[#kept + 1] = NOW .. '|' .. ref
    else
      redis.call('DECR', KEY.held_count)
    end
    if not behind_change and redis.call('HGET', key, 'state') == STATE.HELD then
      redis.call('HDEL', key, 'held_under')
      if outcome == 'skip' then
        set_state(ref, STATE.SKIPPED, 'never identified')
      else
        bury(ref, 'never identified', '')
      end
      expired = expired + 1
    end
  end
  if #kept > 0 then
    redis.call('RPUSH', list, unpack(kept))
    redis.call('EXPIRE', list, CONFIG.held_status_ttl)
    for _, item in ipairs(kept) do
      local ref = string.match(item, '^[^|]*|(.*)$')
      redis.call('EXPIRE', key_message(ref), CONFIG.held_status_ttl)
      keep_record_indexed(ref, CONFIG.held_status_ttl)
    end
    count('holds_extended', #kept)
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
