-- people.failed: a contact update did not go through.
-- KEYS: none.
-- ARGV: [1] now, [2] person, [3] holder ref, [4] run token, [5] revision sent, [6] how (FAILURE.*),
--       [7] reason, [8] Promoter's answer, [9] seconds, [10..12] the call: endpoint, status, seconds.
-- How:  transient: the lease is let go and the holder retries.
--       uncertain: it may still land, so Promoter's copy is no longer trusted and nobody sends for
--         [9] seconds (a stalled request cannot land after a newer one).
--       wait: no call was made; the holder waits for budget elsewhere and lets go of the lease, so a
--         more urgent update of this person can go meanwhile and carry it along.
--       permanent: Promoter refused it. An update that carried one identify buries it and drops its
--         fields from the person, so the next update does not repeat them; one that carried several
--         buries nobody yet: each is retried alone, and only what Promoter refuses alone dies. For a
--         person Promoter never accepted, the held messages die too, naming the refused identify.
-- Returns: the holder's state afterwards.
local person, holder, token, rev, how = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local reason, response, seconds = ARGV[7], ARGV[8], tonumber(ARGV[9])
observe(ARGV[10], ARGV[11], ARGV[12])
local record = load_person(person)
if not record or record.into then
  -- Merged away during the call: the survivor's lease, if it passed over with the merge, is let go.
  local survivor, survivor_record = nil, nil
  if record then survivor, survivor_record = resolve(person) end
  if survivor_record and lease_holder(survivor_record) == token and how ~= FAILURE.UNCERTAIN then
    survivor_record.lease = nil
    save_person(survivor, survivor_record)
    resend_waiting(survivor, 'the update it waited for failed; sending again')
  end
  if how == FAILURE.PERMANENT then
    return bury(holder, 'Promoter refused the contact update of ' .. holder .. ': ' .. reason, response)
  end
  return state_of(holder)
end
local mine = lease_holder(record) == token
if how == FAILURE.UNCERTAIN then
  record.fp = ''
  if mine then take_lease(record, token, seconds) end
  save_person(person, record)
  return state_of(holder)
end
if lease_token(record) == token then
  record.lease = nil
  save_person(person, record)
end
if how ~= FAILURE.PERMANENT then
  -- A follow-up update whose holder was settled by an earlier call of its own: nobody retries it,
  -- so the messages it would have carried run again.
  if how ~= FAILURE.WAIT and is_final(state_of(holder)) then
    resend_waiting(person, 'the update that would carry it failed; sending again')
  end
  return state_of(holder)
end

local waiting = key_person_waiting(person)
-- What the refused call carried: the messages waiting for this revision, the holder among them
-- unless its own change was confirmed by an earlier call (a follow-up carries only newcomers).
local carried, identifies = redis.call('ZRANGEBYSCORE', waiting, '-inf', rev), {}
for _, ref in ipairs(carried) do
  if redis.call('HGET', key_message(ref), 'version') then identifies[#identifies + 1] = ref end
end

-- Whatever else it carried goes out again with the next update.
local function again(ref, why)
  redis.call('ZREM', waiting, ref)
  redis.call('HDEL', key_message(ref), 'sync')
  requeue(ref)
  set_state(ref, STATE.RECEIVED, why)
end

if #identifies <= 1 then
  -- One identify (or none: order attributes alone) was in it: that is what Promoter refused.
  local culprit = identifies[1] or holder
  local version = redis.call('HGET', key_message(culprit), 'version')
  if version and drop_fields_of(record, version) then record.rev = (record.rev or 0) + 1 end
  redis.call('ZREM', waiting, culprit)
  local refused_text = 'Promoter refused the contact update of ' .. culprit .. ': ' .. reason
  bury(culprit, refused_text, response)
  for _, ref in ipairs(carried) do
    if ref ~= culprit then again(ref, 'the update that carried it was refused for ' .. culprit .. '; sending again') end
  end
  -- Those that joined after the call was planned waited for the follow-up this run would have made
  -- once it settled; it makes none now, so they run again (and an older value of a field the
  -- refused identify had replaced goes back in with them).
  for _, ref in ipairs(redis.call('ZRANGEBYSCORE', waiting, '(' .. rev, '+inf')) do
    if redis.call('HGET', key_message(ref), 'state') == STATE.WAITING then
      again(ref, 'the update it waited for was refused for ' .. culprit .. '; sending again')
    end
  end
  if not is_synced(record) then
    record.refused = 'identify ' .. culprit .. ' was refused by Promoter: ' .. reason
    record.refused_by = culprit
    for _, item in ipairs(take_held(identities_of(person, record))) do bury(item[2], record.refused, response) end
  end
  save_person(person, record)
  return state_of(holder)
end
-- Several identifies went in one call: which one Promoter refuses is not known. Each runs again
-- alone, its fields taken out until its own call puts them back.
for _, ref in ipairs(carried) do
  local version = redis.call('HGET', key_message(ref), 'version')
  if version then
    drop_fields_of(record, version)
    redis.call('HSET', key_message(ref), 'solo', '1')
    again(ref, 'sent again alone: an update carrying it and others was refused (' .. reason .. ')')
  else
    again(ref, 'the update that carried it was refused; sending again')
  end
end
record.rev = (record.rev or 0) + 1
save_person(person, record)
count('refused_update_split')
return state_of(holder)
