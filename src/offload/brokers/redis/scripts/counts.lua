-- counts (read only): jobs per state of one queue, and the earliest due time of its
-- queued jobs (the head of each priority of `ready`; there are few priorities).
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: none.
-- Returns: {scheduled, queued, running, succeeded, dead, expired, cancelled, oldest}
--          with `oldest` a string, or false when nothing is queued.
local q = queue_at(1)
local out = {}
for i, key in ipairs({q.scheduled, q.ready, q.running, q.succeeded, q.dead, q.expired,
    q.cancelled}) do
  out[i] = redis.call('ZCARD', key)
end
local oldest = nil
local head = redis.call('ZRANGE', q.ready, 0, 0, 'WITHSCORES')
while head[1] do
  local r = load(q, string.sub(head[1], 28))
  if r and (not oldest or r.d < oldest) then oldest = r.d end
  head = redis.call('ZRANGEBYSCORE', q.ready, '(' .. head[2], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
end
out[8] = oldest and string.format('%.17g', oldest) or false
return out
