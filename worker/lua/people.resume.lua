-- The lease holder is back after waiting for budget: send the person's newest state, which may
-- carry updates that arrived meanwhile. ARGV[2] person, [3] holder ref, [4] priority,
-- [5] lease seconds. Returns a JSON plan: 'sync' (maybe still waiting for budget) or 'lost'.
local holder, priority, lease_seconds = ARGV[3], ARGV[4], tonumber(ARGV[5])
local pid = live_person(ARGV[2])
if not pid then return cjson.encode({action = 'lost'}) end
local person = key_person(pid)
local current = lease_holder(person)
if current and current ~= holder then return cjson.encode({action = 'lost', holder = current}) end
take_lease(person, holder, lease_seconds)
local flat, fp = desired(pid)
return cjson.encode(sync_plan(pid, tonumber(redis.call('HGET', person, 'rev')), fp, flat, priority))
