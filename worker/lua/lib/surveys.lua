-- surveys: claiming a survey call right before it is made, atomically with everything that decides
-- whether it may be made.
--
-- The guard (status field 'survey'): '' may call, 'inflight:<deadline>' while a worker calls, 'sent'
-- once Promoter answered, 'unknown' when the call may or may not have reached it ('survey_unknown'
-- says why). A lease that ran out means its worker died mid-call: unknown too. The email, first and
-- last name are fixed at the first claim ('survey_email', 'survey_first', 'survey_last'): a resend
-- after an unknown outcome goes to that same contact, or not at all.
--
-- With SURVEY_COOLDOWN_DAYS, relay:surveyed:{<email>|<campaign>} is claimed in the same step
-- ('claim|<ref>|<deadline>' while the call is in flight, then the time it was surveyed), so two
-- tracks of one person cannot both call.

local function cooldown_key(email, campaign)
  return key_surveyed(string.lower(email) .. '|' .. campaign)
end

-- Who holds the cooldown marker: (ref of a live claim, deadline) or (nil, surveyed at).
local function cooldown_marker(email, campaign)
  local marker = redis.call('GET', cooldown_key(email, campaign))
  if not marker then return nil, nil end
  local holder, deadline = string.match(marker, '^claim|(.*)|([^|]*)$')
  if holder then return holder, tonumber(deadline) end
  return nil, tonumber(marker)
end

-- ``recheck``: whether to look at the person's pending contact changes again. The track script checks
-- them in the same step; a later claim (after the message's own contact update, or a wait for
-- budget) must.
local function survey_claim(ref, person, record, campaign, lease_seconds, recheck)
  local key = key_message(ref)
  local guard = redis.call('HGET', key, 'survey') or ''
  if guard == SURVEY.SENT or redis.call('HEXISTS', key, 'survey_state') == 1 then return {survey = CLAIM.SENT} end
  local deadline = string.match(guard, '^inflight:(.*)$')
  if deadline then
    if tonumber(deadline) > NOW then return {survey = CLAIM.BUSY, wait_ms = (tonumber(deadline) - NOW) * 1000} end
    guard = SURVEY.UNKNOWN
    redis.call('HSET', key, 'survey', SURVEY.UNKNOWN, 'survey_unknown', 'worker stopped mid-call', 'survey_unknown_at', NOW)
    count('survey_unknown:worker stopped mid-call')
  end
  local resend = guard == SURVEY.UNKNOWN
  if resend and not CONFIG.resend_unknown then
    local why = redis.call('HMGET', key, 'survey_unknown', 'survey_started')
    return {survey = CLAIM.UNKNOWN, cause = why[1] or '?', started = tonumber(why[2] or '0')}
  end
  local contact
  if resend then
    contact = redis.call('HMGET', key, 'survey_email', 'survey_first', 'survey_last')
  else
    if recheck and changes_pending(identities_of(person, record), record) then
      return {survey = CLAIM.HELD, state = hold(ref, person, 'waiting for a newer identify of this person to be delivered')}
    end
    contact = {record.se, record.sf or '', record.sl or ''}
    if CONFIG.survey_cooldown > 0 then
      local holder, at = cooldown_marker(contact[1], campaign)
      if holder and holder ~= ref and at > NOW then
        return {survey = CLAIM.BUSY, wait_ms = (at - NOW) * 1000, why = 'another survey of this contact is being made'}
      end
      -- A claim of another message whose worker died mid-call: it may have surveyed them.
      if (holder and holder ~= ref) or (not holder and at) then return {survey = CLAIM.COOLDOWN, at = at} end
    end
  end
  local wait = acquire(PRIORITY.HIGH)
  if wait ~= 0 then return {survey = CLAIM.WAIT, wait_ms = wait[1], why = wait[2]} end
  local until_ = NOW + lease_seconds
  redis.call('HSET', key, 'survey', 'inflight:' .. until_, 'survey_started', NOW)
  if not resend then
    redis.call('HSET', key, 'survey_email', contact[1], 'survey_first', contact[2], 'survey_last', contact[3])
    if CONFIG.survey_cooldown > 0 then
      redis.call('SET', cooldown_key(contact[1], campaign), 'claim|' .. ref .. '|' .. until_, 'EX', CONFIG.survey_cooldown)
    end
  end
  return {survey = CLAIM.GO, resend = resend, email = contact[1], first_name = contact[2] or '',
    last_name = contact[3] or ''}
end

-- After the call: the cooldown marker says when this contact was surveyed, or is let go.
local function settle_cooldown(ref, email, campaign, surveyed)
  if CONFIG.survey_cooldown <= 0 or not email or email == '' then return end
  local holder = cooldown_marker(email, campaign)
  if surveyed then
    redis.call('SET', cooldown_key(email, campaign), NOW, 'EX', CONFIG.survey_cooldown)
  elseif holder == ref then
    redis.call('DEL', cooldown_key(email, campaign))
  end
end
