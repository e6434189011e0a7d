-- v2_records: status records of schema 1 as schema 2 reads them, one batch of refs per call.
-- KEYS: none.
-- ARGV: [1] now, [2] '1' for a dry run, [3..] refs (the <ref> of relay:msg:{<ref>}).
-- Returns: a flat list of counter name, count.
--
-- What changed: a message riding along with another's contact update was 'received' with sync 'wait'
-- and is 'waiting' in schema 2; 'person' named a person id and names the person now; a survey whose
-- outcome is unknown (or whose call was in flight) is resent, under UNKNOWN_SURVEY_OUTCOME=resend,
-- only to the email it was claimed for, which schema 1 did not keep: it is the person's email at
-- Promoter, which is where schema 1 would have resent it.

local DRY = ARGV[2] == '1'
local COUNTS = {}
local function count(name) COUNTS[name] = (COUNTS[name] or 0) + 1 end
local FINAL = {delivered = true, ineligible = true, skipped = true, dead = true}
local RIDING = '^waiting for the contact update carried by (.*)$'

-- The schema 2 person a message's identity reaches (after the persons step), or nil.
local function person_of(identity)
  if not identity then return nil end
  local name = identity
  if string.sub(identity, 1, 2) == 'a:' then name = redis.call('GET', 'relay:id:{' .. identity .. '}') end
  for _ = 1, 4 do
    if not name then return nil end
    local raw = redis.call('GET', 'relay:person:{' .. name .. '}')
    if not raw then return nil end
    local record = cjson.decode(raw)
    if not record.into then return name, record end
    name = record.into
  end
  return nil
end

for i = 3, #ARGV do
  local key = 'relay:msg:{' .. ARGV[i] .. '}'
  local m = redis.call('HMGET', key, 'state', 'sync', 'detail', 'person', 'survey', 'survey_email', 'user')
  local state, sync, detail, person, survey, email, user = m[1], m[2], m[3], m[4], m[5], m[6], m[7]
  if state and not FINAL[state] then
    local holder = state == 'received' and sync == 'wait' and string.match(detail or '', RIDING)
    if holder then
      count('riding_along')
      if not DRY then
        redis.call('HSET', key, 'state', 'waiting', 'detail', 'rides along with the contact update of ' .. holder)
      end
    end
    local name, record = nil, nil
    if (person and string.match(person, '^%d+$')) or (survey and survey ~= '' and survey ~= 'sent' and not email) then
      name, record = person_of(user)
    end
    if person and string.match(person, '^%d+$') then
      count('person_renamed')
      if not DRY then
        if name then redis.call('HSET', key, 'person', name) else redis.call('HDEL', key, 'person') end
      end
    end
    if survey and survey ~= '' and survey ~= 'sent' and not email then
      count('survey_contact_fixed')
      if not DRY and record and record.se then
        redis.call('HSET', key, 'survey_email', record.se, 'survey_first', record.sf or '', 'survey_last', record.sl or '')
      end
    end
  end
end
local flat = {}
for name, n in pairs(COUNTS) do flat[#flat + 1] = name; flat[#flat + 1] = n end
return flat
