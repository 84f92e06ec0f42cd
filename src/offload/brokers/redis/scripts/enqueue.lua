-- enqueue: store new jobs of one queue as `queued` (due now) or `scheduled` (later).
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: [1] now, [2] wake-up channel, [3] max depth ('' = none), then 10 values per job:
--       id, key ('' = none), payload, task, priority, max attempts ('' = none), created,
--       due, expires ('' = none), workflow job ('1' when its envelope has `then` or
--       `chord`, so that an end without a worker is recorded in the outbox; else '').
-- Returns: per job, the id it resolved to and 1 if stored, 0 if a job with that key
--          or id already existed (duplicate keys within one call resolve to the first);
--          or {-1, depth} and nothing stored if the jobs would pass the max depth.
--
-- Batched: the existing ids and keys are read with one HMGET each, and the new jobs
-- written with one variadic command per structure, so a bulk enqueue costs a few
-- commands per call instead of seven per job. What it writes for a new job is what
-- `attach` writes for a `queued` or `scheduled` one, plus the payload, the listing
-- entries (`jobs`, `created`) and the key. Jobs handed to a parked worker (below) are
-- written as `reserve` leaves them: `running`, attempt 1.
local q = queue_at(1)
local now = tonumber(ARGV[1])
local count = (#ARGV - 3) / 10
if ARGV[3] ~= '' then
  local depth = redis.call('ZCARD', q.ready) + redis.call('ZCARD', q.scheduled)
  if depth + count > tonumber(ARGV[3]) then
    return {-1, depth}
  end
end
local now_ms = math.floor(now * 1000)

local ids, keys = {}, {}
for j = 1, count do
  local i = 4 + (j - 1) * 10
  ids[#ids + 1] = ARGV[i]
  if ARGV[i + 1] ~= '' then keys[#keys + 1] = ARGV[i + 1] end
end
local stored_ids = hmget_all(q.record, ids)
local stored_keys = hmget_all(q.keys, keys)
local key_owner, id_taken = {}, {}
for n, key in ipairs(keys) do
  if stored_keys[n] then key_owner[key] = stored_keys[n] end
end
for n, id in ipairs(ids) do
  if stored_ids[n] then id_taken[id] = true end
end

-- A parked worker (reserve.lua parks one) takes every job of the call made ready now,
-- leased to it here as `reserve` would lease them, when nothing else is ready or due
-- to be (so it gets what a reserve would) and they fit in its free capacity. Each
-- ticket is used once. Otherwise the jobs are queued and the wake-up goes out.
local function netstring(s)
  return #s .. ':' .. s
end
local ticket, parked_as
-- The ticket that ends first, so that idle workers take turns (each parks again after
-- its handoff, behind the others); tickets that ended are dropped here (and by `sweep`).
local head = redis.call('ZRANGE', q.parked, 0, 0, 'WITHSCORES')
if head[1] and tonumber(head[2]) < now then
  redis.call('ZREMRANGEBYSCORE', q.parked, '-inf', '(' .. ARGV[1])
  head = redis.call('ZRANGE', q.parked, 0, 0, 'WITHSCORES')
end
-- A paused queue hands nothing (the flag's copy in the queue's own slot, `paused`): a
-- worker parked before the pause would otherwise run its jobs.
if head[1] and redis.call('EXISTS', q.paused) == 0 and redis.call('EXISTS', q.ready) == 0
    and #redis.call('ZRANGEBYSCORE', q.scheduled, '-inf', now, 'LIMIT', 0, 1) == 0
    and #redis.call('ZRANGEBYSCORE', q.running, '-inf', now, 'LIMIT', 0, 1) == 0 then
  local ok, t = pcall(cmsgpack.unpack, head[1])
  if not (ok and type(t) == 'table' and type(t[1]) == 'string' and tonumber(t[2])
      and tonumber(t[3]) and type(t[4]) == 'string' and type(t[5]) == 'string') then
    redis.call('ZREM', q.parked, head[1])  -- not ours to use
  elseif tonumber(t[2]) >= count then
    redis.call('ZREM', q.parked, head[1])
    ticket, parked_as = t, head
    ticket.deadline = string.format('%.17g', now + tonumber(t[3]))
    ticket.message, ticket.ids = {netstring(t[1]), netstring(ticket.deadline)}, {ticket.deadline}
  end
end

local seq = redis.call('INCRBY', q.seq, count) - count
local out = {}
local w = {payload = {}, record = {}, jobs = {}, ready = {}, scheduled = {}, expiring = {},
  keys = {}, created = {}, running = {}}
local woke = false
for j = 1, count do
  local i = 4 + (j - 1) * 10
  local id, key = ARGV[i], ARGV[i + 1]
  local owner = key ~= '' and key_owner[key]
  if owner then
    out[#out + 1] = owner
    out[#out + 1] = 0
  elseif id_taken[id] then
    out[#out + 1] = id
    out[#out + 1] = 0
  else
    seq = seq + 1
    local r = {tk = ARGV[i + 3], p = tonumber(ARGV[i + 4]), a = 0, c = tonumber(ARGV[i + 6]),
      d = tonumber(ARGV[i + 7]), q = seq, n = now_ms}
    if key ~= '' then
      r.k = key
      key_owner[key] = id
      push(w.keys, key, id)
    end
    id_taken[id] = true
    if ARGV[i + 5] ~= '' then r.m = tonumber(ARGV[i + 5]) end
    if ARGV[i + 8] ~= '' then r.x = tonumber(ARGV[i + 8]) end
    if ARGV[i + 9] ~= '' then r.o = 1 end
    if r.d > now then
      r.s = 'scheduled'
      push(w.scheduled, r.d, id)
      if r.x then push(w.expiring, r.x, id) end
    elseif ticket and not (r.x and r.x <= now) then
      local token = ticket[1] .. #ticket.ids
      r.s, r.a, r.st, r.w, r.t, r.dl = 'running', 1, now, ticket[5], token, tonumber(ticket.deadline)
      push(w.running, r.dl, id)
      push(ticket.message, netstring(id), netstring(token))
      push(ticket.message, '1:1', netstring(ARGV[i + 2]))
      ticket.ids[#ticket.ids + 1] = id
    else
      r.s = 'queued'
      push(w.ready, -r.p, ready_member(r, id))
      if r.x then push(w.expiring, r.x, id) end
      woke = true
    end
    push(w.payload, id, ARGV[i + 2])
    push(w.jobs, 0, listing_member(r, id))
    push(w.created, 0, created_member(r, id))
    push(w.record, id, cmsgpack.pack(r))
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
write_all('HSET', q.payload, w.payload)
write_all('HSET', q.record, w.record)
write_all('HSET', q.keys, w.keys)
write_all('ZADD', q.jobs, w.jobs)
write_all('ZADD', q.created, w.created)
write_all('ZADD', q.ready, w.ready)
write_all('ZADD', q.scheduled, w.scheduled)
write_all('ZADD', q.expiring, w.expiring)
write_all('ZADD', q.running, w.running)
if ticket and #ticket.ids > 1 then
  -- Noted, so that the worker's next reserve finds them if the message is lost
  -- (unpark.lua); then the leases go to the worker on its channel.
  redis.call('HSET', q.handed, ticket[1], table.concat(ticket.ids, ' '))
  redis.call('PUBLISH', ticket[4], table.concat(ticket.message))
elseif ticket then  -- nothing of the call was made ready now: it stays parked
  redis.call('ZADD', q.parked, parked_as[2], parked_as[1])
end
if woke then
  redis.call('PUBLISH', ARGV[2], '1')
end
return out
