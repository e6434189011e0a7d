-- Shared by every script (worker/scripts.py puts the generated constants, then the definitions of this
-- file that the script reaches, above the script's own body).
-- Convention: ARGV[1] is always the caller's clock, in seconds (NOW).
--
-- Person hash fields: f:<name> value and v:<name> version of each contact field set by identifies
-- (name = email | first_name | last_name | a:<attribute>), o:<attribute> for order attributes
-- derived from the person's orders, s:<name> for what Promoter last accepted, and meta fields:
-- rev (desired revision), synced_rev, synced_fp, synced_by, contact_id, lease, refused, merged_into.

local COUNTS = {}
local function count(field, n)
  COUNTS[field] = (COUNTS[field] or 0) + (n or 1)
end

local function flush_counts()
  local minute = KEY.stats_minute .. math.floor(NOW / 60)
  local states = false
  for field, n in pairs(COUNTS) do
    redis.call('HINCRBY', KEY.stats, field, n)
    local state = string.match(field, '^state:(.+)$')
    if state then
      redis.call('HINCRBY', minute, state, n)
      states = true
    end
  end
  if states then redis.call('EXPIRE', minute, 3900) end
end

local function observe(endpoint, status, seconds)
  if not endpoint or endpoint == '' then return end
  local bucket = '+Inf'
  for _, bound in ipairs(LATENCY_BUCKETS) do
    if tonumber(seconds) <= bound then bucket = tostring(bound); break end
  end
  redis.call('HINCRBY', KEY.latency, endpoint .. '|le|' .. bucket, 1)
  redis.call('HINCRBY', KEY.latency, endpoint .. '|count', 1)
  redis.call('HINCRBYFLOAT', KEY.latency, endpoint .. '|sum', seconds)
  redis.call('HINCRBY', KEY.latency, 'calls|' .. endpoint .. '|' .. status, 1)
end

local function is_anonymous(identity)
  return string.sub(identity, 1, 2) == 'a:'
end

local function ttl_for(state)
  if state == 'held' then return CONFIG.held_status_ttl end
  if state == 'dead' then return CONFIG.dead_ttl end
  return CONFIG.status_ttl
end

-- History: one JSON entry per change, capped. The 'received' at ingest is not written (the record's
-- own received time says it), which keeps a queued message small.
local function note(ref, state, detail)
  local log = key_history(ref)
  local length = redis.call('RPUSH', log, cjson.encode({at = NOW, state = state, detail = detail or ''}))
  if length > HISTORY_LIMIT then redis.call('LTRIM', log, -HISTORY_LIMIT, -1) end
  redis.call('EXPIRE', log, ttl_for(state))
end

local on_final -- defined below, after the person functions it calls

-- The only way a message changes state. A final state is never left except by an explicit replay,
-- so a late retry, a redelivered task or a late success cannot overwrite 'dead' (or the reverse).
local function set_state(ref, state, detail, replay)
  local key = key_message(ref)
  local current = redis.call('HGET', key, 'state')
  if current and FINAL[current] and not replay then return false end
  redis.call('HSET', key, 'state', state, 'detail', detail or '', 'updated', NOW)
  local ttl = ttl_for(state)
  redis.call('EXPIRE', key, ttl)
  note(ref, state, detail)
  count('state:' .. state)
  if state == 'held' or FINAL[state] then redis.call('ZREM', KEY.pending, ref) end
  -- The event lives as long as the record while it may still be delivered (or replayed).
  if FINAL[state] and state ~= 'dead' then
    redis.call('DEL', key_event(ref))
  else
    redis.call('EXPIRE', key_event(ref), ttl)
  end
  if FINAL[state] then on_final(ref, key, state) end
  return true
end

-- A JSON string literal; most refs need no escaping, and cjson.encode is the costly way.
local function json_string(text)
  if string.find(text, '[%c"\\/\128-\255]') then return cjson.encode(text) end
  return '"' .. text .. '"'
end

-- The Celery task message of ``ref`` (see worker/taskmessages.py): task ``id`` for kind on queue.
local function task_message(ref, kind, queue, id)
  local task_id = json_string(id)
  local body = '[[' .. json_string(ref) .. ']' .. BODY_SUFFIX
  return string.format(TASK_TEMPLATE, cjson.encode(body), TASKS_JSON[kind], task_id, task_id, json_string(queue))
end

-- The one enqueue: a Celery task message for the ref, pushed on its queue, tracked in pending.
-- The first task of a message has the ref as its id; later ones (release, retry, replay) ref#n.
local function enqueue(ref, kind, queue)
  local id = ref .. '#' .. redis.call('HINCRBY', key_message(ref), 'requeued', 1)
  redis.call('LPUSH', queue, task_message(ref, kind, queue, id))
  redis.call('ZADD', KEY.pending, NOW, ref)
  return id
end

-- Enqueue a message again as it was first queued (type and queue from its record).
local function requeue(ref)
  local record = redis.call('HMGET', key_message(ref), 'type', 'queue')
  if not record[1] then return nil end
  return enqueue(ref, record[1], record[2] or QUEUE.high)
end

-- Dead letters ----------------------------------------------------------------------------------

local function bury(ref, reason, response, evidence)
  local key = key_message(ref)
  local record = redis.call('HMGET', key, 'type', 'user', 'event', 'attempts', 'received')
  if not record[1] then return false end
  local state = redis.call('HGET', key, 'state')
  if state and FINAL[state] then return false end
  local letter = {id = ref, reason = reason, attempts = tonumber(record[4] or '0'),
    last_response = response or '', at = NOW, type = record[1], user = record[2] or '',
    event_name = record[3] or '', received = tonumber(record[5] or '0')}
  if evidence and evidence ~= '' then letter.evidence = cjson.decode(evidence) end
  redis.call('HSET', KEY.dead, ref, cjson.encode(letter))
  redis.call('ZADD', KEY.dead_index, NOW, ref)
  return set_state(ref, 'dead', reason)
end

-- Holds -----------------------------------------------------------------------------------------

local function hold(ref, identity, detail)
  local key = key_message(ref)
  if redis.call('HGET', key, 'state') == 'held' then return false end
  local list = key_held(identity)
  redis.call('RPUSH', list, NOW .. '|' .. ref)
  redis.call('EXPIRE', list, CONFIG.held_status_ttl)
  local index = is_anonymous(identity) and KEY.holds_anonymous or KEY.holds_users
  redis.call('ZADD', index, 'NX', NOW, identity)
  redis.call('INCR', KEY.held_count)
  redis.call('HSET', key, 'held_under', identity)
  return set_state(ref, 'held', detail)
end

-- Take every item held under these identities; returns them oldest first as {at, ref}.
local function take_held(identities)
  local items = {}
  for _, identity in ipairs(identities) do
    local list = key_held(identity)
    local taken = redis.call('LRANGE', list, 0, -1)
    if #taken > 0 then
      redis.call('DEL', list)
      redis.call('ZREM', is_anonymous(identity) and KEY.holds_anonymous or KEY.holds_users, identity)
      redis.call('DECRBY', KEY.held_count, #taken)
      for _, item in ipairs(taken) do
        local at, ref = string.match(item, '^([^|]*)|(.*)$')
        items[#items + 1] = {tonumber(at), ref}
      end
    end
  end
  table.sort(items, function(a, b) return a[1] < b[1] end)
  return items
end

-- Persons ---------------------------------------------------------------------------------------

local function live_person(pid)
  for _ = 1, 8 do
    if not pid then return nil end
    local into = redis.call('HGET', key_person(pid), 'merged_into')
    if not into then return pid end
    pid = into
  end
  return pid
end

-- The person a contact update was planned for, unless it was merged into another during the call
-- (its revisions are not the survivor's, whose own update carries the merged contact) or its record
-- expired (nothing to settle, no key to recreate).
local function planned_person(pid)
  if live_person(pid) ~= pid or redis.call('EXISTS', key_person(pid)) == 0 then return nil end
  return pid
end

local function resolve(identity)
  return live_person(redis.call('GET', key_identity(identity)))
end

local function touch_person(pid)
  local ttl = CONFIG.person_ttl
  redis.call('EXPIRE', key_person(pid), ttl)
  redis.call('EXPIRE', key_person_ids(pid), ttl)
  redis.call('EXPIRE', key_person_orders(pid), ttl)
  redis.call('EXPIRE', key_person_waiting(pid), ttl)
end

local function link(identity, pid)
  local ttl = is_anonymous(identity) and CONFIG.anonymous_id_ttl or CONFIG.person_ttl
  redis.call('SET', key_identity(identity), pid, 'EX', ttl)
  redis.call('SADD', key_person_ids(pid), identity)
end

local function new_person()
  local pid = tostring(redis.call('INCR', KEY.person_sequence))
  redis.call('HSET', key_person(pid), 'rev', 0, 'created', NOW)
  return pid
end

local function newer(version, current)
  return current == false or current == nil or version > current
end

-- Order attributes, recomputed from the person's orders (order_id -> ms|currency|cents|ref|date).
local function cents_text(cents)
  local sign = cents < 0 and '-' or ''
  cents = math.abs(cents)
  return string.format('%s%d.%02d', sign, math.floor(cents / 100), cents % 100)
end

local function recompute_orders(pid)
  local person = key_person(pid)
  local orders = redis.call('HGETALL', key_person_orders(pid))
  local sums, count_orders, newest, newest_key = {}, 0, nil, nil
  for i = 1, #orders, 2 do
    local order_id = orders[i]
    local ms, currency, cents, _, date = string.match(orders[i + 1], '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
    count_orders = count_orders + 1
    sums[currency] = (sums[currency] or 0) + tonumber(cents)
    local sort_key = string.format('%015d|%s', tonumber(ms), order_id)
    if not newest_key or sort_key > newest_key then
      newest_key = sort_key
      newest = {order_id, currency, tonumber(cents), date}
    end
  end
  local existing = redis.call('HGETALL', person)
  for i = 1, #existing, 2 do
    if string.sub(existing[i], 1, 2) == 'o:' then redis.call('HDEL', person, existing[i]) end
  end
  if count_orders == 0 then return end
  redis.call('HSET', person, 'o:order_count', tostring(count_orders), 'o:last_order_id', newest[1],
    'o:last_order_total', cents_text(newest[3]), 'o:last_order_currency', newest[2],
    'o:last_order_date', newest[4])
  for currency, cents in pairs(sums) do
    redis.call('HSET', person, 'o:lifetime_revenue_' .. string.lower(currency), cents_text(cents))
  end
end

-- Fold person ``from`` into ``into``: newest field wins, orders and identities united.
local function merge_persons(into, from)
  local target, source = key_person(into), key_person(from)
  local fields = redis.call('HGETALL', source)
  local record = {}
  for i = 1, #fields, 2 do record[fields[i]] = fields[i + 1] end
  for name, value in pairs(record) do
    local field = string.match(name, '^f:(.*)$')
    if field then
      local version = record['v:' .. field] or ''
      if newer(version, redis.call('HGET', target, 'v:' .. field)) then
        redis.call('HSET', target, 'f:' .. field, value, 'v:' .. field, version)
      end
    end
  end
  local orders = redis.call('HGETALL', key_person_orders(from))
  for i = 1, #orders, 2 do redis.call('HSETNX', key_person_orders(into), orders[i], orders[i + 1]) end
  recompute_orders(into)
  local rev = redis.call('HINCRBY', target, 'rev', 1)
  for _, identity in ipairs(redis.call('SMEMBERS', key_person_ids(from))) do link(identity, into) end
  for _, ref in ipairs(redis.call('ZRANGE', key_person_waiting(from), 0, -1)) do
    redis.call('ZADD', key_person_waiting(into), rev, ref)
    redis.call('HSET', key_message(ref), 'person', into)
  end
  redis.call('DEL', source, key_person_ids(from), key_person_orders(from), key_person_waiting(from))
  redis.call('HSET', source, 'merged_into', into)
  redis.call('EXPIRE', source, 86400)
  count('persons_merged')
end

-- The person these identities belong to, created or merged as needed: the first identity with a
-- person wins (user ids come first), every other person of these identities is merged into it.
local function ensure_person(identities)
  local target = nil
  local others = {}
  for _, identity in ipairs(identities) do
    local pid = resolve(identity)
    if pid then
      if not target then target = pid elseif pid ~= target then others[#others + 1] = pid end
    end
  end
  if not target then target = new_person() end
  for _, pid in ipairs(others) do
    if live_person(pid) ~= target then merge_persons(target, pid) end
  end
  for _, identity in ipairs(identities) do link(identity, target) end
  touch_person(target)
  return target
end

-- ``ref`` waits for the contact update at revision ``rev`` (or a later one) of its person.
local function wait_for_update(pid, rev, ref)
  local waiting = key_person_waiting(pid)
  redis.call('ZADD', waiting, 'NX', rev, ref)
  redis.call('EXPIRE', waiting, CONFIG.person_ttl)
end

local function has_email(pid)
  local email = redis.call('HGET', key_person(pid), 'f:email')
  return email and email ~= ''
end

local function is_synced(pid)
  local email = redis.call('HGET', key_person(pid), 's:email')
  return email and email ~= ''
end

-- The desired contact as name/value pairs (contact fields and attributes, then order attributes),
-- and its fingerprint: the list configuration is part of it, so changing it sends contacts again.
local function desired(pid)
  local all = redis.call('HGETALL', key_person(pid))
  local names, values = {}, {}
  for i = 1, #all, 2 do
    local prefix = string.sub(all[i], 1, 2)
    if prefix == 'f:' or prefix == 'o:' then
      names[#names + 1] = all[i]
      values[all[i]] = all[i + 1]
    end
  end
  table.sort(names)
  local flat, parts = {}, {CONTACT_LISTS}
  for _, name in ipairs(names) do
    flat[#flat + 1] = name
    flat[#flat + 1] = values[name]
    parts[#parts + 1] = name .. '\0' .. values[name]
  end
  return flat, redis.sha1hex(table.concat(parts, '\0'))
end

-- True when no contact-defining identify of these identities is still on its way.
local function barriers_clear(identities)
  for _, identity in ipairs(identities) do
    local barrier = key_barrier(identity)
    for _, ref in ipairs(redis.call('ZRANGE', barrier, 0, -1)) do
      local state = redis.call('HGET', key_message(ref), 'state')
      if not state or FINAL[state] then redis.call('ZREM', barrier, ref) else return false end
    end
  end
  return true
end

-- Queue again everything held for this person, if Promoter knows the contact and no newer
-- contact-defining identify is pending; oldest first. Returns how many were released.
local function release_person(pid, reason)
  if not pid or not is_synced(pid) then return 0 end
  local identities = redis.call('SMEMBERS', key_person_ids(pid))
  local ready = {}
  for _, identity in ipairs(identities) do
    if redis.call('EXISTS', key_held(identity)) == 1 then ready[#ready + 1] = identity end
  end
  if #ready == 0 or not barriers_clear(identities) then return 0 end
  local released = 0
  for _, item in ipairs(take_held(ready)) do
    local ref = item[2]
    local key = key_message(ref)
    if redis.call('HGET', key, 'state') == 'held' then
      redis.call('HSET', key, 'since', NOW)
      requeue(ref)
      set_state(ref, 'received', 'released: ' .. reason)
      released = released + 1
    end
  end
  return released
end

-- What happens to other records when a message becomes final: the barrier it held is lifted (and
-- whatever waited behind it released), and it leaves its person's waiting set.
on_final = function(ref, key, _)
  local barrier = redis.call('HGET', key, 'barrier')
  local pid = redis.call('HGET', key, 'person')
  if barrier then
    redis.call('HDEL', key, 'barrier')
    for _, identity in ipairs(cjson.decode(barrier)) do
      redis.call('ZREM', key_barrier(identity), ref)
      if not pid then pid = resolve(identity) end
    end
    if pid then release_person(live_person(pid), 'no newer identify pending') end
  end
end

-- Budget ----------------------------------------------------------------------------------------

-- One request slot of Promoter's budget: 0 when granted, else {ms to wait, why}. GCRA shared by all
-- workers; low priority keeps half the burst free for surveys; the daily budget keeps a reserve
-- for them too; a 429 pause stops everyone.
local function acquire(priority)
  local now_ms = NOW * 1000
  local paused = tonumber(redis.call('GET', KEY.pause) or '0')
  if paused > now_ms then return {paused - now_ms, 'paused after a 429 from Promoter'} end
  local day_key = nil
  if BUDGET.daily_limit > 0 then
    local day = math.floor(NOW / 86400)
    day_key = KEY.budget_day .. day
    local used = tonumber(redis.call('GET', day_key) or '0')
    local cap = BUDGET.daily_limit
    if priority ~= 'high' then cap = math.floor(BUDGET.daily_limit * (1 - BUDGET.daily_reserve)) end
    if used >= cap then
      return {((day + 1) * 86400 - NOW) * 1000 + 1000, 'daily Promoter budget used up'}
    end
  end
  local burst = priority == 'high' and BUDGET.burst_ms or BUDGET.burst_ms / 2
  local tat = math.max(tonumber(redis.call('GET', KEY.rate) or '0'), now_ms)
  if tat - now_ms > burst then return {math.ceil(tat - now_ms - burst), 'Promoter rate limit'} end
  redis.call('SET', KEY.rate, tat + BUDGET.interval_ms, 'PX', math.ceil(tat + BUDGET.interval_ms - now_ms) + 1000)
  if day_key then
    redis.call('INCR', day_key)
    redis.call('EXPIRE', day_key, 172800)
  end
  return 0
end

-- Obligations of a message -----------------------------------------------------------------------
-- A message may owe a contact update (status field sync = 'wait') and a survey (survey_need = '1');
-- it becomes final when the last of them is settled, with the survey's outcome when it had one.

local function finish(ref, state, detail)
  local key = key_message(ref)
  local parts = redis.call('HMGET', key, 'sync', 'survey_need', 'sync_detail', 'survey_state', 'survey_detail')
  if parts[1] == 'wait' or parts[2] == '1' then return false end
  local final_state, texts = state, {}
  if parts[4] then
    final_state = parts[4]
    texts[#texts + 1] = parts[5]
  end
  if parts[3] then texts[#texts + 1] = parts[3] end
  if detail and detail ~= '' then texts[#texts + 1] = detail end
  return set_state(ref, final_state or 'delivered', table.concat(texts, '; '))
end

-- The contact update a message was waiting for is done (``holder`` made the call).
local function finish_sync(ref, holder)
  local key = key_message(ref)
  local state = redis.call('HGET', key, 'state')
  if not state or FINAL[state] then return end
  local detail
  if holder == ref then
    detail = redis.call('HGET', key, 'type') == 'track' and 'order attributes sent to Promoter'
      or 'contact upserted'
  else
    detail = 'carried by the contact update of ' .. holder
    count('saved:coalesced')
  end
  redis.call('HDEL', key, 'sync', 'force')
  redis.call('HSET', key, 'sync_detail', detail)
  if state == 'held' then
    -- a trait update that waited for the email: it leaves its hold list with this update
    local identity = redis.call('HGET', key, 'held_under')
    if identity then
      for _, item in ipairs(redis.call('LRANGE', key_held(identity), 0, -1)) do
        if string.match(item, '^[^|]*|(.*)$') == ref then
          redis.call('LREM', key_held(identity), 1, item)
          redis.call('DECR', KEY.held_count)
        end
      end
    end
  end
  finish(ref, 'delivered', '')
end

local function finish_survey(ref, state, detail)
  local key = key_message(ref)
  redis.call('HDEL', key, 'survey_need')
  redis.call('HSET', key, 'survey_state', state, 'survey_detail', detail)
  return finish(ref, state, '')
end

-- Contact updates --------------------------------------------------------------------------------

-- The lease on a person's contact update: '<holder ref>|<deadline>'; only its holder sends.
local function lease_holder(person)
  local lease = redis.call('HGET', person, 'lease')
  if not lease then return nil end
  local holder, deadline = string.match(lease, '^(.*)|([^|]*)$')
  if tonumber(deadline) <= NOW then return nil end
  return holder
end

local function take_lease(person, holder, seconds)
  redis.call('HSET', person, 'lease', holder .. '|' .. (NOW + seconds))
end

-- Every message waiting for a contact update up to revision ``rev``: ``settle(ref)`` each, then
-- they stop waiting.
local function settle_waiting(pid, rev, settle)
  local waiting = key_person_waiting(pid)
  for _, ref in ipairs(redis.call('ZRANGEBYSCORE', waiting, '-inf', rev)) do settle(ref) end
  redis.call('ZREMRANGEBYSCORE', waiting, '-inf', rev)
end

-- The plan of a sync: what to send, at which revision, and whether a budget slot was granted.
local function sync_plan(pid, rev, fp, flat, priority)
  local wait = acquire(priority)
  return {action = 'sync', pid = pid, rev = rev, fp = fp, fields = flat,
    wait_ms = wait == 0 and 0 or wait[1], why = wait == 0 and '' or wait[2]}
end

-- ``ref`` changed (or may have changed) its person's desired contact. Decide: nothing to send,
-- wait for the email, ride along with the update in flight, or make the call (lease taken).
-- ``unchanged`` is what to do with a ref whose change turned out to be none.
local function plan_sync(pid, ref, identity, priority, lease_seconds, force, unchanged)
  local person = key_person(pid)
  local key = key_message(ref)
  local waiting = key_person_waiting(pid)
  local rev = tonumber(redis.call('HGET', person, 'rev'))
  if not has_email(pid) then
    wait_for_update(pid, rev, ref)
    hold(ref, identity, 'waiting for an identify with an email for this person')
    return {action = 'held'}
  end
  local flat, fp = desired(pid)
  if not force and fp == redis.call('HGET', person, 'synced_fp') then
    if redis.call('ZSCORE', waiting, ref) then
      redis.call('ZREM', waiting, ref)
      finish_sync(ref, redis.call('HGET', person, 'synced_by') or '?')
    else
      unchanged(ref)
    end
    release_person(pid, 'contact known to Promoter')
    return {action = 'done'}
  end
  wait_for_update(pid, rev, ref)
  redis.call('HSET', key, 'sync', 'wait')
  local holder = lease_holder(person)
  if holder and holder ~= ref then
    set_state(ref, 'received', 'waiting for the contact update carried by ' .. holder)
    return {action = 'coalesced', holder = holder}
  end
  take_lease(person, ref, lease_seconds)
  return sync_plan(pid, rev, fp, flat, priority)
end

-- Surveys ----------------------------------------------------------------------------------------
-- The survey guard (status field ``survey``): '' (may call), 'inflight:<deadline>' while a worker
-- calls, 'sent' once Promoter answered, 'unknown' when the call may or may not have reached it
-- (``survey_unknown`` keeps why). A lease that ran out means its worker died mid-call: unknown too.

-- ``recheck``: whether to look at the person's barriers again. The track script checked them in the
-- same atomic step; a later claim (after the message's own contact update, or a wait for budget) must.
local function survey_claim(ref, pid, campaign, lease_seconds, recheck)
  local key = key_message(ref)
  local guard = redis.call('HGET', key, 'survey') or ''
  if guard == 'sent' or redis.call('HEXISTS', key, 'survey_state') == 1 then return {survey = 'sent'} end
  local deadline = string.match(guard, '^inflight:(.*)$')
  if deadline then
    if tonumber(deadline) > NOW then return {survey = 'busy', wait_ms = (tonumber(deadline) - NOW) * 1000} end
    guard = 'unknown'
    redis.call('HSET', key, 'survey', 'unknown', 'survey_unknown', 'worker stopped mid-call', 'survey_unknown_at', NOW)
    count('survey_unknown:worker stopped mid-call')
  end
  local resend = guard == 'unknown'
  if resend and not CONFIG.resend_unknown then
    local why = redis.call('HMGET', key, 'survey_unknown', 'survey_started')
    return {survey = 'unknown', cause = why[1] or '?', started = tonumber(why[2] or '0')}
  end
  -- An identify that changes the email may have been accepted since the track reached its person.
  if recheck and not barriers_clear(redis.call('SMEMBERS', key_person_ids(pid))) then
    hold(ref, redis.call('HGET', key, 'user'), 'waiting for a newer identify of this person to be delivered')
    return {survey = 'held'}
  end
  local contact = redis.call('HMGET', key_person(pid), 's:email', 's:first_name', 's:last_name')
  if CONFIG.survey_cooldown > 0 and not resend then
    local last = redis.call('GET', key_surveyed(string.lower(contact[1]) .. '|' .. campaign))
    if last then return {survey = 'cooldown', at = tonumber(last)} end
  end
  local wait = acquire('high')
  if wait ~= 0 then return {survey = 'wait', wait_ms = wait[1], why = wait[2]} end
  redis.call('HSET', key, 'survey', 'inflight:' .. (NOW + lease_seconds), 'survey_started', NOW)
  return {survey = 'go', resend = resend, email = contact[1], first_name = contact[2] or '',
    last_name = contact[3] or ''}
end
