-- Promoter accepted a contact update: remember what it has, settle every message the update
-- carried, release what was held for this person, and send again if the person changed meanwhile.
-- ARGV[2] person, [3] holder ref, [4] revision sent, [5] its fingerprint, [6] email, [7] first name,
-- [8] last name, [9] Promoter contact id, [10] priority, [11] lease seconds,
-- [12..14] the call: endpoint, status, seconds. Returns a JSON plan ('done' or another 'sync').
local holder, rev, fp = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local priority, lease_seconds = ARGV[10], tonumber(ARGV[11])
observe(ARGV[12], ARGV[13], ARGV[14])
local pid = planned_person(ARGV[2])
if not pid then
  finish_sync(holder, holder)
  return cjson.encode({action = 'done'})
end
local person = key_person(pid)
if rev >= tonumber(redis.call('HGET', person, 'synced_rev') or '-1') then
  redis.call('HSET', person, 'synced_rev', rev, 'synced_fp', fp, 'synced_by', holder, 's:email', ARGV[6],
    's:first_name', ARGV[7], 's:last_name', ARGV[8], 'contact_id', ARGV[9])
  redis.call('HDEL', person, 'refused')
  -- the email -> person index that the NPS feedback poll reads (keys.email_digest)
  redis.call('SET', key_email(string.sub(redis.sha1hex(string.lower(ARGV[6])), 1, 16)), pid, 'EX', CONFIG.person_ttl)
end
local function carried(ref) finish_sync(ref, holder) end
settle_waiting(pid, rev, carried)
finish_sync(holder, holder)
release_person(pid, 'contact known to Promoter')
touch_person(pid)

local mine = lease_holder(person) == holder
local current = tonumber(redis.call('HGET', person, 'rev'))
if mine and current > rev then
  local flat, newest = desired(pid)
  if newest ~= fp then
    take_lease(person, holder, lease_seconds)
    return cjson.encode(sync_plan(pid, current, newest, flat, priority))
  end
  settle_waiting(pid, current, carried)
end
if mine then redis.call('HDEL', person, 'lease') end
return cjson.encode({action = 'done'})
