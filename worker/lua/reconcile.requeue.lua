-- reconcile.requeue: queue again messages whose task message the broker lost (worker/reconcile.py).
-- KEYS: none.  ARGV: [1] now, [2] cutoff (pending since before it and not queued), [3..] refs.
-- Returns: how many were queued again.
local cutoff = tonumber(ARGV[2])
local requeued = 0
for i = 3, #ARGV do
  local ref = ARGV[i]
  local score = redis.call('ZSCORE', KEY.pending, ref)
  if score and tonumber(score) <= cutoff then
    local state = state_of(ref)
    if not state or is_final(state) or state == STATE.HELD then
      redis.call('ZREM', KEY.pending, ref)
    elseif not redis.call('ZSCORE', KEY.schedule, ref) then
      requeue(ref)
      note(ref, state, 're-queued: its task message was lost')
      count('requeued')
      requeued = requeued + 1
    end
  end
end
return requeued
