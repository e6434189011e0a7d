-- An identify (or alias) reaches its person: link its identities, merge its fields newest-wins,
-- then plan the contact update (see plan_sync in the prelude).
-- ARGV[2] ref, [3] identities (JSON list, the one to hold under first), [4] fields (JSON object of
-- contact field -> value, '' for an alias), [5] version of those fields, [6] priority,
-- [7] lease seconds, [8] '1' to send even if unchanged (replay). Returns a JSON plan.
local ref, identities, fields, version = ARGV[2], cjson.decode(ARGV[3]), ARGV[4], ARGV[5]
local priority, lease_seconds, force = ARGV[6], tonumber(ARGV[7]), ARGV[8] == '1'
local key = key_message(ref)
local state = redis.call('HGET', key, 'state')
if not state or FINAL[state] then return cjson.encode({action = 'final', state = state or 'missing'}) end

local pid = ensure_person(identities)
redis.call('HSET', key, 'person', pid)
local person = key_person(pid)
if fields ~= '' then
  local changed = false
  for name, value in pairs(cjson.decode(fields)) do
    if newer(version, redis.call('HGET', person, 'v:' .. name)) then
      if redis.call('HGET', person, 'f:' .. name) ~= value then changed = true end
      redis.call('HSET', person, 'f:' .. name, value, 'v:' .. name, version)
    end
  end
  if changed then redis.call('HINCRBY', person, 'rev', 1) end
end

local function unchanged(id)
  local text = fields == '' and 'identities linked; nothing new for Promoter'
    or 'unchanged: Promoter already has this contact'
  set_state(id, fields == '' and 'delivered' or 'skipped', text)
  if fields ~= '' then count('saved:unchanged') end
end

return cjson.encode(plan_sync(pid, ref, identities[1], priority, lease_seconds, force, unchanged))
