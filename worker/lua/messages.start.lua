-- messages.start: a task starts. It counts the attempt, numbers this run, and hands back the event.
-- KEYS: none.  ARGV: [1] now, [2] ref.
-- Returns: {START.GO, attempts, since, event JSON, force, queue, type, event name, run} or
--          {START.MISSING | START.FINAL | START.HELD, state}.
local ref = ARGV[2]
local key = key_message(ref)
local record = redis.call('HMGET', key, 'state', 'since', 'force', 'queue', 'received', 'type', 'event')
local state = record[1]
if not state then return {START.MISSING, ''} end
if is_final(state) then return {START.FINAL, state} end
-- A second copy of the task of a message that is held (a broker redelivery): nothing to do.
if state == STATE.HELD then return {START.HELD, state} end
local event = redis.call('GET', key_event(ref))
if not event then
  -- Nothing left to deliver: say so as a dead letter rather than leave it for the reconciler forever.
  return {START.MISSING, bury(ref, 'its stored event expired before delivery (older than STATUS_TTL_SECONDS)', '')}
end
redis.call('ZADD', KEY.pending, 'XX', NOW, ref)
local attempts = redis.call('HINCRBY', key, 'attempts', 1)
local run = redis.call('HINCRBY', key, 'run', 1)
return {START.GO, attempts, record[2] or record[5] or tostring(NOW), event, record[3] or '',
  record[4] or QUEUE.high, record[6], record[7] or '', run}
