-- people.show: the person an identity reaches, as the admin API shows it (reads only).
-- KEYS: none.  ARGV: [1] now, [2] identity ('u:..' or 'a:..').
-- Returns: '' when the identity reaches no person, else a JSON object: person (its ref),
--   identities, contact (name -> value, the newest), desired (the contact Promoter should have, as
--   'f:'/'o:' name/value pairs), at_promoter, contact_id, refused, orders (how many), waiting (refs).
local person, record = resolve(ARGV[2], true)
if not record then return '' end
local contact = {}
for name, entry in pairs(record.f) do contact[name] = entry[1] end
local count_orders = 0
for _ in pairs(record.o or {}) do count_orders = count_orders + 1 end
local flat = desired(record)
return cjson.encode({person = person, identities = identities_of(person, record), contact = contact,
  desired = flat, at_promoter = {email = record.se or '', first_name = record.sf or '', last_name = record.sl or ''},
  contact_id = record.cid or '', refused = record.refused or '', orders = count_orders,
  waiting = redis.call('ZRANGE', key_person_waiting(person), 0, -1)})
