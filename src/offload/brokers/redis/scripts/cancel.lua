-- cancel: queued/scheduled → cancelled; a running job is flagged for cooperative
-- cancellation and keeps running.
-- KEYS: the 14 keys of the queue (QueueKeys order).
-- ARGV: [1] now, [2] job id, [3] purge time.
-- Returns: 1, or 0 if the job is unknown or finished.
local q = queue_at(1)
local id = ARGV[2]
local r = load(q, id)
if not r then
  return 0
end
if r.s == 'queued' or r.s == 'scheduled' then
  finish(q, id, r, 'cancelled', tonumber(ARGV[1]), tonumber(ARGV[3]))
  return 1
end
if r.s == 'running' then
  r.cx = 1
  save(q, id, r)
  return 1
end
return 0
