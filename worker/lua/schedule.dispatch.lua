-- Move retries that are due into their queues. ARGV[2] most to move. Returns how many were due.
local due = redis.call('ZRANGEBYSCORE', KEY.schedule, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[2]))
for _, ref in ipairs(due) do
  redis.call('ZREM', KEY.schedule, ref)
  if redis.call('HGET', key_message(ref), 'state') == 'retrying' then requeue(ref) end
end
return #due
