-- ack: running → succeeded for each lease still held, storing its result until its
-- purge time. A lease past its deadline still acks if nobody took the job back.
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: [1] now, [2] job-end channel, then 5 values per lease: job id, token, has
--       result ('1'/'0'), result, purge time.
-- Returns: per lease, 1 if acked, 0 if the lease is no longer ours.
local q = queue_at(1)
local now = tonumber(ARGV[1])
local out = {}
local results = {}  -- id, result pairs: one HSET for the call, not one per job
-- The moves go out in one write per key at the end (`hold_writes`); a job acked twice
-- in one call is refused the second time, as its record, once moved, would say (the
-- records are read once, before any move).
local acked = {}
hold_writes()
local ids = {}
for i = 3, #ARGV, 5 do
  ids[#ids + 1] = ARGV[i]
end
local raws = hmget_all(q.record, ids)  -- every record in one read
for i = 3, #ARGV, 5 do
  local id, token = ARGV[i], ARGV[i + 1]
  local r = nil
  if not acked[id] then
    r = decode(raws[(i - 3) / 5 + 1])
  end
  if r and r.s == 'running' and r.t == token then
    acked[id] = true
    r.e = nil
    finish(q, id, r, 'succeeded', now, tonumber(ARGV[i + 4]))
    if ARGV[i + 2] == '1' then
      push(results, id, ARGV[i + 3])
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
flush_writes()
write_all('HSET', q.result, results)
publish_ends(ARGV[2])
return out
