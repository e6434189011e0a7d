-- budget.account: Promoter refused the account itself (401, 403: a revoked or rotated key; 404, 405:
-- a wrong PROMOTER_API_URL). Every worker pauses; one probe call per probe interval goes through,
-- and the first call Promoter answers ends the pause (account_answered). Messages keep waiting
-- within their retry window meanwhile instead of all becoming dead letters.
-- KEYS: none.  ARGV: [1] now, [2] why (Promoter's answer, short), [3] how long to keep the pause
-- when nothing probes (seconds).  Returns: 1 when this started the pause, 0 when it was on.
local why, keep = ARGV[2], tonumber(ARGV[3])
local current = redis.call('GET', KEY.account)
local since = current and string.match(current, '^[^|]*|([^|]*)|') or tostring(NOW)
redis.call('SET', KEY.account, (NOW * 1000 + BUDGET.probe_ms) .. '|' .. since .. '|' .. why, 'EX', keep)
if current then return 0 end
count('account_refused')
return 1
