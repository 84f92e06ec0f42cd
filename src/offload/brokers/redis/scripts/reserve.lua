-- reserve: make due jobs ready, take back lapsed leases, expire waiting jobs past
-- `expires_at` (workflow jobs into the outbox), then lease up to `limit` ready jobs across the given queues, highest
-- priority first, then earliest due, then enqueue order.
-- KEYS: the keys of each queue (QueueKeys order), for one or more queues.
-- ARGV: [1] now, [2] worker id, [3] lease deadline, [4] limit, [5] token prefix,
--       [6] error recorded on lapsed leases (JSON), [7] purge time of jobs expired now,
--       [8] most jobs each housekeeping step touches per queue, [9] peek: when above
--       0, lease nothing and return the first `peek` ready members and scores of each
--       queue instead (how a reservation over queues in several cluster slots starts),
--       [10] job-end channel, [11] optional: the ticket that parks the worker when
--       nothing is ready (one queue only; a msgpack array: token prefix, limit, lease
--       seconds, handoff channel, worker id), [12] the ticket's end (Unix seconds),
--       [13] optional: the token prefix of a ticket whose note in `handed` (of the
--       first queue) goes.
-- Returns: per lease, the queue's group number, job id, token, attempt, payload; when
--          peeking, per queue, a flat list of member and score pairs; when parked,
--          {'parked', due time of the first scheduled job or ''}.
local now, worker, deadline = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local limit, prefix, lapsed_error = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local purge_at, batch = tonumber(ARGV[7]), tonumber(ARGV[8])
local groups = #KEYS / #FIELDS
local queues = {}

for g = 1, groups do
  local q = queue_at(g)
  queues[g] = q
  -- A corrupt record is buried (`bury_broken`), and an entry whose record says another
  -- state is stale and dropped: one bad record never stops the reservation.
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', q.scheduled, '-inf', now, 'LIMIT', 0, batch)) do
    local r, problem = load(q, id)
    if problem then
      bury_broken(q, id, problem, now)
    elseif r and r.s == 'scheduled' then
      detach(q, id, r)
      r.s = 'queued'
      attach(q, id, r)
    else
      redis.call('ZREM', q.scheduled, id)
    end
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', q.running, '-inf', now, 'LIMIT', 0, batch)) do
    local r, problem = load(q, id)
    if problem then
      bury_broken(q, id, problem, now)
    elseif r and r.s == 'running' then
      detach(q, id, r)
      r.s, r.t, r.w, r.dl, r.e = 'queued', nil, nil, nil, lapsed_error
      attach(q, id, r)
    else
      redis.call('ZREM', q.running, id)
    end
  end
  expire_due(q, now, purge_at, batch)
end

-- The best head among the queues: lowest score (highest priority), then lowest member.
-- Each queue's heads are read `want` (the leases still wanted) at a time, one ZRANGE
-- per queue and batch instead of one per job taken: while this loop runs, `ready` only
-- loses the members it takes, so the next unread head of a batch is the queue's head.
-- A batch used up is read again from the top unless it was short (the end of `ready`).
local heads, next_head, at_end = {}, {}, {}
local raws = {}  -- per queue: the records of `heads`, read with them in one HMGET
local function best_head(want)
  local best_g, best_member, best_score, best_raw = nil, nil, nil, nil
  for g = 1, groups do
    local i = next_head[g]
    if (not i or i > #heads[g]) and not at_end[g] then
      if HELD then  -- the leases so far leave `ready` before it is read again
        flush_writes()
        hold_writes()
      end
      heads[g] = redis.call('ZRANGE', queues[g].ready, 0, want - 1, 'WITHSCORES')
      at_end[g] = #heads[g] < 2 * want
      local ids = {}
      for k = 1, #heads[g], 2 do
        ids[#ids + 1] = string.sub(heads[g][k], 28)
      end
      raws[g] = hmget_all(queues[g].record, ids)
      i = 1
      next_head[g] = 1
    end
    local member = heads[g][i]
    if member then
      local score = tonumber(heads[g][i + 1])
      if not best_g or score < best_score or (score == best_score and member < best_member) then
        best_g, best_member, best_score, best_raw = g, member, score, raws[g][(i + 1) / 2]
      end
    end
  end
  if best_g then
    next_head[best_g] = next_head[best_g] + 2
  end
  return best_g, best_member, best_raw
end

local peek = tonumber(ARGV[9])
if peek > 0 then
  local heads = {}
  for g = 1, groups do
    heads[g] = redis.call('ZRANGE', queues[g].ready, 0, peek - 1, 'WITHSCORES')
  end
  publish_ends(ARGV[10])
  return heads
end

local out = {}
local taken = 0
local reads = {}  -- per queue group: the leased ids and their payload slots in `out`
-- The moves of this loop go out in one write per key at its end (`hold_writes`), and
-- its records were read with their heads: an id met twice (a stale second member) is
-- only dropped from `ready`, as its record, once moved, would say.
local seen = {}
hold_writes()
while taken < limit do
  local g, member, raw = best_head(limit - taken)
  if not g then break end
  local q = queues[g]
  local id = string.sub(member, 28)
  local once = g .. ' ' .. id
  local r, problem
  if seen[once] then
    r = nil
  else
    seen[once] = true
    r, problem = decode(raw)
  end
  if problem then
    redis.call('ZREM', q.ready, member)
    bury_broken(q, id, problem, now)
  elseif not r or r.s ~= 'queued' then
    redis.call('ZREM', q.ready, member)
  elseif r.x and r.x <= now then
    end_unrun(q, id, r, 'expired', now, purge_at)
  else
    taken = taken + 1
    lease(q, id, r, now, worker, prefix .. taken, deadline)
    out[#out + 1] = g
    out[#out + 1] = id
    out[#out + 1] = r.t
    out[#out + 1] = r.a
    out[#out + 1] = ''
    local wanted = reads[g]
    if not wanted then
      wanted = {ids = {}, slots = {}}
      reads[g] = wanted
    end
    wanted.ids[#wanted.ids + 1] = id
    wanted.slots[#wanted.slots + 1] = #out
  end
end
flush_writes()
-- The payloads of the leased jobs, one HMGET per queue (not one HGET per job).
for g, wanted in pairs(reads) do
  for i, payload in ipairs(hmget_all(queues[g].payload, wanted.ids)) do
    out[wanted.slots[i]] = payload or ''
  end
end
-- The note of the worker's last ticket, whose handoff it received whole (unpark.lua
-- otherwise), and when nothing is ready, the worker parked (one queue only), so that
-- `enqueue` hands it the next jobs already leased (see enqueue.lua and _handoff.py).
if ARGV[13] and ARGV[13] ~= '' then
  redis.call('HDEL', queues[1].handed, ARGV[13])
end
if taken == 0 and ARGV[11] and ARGV[11] ~= '' and groups == 1 then
  redis.call('ZADD', queues[1].parked, tonumber(ARGV[12]), ARGV[11])
  local due = redis.call('ZRANGE', queues[1].scheduled, 0, 0, 'WITHSCORES')[2] or ''
  out = {'parked', due}
end
publish_ends(ARGV[10])
return out
