-- watch: a `wait_finished` registers its interest in a job that has not ended yet, so
-- that the script that ends it publishes its id (see `note_end` in _lib.lua). Checked
-- and registered in one step: an end is either seen here or published later. The
-- registration is cleared by the job's end (or its deletion), never by the waiter: a
-- stale one costs one PUBLISH.
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: [1] job id.
-- Returns: the job's state, or false if the queue holds no such job.
local q = queue_at(1)
local id = ARGV[1]
local r = load(q, id)
if not r then
  return false
end
if r.s == 'queued' or r.s == 'scheduled' or r.s == 'running' then
  redis.call('HSET', q.waiters, id, 1)
end
return r.s
