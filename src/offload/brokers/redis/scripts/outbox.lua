-- outbox: the oldest entries of the queue's outbox (workflow jobs that were cancelled
-- while waiting or expired), with what a worker needs to run their follow-ups. Reads
-- only: entries stay until `clear_outbox` or until their job is purged (`delete`).
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: [1] limit (above 0).
-- Returns: per entry, oldest first: outbox member (sequence and job id), end time,
--          state, payload.
local q = queue_at(1)
local found = redis.call('ZRANGE', q.outbox, 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #found, 2 do
  local id = string.sub(found[i], 13)
  local r = load(q, id)
  if r then
    out[#out + 1] = found[i]
    out[#out + 1] = found[i + 1]
    out[#out + 1] = r.s
    out[#out + 1] = redis.call('HGET', q.payload, id) or ''
  end
end
return out
