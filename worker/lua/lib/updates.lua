-- updates: a message's obligations, and the person's contact update that settles them.
--
-- A message may owe a contact update (status field sync = 'wait') and a survey (survey_need = '1');
-- it becomes final when the last of them is settled, with the survey's outcome when it had one.
-- One contact update of a person is in flight at a time, under the person's lease, taken by one run
-- of one message: '<ref>#<run>' (a second copy of the same task is another run, and rides along
-- instead of calling twice). Messages whose change arrives meanwhile wait in the person's waiting
-- set (relay:person:{<ref>}:waiting, scored by revision) and are settled by the call that carries it.

local function finish(ref, state, detail)
  local key = key_message(ref)
  local parts = redis.call('HMGET', key, 'sync', 'survey_need', 'sync_detail', 'survey_state', 'survey_detail')
  if parts[1] == SYNC_OWED or parts[2] == '1' then return state_of(ref) end
  local final_state, texts = state, {}
  if parts[4] then
    final_state = parts[4]
    texts[#texts + 1] = parts[5]
  end
  if parts[3] then texts[#texts + 1] = parts[3] end
  if detail and detail ~= '' then texts[#texts + 1] = detail end
  return set_state(ref, final_state or STATE.DELIVERED, table.concat(texts, '; '))
end

-- The contact update ``ref`` was waiting for is done (``holder``, a ref, made the call; nil: an
-- earlier one). A message that still owes its survey stays where it is (held ones stay held).
local function finish_sync(ref, holder)
  local key = key_message(ref)
  local state = redis.call('HGET', key, 'state')
  if not state or is_final(state) then return state end
  local detail
  if holder == ref then
    detail = redis.call('HGET', key, 'type') == 'track' and 'order attributes sent to Promoter' or 'contact upserted'
  else
    detail = 'carried by the contact update of ' .. (holder or 'an earlier message')
    count('saved:coalesced')
  end
  redis.call('HDEL', key, 'sync', 'force', 'solo')
  redis.call('HSET', key, 'sync_detail', detail)
  return finish(ref, STATE.DELIVERED, '')
end

local function finish_survey(ref, state, detail)
  local key = key_message(ref)
  redis.call('HDEL', key, 'survey_need')
  redis.call('HSET', key, 'survey_state', state, 'survey_detail', detail)
  return finish(ref, state, '')
end

-- The message a run token belongs to: '<ref>#<run>'.
local function token_ref(token)
  return string.match(token, '^(.*)#%d+$') or token
end

-- ``ref`` waits for the contact update at revision ``rev`` (or a later one) of its person.
local function wait_for_update(person, rev, ref)
  local waiting = key_person_waiting(person)
  redis.call('ZADD', waiting, 'NX', rev, ref)
  redis.call('EXPIRE', waiting, CONFIG.person_ttl)
end

-- Every message waiting for a contact update up to revision ``rev``, but those retrying alone
-- after a refusal (their own call must tell): ``settle(ref)`` each, then they stop waiting.
local function settle_waiting(person, rev, settle)
  local waiting = key_person_waiting(person)
  for _, ref in ipairs(redis.call('ZRANGEBYSCORE', waiting, '-inf', rev)) do
    if redis.call('HGET', key_message(ref), 'solo') ~= '1' then
      settle(ref)
      redis.call('ZREM', waiting, ref)
    end
  end
end

-- The update the messages waiting for ``person``'s contact update counted on will not be made (it
-- failed, and nobody retries it): each of them runs again and sends it itself.
local function resend_waiting(person, why)
  local waiting = key_person_waiting(person)
  for _, ref in ipairs(redis.call('ZRANGE', waiting, 0, -1)) do
    if redis.call('HGET', key_message(ref), 'state') == STATE.WAITING then
      redis.call('ZREM', waiting, ref)
      redis.call('HDEL', key_message(ref), 'sync')
      requeue(ref)
      set_state(ref, STATE.RECEIVED, why)
    end
  end
end

-- The plan of a call: what to send, at which revision, and whether a budget slot was granted.
local function sync_plan(person, rev, fp, flat, priority, ref)
  local wait = acquire(priority)
  return {action = PLAN.SYNC, person = person, rev = rev, fp = fp, fields = flat, state = state_of(ref),
    wait_ms = wait == 0 and 0 or wait[1], why = wait == 0 and '' or wait[2]}
end

-- ``ref`` (its run ``token``) changed, or may have changed, its person's desired contact. Decide:
-- nothing to send, wait for an email, ride along with the update in flight, or make the call.
-- ``unchanged(ref)`` settles a message whose change turned out to be none; returns its state.
local function plan_sync(person, record, ref, token, hold_under, priority, lease_seconds, force, unchanged)
  local key = key_message(ref)
  if not has_email(record) then
    wait_for_update(person, record.rev, ref)
    return {action = PLAN.HELD, state = hold(ref, hold_under, 'waiting for an identify with an email for this person')}
  end
  drop_abandoned_lease(record)
  local flat, fp = desired(record)
  local holder, deadline = lease_holder(record)
  -- With another update in flight, what Promoter will have is not known yet: ride along with it.
  if not force and fp == record.fp and not (holder and holder ~= token) then
    local state
    if redis.call('ZSCORE', key_person_waiting(person), ref) then
      redis.call('ZREM', key_person_waiting(person), ref)
      state = finish_sync(ref, nil)
    else
      state = unchanged(ref)
    end
    release_person(person, record, 'contact known to Promoter')
    return {action = PLAN.DONE, state = state}
  end
  if holder and holder ~= token then
    if redis.call('HGET', key, 'solo') == '1' then
      -- Retrying alone after a refusal: its own call must tell whether its fields are the problem.
      return {action = PLAN.WAIT, wait_ms = math.max(100, (deadline - NOW) * 1000),
        why = 'retrying alone after a refused update; another update of this person is in flight',
        state = state_of(ref)}
    end
    wait_for_update(person, record.rev, ref)
    redis.call('HSET', key, 'sync', SYNC_OWED)
    local state = set_state(ref, STATE.WAITING, 'rides along with the contact update of ' .. token_ref(holder))
    return {action = PLAN.COALESCED, holder = token_ref(holder), state = state}
  end
  wait_for_update(person, record.rev, ref)
  redis.call('HSET', key, 'sync', SYNC_OWED)
  take_lease(record, token, lease_seconds)
  save_person(person, record)
  return sync_plan(person, record.rev, fp, flat, priority, ref)
end
