-- budget.pause: Promoter answered 429: every worker waits until then, not only the one told.
-- KEYS: none.  ARGV: [1] now, [2] until (epoch milliseconds).  Returns: 1.
local current = tonumber(redis.call('GET', KEY.pause) or '0')
local until_ms = tonumber(ARGV[2])
if until_ms > current and until_ms > NOW * 1000 then
  redis.call('SET', KEY.pause, until_ms, 'PX', math.ceil(until_ms - NOW * 1000) + 1000)
end
return 1
