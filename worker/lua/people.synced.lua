-- people.synced: Promoter accepted a contact update. Remember what it has, settle every message the
-- update carried, release what was held for this person, and send again if the person changed since.
-- KEYS: none.
-- ARGV: [1] now, [2] person, [3] holder ref, [4] run token, [5] revision sent, [6] its fingerprint,
--       [7] email, [8] first name, [9] last name, [10] Promoter contact id, [11] priority,
--       [12] lease seconds, [13..15] the call: endpoint, status, seconds.
-- Returns: a JSON plan: PLAN.DONE, or PLAN.SYNC (another update, same lease), with the holder's state.
local person, holder, token, rev, fp = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local priority, lease_seconds = ARGV[11], tonumber(ARGV[12])
observe(ARGV[13], ARGV[14], ARGV[15])
account_answered()
local record = load_person(person)
if not record or record.into then
  -- Merged away (or expired) during the call: its revisions are not the survivor's. Only the holder's
  -- own obligation is this call's to settle; but the survivor waited for this call (the lease passed
  -- over with the merge), and now gets the merged contact sent, by this same run.
  local state = finish_sync(holder, holder)
  local survivor, survivor_record = nil, nil
  if record then survivor, survivor_record = resolve(person) end
  if survivor_record and lease_holder(survivor_record) == token then
    local flat, newest = desired(survivor_record)
    take_lease(survivor_record, token, lease_seconds)
    save_person(survivor, survivor_record)
    local plan = sync_plan(survivor, survivor_record.rev or 0, newest, flat, priority, holder)
    plan.state = state
    return cjson.encode(plan)
  end
  return cjson.encode({action = PLAN.DONE, state = state})
end
if rev >= (record.srev or -1) then
  if record.se and record.se ~= '' and string.lower(record.se) ~= string.lower(ARGV[7]) then
    unindex_email(record.se, person)
  end
  record.srev, record.fp, record.se, record.sf, record.sl = rev, fp, ARGV[7], ARGV[8], ARGV[9]
  if ARGV[10] ~= '' then record.cid = ARGV[10] end
  record.refused, record.refused_by = nil, nil
  index_email(ARGV[7], person)
end
local function carried(ref) finish_sync(ref, holder) end
settle_waiting(person, rev, carried)
redis.call('ZREM', key_person_waiting(person), holder)
local state = finish_sync(holder, holder)
release_person(person, record, 'contact known to Promoter')
save_person(person, record)

local mine = lease_holder(record) == token
local current = record.rev or 0
if mine and current > rev then
  local flat, newest = desired(record)
  if newest ~= fp then
    take_lease(record, token, lease_seconds)
    local plan = sync_plan(person, current, newest, flat, priority, holder)
    plan.state = state
    return cjson.encode(plan)
  end
  settle_waiting(person, current, carried)
end
if lease_token(record) == token then record.lease = nil end
return cjson.encode({action = PLAN.DONE, state = state})
