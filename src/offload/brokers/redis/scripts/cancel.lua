-- cancel: queued/scheduled → cancelled (a workflow job also into the outbox); a running
-- job is flagged for cooperative cancellation and keeps running.
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: [1] now, [2] job id, [3] purge time, [4] job-end channel.
-- Returns: 1, or 0 if the job is unknown or finished.
local q = queue_at(1)
local id = ARGV[2]
local r = load(q, id)
if not r then
  return 0
end
if r.s == 'queued' or r.s == 'scheduled' then
  end_unrun(q, id, r, 'cancelled', tonumber(ARGV[1]), tonumber(ARGV[3]))
  publish_ends(ARGV[4])
  return 1
end
if r.s == 'running' then
  r.cx = 1
  save(q, id, r)
  return 1
end
return 0
