-- purge_dead: delete dead jobs, with their keys, optionally only those that finished
-- before a cutoff.
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: [1] cutoff ('' = none; a job finished exactly then is kept), [2..] job ids
--       (none: every dead job).
-- Returns: how many jobs were deleted.
local q = queue_at(1)
local cutoff = tonumber(ARGV[1])
local ids = {}
if #ARGV > 1 then
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
elseif cutoff then
  ids = redis.call('ZRANGEBYSCORE', q.dead, '-inf', '(' .. ARGV[1])
else
  ids = redis.call('ZRANGE', q.dead, 0, -1)
end
local n = 0
for _, id in ipairs(ids) do
  local r, problem = load(q, id)
  if r and r.s == 'dead' and (not cutoff or r.f < cutoff) then
    delete(q, id, r)
    n = n + 1
  elseif problem and redis.call('ZSCORE', q.dead, id) then
    -- a corrupt record in the dead-letter queue: forget what can be found by id
    redis.call('ZREM', q.dead, id)
    redis.call('HDEL', q.record, id)
    redis.call('HDEL', q.payload, id)
    redis.call('HDEL', q.result, id)
    n = n + 1
  end
end
return n
