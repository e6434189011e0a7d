-- messages.accept: ingest records, deduplicates and queues one request's messages in one atomic step.
-- KEYS: none (every key is computed here; the relay runs on one Redis, see worker/keys.py)
-- ARGV: [1] now; [2] a JSON list with, per message: [ref, type, state (received | skipped), detail,
--       route (high | low | contact), identity, contact-change identities (list, for contact), event
--       name, the stored event (a JSON text, kept as it is: cjson never re-reads its numbers), contact
--       fields to compare (object, for contact), version (for contact), suppression markers (the keyed
--       hashes of every identity it names, worker/suppression.py; empty while suppression is off),
--       the anonymous identity of a message that also has a userId ('' when not)]. One argument,
--       decoded once, instead of thirteen per message.
-- Returns: per message its task id, '-' when accepted but not queued (skipped), '' for a duplicate,
--          '!' when it names a forgotten person (acknowledged, dropped: nothing of it is written).

-- An identify that may change who the contact is goes first and holds back this person's surveys
-- until it is delivered (a pending contact change); one that repeats what the person already has is
-- a low-priority update. An alias always may.
local function contact_route(kind, identities, fields)
  if kind == 'alias' then return ROUTE.HIGH end
  for _, identity in ipairs(identities) do
    if redis.call('EXISTS', key_barrier(identity)) == 1 then return ROUTE.HIGH end
  end
  local _, record = resolve(identities[1], true)
  if not is_synced(record) then return ROUTE.HIGH end
  for name, value in pairs(fields) do
    local entry = record.f[name]
    if not entry or entry[1] ~= value then return ROUTE.HIGH end
  end
  return ROUTE.LOW
end

local function suppressed(markers)
  for _, marker in ipairs(markers) do
    if redis.call('EXISTS', key_suppressed(marker)) == 1 then return true end
  end
  return false
end

local answers, added, named, seen_with = {}, {}, {}, {}
-- The message is filed under each identity it names (for a forget); written once per identity.
local function file_one(ref, id)
  local refs = named[id]
  if not refs then refs = {}; named[id] = refs end
  refs[#refs + 1] = NOW
  refs[#refs + 1] = ref
end
local function file_under(ref, identity, changes)
  file_one(ref, identity)
  for _, id in ipairs(changes) do
    if id ~= identity then file_one(ref, id) end
  end
end
local pushes, pending = {[QUEUE.high] = {}, [QUEUE.low] = {}}, {}
for _, item in ipairs(cjson.decode(ARGV[2])) do
  local ref, kind, state, detail, route, identity = item[1], item[2], item[3], item[4], item[5], item[6]
  local identities, name, event, contact, version = item[7], item[8], item[9], item[10], item[11]
  local key = key_message(ref)
  if suppressed(item[12]) then
    answers[#answers + 1] = '!'
    count('suppressed:' .. kind)
  elseif redis.call('EXISTS', key) == 1 then
    answers[#answers + 1] = ''
    count('duplicate:' .. kind)
  else
    count('accepted:' .. kind)
    added[#added + 1] = ref
    file_under(ref, identity, identities)
    if item[13] ~= '' then
      local devices = seen_with[identity] or {}
      seen_with[identity] = devices
      devices[#devices + 1] = NOW
      devices[#devices + 1] = item[13]
    end
    if state == STATE.SKIPPED then
      redis.call('HSET', key, 'type', kind, 'user', identity, 'received', NOW)
      if name ~= '' then redis.call('HSET', key, 'event', name) end
      set_state(ref, STATE.SKIPPED, detail)
      answers[#answers + 1] = '-'
    else
      -- Only what differs from a fresh record's defaults is written (attempts 0, no detail, since and
      -- updated = received, queue = the high one): a backlog of queued messages stays small.
      local fields = {'type', kind, 'user', identity, 'received', NOW, 'state', state}
      if name ~= '' then fields[#fields + 1] = 'event'; fields[#fields + 1] = name end
      local queue = QUEUE.high
      if route == ROUTE.LOW then
        queue = QUEUE.low
      elseif route == ROUTE.CONTACT then
        -- A change is filed as pending; one that repeats what the person has goes low, filed as a
        -- repeat: it holds surveys back only if a change accepted meanwhile makes it a change again.
        local pending = key_barrier
        if contact_route(kind, identities, contact) == ROUTE.HIGH then
          fields[#fields + 1] = 'barrier'; fields[#fields + 1] = cjson.encode(identities)
        else
          queue = QUEUE.low
          pending = key_repeats
          fields[#fields + 1] = 'repeats'; fields[#fields + 1] = cjson.encode(identities)
          fields[#fields + 1] = 'repeat'; fields[#fields + 1] = cjson.encode(contact)
          fields[#fields + 1] = 'version'; fields[#fields + 1] = version
        end
        for _, id in ipairs(identities) do
          redis.call('ZADD', pending(id), NOW, ref)
          redis.call('EXPIRE', pending(id), CONFIG.status_ttl)
        end
      end
      if queue ~= QUEUE.high then fields[#fields + 1] = 'queue'; fields[#fields + 1] = queue end
      redis.call('HSET', key, unpack(fields))
      redis.call('EXPIRE', key, CONFIG.status_ttl)
      redis.call('SET', key_event(ref), event, 'EX', CONFIG.status_ttl)
      count('state:' .. state)
      -- Queued together at the end: one LPUSH per queue, one ZADD for the pending index.
      local list = pushes[queue]
      list[#list + 1] = task_message(ref, kind, queue, ref)
      pending[#pending + 1] = NOW
      pending[#pending + 1] = ref
      answers[#answers + 1] = ref
    end
  end
end
for queue, messages in pairs(pushes) do
  if #messages > 0 then redis.call('LPUSH', queue, unpack(messages)) end
end
if #pending > 0 then redis.call('ZADD', KEY.pending, unpack(pending)) end
-- The indexes are trimmed on about one write in sixteen (by the first ref's last byte): between two
-- trims an index holds at most a few more entries than it keeps, at a sixteenth of the commands.
-- Every identity with a device is among those named, whose indexes then last (at least) as long as
-- the records just written (lib/core.lua, keep_indexes); a device's own index of userIds too.
for id, devices in pairs(seen_with) do
  local index = key_devices(id)
  local trim = string.byte(devices[2], -1) % 16 == 0
  -- And the other way: the userIds each device was seen with (lib/core.lua, keep_indexes). A
  -- device's records from before (a dead letter) keep both as long as they last.
  local ttl = CONFIG.status_ttl
  for i = 2, #devices, 2 do
    local users = key_devices(devices[i])
    local kept = index_end(key_messages(devices[i]))
    local lasts = math.max(CONFIG.status_ttl, math.ceil((kept or NOW) - NOW))
    index_add(users, {NOW, id}, lasts)
    -- Every userId a device names keeps a device index at least as long (a forget of any of them
    -- must reach the device, and erase its index, which names them all); ``id``'s comes below.
    keep_users_of(devices[i], lasts, id)
    if trim then redis.call('ZREMRANGEBYRANK', users, 0, -CONFIG.max_devices - 2) end
    ttl = math.max(ttl, lasts)
  end
  index_add(index, devices, ttl)
  -- The last CONFIG.max_devices, and the index's end (INDEX_END, ranked last).
  if trim then redis.call('ZREMRANGEBYRANK', index, 0, -CONFIG.max_devices - 2) end
end
for id, refs in pairs(named) do
  local index = key_messages(id)
  index_add(index, refs, CONFIG.status_ttl)
  if string.byte(refs[2], -1) % 16 == 0 then redis.call('ZREMRANGEBYSCORE', index, '-inf', NOW - CONFIG.index_horizon) end
  if seen_with[id] == nil then extend(key_devices(id), CONFIG.status_ttl) end
  if is_anonymous(id) then keep_users_of(id, CONFIG.status_ttl) end
end
if #added > 0 then
  redis.call('LPUSH', KEY.recent, unpack(added, math.max(1, #added - RECENT_LIMIT + 1)))
  redis.call('LTRIM', KEY.recent, 0, RECENT_LIMIT - 1)
end
return answers
