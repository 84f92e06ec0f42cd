-- defer: running → scheduled until `at`, the attempt not counted and no error recorded
-- (a job held back by a rate or concurrency limit).
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: [1] now, [2] job id, [3] token, [4] at, [5] wake-up channel.
-- Returns: 1, or 0 if the lease is no longer ours.
local q = queue_at(1)
local now, id, token, at = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local r = load(q, id)
if not (r and r.s == 'running' and r.t == token) then
  return 0
end
detach(q, id, r)
r.s, r.d, r.a, r.t, r.dl, r.w = 'scheduled', at, math.max(r.a - 1, 0), nil, nil, nil
attach(q, id, r)
if at <= now then
  redis.call('PUBLISH', ARGV[5], '1')
end
return 1
