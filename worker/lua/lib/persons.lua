-- persons: who the contact is (docs/delivery.md, "Who is one person").
--
-- A person is one record at relay:person:{<ref>}, named after its userId ('u:42') or, for a visitor
-- never identified, after its anonymousId ('a:x1'). So a person has at most one userId, and two
-- userIds become one person only through an alias, which leaves at the alias id a pointer record
-- {into = '<ref>'}. An anonymousId belongs to the person of the last userId seen with it:
-- relay:id:{a:<id>} names that person for ANONYMOUS_ID_TTL_SECONDS after they were last seen
-- together, and moves (never merges) when another userId is seen with it.
--
-- A record, as scripts see it:
--   f    contact fields: name -> {value, index into vs}; names: email, first_name, last_name,
--        a:<attribute>
--   vs   the versions fields were set at ('<ms base 36, 9 chars><6 hex of sha1(ref)>': newest wins)
--   rev  revision of the desired contact; srev the revision Promoter accepted last
--   fp   fingerprint of the contact Promoter accepted last (skip unchanged); se, sf, sl its email
--        and names (a survey goes to what Promoter has); cid Promoter's contact id
--   ids  identity -> last seen, for this person's anonymousIds and alias ids
--   o    orders: order_id -> {version of its earliest report, cents, currency, date}
--   lease    '<token>|<deadline>' while one message's contact update is in flight
--   refused  why Promoter refused this never-known person's contact; refused_by the identify
--   into     (pointer record only) the person this id was aliased into
--
-- As stored (schema 3, see encode_person): a MessagePack array, fields by position, because a
-- person is kept a year and there may be millions of them. Its anonymousIds are not in it: they
-- live in relay:person:{<ref>}:anon, which expires with the newest of them, so a person that stops
-- coming back costs only its contact once its links are gone. A record written by schema 2 (a
-- JSON object, first byte '{') is still read, and written back as schema 3 (read old, write new).
--
-- Scripts read a record once (load_person), change the table, and mark it (save_person); the
-- wrapper writes every marked record once, with a fresh TTL, at the end of the call: any event that
-- reaches a person keeps it (and the ids it used) alive.

-- ANONYMOUS: each person's anonymousIds key as read ('' when absent), to write it only when changed.
local PERSONS, DIRTY, DROPPED, ANONYMOUS = {}, {}, {}, {}

local function person_ttl(ref)
  return is_anonymous(ref) and CONFIG.anonymous_person_ttl or CONFIG.person_ttl
end

-- Schema 3 ---------------------------------------------------------------------------------------
-- {3, into} for a pointer; else {3, rev, srev, fp, cid, se, sf, sl, fields, vs, ids, orders, lease,
-- refused, refused_by}, false where a value is absent (a hole would turn the array into a map), and
-- absent values at the end left out.
--   fields  flat {name, value, version index, ...}, or {name, value, ...} when vs holds one version
--           (the usual case: one identify set them all); name: 1, 2, 3 for email, first_name,
--           last_name, the attribute's code in relay:names (KEY.names), or, past MAX_NAMES, the
--           attribute's name without 'a:'
--   se, sf, sl  true when the same as the field's value (the usual case: Promoter has what we have)
--   fp      the 16 hex digits as 8 bytes; cid a number when it is one (Promoter's ids are)
--   ids     flat {alias id, last seen, ...}; orders flat {order_id, version, cents, currency, date, ...}
-- Attribute names are the same for most people ('plan', 'company'): relay:names gives each a number
-- once ('n:<name>' -> code, '<code>' -> name, '#' the last code), and records carry the number.

local SCHEMA = 3
local CONTACT_FIELDS = {'email', 'first_name', 'last_name'}
local CONTACT_CODE = {email = 1, first_name = 2, last_name = 3}
local FIRST_NAME_CODE = 4
local NAME_CODE, CODE_NAME = {}, {}

local function opt(value)
  if value == nil then return false end
  return value
end

local function unopt(value)
  if value == false then return nil end
  return value
end

local function hex_to_bytes(hex)
  return (string.gsub(hex, '..', function(pair) return string.char(tonumber(pair, 16)) end))
end

local function bytes_to_hex(bytes)
  return (string.gsub(bytes, '.', function(c) return string.format('%02x', string.byte(c)) end))
end

-- The code of attribute ``name`` (without 'a:'), given one if it has none and there is room; nil
-- when relay:names is full (the name is then stored as it is).
local function name_code(name)
  local code = NAME_CODE[name]
  if code then return code end
  code = tonumber(redis.call('HGET', KEY.names, 'n:' .. name) or nil)
  if not code then
    if redis.call('HLEN', KEY.names) >= 2 * MAX_NAMES then return nil end
    code = FIRST_NAME_CODE - 1 + redis.call('HINCRBY', KEY.names, '#', 1)
    redis.call('HSET', KEY.names, 'n:' .. name, code, tostring(code), name)
  end
  NAME_CODE[name], CODE_NAME[code] = code, name
  return code
end

local function field_name(code)
  if type(code) == 'string' then return 'a:' .. code end
  return CONTACT_FIELDS[code] or ('a:' .. CODE_NAME[code])
end

-- Every attribute code of these packed fields known by name (one HMGET for those not seen yet).
local function learn_names(fields, width)
  local missing = {}
  for i = 1, #fields, width do
    local code = fields[i]
    if type(code) == 'number' and code >= FIRST_NAME_CODE and not CODE_NAME[code] then
      missing[#missing + 1] = code
    end
  end
  if #missing == 0 then return end
  local names = redis.call('HMGET', KEY.names, unpack(missing))
  for i, code in ipairs(missing) do
    if not names[i] then error('relay:names has no attribute name for code ' .. code .. ' of a person record') end
    CODE_NAME[code], NAME_CODE[names[i]] = names[i], code
  end
end

local function synced_code(synced, entry)
  if synced ~= nil and entry ~= nil and entry[1] == synced then return true end
  return opt(synced)
end

local function encode_person(record)
  if record.into then return cmsgpack.pack({SCHEMA, record.into}) end
  local vs = record.vs or {}
  local fields = {}
  for name, entry in pairs(record.f or {}) do
    local code = CONTACT_CODE[name]
    if not code then code = name_code(string.sub(name, 3)) or string.sub(name, 3) end
    fields[#fields + 1] = code
    fields[#fields + 1] = entry[1]
    if #vs > 1 then fields[#fields + 1] = entry[2] end
  end
  local ids = {}
  for id, seen in pairs(record.ids or {}) do
    if not is_anonymous(id) then ids[#ids + 1] = id; ids[#ids + 1] = seen end
  end
  local orders = {}
  for order_id, order in pairs(record.o or {}) do
    orders[#orders + 1] = order_id
    for i = 1, 4 do orders[#orders + 1] = order[i] end
  end
  local fp = record.fp
  if fp and #fp == 16 and string.match(fp, '^%x+$') then fp = hex_to_bytes(fp) end
  local cid = record.cid
  if cid and #cid <= 13 and string.match(cid, '^[1-9]%d*$') then cid = tonumber(cid) end
  local f = record.f or {}
  local packed = {SCHEMA, record.rev or 0, opt(record.srev), opt(fp), opt(cid),
    synced_code(record.se, f.email), synced_code(record.sf, f.first_name), synced_code(record.sl, f.last_name),
    fields, vs, ids, orders, opt(record.lease), opt(record.refused), opt(record.refused_by)}
  while packed[#packed] == false or (type(packed[#packed]) == 'table' and #packed[#packed] == 0) do
    packed[#packed] = nil
  end
  return cmsgpack.pack(packed)
end

local function decode_person(raw)
  local packed = cmsgpack.unpack(raw)
  if #packed == 2 and type(packed[2]) == 'string' then return {into = packed[2]} end
  local vs = packed[10] or {}
  local record = {rev = packed[2], srev = unopt(packed[3]), f = {}, vs = vs, lease = unopt(packed[13]),
    refused = unopt(packed[14]), refused_by = unopt(packed[15])}
  local fp = unopt(packed[4])
  if fp and #fp == 8 then fp = bytes_to_hex(fp) end
  record.fp = fp
  if packed[5] then record.cid = tostring(packed[5]) end
  local fields, width = packed[9] or {}, #vs > 1 and 3 or 2
  learn_names(fields, width)
  for i = 1, #fields, width do
    record.f[field_name(fields[i])] = {fields[i + 1], width == 3 and fields[i + 2] or 1}
  end
  for slot, name in ipairs(CONTACT_FIELDS) do
    local synced = packed[5 + slot]
    if synced == true then synced = record.f[name][1] end
    record[({'se', 'sf', 'sl'})[slot]] = unopt(synced)
  end
  local ids = packed[11] or {}
  if #ids > 0 then
    record.ids = {}
    for i = 1, #ids, 2 do record.ids[ids[i]] = ids[i + 1] end
  end
  local orders = packed[12] or {}
  if #orders > 0 then
    record.o = {}
    for i = 1, #orders, 5 do
      record.o[orders[i]] = {orders[i + 1], orders[i + 2], orders[i + 3], orders[i + 4]}
    end
  end
  return record
end

-- A person's anonymousIds still linked (seen within ANONYMOUS_ID_TTL_SECONDS), from their own key.
local function load_anonymous_ids(ref, record)
  local raw = redis.call('GET', key_person_anonymous(ref))
  ANONYMOUS[ref] = raw or ''
  if not raw then return end
  local flat = cmsgpack.unpack(raw)
  for i = 1, #flat, 2 do
    if flat[i + 1] >= NOW - CONFIG.anonymous_id_ttl then
      record.ids = record.ids or {}
      record.ids[flat[i]] = flat[i + 1]
    end
  end
end

-- Written only when they changed; the key expires with the newest of them.
local function save_anonymous_ids(ref, record)
  local flat, newest = {}, nil
  for id, seen in pairs(record.ids or {}) do
    if is_anonymous(id) and seen >= NOW - CONFIG.anonymous_id_ttl then
      flat[#flat + 1] = {id, seen}
      if not newest or seen > newest then newest = seen end
    end
  end
  table.sort(flat, function(a, b) return a[1] < b[1] end)
  local packed = {}
  for _, pair in ipairs(flat) do packed[#packed + 1] = pair[1]; packed[#packed + 1] = pair[2] end
  local raw = #packed > 0 and cmsgpack.pack(packed) or ''
  if raw == (ANONYMOUS[ref] or '') then return end
  if raw == '' then
    redis.call('DEL', key_person_anonymous(ref))
  else
    local ms = math.floor((newest + CONFIG.anonymous_id_ttl - NOW) * 1000)
    redis.call('SET', key_person_anonymous(ref), raw, 'PX', math.max(1, ms))
  end
end

local function load_person(ref)
  local cached = PERSONS[ref]
  if cached == nil then
    local raw = redis.call('GET', key_person(ref))
    cached = false
    if raw then
      -- Schema 2 wrote JSON objects; schema 3 writes MessagePack arrays (never '{' first).
      if string.sub(raw, 1, 1) == '{' then cached = cjson.decode(raw) else cached = decode_person(raw) end
      load_anonymous_ids(ref, cached)
    end
    PERSONS[ref] = cached
  end
  return cached or nil
end

local function save_person(ref, record)
  PERSONS[ref] = record
  DIRTY[ref] = true
  DROPPED[ref] = nil
end

local function drop_person(ref)
  PERSONS[ref] = false
  DIRTY[ref] = nil
  DROPPED[ref] = true
end

local function new_person()
  return {f = {}, vs = {}, rev = 0}
end

-- Versions no field refers to any more are dropped as the record is written.
local function compact_versions(record)
  if not record.vs or #record.vs < 2 then return end
  local used = {}
  for _, entry in pairs(record.f) do used[entry[2]] = true end
  local remap, kept = {}, {}
  for index, version in ipairs(record.vs) do
    if used[index] then kept[#kept + 1] = version; remap[index] = #kept end
  end
  for _, entry in pairs(record.f) do entry[2] = remap[entry[2]] end
  record.vs = kept
end

local function flush_persons()
  for ref in pairs(DROPPED) do redis.call('DEL', key_person(ref), key_person_anonymous(ref)) end
  for ref in pairs(DIRTY) do
    local record = PERSONS[ref]
    compact_versions(record)
    redis.call('SET', key_person(ref), encode_person(record), 'EX', person_ttl(ref))
    save_anonymous_ids(ref, record.into and {} or record)
  end
end

-- The email index ---------------------------------------------------------------------------------
-- The person whose contact Promoter accepted with an email, for the NPS feedback poll (keys.email_slot):
-- relay:emails:{<first 4 hex of the digest>}, field the other 12, value '<person ref> <day>'. A
-- bucket holds one entry per email (a stale one is harmless: the reader checks the person), lives
-- PERSON_TTL_SECONDS past its last write, and once a day drops the entries not written for as long.

local EMAIL_BUCKET_DIGITS = 4

-- An email's bucket and field in the index, and the digest both come from.
local function email_slot(email)
  local digest = string.sub(redis.sha1hex(string.lower(email)), 1, 16)
  return key_emails(string.sub(digest, 1, EMAIL_BUCKET_DIGITS)), string.sub(digest, EMAIL_BUCKET_DIGITS + 1), digest
end

local function index_email(email, person)
  local bucket, field = email_slot(email)
  local today = math.floor(NOW / 86400)
  redis.call('HSET', bucket, field, person .. ' ' .. today)
  if redis.call('HGET', bucket, '#') ~= tostring(today) then
    local oldest = today - math.ceil(CONFIG.person_ttl / 86400)
    local entries = redis.call('HGETALL', bucket)
    for i = 1, #entries, 2 do
      local day = tonumber(string.match(entries[i + 1], ' (%d+)$'))
      if day and day < oldest then redis.call('HDEL', bucket, entries[i]) end
    end
    redis.call('HSET', bucket, '#', today)
  end
  redis.call('EXPIRE', bucket, CONFIG.person_ttl)
end

-- The email Promoter had for ``person`` before it accepted another: its entry goes (if still this
-- person's), so the index holds no email a person no longer has at Promoter (and a forget, which
-- knows only current emails, leaves nothing behind).
local function unindex_email(email, person)
  local bucket, field = email_slot(email)
  local entry = redis.call('HGET', bucket, field)
  if entry and string.match(entry, '^(.*) %d+$') == person then redis.call('HDEL', bucket, field) end
end

-- Leases: one contact update of a person in flight at a time ---------------------------------------

local function lease_holder(record)
  if not record.lease then return nil, 0 end
  local holder, deadline = string.match(record.lease, '^(.*)|([^|]*)$')
  if tonumber(deadline) <= NOW then return nil, 0 end
  return holder, tonumber(deadline)
end

-- The run that took the lease, whether or not it has run out: a run that settles late lets go of its
-- own lease (what it learnt is right), and an abandoned one is told from a settled one.
local function lease_token(record)
  return record.lease and string.match(record.lease, '^(.*)|[^|]*$') or nil
end

-- A lease that ran out with its run never settling it (the worker died during the call, or its
-- answer was lost): that call may have reached Promoter, so what Promoter has is not known, as after
-- an uncertain failure (people.failed). The next plan then sends the whole desired contact.
local function drop_abandoned_lease(record)
  if record.lease and not lease_holder(record) then
    record.lease = nil
    record.fp = ''
  end
end

local function take_lease(record, token, seconds)
  record.lease = token .. '|' .. (NOW + seconds)
end

-- Identities ------------------------------------------------------------------------------------

local function is_synced(record)
  return record ~= nil and record.se ~= nil and record.se ~= ''
end

local function has_email(record)
  return record ~= nil and record.f.email ~= nil and record.f.email[1] ~= ''
end

-- A person's identities, its own name first: what its held messages and pending contact changes
-- are filed under.
local function identities_of(ref, record)
  local found = {ref}
  local others = {}
  for identity in pairs((record and record.ids) or {}) do others[#others + 1] = identity end
  table.sort(others)
  for _, identity in ipairs(others) do found[#found + 1] = identity end
  return found
end

-- The person an identity's events reach: (ref, record), following alias pointers. The record is nil
-- when the person is known by name only (a userId seen in tracks, not yet identified); the ref is
-- nil too for an anonymousId that belongs to nobody.
local function resolve(identity, read_only)
  local ref = identity
  if is_anonymous(identity) then
    ref = redis.call('GET', key_identity(identity)) or identity
  end
  for _ = 1, 4 do
    local record = load_person(ref)
    if not record then
      if ref == identity and is_anonymous(identity) then return nil, nil end
      return ref, nil
    end
    if not record.into then return ref, record end
    if not read_only then save_person(ref, record) end -- an alias id in use stays alive
    ref = record.into
  end
  return ref, load_person(ref)
end

-- Remember that ``record`` was seen with ``identity`` (an anonymousId or alias id), dropping what
-- expired and, past the caps, the longest unseen (whose links, if still theirs, go too).
local function remember_id(ref, record, identity)
  record.ids = record.ids or {}
  record.ids[identity] = NOW
  local anonymous, aliases = {}, {}
  for id, seen in pairs(record.ids) do
    if is_anonymous(id) then
      if seen < NOW - CONFIG.anonymous_id_ttl then record.ids[id] = nil
      else anonymous[#anonymous + 1] = {seen, id} end
    else
      aliases[#aliases + 1] = {seen, id}
    end
  end
  for _, group in ipairs({{anonymous, CONFIG.max_anonymous_ids}, {aliases, CONFIG.max_alias_ids}}) do
    local list, cap = group[1], group[2]
    if #list > cap then
      table.sort(list, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
      for i = 1, #list - cap do
        local id = list[i][2]
        record.ids[id] = nil
        if is_anonymous(id) and redis.call('GET', key_identity(id)) == ref then
          redis.call('DEL', key_identity(id))
        end
      end
    end
  end
end

-- Fields ------------------------------------------------------------------------------------------

local function version_index(record, version)
  for index, known in ipairs(record.vs) do
    if known == version then return index end
  end
  record.vs[#record.vs + 1] = version
  return #record.vs
end

local function field_version(record, name)
  local entry = record.f[name]
  return entry and record.vs[entry[2]] or nil
end

-- Newest wins: set ``name`` unless a newer identify set it. True when the value changed.
local function set_field(record, name, value, version)
  local current = record.f[name]
  if current and record.vs[current[2]] >= version then return false end
  record.f[name] = {value, version_index(record, version)}
  return current == nil or current[1] ~= value
end

-- Fields last set at ``version`` (one identify's): a refused update's fields leave the person. The
-- contact fields fall back to what Promoter has (as the oldest value, so any identify overrides it).
local function drop_fields_of(record, version)
  local dropped = false
  for name, entry in pairs(record.f) do
    if record.vs[entry[2]] == version then record.f[name] = nil; dropped = true end
  end
  for name, synced in pairs({email = record.se, first_name = record.sf, last_name = record.sl}) do
    if not record.f[name] and synced and synced ~= '' then
      record.f[name] = {synced, version_index(record, string.rep('0', 15))}
    end
  end
  return dropped
end

-- A person keeps at most CONFIG.max_attributes attributes: past it, the ones set longest ago go.
local function cap_attributes(record)
  local attributes = {}
  for name, entry in pairs(record.f) do
    if string.sub(name, 1, 2) == 'a:' then attributes[#attributes + 1] = {record.vs[entry[2]], name} end
  end
  if #attributes <= CONFIG.max_attributes then return end
  table.sort(attributes, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
  for i = 1, #attributes - CONFIG.max_attributes do record.f[attributes[i][2]] = nil end
  count('attributes_dropped', #attributes - CONFIG.max_attributes)
end

-- Orders --------------------------------------------------------------------------------------------

local function cents_text(cents)
  local sign = cents < 0 and '-' or ''
  cents = math.abs(cents)
  return string.format('%s%d.%02d', sign, math.floor(cents / 100), cents % 100)
end

-- Order attributes, from the person's orders (each counted once, as its earliest report).
local function order_attributes(record)
  local out = {}
  if not record.o or next(record.o) == nil then return out end
  local sums, total, newest_key, newest = {}, 0, nil, nil
  for order_id, order in pairs(record.o) do
    total = total + 1
    sums[order[3]] = (sums[order[3]] or 0) + order[2]
    local sort_key = string.sub(order[1], 1, 9) .. '|' .. order_id
    if not newest_key or sort_key > newest_key then newest_key, newest = sort_key, {order_id, order} end
  end
  out.order_count = tostring(total)
  out.last_order_id = newest[1]
  out.last_order_total = cents_text(newest[2][2])
  out.last_order_currency = newest[2][3]
  out.last_order_date = newest[2][4]
  for currency, cents in pairs(sums) do out['lifetime_revenue_' .. string.lower(currency)] = cents_text(cents) end
  return out
end

-- The contact Promoter should have, as name/value pairs ('f:<field>', then 'o:<order attribute>'),
-- and its fingerprint: the list configuration is part of it, so changing it sends contacts again.
local function desired(record)
  local names, values = {}, {}
  for name, entry in pairs(record.f) do
    names[#names + 1] = 'f:' .. name
    values['f:' .. name] = entry[1]
  end
  for name, value in pairs(order_attributes(record)) do
    names[#names + 1] = 'o:' .. name
    values['o:' .. name] = value
  end
  table.sort(names)
  local flat, parts = {}, {CONTACT_LISTS}
  for _, name in ipairs(names) do
    flat[#flat + 1] = name
    flat[#flat + 1] = values[name]
    parts[#parts + 1] = name .. '\0' .. values[name]
  end
  return flat, string.sub(redis.sha1hex(table.concat(parts, '\0')), 1, 16)
end

-- Meeting identities ------------------------------------------------------------------------------

-- Messages waiting for ``from``'s contact update wait for ``to``'s: at revision ``rev``, or at the
-- revisions they had (a person taking over a visitor's record keeps its revisions). An entry whose
-- message is final or gone (its record expired) is dropped: writing to it would recreate a record
-- with no state and no TTL.
local function move_waiting(from, to, rev)
  local waiting = key_person_waiting(from)
  local entries = redis.call('ZRANGE', waiting, 0, -1, 'WITHSCORES')
  if #entries == 0 then return end
  local moved = 0
  for i = 1, #entries, 2 do
    local state = state_of(entries[i])
    if state and not is_final(state) then
      redis.call('ZADD', key_person_waiting(to), rev or entries[i + 1], entries[i])
      redis.call('HSET', key_message(entries[i]), 'person', to)
      moved = moved + 1
    end
  end
  if moved > 0 then redis.call('EXPIRE', key_person_waiting(to), CONFIG.person_ttl) end
  redis.call('DEL', waiting)
end

-- Fold person ``from`` into ``into``: newest field wins, orders and identities united, and what
-- waited for ``from``'s contact update waits for ``into``'s.
local function merge_into(into_ref, into, from_ref, from)
  for name, entry in pairs(from.f or {}) do set_field(into, name, entry[1], from.vs[entry[2]]) end
  for order_id, order in pairs(from.o or {}) do
    into.o = into.o or {}
    local mine = into.o[order_id]
    if not mine or order[1] < mine[1] then into.o[order_id] = order end
  end
  for identity in pairs(from.ids or {}) do remember_id(into_ref, into, identity) end
  -- Promoter's copy of a shared email may have been written last by either person (the other's call
  -- may even have landed after a timeout): send the merged one.
  local theirs = {from.se, from.f and from.f.email and from.f.email[1]}
  for _, email in pairs(theirs) do
    if into.se and string.lower(email) == string.lower(into.se) then into.fp = '' end
  end
  -- A call of ``from`` still in flight may land over what ``into`` sent: the merged person waits for
  -- it (its lease passes over), and that call's holder then sends the merged contact.
  local holder = lease_holder(from)
  if holder then
    into.fp = ''
    if not lease_holder(into) then into.lease = from.lease end
  end
  into.rev = (into.rev or 0) + 1
  move_waiting(from_ref, into_ref, into.rev)
  -- ``from`` is a pointer now: its email's index entry would name nobody (the merged contact's next
  -- accepted call indexes the email it has).
  if from.se and from.se ~= '' then unindex_email(from.se, from_ref) end
  count('persons_merged')
end

-- ``anonymous`` now belongs to ``ref``'s person (a userId's): the link moves from whoever had it.
local function link_anonymous(anonymous, ref, record)
  local previous = redis.call('GET', key_identity(anonymous))
  if previous and previous ~= ref then
    local before = load_person(previous)
    if before and before.ids and before.ids[anonymous] then
      before.ids[anonymous] = nil
      save_person(previous, before)
    end
    count('anonymous_moved')
  end
  redis.call('SET', key_identity(anonymous), ref, 'EX', CONFIG.anonymous_id_ttl)
  if record then
    remember_id(ref, record, anonymous)
    save_person(ref, record)
  end
end

-- The person an event's identities reach, after applying the identity rules: a userId's own
-- person (created when ``create``), its anonymousId moved to it, and an anonymous-only person of that
-- anonymousId stitched into it. Without a userId: whoever owns the anonymousId now. Returns
-- (ref, record); record nil when the person has none yet; both nil for an unknown visitor.
local function meet(user, anonymous, create)
  if user then
    local ref, record = resolve(user)
    local visitor = anonymous and load_person(anonymous)
    if visitor and not visitor.into then
      if record then
        merge_into(ref, record, anonymous, visitor)
      else
        record = visitor
        move_waiting(anonymous, ref, nil)
      end
      -- A pointer stays behind: a call of the visitor still in flight settles against the survivor.
      save_person(anonymous, {into = ref})
      count('visitors_stitched')
    end
    if not record and create then record = new_person() end
    if record then save_person(ref, record) end
    if anonymous then link_anonymous(anonymous, ref, record) end
    return ref, record
  end
  local ref, record = resolve(anonymous)
  if not ref then
    if not create then return nil, nil end
    ref = anonymous
  end
  if not record and create then record = new_person() end
  if ref ~= anonymous then
    redis.call('EXPIRE', key_identity(anonymous), CONFIG.anonymous_id_ttl)
    if record then remember_id(ref, record, anonymous) end
  end
  if record then save_person(ref, record) end
  return ref, record
end

-- Forgetting (lib/forget.lua) ---------------------------------------------------------------------

-- Every email a person's record holds: its newest contact's and the one Promoter has.
local function person_emails(record)
  local found, seen = {}, {}
  local candidates = {record and record.f and record.f.email and record.f.email[1] or '', record and record.se or ''}
  for _, email in ipairs(candidates) do
    if email ~= '' and not seen[string.lower(email)] then
      seen[string.lower(email)] = true
      found[#found + 1] = email
    end
  end
  return found
end

-- Promoter's id of the person's contact, '' when it has none.
local function person_contact_id(record)
  return record and record.cid or ''
end
