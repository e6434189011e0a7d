-- A track reaches its person: hold it while the person is unknown to Promoter or a newer
-- contact-defining identify is on its way; else record its order (once per order_id, as its
-- earliest report) and plan the contact update, and claim its survey when nothing has to go first.
-- ARGV[2] ref, [3] identities (JSON list, user id first), [4] order (JSON {id, ms, currency, cents,
-- date} or ''), [5] '1' if a survey event, [6] campaign, [7] priority of the contact update,
-- [8] lease seconds of a contact update, [9] lease seconds of a survey call. Returns a JSON plan.
local ref, identities, order, survey, campaign = ARGV[2], cjson.decode(ARGV[3]), ARGV[4], ARGV[5] == '1', ARGV[6]
local priority, sync_lease, survey_lease = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local key = key_message(ref)
local state = redis.call('HGET', key, 'state')
if not state or FINAL[state] then return cjson.encode({action = 'final', state = state or 'missing'}) end

-- The user id's person, else the anonymous id's (which the user id then joins).
local primary = identities[1]
local pid = resolve(primary)
if not pid and identities[2] then
  pid = resolve(identities[2])
  if pid then
    link(primary, pid)
    touch_person(pid)
  end
end
if not pid or not is_synced(pid) then
  local refused = pid and redis.call('HGET', key_person(pid), 'refused')
  if refused then
    bury(ref, refused, '')
    return cjson.encode({action = 'dead'})
  end
  hold(ref, primary, pid and "waiting for this person's contact to reach Promoter"
    or ('waiting for an identify of ' .. primary))
  return cjson.encode({action = 'held'})
end
if not barriers_clear(redis.call('SMEMBERS', key_person_ids(pid))) then
  hold(ref, primary, 'waiting for a newer identify of this person to be delivered')
  return cjson.encode({action = 'held'})
end
redis.call('HSET', key, 'person', pid)
-- The survey is owed until it is settled; a second run of a settled message owes nothing again.
if survey and redis.call('HEXISTS', key, 'survey_state') == 0 then redis.call('HSET', key, 'survey_need', '1') end

local plan = {action = 'go', pid = pid}
if order ~= '' and not redis.call('HGET', key, 'sync_detail') then
  local o = cjson.decode(order)
  local orders = key_person_orders(pid)
  local existing = redis.call('HGET', orders, o.id)
  local owner = existing and string.match(existing, '^[^|]*|[^|]*|[^|]*|([^|]*)|')
  -- One order reported twice is the same order whichever report arrives first: the earliest one
  -- (by event time, then ref) is the order.
  local earlier = existing and owner ~= ref
    and string.format('%015d|%s', o.ms, ref) < string.format('%015d|%s', tonumber(string.match(existing, '^([^|]*)|')), owner)
  if not existing or earlier then
    redis.call('HSET', orders, o.id, o.ms .. '|' .. o.currency .. '|' .. o.cents .. '|' .. ref .. '|' .. o.date)
    touch_person(pid)
    recompute_orders(pid)
    redis.call('HINCRBY', key_person(pid), 'rev', 1)
    owner = ref
  end
  if owner == ref then
    local function unchanged(id)
      redis.call('HSET', key_message(id), 'sync_detail', 'order attributes already at Promoter')
    end
    plan.sync = plan_sync(pid, ref, primary, priority, sync_lease, false, unchanged)
  else
    redis.call('HSET', key, 'sync_detail', 'order ' .. o.id .. ' was already counted (' .. owner .. ')',
      'duplicate_order', '1')
    count('saved:duplicate_order')
  end
end
-- A survey waits only for a contact update this message makes itself (one carried by another
-- message's call settles on its own); without one, the message may be complete already.
local calling = plan.sync and plan.sync.action == 'sync'
if survey and not calling then
  plan.survey = survey_claim(ref, pid, campaign, survey_lease)
elseif not survey then
  finish(ref, redis.call('HGET', key, 'duplicate_order') and 'skipped' or 'delivered', '')
end
return cjson.encode(plan)
