-- A contact update did not go through. ARGV[2] person, [3] holder ref, [4] revision sent,
-- [5] how: 'transient' (lease released, the holder retries), 'uncertain' (it may still land:
-- Promoter's copy is no longer trusted and nobody sends for ``[8]`` seconds, so a stalled request
-- cannot land after a newer one), 'wait' (no call was made: the holder waits for budget elsewhere and
-- lets go of the lease, so a more urgent update of this person can go meanwhile and carry it along;
-- keeping it would let a low-priority update waiting for tomorrow's budget block the person's
-- surveys and email changes), 'permanent' (Promoter refused it: the messages it carried become dead
-- letters, and so does everything held for a person Promoter never accepted), [6] reason,
-- [7] Promoter's answer, [8] seconds, [9..11] the call: endpoint, status, seconds.
local holder, rev, how, reason, response = ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local seconds = tonumber(ARGV[8])
observe(ARGV[9], ARGV[10], ARGV[11])
local pid = planned_person(ARGV[2])
local refused = 'Promoter refused the contact update of ' .. holder .. ': ' .. reason
if not pid then
  -- Only the holder's own outcome is this call's to settle.
  if how == 'permanent' then bury(holder, refused, response) end
  return 1
end
local person = key_person(pid)
local mine = lease_holder(person) == holder
if how == 'uncertain' then
  redis.call('HSET', person, 'synced_fp', '')
  if mine then take_lease(person, holder, seconds) end
  return 1
end
if mine then redis.call('HDEL', person, 'lease') end
if how ~= 'permanent' then return 1 end

settle_waiting(pid, rev, function(ref) bury(ref, refused, response) end)
bury(holder, refused, response)
if not is_synced(pid) then
  local why = 'identify ' .. holder .. ' was refused by Promoter: ' .. reason
  redis.call('HSET', person, 'refused', why)
  for _, item in ipairs(take_held(redis.call('SMEMBERS', key_person_ids(pid)))) do
    bury(item[2], why, response)
  end
end
return 1
