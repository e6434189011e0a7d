-- people.settle_survey: a survey call ended, or was not made.
-- KEYS: none.
-- ARGV: [1] now, [2] ref, [3] outcome (SURVEY.*: sent, ineligible, unknown: it may have reached
--       Promoter, failed: it certainly did not, cooldown: not made, the contact was surveyed within
--       SURVEY_COOLDOWN_DAYS), [4] detail, [5] email, [6] campaign, [7..9] the call: endpoint,
--       status, seconds.
-- Returns: the message's state afterwards.
local ref, outcome, detail, email, campaign = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
observe(ARGV[7], ARGV[8], ARGV[9])
local key = key_message(ref)
-- Forgotten while the call was made: its outcome is not recorded, nor whom it went to.
if state_of(ref) == STATE.FORGOTTEN then return STATE.FORGOTTEN end
local resend = redis.call('HGET', key, 'survey_unknown') ~= false
if outcome == SURVEY.COOLDOWN then
  count('saved:cooldown')
  return finish_survey(ref, STATE.INELIGIBLE, detail)
end
if outcome == SURVEY.SENT or outcome == SURVEY.INELIGIBLE then
  account_answered()
  redis.call('HSET', key, 'survey', SURVEY.SENT)
  -- Not eligible: Promoter surveyed them recently (maybe this very message's earlier call).
  settle_cooldown(ref, email, campaign, true)
  if outcome == SURVEY.SENT then
    if resend then
      count('survey_resend:not reached before')
      return finish_survey(ref, STATE.DELIVERED, detail .. ' (the earlier call of unknown outcome had not reached Promoter)')
    end
    return finish_survey(ref, STATE.DELIVERED, detail)
  end
  if resend then
    -- Inside the campaign's eligibility window Promoter refuses a second survey: the first call of
    -- unknown outcome reached it.
    count('survey_resend:already surveyed')
    return finish_survey(ref, STATE.DELIVERED, 'already surveyed (first call reached Promoter)')
  end
  return finish_survey(ref, STATE.INELIGIBLE, detail)
end
if outcome == SURVEY.UNKNOWN then
  redis.call('HSET', key, 'survey', SURVEY.UNKNOWN, 'survey_unknown', detail, 'survey_unknown_at', NOW)
  settle_cooldown(ref, email, campaign, true)
  count('survey_unknown:' .. detail)
  return state_of(ref)
end
redis.call('HSET', key, 'survey', resend and SURVEY.UNKNOWN or '')
if not resend then settle_cooldown(ref, email, campaign, false) end
return state_of(ref)
