-- core: status records, counters, queues and dead letters. Every script runs with the whole library
-- (core, persons, holds, budget, updates, surveys) above its own body; worker/scripts.py writes the
-- generated head first: NOW (ARGV[1], the caller's clock), the enums (STATE, START, PLAN, CLAIM,
-- SURVEY, FAILURE, PRIORITY, ROUTE), FINAL, ID, KEY, QUEUE, CONFIG, BUDGET and the key_<name>(x)
-- functions. `promoter-relay scripts show NAME` prints a script as Redis runs it, with line numbers.
--
-- A status record (relay:msg:{ref}) is a small hash; its fields are listed in docs/records.md.

-- Counters --------------------------------------------------------------------------------------

local COUNTS = {}
local function count(field, n)
  COUNTS[field] = (COUNTS[field] or 0) + (n or 1)
end

-- Written once per script call by the wrapper (with the person records, see persons.flush).
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
  if states then redis.call('EXPIRE', minute, MINUTE_TTL) end
end

-- One Promoter call's latency and answer, recorded in the step that settles it.
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

-- Identities --------------------------------------------------------------------------------------

local function is_anonymous(identity)
  return string.sub(identity, 1, #ID.ANONYMOUS) == ID.ANONYMOUS
end

-- Status records ----------------------------------------------------------------------------------

local function ttl_for(state)
  if state == STATE.HELD then return CONFIG.held_status_ttl end
  if state == STATE.DEAD then return CONFIG.dead_ttl end
  return CONFIG.status_ttl
end

local function state_of(ref)
  return redis.call('HGET', key_message(ref), 'state')
end

local function is_final(state)
  return state and FINAL[state] or false
end

-- History: one JSON entry per change, capped. The first 'received' is not written (the record's own
-- received time says it), which keeps a queued message small.
local function note(ref, state, detail)
  local log = key_history(ref)
  local length = redis.call('RPUSH', log, cjson.encode({at = NOW, state = state, detail = detail or ''}))
  if length > HISTORY_LIMIT then redis.call('LTRIM', log, -HISTORY_LIMIT, -1) end
  redis.call('EXPIRE', log, ttl_for(state))
end

local on_final -- set by holds: what a message becoming final does to other records

-- An identity's indexes are how a forget finds what it must erase: the messages filed under it, and
-- the identities it was seen with (a userId's devices; an anonymousId's userIds, the other way). They
-- outlive every status record they lead to, and no longer: a record's expiry, set at each change of
-- state, extends them (never shortens them), and a device's record extends its userIds' device
-- indexes too, so a forget of the userId still reaches a device's dead letter after its link expired.
-- An index's expiry is also kept in it, as the score of its member '' (INDEX_END), in the scripts'
-- own time: TTL answers in Redis's clock, which is not NOW's (the simulator's virtual one), and
-- extending needs the comparison. An index written before this kept none: its TTL counts then.
local INDEX_END = ''

-- An index's end in the scripts' time, and whether the index keeps it; nil when there is no index.
-- An index written before it kept its end (or just created) has only its TTL to say.
local function index_end(key)
  local at = redis.call('ZSCORE', key, INDEX_END)
  if at then return tonumber(at), true end
  local left = redis.call('TTL', key)
  if left == -2 then return nil, false end
  return NOW + left, false
end

-- ``members`` (score, member, ...) added to an index that then lasts at least ``ttl`` more: one ZADD,
-- and an EXPIRE only when its end moves (a new index, most often, costs the two and a ZSCORE). With
-- no members it only extends an index there is.
local function index_add(key, members, ttl)
  local at, kept = index_end(key)
  if not at and #members == 0 then return end
  local ends = math.max(NOW + ttl, at or 0)
  if kept and at >= NOW + ttl then
    if #members > 0 then redis.call('ZADD', key, unpack(members)) end
    return
  end
  members[#members + 1] = ends
  members[#members + 1] = INDEX_END
  redis.call('ZADD', key, unpack(members))
  redis.call('EXPIRE', key, math.floor(ends - NOW + 0.5))
end

local function extend(key, ttl)
  index_add(key, {}, ttl)
end

-- Every userId a device's index names (but ``except``) keeps its own device index at least ``ttl``.
local function keep_users_of(device, ttl, except)
  for _, user in ipairs(redis.call('ZRANGE', key_devices(device), 0, -1)) do
    if user ~= INDEX_END and user ~= except then extend(key_devices(user), ttl) end
  end
end

local function keep_indexes(identity, ttl)
  if not identity then return end
  extend(key_messages(identity), ttl)
  extend(key_devices(identity), ttl)
  if is_anonymous(identity) then keep_users_of(identity, ttl) end
end

-- A status record of ``ref`` now lasts ``ttl``: the indexes of its identity last as long, and its
-- entry in the message index counts from now (the index is trimmed by that time, and a replayed or
-- long-held message lives on well past its acceptance).
local function keep_record_indexed(ref, ttl)
  local identity = redis.call('HGET', key_message(ref), 'user')
  if not identity then return end
  keep_indexes(identity, ttl)
  redis.call('ZADD', key_messages(identity), 'XX', NOW, ref)
end

-- The only way a message changes state. A final state is never left except by an explicit replay,
-- so a late retry, a redelivered task or a late success cannot overwrite 'dead' (or the reverse).
-- Returns the state the record holds afterwards.
local function set_state(ref, state, detail, replay)
  local key = key_message(ref)
  local current = redis.call('HGET', key, 'state')
  if is_final(current) and not replay then return current end
  redis.call('HSET', key, 'state', state, 'detail', detail or '', 'updated', NOW)
  local ttl = ttl_for(state)
  redis.call('EXPIRE', key, ttl)
  keep_record_indexed(ref, ttl)
  note(ref, state, detail)
  count('state:' .. state)
  if state == STATE.HELD or FINAL[state] then redis.call('ZREM', KEY.pending, ref) end
  -- The event lives as long as the record while it may still be delivered (or replayed).
  if FINAL[state] and state ~= STATE.DEAD then
    redis.call('DEL', key_event(ref))
  else
    redis.call('EXPIRE', key_event(ref), ttl)
  end
  if FINAL[state] then on_final(ref, key) end
  return state
end

-- Queues ------------------------------------------------------------------------------------------

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

-- The one enqueue: a Celery task message for the ref, pushed on its queue, tracked in pending. The
-- first task of a message has the ref as its id; later ones (release, retry, replay) ref|n: '|' is
-- never part of a messageId, so no later task can share an id with another message's first one.
local function enqueue(ref, kind, queue)
  local id = ref .. TASK_ID_SEPARATOR .. redis.call('HINCRBY', key_message(ref), 'requeued', 1)
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

local function recent(ref)
  redis.call('LREM', KEY.recent, 0, ref)
  redis.call('LPUSH', KEY.recent, ref)
  redis.call('LTRIM', KEY.recent, 0, RECENT_LIMIT - 1)
end

-- Dead letters ------------------------------------------------------------------------------------

-- Give up on a message, keeping why. Returns the state it is in afterwards (a final one is kept).
local function bury(ref, reason, response, evidence)
  local key = key_message(ref)
  local record = redis.call('HMGET', key, 'type', 'user', 'event', 'attempts', 'received', 'state')
  if not record[1] then return nil end
  if is_final(record[6]) then return record[6] end
  local letter = {id = ref, reason = reason, attempts = tonumber(record[4] or '0'),
    last_response = response or '', at = NOW, type = record[1], user = record[2] or '',
    event_name = record[3] or '', received = tonumber(record[5] or '0')}
  if evidence and evidence ~= '' then letter.evidence = cjson.decode(evidence) end
  redis.call('HSET', KEY.dead, ref, cjson.encode(letter))
  redis.call('ZADD', KEY.dead_index, NOW, ref)
  return set_state(ref, STATE.DEAD, reason)
end
