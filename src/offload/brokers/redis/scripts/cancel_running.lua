-- cancel_running: running → cancelled (the worker stopped a job flagged by `cancel`).
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: [1] now, [2] job id, [3] token, [4] error (JSON), [5] purge time,
--       [6] job-end channel.
-- Returns: 1, or 0 if the lease is no longer ours.
local q = queue_at(1)
local id, token = ARGV[2], ARGV[3]
local r = load(q, id)
if not (r and r.s == 'running' and r.t == token) then
  return 0
end
r.e = ARGV[4]
finish(q, id, r, 'cancelled', tonumber(ARGV[1]), tonumber(ARGV[5]))
publish_ends(ARGV[6])
return 1
