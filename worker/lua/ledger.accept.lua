-- Ingest: record, deduplicate and queue one request's messages in one atomic step.
-- ARGV[2]: a JSON list with, per message: [ref, type, state ('received' | 'skipped'), detail, route
-- ('high' | 'low' | 'contact'), identity, barrier identities (list, for 'contact'), event name, the
-- stored event (a JSON text, kept as it is: cjson never re-reads its numbers), contact fields to
-- compare (object, for 'contact')]. One argument, decoded once, instead of ten per message.
-- Returns per message: its task id, '-' when accepted but not queued, '' for a duplicate.

-- An identify that may change who the contact is goes first and holds back this person's surveys
-- until it is delivered; one that repeats what the person already has is a low-priority update.
local function contact_route(identities, fields)
  for _, identity in ipairs(identities) do
    if redis.call('EXISTS', key_barrier(identity)) == 1 then return 'high' end
  end
  local pid = resolve(identities[1])
  if not pid or not is_synced(pid) then return 'high' end
  local person = key_person(pid)
  for name, value in pairs(fields) do
    if redis.call('HGET', person, 'f:' .. name) ~= value then return 'high' end
  end
  return 'low'
end

local answers, recent = {}, {}
local pushes, pending = {[QUEUE.high] = {}, [QUEUE.low] = {}}, {}
for _, item in ipairs(cjson.decode(ARGV[2])) do
  local ref, kind, state, detail, route, identity = item[1], item[2], item[3], item[4], item[5], item[6]
  local identities, name, event, contact = item[7], item[8], item[9], item[10]
  local key = key_message(ref)
  if redis.call('EXISTS', key) == 1 then
    answers[#answers + 1] = ''
    count('duplicate:' .. kind)
  else
    count('accepted:' .. kind)
    recent[#recent + 1] = ref
    if state == 'skipped' then
      redis.call('HSET', key, 'type', kind, 'user', identity, 'received', NOW)
      if name ~= '' then redis.call('HSET', key, 'event', name) end
      set_state(ref, 'skipped', detail)
      answers[#answers + 1] = '-'
    else
      -- Only what differs from a fresh record's defaults is written (attempts 0, no detail, since and
      -- updated = received, queue = the high one): a backlog of queued messages stays small.
      local fields = {'type', kind, 'user', identity, 'received', NOW, 'state', state}
      if name ~= '' then fields[#fields + 1] = 'event'; fields[#fields + 1] = name end
      local queue = QUEUE.high
      if route == 'low' then
        queue = QUEUE.low
      elseif route == 'contact' then
        if contact_route(identities, contact) == 'high' then
          for _, id in ipairs(identities) do
            redis.call('ZADD', key_barrier(id), NOW, ref)
            redis.call('EXPIRE', key_barrier(id), CONFIG.status_ttl)
          end
          fields[#fields + 1] = 'barrier'; fields[#fields + 1] = cjson.encode(identities)
        else
          queue = QUEUE.low
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
if #recent > 0 then
  redis.call('LPUSH', KEY.recent, unpack(recent, math.max(1, #recent - RECENT_LIMIT + 1)))
  redis.call('LTRIM', KEY.recent, 0, RECENT_LIMIT - 1)
end
return answers
