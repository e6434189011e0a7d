-- v2_persons: old persons (schema 1) become persons named by identity (schema 2), one per call of
-- convert(pid), each atomic. The layouts on both sides are frozen here on purpose (key names, field
-- names, encodings): a migration describes two past versions, not the code of today.
-- KEYS: none.
-- ARGV: [1] now, [2] person TTL, [3] anonymous person TTL, [4] anonymousId TTL, [5] '1' for a dry
--       run (count, write nothing), [6..] old person ids (the <n> of relay:person:{<n>}).
-- Returns: a flat list of counter name, count.
--
-- Schema 1: relay:person:{<n>} a hash (f:<name>/v:<name> fields and versions 'ms(15 digits)|ref',
-- o:<order attribute>, s:email/s:first_name/s:last_name, rev, synced_rev, synced_fp, synced_by,
-- contact_id, lease, refused, merged_into, created), :ids a set of identities, :orders a hash
-- order_id -> 'ms|currency|cents|ref|date', :waiting a zset of refs by revision; relay:id:{<identity>}
-- the person id of a userId or anonymousId, relay:person-seq the counter.
-- Schema 2: relay:person:{<u:userId | a:anonymousId>} one JSON string (worker/lua/lib/persons.lua as of
-- schema 2), relay:id:{a:<id>} its name, alias pointers {"into": <name>}, relay:email:{<digest>}.

local NOW = tonumber(ARGV[1])
local PERSON_TTL, ANONYMOUS_PERSON_TTL, ANONYMOUS_ID_TTL = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local DRY = ARGV[5] == '1'
local COUNTS = {}
local function count(name) COUNTS[name] = (COUNTS[name] or 0) + 1 end

local function person_key(name) return 'relay:person:{' .. name .. '}' end
local function identity_key(identity) return 'relay:id:{' .. identity .. '}' end
local function is_anonymous(identity) return string.sub(identity, 1, 2) == 'a:' end

local DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz'
local function base36(number, width)
  local out = ''
  while number > 0 do
    local digit = number % 36
    out = string.sub(DIGITS, digit + 1, digit + 1) .. out
    number = (number - digit) / 36
  end
  return string.rep('0', width - #out) .. out
end

-- events.version of schema 2 from the parts schema 1 kept: 9 base-36 digits of ms, 6 hex of SHA-1(ref).
local function version(ms, ref)
  return base36(math.max(0, tonumber(ms) or 0), 9) .. string.sub(redis.sha1hex(ref), 1, 6)
end

local function old_version(text)
  local ms, ref = string.match(text or '', '^(%d+)|(.*)$')
  if not ms then return string.rep('0', 15) end
  return version(ms, ref)
end

-- The live person an old id leads to, following merge stubs as schema 1 did.
local function live(pid)
  for _ = 1, 8 do
    if not pid then return nil end
    local into = redis.call('HGET', person_key(pid), 'merged_into')
    if not into then return pid end
    pid = into
  end
  return pid
end

local function convert(pid)
  local key = person_key(pid)
  local raw = redis.call('HGETALL', key)
  if #raw == 0 then return 'gone' end
  local h = {}
  for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
  local old_keys = {key, key .. ':ids', key .. ':orders', key .. ':waiting'}
  if h.merged_into then
    -- A stub left by a merge: everything it had went to the survivor.
    if not DRY then redis.call('DEL', unpack(old_keys)) end
    return 'merge_stubs'
  end
  -- The identities that still lead here (a set member whose link moved or expired does not).
  local users, anonymous = {}, {}
  for _, identity in ipairs(redis.call('SMEMBERS', key .. ':ids')) do
    local link = identity_key(identity)
    if live(redis.call('GET', link)) == pid then
      local ttl = redis.call('PTTL', link)
      local entry = {identity, ttl < 0 and PERSON_TTL * 1000 or ttl}
      if is_anonymous(identity) then anonymous[#anonymous + 1] = entry else users[#users + 1] = entry end
    end
  end
  -- The most recently linked userId names the person (an anonymousId when it never had one).
  local function newest_first(a, b) return a[2] > b[2] or (a[2] == b[2] and a[1] < b[1]) end
  table.sort(users, newest_first)
  table.sort(anonymous, newest_first)
  local name = (users[1] or anonymous[1] or {})[1]
  if not name then
    if not DRY then redis.call('DEL', unpack(old_keys)) end
    return 'unreachable'
  end

  local record = {f = {}, vs = {}, rev = tonumber(h.rev or '0') or 0}
  local index_of = {}
  local converted = {}
  for field, value in pairs(h) do
    local field_name = string.match(field, '^f:(.*)$')
    if field_name then
      -- One identify set most fields at once: each of its versions is converted once.
      local text = h['v:' .. field_name] or ''
      local v = converted[text]
      if not v then
        v = old_version(text)
        converted[text] = v
      end
      if not index_of[v] then
        record.vs[#record.vs + 1] = v
        index_of[v] = #record.vs
      end
      record.f[field_name] = {value, index_of[v]}
    end
  end
  if h.synced_rev then record.srev = tonumber(h.synced_rev) end
  -- The same SHA-1 over the same text schema 2 fingerprints, cut to its 16 hex: skip-unchanged holds.
  if h.synced_fp then record.fp = string.sub(h.synced_fp, 1, 16) end
  if h['s:email'] and h['s:email'] ~= '' then
    record.se, record.sf, record.sl = h['s:email'], h['s:first_name'] or '', h['s:last_name'] or ''
  end
  if h.contact_id and h.contact_id ~= '' then record.cid = h.contact_id end
  if h.refused then
    record.refused = h.refused
    record.refused_by = string.match(h.refused, '^identify (.-) was refused by Promoter')
  end
  local orders = redis.call('HGETALL', key .. ':orders')
  if #orders > 0 then
    record.o = {}
    for i = 1, #orders, 2 do
      local ms, currency, cents, ref, date = string.match(orders[i + 1], '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
      if ms then record.o[orders[i]] = {version(ms, ref), tonumber(cents), currency, date} end
    end
  end
  -- Every other identity is remembered as last seen when its link was last refreshed.
  for _, group in ipairs({users, anonymous}) do
    for _, entry in ipairs(group) do
      if entry[1] ~= name then
        local full = is_anonymous(entry[1]) and ANONYMOUS_ID_TTL or PERSON_TTL
        record.ids = record.ids or {}
        record.ids[entry[1]] = math.min(NOW, NOW - full + entry[2] / 1000)
      end
    end
  end

  local ttl = redis.call('PTTL', key)
  if ttl < 0 then ttl = PERSON_TTL * 1000 end
  if is_anonymous(name) then ttl = math.min(ttl, ANONYMOUS_PERSON_TTL * 1000) end
  count('persons')
  if #users > 1 then count('persons_with_aliases') end
  if record.se then count('persons_known') end
  if DRY then return 'ok' end

  redis.call('SET', person_key(name), cjson.encode(record), 'PX', ttl)
  for _, entry in ipairs(users) do
    if entry[1] ~= name then
      -- Another userId of a person schema 1 merged: an alias of it from now on.
      redis.call('SET', person_key(entry[1]), cjson.encode({into = name}), 'PX', entry[2])
      count('aliases')
    end
    redis.call('DEL', identity_key(entry[1]))
  end
  for _, entry in ipairs(anonymous) do
    redis.call('SET', identity_key(entry[1]), name, 'KEEPTTL')
  end
  local waiting = redis.call('ZRANGE', key .. ':waiting', 0, -1, 'WITHSCORES')
  for i = 1, #waiting, 2 do
    redis.call('ZADD', person_key(name) .. ':waiting', waiting[i + 1], waiting[i])
    if redis.call('EXISTS', 'relay:msg:{' .. waiting[i] .. '}') == 1 then
      redis.call('HSET', 'relay:msg:{' .. waiting[i] .. '}', 'person', name)
    end
  end
  if #waiting > 0 then redis.call('PEXPIRE', person_key(name) .. ':waiting', ttl) end
  if record.se then
    redis.call('SET', 'relay:email:{' .. string.sub(redis.sha1hex(string.lower(record.se)), 1, 16) .. '}', name, 'PX', ttl)
  end
  redis.call('DEL', unpack(old_keys))
  return 'ok'
end

for i = 6, #ARGV do
  local outcome = convert(ARGV[i])
  if outcome ~= 'ok' then count(outcome) end
end
local flat = {}
for name, n in pairs(COUNTS) do flat[#flat + 1] = name; flat[#flat + 1] = n end
return flat
