-- A survey call ended (or was not made). ARGV[2] ref, [3] outcome: 'sent', 'ineligible', 'unknown'
-- (it may have reached Promoter), 'failed' (it certainly did not), or 'cooldown' (not made: the
-- contact was surveyed within SURVEY_COOLDOWN_DAYS), [4] detail, [5] email, [6] campaign,
-- [7..9] the call: endpoint, status, seconds.
local ref, outcome, detail, email, campaign = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
observe(ARGV[7], ARGV[8], ARGV[9])
local key = key_message(ref)
local resend = redis.call('HGET', key, 'survey_unknown') ~= false
if outcome == 'cooldown' then
  count('saved:cooldown')
  return finish_survey(ref, 'ineligible', detail)
end
if outcome == 'sent' or outcome == 'ineligible' then
  redis.call('HSET', key, 'survey', 'sent')
  if outcome == 'sent' then
    if CONFIG.survey_cooldown > 0 then
      redis.call('SET', key_surveyed(string.lower(email) .. '|' .. campaign), NOW, 'EX', CONFIG.survey_cooldown)
    end
    if resend then
      count('survey_resend:not reached before')
      return finish_survey(ref, 'delivered', detail .. ' (the earlier call of unknown outcome had not reached Promoter)')
    end
    return finish_survey(ref, 'delivered', detail)
  end
  if resend then
    -- Inside the campaign's eligibility window Promoter refuses a second survey: the first call
    -- of unknown outcome reached it.
    count('survey_resend:already surveyed')
    return finish_survey(ref, 'delivered', 'already surveyed (first call reached Promoter)')
  end
  return finish_survey(ref, 'ineligible', detail)
end
if outcome == 'unknown' then
  redis.call('HSET', key, 'survey', 'unknown', 'survey_unknown', detail, 'survey_unknown_at', NOW)
  count('survey_unknown:' .. detail)
  return true
end
redis.call('HSET', key, 'survey', resend and 'unknown' or '')
return true
