-- budget: Promoter's request budget, shared by every worker (worker/budget.py says why).

-- One request slot: 0 when granted, else {ms to wait, why}. In order: an account-level refusal
-- (wrong URL, revoked key) pauses everything but one probe call per BUDGET.probe_ms; a 429 pauses
-- everyone; the daily budget keeps a reserve for high priority; GCRA spreads the rate, and low
-- priority leaves half of the burst to high. Every granted call counts toward today's use.
local function acquire(priority)
  local now_ms = NOW * 1000
  -- relay:account is '<next probe, ms>|<since, s>|<why>' while Promoter refuses the account.
  local account = redis.call('GET', KEY.account)
  if account then
    local probe_at, rest = string.match(account, '^([^|]*)|(.*)$')
    probe_at = tonumber(probe_at)
    if probe_at > now_ms then
      return {probe_at - now_ms, 'paused: Promoter refuses the account (' .. string.match(rest, '^[^|]*|(.*)$') .. ')'}
    end
    -- This call is the probe; the next one waits for the next probe time.
    redis.call('SET', KEY.account, (now_ms + BUDGET.probe_ms) .. '|' .. rest, 'KEEPTTL')
  end
  local paused = tonumber(redis.call('GET', KEY.pause) or '0')
  if paused > now_ms then return {paused - now_ms, 'paused after a 429 from Promoter'} end
  local day = math.floor(NOW / 86400)
  local day_key = KEY.budget_day .. day
  if BUDGET.daily_limit > 0 then
    local used = tonumber(redis.call('GET', day_key) or '0')
    local cap = BUDGET.daily_limit
    if priority ~= PRIORITY.HIGH then cap = math.floor(BUDGET.daily_limit * (1 - BUDGET.daily_reserve)) end
    if used >= cap then
      return {((day + 1) * 86400 - NOW) * 1000 + 1000, 'daily Promoter budget used up'}
    end
  end
  local burst = priority == PRIORITY.HIGH and BUDGET.burst_ms or BUDGET.burst_ms / 2
  local tat = tonumber(redis.call('GET', KEY.rate) or '0')
  -- GCRA never stores a time more than a burst and a slot ahead of the writer's clock. Workers'
  -- clocks differ by far less than a minute, so a time further ahead than that was written under
  -- another clock (a clock set back, a Redis restored elsewhere) and is no debt to wait out.
  if tat > now_ms + BUDGET.burst_ms + BUDGET.interval_ms + 60000 then tat = now_ms end
  tat = math.max(tat, now_ms)
  if tat - now_ms > burst then return {math.ceil(tat - now_ms - burst), 'Promoter rate limit'} end
  redis.call('SET', KEY.rate, tat + BUDGET.interval_ms, 'PX', math.ceil(tat + BUDGET.interval_ms - now_ms) + 1000)
  redis.call('INCR', day_key)
  redis.call('EXPIRE', day_key, 172800)
  return 0
end

-- Promoter answered a call: whatever account-level trouble there was is over.
local function account_answered()
  if redis.call('DEL', KEY.account) == 1 then count('account_recovered') end
end
