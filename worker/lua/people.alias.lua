-- people.alias: previousId becomes another name of userId's person. A previous userId's person is
-- merged into it (newest field wins) and leaves a pointer record behind; a previous anonymousId now
-- belongs to it; then the merged contact's update is planned.
-- KEYS: none.
-- ARGV: [1] now, [2] ref, [3] run token, [4] user identity ('u:..'), [5] previousId (as sent),
--       [6] priority, [7] lease seconds, [8] '1' to send even if unchanged (a replay).
-- Returns: a JSON plan {action = PLAN.*, state = the message's state afterwards, ...}.
local ref, token, user, previous = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local priority, lease_seconds, force = ARGV[6], tonumber(ARGV[7]), ARGV[8] == '1'
local key = key_message(ref)
local state = redis.call('HGET', key, 'state')
if not state or is_final(state) then return cjson.encode({action = PLAN.FINAL, state = state or ''}) end

local person, record = meet(user, nil, true)
redis.call('HSET', key, 'person', person)
local previous_user = ID.USER .. previous
if previous_user ~= person then
  local other, other_record = resolve(previous_user)
  if other_record and other ~= person then
    merge_into(person, record, other, other_record)
    save_person(other, {into = person})
  end
  if other ~= previous_user or not other_record then save_person(previous_user, {into = person}) end
  remember_id(person, record, previous_user)
end
local previous_anonymous = ID.ANONYMOUS .. previous
local visitor = load_person(previous_anonymous)
if visitor and not visitor.into then
  merge_into(person, record, previous_anonymous, visitor)
  save_person(previous_anonymous, {into = person})
end
link_anonymous(previous_anonymous, person, record)
save_person(person, record)

local function unchanged(id)
  return set_state(id, STATE.DELIVERED, 'identities linked; nothing new for Promoter')
end
return cjson.encode(plan_sync(person, record, ref, token, person, priority, lease_seconds, force, unchanged))
