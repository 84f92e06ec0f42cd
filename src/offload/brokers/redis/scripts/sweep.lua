-- sweep: expire waiting jobs past `expires_at` (workflow jobs into the outbox), delete
-- succeeded, expired and cancelled jobs whose purge time has come (at most `batch` of
-- each per call), drop the per-minute end counts before the oldest minute kept, and
-- forget lapsed parking tickets and handoff notes.
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: [1] now, [2] purge time of jobs expired now, [3] batch, [4] job-end channel,
--       [5] oldest minute of `finished` kept.
-- Returns: {expired, purged}.
local q = queue_at(1)
local now, batch = tonumber(ARGV[1]), tonumber(ARGV[3])
local expired = expire_due(q, now, tonumber(ARGV[2]), batch)
local purged = 0
for _, state in ipairs({'succeeded', 'expired', 'cancelled'}) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', q[state], '-inf', now, 'LIMIT', 0, batch)) do
    local r, problem = load(q, id)
    if r then
      delete(q, id, r)
    elseif problem then
      bury_broken(q, id, problem, now)
    else
      redis.call('ZREM', q[state], id)
    end
    purged = purged + 1
  end
end
local kept = tonumber(ARGV[5])
for _, field in ipairs(redis.call('HKEYS', q.finished)) do
  local minute = tonumber(string.match(field, '^(%d+):'))
  if not minute or minute < kept then
    redis.call('HDEL', q.finished, field)
  end
end
-- Tickets of workers that never came back (a crash while parked), and notes of jobs
-- handed to them whose leases have lapsed (the next reserve takes those jobs back).
redis.call('ZREMRANGEBYSCORE', q.parked, '-inf', '(' .. ARGV[1])
local handed = redis.call('HGETALL', q.handed)
for i = 1, #handed, 2 do
  local deadline = tonumber(string.match(handed[i + 1], '^(%S+)'))
  if not deadline or deadline < now then
    redis.call('HDEL', q.handed, handed[i])
  end
end
publish_ends(ARGV[4])
return {expired, purged}
