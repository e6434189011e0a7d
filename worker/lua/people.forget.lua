-- people.forget: erase persons, named by userId or email, in one atomic step: every identity (the
-- userId, its anonymousIds and alias ids, and every anonymousId its userIds were seen with), the person record, every message filed under any of them
-- (held, queued, in flight, final, dead: see lib/forget.lua), their pending changes, the email index,
-- the NPS responses kept for the dashboard; and, while suppression is on, a keyed marker per identity
-- and email, so later events naming them are dropped by the accept script.
-- KEYS: none.
-- ARGV: [1] now, [2] JSON {users = [userId as sent], emails = [...], markers = {identity -> marker},
--       suppress = seconds (0: no markers)}. Identities are 'u:<id>', 'a:<id>', 'e:<lowercased email>'.
-- Returns: JSON {retry = [identities]} when markers are missing for some (nothing written: call again
--   with them); else {persons, identities, messages (how many), emails (the persons' and the messages'
--   survey emails, for the caller's cleanup), contact_ids, unknown_users, unknown_emails}.
local request = cjson.decode(ARGV[2])
local markers, suppress = request.markers or {}, tonumber(request.suppress or 0)
local persons, refs = {}, {}
local unknown_users, unknown_emails = {}, {}

local function add_person(ref, record)
  if persons[ref] == nil then
    persons[ref] = record or false
    refs[#refs + 1] = ref
  end
end

-- The email index: schema 3's bucket entry '<person ref> <day>' (persons.lua, index_email), and
-- schema 2's key per email until it expires. Returns the entries as {owner, erase} pairs, newest first.
local function email_entries(email)
  local bucket, field, digest = email_slot(email)
  local found = {}
  local entry = redis.call('HGET', bucket, field)
  if entry then
    found[#found + 1] = {string.match(entry, '^(.*) %d+$') or entry, function() redis.call('HDEL', bucket, field) end}
  end
  local key = key_email(digest)
  local owner = redis.call('GET', key)
  if owner then found[#found + 1] = {owner, function() redis.call('DEL', key) end} end
  return found
end

for _, user in ipairs(request.users or {}) do
  local identity = ID.USER .. user
  local ref, record = resolve(identity, true)
  -- A userId known by name only (its tracks held, never identified) has messages but no record.
  local named = redis.call('EXISTS', key_messages(identity), key_held(identity)) > 0
  if record or named then add_person(ref, record) else unknown_users[#unknown_users + 1] = user end
end
for _, email in ipairs(request.emails or {}) do
  local owner = (email_entries(email)[1] or {})[1]
  local ref, record = nil, nil
  if owner then ref, record = resolve(owner, true) end
  if ref and record then add_person(ref, record) else unknown_emails[#unknown_emails + 1] = email end
end

-- Everything the persons are known by.
local identities, seen_identity, emails, seen_email = {}, {}, {}, {}
local function add_identity(identity)
  if not seen_identity[identity] then
    seen_identity[identity] = true
    identities[#identities + 1] = identity
  end
end
local function add_email(email)
  if email and email ~= '' and not seen_email[string.lower(email)] then
    seen_email[string.lower(email)] = true
    emails[#emails + 1] = email
  end
end
for _, user in ipairs(request.users or {}) do add_identity(ID.USER .. user) end
for _, email in ipairs(request.emails or {}) do add_email(email) end
for _, ref in ipairs(refs) do
  local record = persons[ref] or nil
  for _, identity in ipairs(identities_of(ref, record)) do add_identity(identity) end
  for _, email in ipairs(person_emails(record)) do add_email(email) end
end
-- The anonymousIds its userIds were seen with, even those whose links have expired.
for _, identity in ipairs({unpack(identities)}) do
  if not is_anonymous(identity) then
    for _, device in ipairs(redis.call('ZRANGE', key_devices(identity), 0, -1)) do
      if device ~= INDEX_END then add_identity(device) end
    end
  end
end

if suppress > 0 then
  local missing = {}
  for _, identity in ipairs(identities) do
    if not markers[identity] then missing[#missing + 1] = identity end
  end
  for _, email in ipairs(emails) do
    if not markers['e:' .. string.lower(email)] then missing[#missing + 1] = 'e:' .. string.lower(email) end
  end
  if #missing > 0 then return cjson.encode({retry = missing}) end
  for _, marker in pairs(markers) do redis.call('SET', key_suppressed(marker), NOW, 'EX', suppress) end
end

local forgotten, survey_emails, seen_ref = 0, {}, {}
local function forget(ref)
  if seen_ref[ref] then return end
  seen_ref[ref] = true
  if forget_message(ref, survey_emails) then forgotten = forgotten + 1 end
end

local user_ids, contact_ids = {}, {}
for _, identity in ipairs(identities) do
  for _, item in ipairs(take_held({identity})) do forget(item[2]) end
  for _, ref in ipairs(redis.call('ZRANGE', key_messages(identity), 0, -1)) do
    if ref ~= INDEX_END then forget(ref) end
  end
  for _, pending in ipairs({key_barrier(identity), key_repeats(identity)}) do
    for _, ref in ipairs(redis.call('ZRANGE', pending, 0, -1)) do forget(ref) end
  end
  redis.call('DEL', key_messages(identity), key_held(identity), key_barrier(identity), key_repeats(identity),
    key_devices(identity))
  -- An anonymousId's link, an alias id's or a stitched visitor's pointer record: gone if it leads here.
  local owner = redis.call('GET', key_identity(identity))
  if owner and persons[owner] ~= nil then redis.call('DEL', key_identity(identity)) end
  local reached = resolve(identity, true)
  if reached and persons[reached] ~= nil then drop_person(identity) end
  -- A device's own visitor record (its anonymous events never stitched into anyone) goes with it.
  if is_anonymous(identity) then
    for _, waiting in ipairs(redis.call('ZRANGE', key_person_waiting(identity), 0, -1)) do forget(waiting) end
    redis.call('DEL', key_person_waiting(identity))
    drop_person(identity)
  end
  if not is_anonymous(identity) then user_ids[string.sub(identity, #ID.USER + 1)] = true end
end
for _, ref in ipairs(refs) do
  for _, waiting in ipairs(redis.call('ZRANGE', key_person_waiting(ref), 0, -1)) do forget(waiting) end
  redis.call('DEL', key_person_waiting(ref))
  local cid = person_contact_id(persons[ref] or nil)
  if cid ~= '' then
    contact_ids[#contact_ids + 1] = cid
    redis.call('DEL', key_feedback_seen('newest:c' .. cid))
  end
  drop_person(ref)
end
for _, email in ipairs(survey_emails) do add_email(email) end
for _, email in ipairs(emails) do
  for _, entry in ipairs(email_entries(email)) do
    local owner = entry[1]
    if persons[owner] ~= nil or seen_identity[owner] or persons[resolve(owner, true) or ''] ~= nil then entry[2]() end
  end
  redis.call('DEL', key_feedback_seen('newest:e' .. string.sub(redis.sha1hex(string.lower(email)), 1, 16)))
end
forget_responses(user_ids)
if #refs > 0 then count('persons_forgotten', #refs) end
return cjson.encode({persons = refs, identities = identities, messages = forgotten, emails = emails,
  contact_ids = contact_ids, unknown_users = unknown_users, unknown_emails = unknown_emails})
