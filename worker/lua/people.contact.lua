-- people.contact: an identify reaches its person. Its identities meet (docs/delivery.md, "Who is one
-- person"), its fields merge newest-wins, and its contact update is planned (plan_sync).
-- KEYS: none.
-- ARGV: [1] now, [2] ref, [3] run token ('<ref>#<run>'), [4] user identity ('u:..' or ''),
--       [5] anonymous identity ('a:..' or ''), [6] contact fields (JSON object name -> value; '' when
--       the identify has no traits), [7] the fields' version, [8] priority, [9] lease seconds,
--       [10] '1' to send even if unchanged (a replay).
-- Returns: a JSON plan {action = PLAN.*, state = the message's state afterwards, ...}.
local ref, token, user, anonymous = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local fields, version, priority = ARGV[6], ARGV[7], ARGV[8]
local lease_seconds, force = tonumber(ARGV[9]), ARGV[10] == '1'
if user == '' then user = nil end
if anonymous == '' then anonymous = nil end
local key = key_message(ref)
local state = redis.call('HGET', key, 'state')
if not state or is_final(state) then return cjson.encode({action = PLAN.FINAL, state = state or ''}) end

if fields == '' then
  -- Nothing for Promoter; the identities still meet (an anonymousId moves to this userId).
  meet(user, anonymous, false)
  return cjson.encode({action = PLAN.DONE, state = set_state(ref, STATE.SKIPPED, 'no traits: nothing for Promoter')})
end

local person, record = meet(user, anonymous, true)
redis.call('HSET', key, 'person', person, 'version', version)
if redis.call('HGET', key, 'solo') == '1' then
  -- Retrying alone after a refused update: its fields go in only with its own call.
  local holder, deadline = lease_holder(record)
  if holder and holder ~= token then
    return cjson.encode({action = PLAN.WAIT, wait_ms = math.max(100, (deadline - NOW) * 1000),
      why = 'retrying alone after a refused update; another update of this person is in flight', state = state})
  end
end
local changed = false
for name, value in pairs(cjson.decode(fields)) do
  if set_field(record, name, value, version) then changed = true end
end
cap_attributes(record)
if changed then record.rev = (record.rev or 0) + 1 end
save_person(person, record)

local function unchanged(id)
  count('saved:unchanged')
  return set_state(id, STATE.SKIPPED, 'unchanged: Promoter already has this contact')
end
return cjson.encode(plan_sync(person, record, ref, token, person, priority, lease_seconds, force, unchanged))
