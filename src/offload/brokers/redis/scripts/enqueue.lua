-- enqueue: store new jobs of one queue as `queued` (due now) or `scheduled` (later).
-- KEYS: the 16 keys of the queue (QueueKeys order).
-- ARGV: [1] now, [2] wake-up channel, [3] max depth ('' = none), then 10 values per job:
--       id, key ('' = none), payload, task, priority, max attempts ('' = none), created,
--       due, expires ('' = none), workflow job ('1' when its envelope has `then` or
--       `chord`, so that an end without a worker is recorded in the outbox; else '').
-- Returns: per job, the id it resolved to and 1 if stored, 0 if a job with that key
--          or id already existed (duplicate keys within one call resolve to the first);
--          or {-1, depth} and nothing stored if the jobs would pass the max depth.
local q = queue_at(1)
local now = tonumber(ARGV[1])
if ARGV[3] ~= '' then
  local depth = redis.call('ZCARD', q.ready) + redis.call('ZCARD', q.scheduled)
  if depth + (#ARGV - 3) / 10 > tonumber(ARGV[3]) then
    return {-1, depth}
  end
end
local now_ms = math.floor(now * 1000)
local out = {}
local woke = false
for i = 4, #ARGV, 10 do
  local id, key = ARGV[i], ARGV[i + 1]
  local existing = false
  if key ~= '' then
    existing = redis.call('HGET', q.keys, key)
  end
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = 0
  elseif redis.call('HEXISTS', q.record, id) == 1 then
    out[#out + 1] = id
    out[#out + 1] = 0
  else
    local r = {tk = ARGV[i + 3], p = tonumber(ARGV[i + 4]), a = 0, c = tonumber(ARGV[i + 6]),
      d = tonumber(ARGV[i + 7]), q = redis.call('INCR', q.seq), n = now_ms}
    if key ~= '' then
      r.k = key
      redis.call('HSET', q.keys, key, id)
    end
    if ARGV[i + 5] ~= '' then r.m = tonumber(ARGV[i + 5]) end
    if ARGV[i + 8] ~= '' then r.x = tonumber(ARGV[i + 8]) end
    if ARGV[i + 9] ~= '' then r.o = 1 end
    if r.d > now then
      r.s = 'scheduled'
    else
      r.s = 'queued'
      woke = true
    end
    redis.call('HSET', q.payload, id, ARGV[i + 2])
    redis.call('ZADD', q.jobs, 0, listing_member(r, id))
    attach(q, id, r)
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
if woke then
  redis.call('PUBLISH', ARGV[2], '1')
end
return out
