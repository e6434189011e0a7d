-- schedule.dispatch: move retries and waits that are due into their queues.
-- KEYS: none.  ARGV: [1] now, [2] most to move.  Returns: how many were due.
local due = redis.call('ZRANGEBYSCORE', KEY.schedule, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[2]))
for _, ref in ipairs(due) do
  redis.call('ZREM', KEY.schedule, ref)
  if state_of(ref) == STATE.RETRYING then requeue(ref) end
end
return #due
