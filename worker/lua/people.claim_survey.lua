-- Claim a survey call right before it is made (budget slot and guard in one step, so nothing sits
-- between the claim and the call). ARGV[2] ref, [3] person, [4] campaign, [5] lease seconds.
return cjson.encode(survey_claim(ARGV[2], live_person(ARGV[3]), ARGV[4], tonumber(ARGV[5]), true))
