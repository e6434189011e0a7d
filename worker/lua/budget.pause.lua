-- A 429 from Promoter: every worker waits until ARGV[2] (epoch milliseconds).
local current = tonumber(redis.call('GET', KEY.pause) or '0')
local until_ms = tonumber(ARGV[2])
if until_ms > current then
  redis.call('SET', KEY.pause, until_ms, 'PX', math.ceil(until_ms - NOW * 1000) + 1000)
end
return 1
