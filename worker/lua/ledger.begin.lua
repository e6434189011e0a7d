-- A task starts: count the attempt and hand back the stored event.
-- ARGV[2] ref. Returns {'go', attempts, since, event JSON, force, queue, type, event name} or
-- {'missing' | 'final' | 'held', state}.
local ref = ARGV[2]
local key = key_message(ref)
local record = redis.call('HMGET', key, 'state', 'since', 'force', 'queue', 'received', 'type', 'event')
local state = record[1]
if not state then return {'missing', ''} end
if FINAL[state] then return {'final', state} end
-- A second copy of the task of a message that is held (a broker redelivery): nothing to do.
if state == 'held' then return {'held', state} end
local event = redis.call('GET', key_event(ref))
if not event then
  -- Nothing left to deliver: say so as a dead letter rather than leave it for the reconciler forever.
  bury(ref, 'its stored event expired before delivery (older than STATUS_TTL_SECONDS)', '')
  return {'missing', 'dead'}
end
redis.call('ZADD', KEY.pending, 'XX', NOW, ref)
local attempts = redis.call('HINCRBY', key, 'attempts', 1)
return {'go', attempts, record[2] or record[5] or tostring(NOW), event, record[3] or '', record[4] or QUEUE.high,
  record[6], record[7] or ''}
