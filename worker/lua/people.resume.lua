-- people.resume: the lease holder is back after waiting for budget: it sends the person's newest
-- contact, which may carry updates that arrived meanwhile.
-- KEYS: none.
-- ARGV: [1] now, [2] person, [3] holder ref, [4] run token, [5] priority, [6] lease seconds.
-- Returns: a JSON plan: PLAN.SYNC (maybe still waiting for budget) or PLAN.LOST.
local person, holder, token, priority, lease_seconds = ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local record = load_person(person)
if not record or record.into then return cjson.encode({action = PLAN.LOST, state = state_of(holder)}) end
local current = lease_holder(record)
if current and current ~= token then
  return cjson.encode({action = PLAN.LOST, holder = token_ref(current), state = state_of(holder)})
end
take_lease(record, token, lease_seconds)
save_person(person, record)
local flat, fp = desired(record)
return cjson.encode(sync_plan(person, record.rev or 0, fp, flat, priority, holder))
