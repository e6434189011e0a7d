-- forget: erasing one person (worker/forget.py; DESIGN.md, "Personal data").
--
-- A forgotten message keeps a bare status record (type, received, state 'forgotten'), so that a task
-- of it still queued or in flight finds it final and writes nothing more; its event, history, dead
-- letter and every index entry go. Its person's keys go with the person (people.forget).

-- Erase message ``ref``; the emails its survey was claimed for are added to ``emails`` (their
-- cooldown markers are dropped by the caller). Returns true when there was a record.
local function forget_message(ref, emails)
  local key = key_message(ref)
  local fields = redis.call('HMGET', key, 'type', 'received', 'barrier', 'repeats', 'survey_email', 'held_under', 'state')
  if fields[5] and fields[5] ~= '' then emails[#emails + 1] = fields[5] end
  for i, pending in ipairs({key_barrier, key_repeats}) do
    for _, identity in ipairs(fields[i + 2] and cjson.decode(fields[i + 2]) or {}) do
      redis.call('ZREM', pending(identity), ref)
    end
  end
  if fields[6] then unhold(ref) end
  redis.call('HDEL', KEY.dead, ref)
  redis.call('ZREM', KEY.dead_index, ref)
  redis.call('ZREM', KEY.pending, ref)
  redis.call('ZREM', KEY.schedule, ref)
  redis.call('LREM', KEY.recent, 0, ref)
  redis.call('DEL', key, key_event(ref), key_history(ref))
  if not fields[1] then return false end
  redis.call('HSET', key, 'type', fields[1], 'received', fields[2] or NOW, 'state', STATE.FORGOTTEN,
    'detail', 'forgotten on request', 'updated', NOW)
  redis.call('EXPIRE', key, CONFIG.status_ttl)
  note(ref, STATE.FORGOTTEN, 'forgotten on request')
  if fields[7] ~= STATE.FORGOTTEN then count('state:' .. STATE.FORGOTTEN) end
  return true
end

-- The NPS responses the dashboard lists (relay:nps:latest) of these userIds go.
local function forget_responses(user_ids)
  if next(user_ids) == nil then return end
  for _, raw in ipairs(redis.call('LRANGE', KEY.nps_latest, 0, -1)) do
    local ok, entry = pcall(cjson.decode, raw)
    if ok and type(entry) == 'table' and entry.user and user_ids[tostring(entry.user)] then
      redis.call('LREM', KEY.nps_latest, 0, raw)
    end
  end
end
