-- Ingest: record, deduplicate and queue one request's messages in one atomic step.
-- ARGV[2..]: 10 values per message: ref, type, state ('received' | 'skipped'), detail, route
-- ('high' | 'low' | 'contact'), identity, barrier identities (JSON list, for 'contact'), event name,
-- event JSON, contact fields to compare (JSON, for 'contact').
-- Returns per message: its task id, '-' when accepted but not queued, '' for a duplicate.
local PER = 10

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
for base = 2, #ARGV, PER do
  local ref, kind, state, detail = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local route, identity, barrier = ARGV[base + 4], ARGV[base + 5], ARGV[base + 6]
  local name, event, contact = ARGV[base + 7], ARGV[base + 8], ARGV[base + 9]
  local key = key_message(ref)
  if redis.call('EXISTS', key) == 1 then
    answers[#answers + 1] = ''
    count('duplicate:' .. kind)
  else
    count('accepted:' .. kind)
    recent[#recent + 1] = ref
    -- Only what differs from a fresh record's defaults is written (attempts 0, no detail, since and
    -- updated = received, queue = the high one): a backlog of queued messages stays small.
    redis.call('HSET', key, 'type', kind, 'user', identity, 'received', NOW)
    if name ~= '' then redis.call('HSET', key, 'event', name) end
    if state == 'skipped' then
      set_state(ref, 'skipped', detail)
      answers[#answers + 1] = '-'
    else
      local queue = QUEUE.high
      if route == 'low' then
        queue = QUEUE.low
      elseif route == 'contact' then
        local identities = cjson.decode(barrier)
        if contact_route(identities, cjson.decode(contact)) == 'high' then
          for _, id in ipairs(identities) do
            redis.call('ZADD', key_barrier(id), NOW, ref)
            redis.call('EXPIRE', key_barrier(id), CONFIG.status_ttl)
          end
          redis.call('HSET', key, 'barrier', barrier)
        else
          queue = QUEUE.low
        end
      end
      redis.call('HSET', key, 'state', state)
      if queue ~= QUEUE.high then redis.call('HSET', key, 'queue', queue) end
      redis.call('EXPIRE', key, CONFIG.status_ttl)
      redis.call('SET', key_event(ref), event, 'EX', CONFIG.status_ttl)
      count('state:' .. state)
      answers[#answers + 1] = enqueue(ref, kind, queue, true)
    end
  end
end
if #recent > 0 then
  redis.call('LPUSH', KEY.recent, unpack(recent, math.max(1, #recent - RECENT_LIMIT + 1)))
  redis.call('LTRIM', KEY.recent, 0, RECENT_LIMIT - 1)
end
return answers
