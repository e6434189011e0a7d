-- holds: messages waiting for their person to be known, and pending contact changes.
--
-- A held message is filed as '<held at>|<ref>' under one identity (relay:id:{<identity>}:held),
-- its person's name when it has one, else the event's own identity; the index per kind
-- (relay:holds:u, relay:holds:a) is what expiry walks. A *pending contact change* is an identify
-- (or alias) accepted by ingest that may change who the contact is: filed at ingest under the
-- identity it names (relay:id:{<identity>}:barrier), it holds that person's surveys back until it
-- is final, so a survey never goes to an email that an identify the relay already has replaced. An
-- identify that repeated the person's contact when it was accepted is filed as a repeat instead
-- (relay:id:{<identity>}:repeats): it holds surveys back only if a change accepted meanwhile makes it
-- a change again.

local function hold(ref, identity, detail)
  local key = key_message(ref)
  local state = redis.call('HGET', key, 'state')
  if state == STATE.HELD then return STATE.HELD end
  -- A message forgotten (or otherwise settled) while its task ran is not filed under anyone again.
  if is_final(state) then return state end
  local list = key_held(identity)
  redis.call('RPUSH', list, NOW .. '|' .. ref)
  redis.call('EXPIRE', list, CONFIG.held_status_ttl)
  redis.call('ZADD', is_anonymous(identity) and KEY.holds_anonymous or KEY.holds_users, 'NX', NOW, identity)
  redis.call('INCR', KEY.held_count)
  redis.call('HSET', key, 'held_under', identity)
  return set_state(ref, STATE.HELD, detail)
end

-- A held message leaves its hold list without being released (it became final some other way).
local function unhold(ref)
  local identity = redis.call('HGET', key_message(ref), 'held_under')
  if not identity then return end
  for _, item in ipairs(redis.call('LRANGE', key_held(identity), 0, -1)) do
    if string.match(item, '^[^|]*|(.*)$') == ref then
      redis.call('LREM', key_held(identity), 1, item)
      redis.call('DECR', KEY.held_count)
    end
  end
end

-- Take every item held under these identities, oldest first (then by ref) as {at, ref}.
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
  table.sort(items, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
  return items
end

-- Whether an identify that repeated what ``record`` had when it was accepted ('repeat': its contact
-- fields, and 'version') would change it now: a change accepted after it may have come in between.
local function repeat_changes(ref, record)
  local parts = redis.call('HMGET', key_message(ref), 'repeat', 'version')
  if not parts[1] then return true end
  for name, value in pairs(cjson.decode(parts[1])) do
    local entry = record and record.f[name]
    if not entry or (entry[1] ~= value and parts[2] > record.vs[entry[2]]) then return true end
  end
  return false
end

-- Whether what a survey is sent to (email, names) differs between the person's newest contact and
-- what Promoter has: a change merged, and its update not answered yet.
local function contact_unsynced(record)
  for name, synced in pairs({email = record.se, first_name = record.sf, last_name = record.sl}) do
    local entry = record.f[name]
    if (entry and entry[1] or '') ~= (synced or '') then return true end
  end
  return false
end

-- Whether a contact change of ``record``'s person is still on its way: one filed under any of these
-- identities, or one merged and not yet at Promoter.
local function changes_pending(identities, record)
  if record and is_synced(record) and contact_unsynced(record) then return true end
  for _, identity in ipairs(identities) do
    for _, key in ipairs({key_barrier(identity), key_repeats(identity)}) do
      local repeats = key ~= key_barrier(identity)
      for _, ref in ipairs(redis.call('ZRANGE', key, 0, -1)) do
        local state = state_of(ref)
        if not state or is_final(state) then
          redis.call('ZREM', key, ref)
        elseif not repeats or repeat_changes(ref, record) then
          return true
        end
      end
    end
  end
  return false
end

-- Queue again everything held for this person, if Promoter knows its contact and no contact
-- change of it is on its way; oldest first. Returns how many were released.
local function release_person(ref, record, reason)
  if not ref or not is_synced(record) then return 0 end
  local identities = identities_of(ref, record)
  local ready = {}
  for _, identity in ipairs(identities) do
    if redis.call('EXISTS', key_held(identity)) == 1 then ready[#ready + 1] = identity end
  end
  if #ready == 0 or changes_pending(identities, record) then return 0 end
  local released = 0
  for _, item in ipairs(take_held(ready)) do
    local message = item[2]
    local key = key_message(message)
    if redis.call('HGET', key, 'state') == STATE.HELD then
      redis.call('HSET', key, 'since', NOW)
      requeue(message)
      set_state(message, STATE.RECEIVED, 'released: ' .. reason)
      released = released + 1
    end
  end
  return released
end

-- What a message becoming final does to other records: the contact change it was is no longer
-- pending (whatever waited behind it is released), and it leaves any hold list and its person's
-- waiting set. The record keeps
-- its 'barrier' field, so that a replay files the change again.
on_final = function(ref, key)
  local barrier, repeats, person = unpack(redis.call('HMGET', key, 'barrier', 'repeats', 'person'))
  -- Nothing is left for it to wait for; an entry left behind would outlive its record.
  if person then redis.call('ZREM', key_person_waiting(person), ref) end
  if redis.call('HEXISTS', key, 'held_under') == 1 then
    unhold(ref)
    redis.call('HDEL', key, 'held_under')
  end
  local filed = {}
  if barrier then
    for _, identity in ipairs(cjson.decode(barrier)) do
      redis.call('ZREM', key_barrier(identity), ref)
      filed[#filed + 1] = identity
    end
  end
  if repeats then
    for _, identity in ipairs(cjson.decode(repeats)) do
      redis.call('ZREM', key_repeats(identity), ref)
      filed[#filed + 1] = identity
    end
  end
  for _, identity in ipairs(filed) do
    local person, record = resolve(identity)
    if record then release_person(person, record, 'no newer identify pending') end
  end
end
