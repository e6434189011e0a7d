-- people.claim_survey: claim a survey call right before it is made: the guard, the cooldown, the
-- budget slot and the person's pending contact changes in one step (see surveys.lua).
-- KEYS: none.  ARGV: [1] now, [2] ref, [3] person, [4] campaign, [5] lease seconds.
-- Returns: a JSON claim {survey = CLAIM.*, ...}.
local ref, person, campaign, lease_seconds = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local state = state_of(ref)
-- Settled meanwhile (forgotten during a wait): nothing to claim, nothing to write.
if not state or is_final(state) then return cjson.encode({survey = CLAIM.SENT, state = state or ''}) end
local ref_person, record = resolve(person)
if not is_synced(record) then
  return cjson.encode({survey = CLAIM.HELD, state = hold(ref, ref_person or person, "waiting for this person's contact to reach Promoter")})
end
return cjson.encode(survey_claim(ref, ref_person, record, campaign, lease_seconds, true))
