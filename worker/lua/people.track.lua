-- people.track: a track reaches its person. It waits (held) while the person is unknown to Promoter
-- or a contact change of the person is on its way; else its order is recorded (once per order_id,
-- as its earliest report) and the contact update planned, and its survey claimed when nothing has to
-- go first. A track never surveys a person reached through another userId's anonymousId: its
-- identities meet first, so the anonymousId is this userId's by now.
-- KEYS: none.
-- ARGV: [1] now, [2] ref, [3] run token, [4] user identity ('u:..' or ''), [5] anonymous identity
--       ('a:..' or ''), [6] order (JSON {id, version, currency, cents, date} or ''), [7] '1' if a
--       survey event, [8] campaign, [9] priority of the contact update, [10] lease seconds of a
--       contact update, [11] lease seconds of a survey call.
-- Returns: a JSON plan {action = PLAN.*, state, person, sync?, survey?}.
local ref, token, user, anonymous = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local order, survey, campaign, priority = ARGV[6], ARGV[7] == '1', ARGV[8], ARGV[9]
local sync_lease, survey_lease = tonumber(ARGV[10]), tonumber(ARGV[11])
if user == '' then user = nil end
if anonymous == '' then anonymous = nil end
local key = key_message(ref)
local state = redis.call('HGET', key, 'state')
if not state or is_final(state) then return cjson.encode({action = PLAN.FINAL, state = state or ''}) end

local person, record = meet(user, anonymous, false)
if not is_synced(record) then
  if record and record.refused_by and state_of(record.refused_by) == STATE.DEAD then
    return cjson.encode({action = PLAN.DEAD, state = bury(ref, record.refused, '')})
  end
  local why = record and "waiting for this person's contact to reach Promoter"
    or ('waiting for an identify of ' .. (user or anonymous))
  return cjson.encode({action = PLAN.HELD, state = hold(ref, person or user or anonymous, why)})
end
if changes_pending(identities_of(person, record), record) then
  return cjson.encode({action = PLAN.HELD,
    state = hold(ref, person, 'waiting for a newer identify of this person to be delivered')})
end
redis.call('HSET', key, 'person', person)
-- The survey is owed until it is settled; a second run of a settled message owes nothing again.
if survey and redis.call('HEXISTS', key, 'survey_state') == 0 then redis.call('HSET', key, 'survey_need', '1') end

local plan = {action = PLAN.GO, person = person}
if order ~= '' and not redis.call('HGET', key, 'sync_detail') then
  local o = cjson.decode(order)
  record.o = record.o or {}
  local existing = record.o[o.id]
  -- One order reported twice is the same order whichever report arrives first: the earliest one
  -- (by event time, then ref) is the order.
  if not existing or o.version < existing[1] then
    record.o[o.id] = {o.version, o.cents, o.currency, o.date}
    record.rev = (record.rev or 0) + 1
    save_person(person, record)
    existing = record.o[o.id]
  end
  if existing[1] == o.version then
    local function unchanged(id)
      redis.call('HSET', key_message(id), 'sync_detail', 'order attributes already at Promoter')
      return state_of(id)
    end
    plan.sync = plan_sync(person, record, ref, token, person, priority, sync_lease, false, unchanged)
  else
    redis.call('HSET', key, 'sync_detail', 'order ' .. o.id .. ' was already counted', 'duplicate_order', '1')
    count('saved:duplicate_order')
  end
end
-- A survey waits only for a contact update this message makes itself (one carried by another
-- message's call settles on its own); without one, the message may be complete already.
local calling = plan.sync and plan.sync.action == PLAN.SYNC
if survey and not calling then
  plan.survey = survey_claim(ref, person, record, campaign, survey_lease, false)
elseif not survey then
  finish(ref, redis.call('HGET', key, 'duplicate_order') and STATE.SKIPPED or STATE.DELIVERED, '')
end
plan.state = state_of(ref)
return cjson.encode(plan)
