-- The queue's inbox (issue 16): prepended to every script of this directory, after
-- `_members.lua` (see offload/brokers/redis/_scripts.py).
--
-- A plain one-call enqueue (due now, no key, no max depth, no workflow, no worker
-- parked on the queue, the inbox not full: enqueue_one.lua) stores its payload and
-- LPUSHes one msgpack map onto `P:{q}:inbox`, nothing else: the least Redis time per
-- call. `expand_inbox` writes every waiting entry into the full
-- state (record, `ready`, `expiring`, `jobs`, `created`, the queue's sequence) exactly
-- as enqueue.lua would have written a queued job at that moment, oldest first. Every
-- script that reads or changes a queue's state calls it first (`queue_at` in
-- _lib.lua; enqueue_one.lua's full path), so no reader ever sees the inbox: it is
-- state in transit, inside the same slot, drained within the next script of the queue.
--
-- An entry is the record the job gets, without its state, attempt and sequence, plus
-- its id (`i`): {i, tk, p, c, d, n[, m][, x]} (field names as in keys.py's record).

-- Variadic writes go out in chunks of this many arguments (Lua's `unpack` stack limit;
-- even, so pairs stay whole).
local INBOX_CHUNK = 4000

local function inbox_write(command, key, list)
  for i = 1, #list, INBOX_CHUNK do
    redis.call(command, key, unpack(list, i, math.min(i + INBOX_CHUNK - 1, #list)))
  end
end

-- Whether `r`, a decoded entry, is a usable map of a job's fields.
local function inbox_entry(r)
  return type(r) == 'table' and type(r.i) == 'string' and type(r.tk) == 'string'
    and tonumber(r.p) and tonumber(r.c) and tonumber(r.d) and tonumber(r.n)
end

-- Drain the `lent` list of the queue whose keys are `q` (needs q.lent, q.record,
-- q.running, q.jobs, q.created, q.seq, q.handed): jobs a lean enqueue handed to a
-- parked worker (enqueue_one.lua, level 2). An entry is the job's inbox entry followed
-- by a second msgpack value, the lease: {token prefix, lease deadline, worker id,
-- start time}. Each becomes what the full path writes for a handed job at once: the
-- record, running under token `<prefix>1` with attempt 1, its `running`, `jobs` and
-- `created` members, and its note in `handed` (which the worker's next reserve drops,
-- or its `unpark` reads if the handoff message was lost). An entry that does not
-- decode is dropped (its lease then lapses unseen: only enqueue_one.lua writes them).
local function expand_lent(q)
  local entries = redis.call('LRANGE', q.lent, 0, -1)
  local count = #entries
  if count == 0 then
    return
  end
  redis.call('DEL', q.lent)
  local last = redis.call('INCRBY', q.seq, count)
  local records, running, jobs, created, notes = {}, {}, {}, {}, {}
  local n = 0
  for i = count, 1, -1 do  -- LPUSHed: the oldest entry is the last one
    local ok, r, h = pcall(cmsgpack.unpack, entries[i])
    if ok and inbox_entry(r) and type(h) == 'table' and type(h[1]) == 'string'
        and tonumber(h[2]) and type(h[3]) == 'string' and tonumber(h[4]) then
      local id = r.i
      r.i = nil
      n = n + 1
      r.s, r.a, r.q = 'running', 1, last - count + n
      r.st, r.w, r.t, r.dl = tonumber(h[4]), h[3], h[1] .. '1', tonumber(h[2])
      records[#records + 1] = id
      records[#records + 1] = cmsgpack.pack(r)
      running[#running + 1] = r.dl
      running[#running + 1] = id
      jobs[#jobs + 1] = 0
      jobs[#jobs + 1] = listing_member(r, id)
      created[#created + 1] = 0
      created[#created + 1] = created_member(r, id)
      notes[#notes + 1] = h[1]
      notes[#notes + 1] = string.format('%.17g', r.dl) .. ' ' .. id
    end
  end
  inbox_write('HSET', q.record, records)
  inbox_write('ZADD', q.running, running)
  inbox_write('ZADD', q.jobs, jobs)
  inbox_write('ZADD', q.created, created)
  inbox_write('HSET', q.handed, notes)
end

-- Drain the inbox of the queue whose keys are `q` (needs q.inbox, q.record, q.ready,
-- q.expiring, q.jobs, q.created, q.seq, and for `expand_lent` q.lent, q.running,
-- q.handed) into the full state, the `lent` list first (its entries were pushed while
-- the inbox was empty, so they come before every job in it). An entry that does not
-- decode to a usable map is dropped (only enqueue_one.lua writes entries).
local function expand_inbox(q)
  expand_lent(q)
  local entries = redis.call('LRANGE', q.inbox, 0, -1)
  local count = #entries
  if count == 0 then
    return 0
  end
  redis.call('DEL', q.inbox)
  local last = redis.call('INCRBY', q.seq, count)
  local records, ready, expiring, jobs, created = {}, {}, {}, {}, {}
  local n = 0
  for i = count, 1, -1 do  -- LPUSHed: the oldest entry is the last one
    local ok, r = pcall(cmsgpack.unpack, entries[i])
    if ok and inbox_entry(r) then
      local id = r.i
      r.i = nil
      n = n + 1
      r.s, r.a, r.q = 'queued', 0, last - count + n
      records[#records + 1] = id
      records[#records + 1] = cmsgpack.pack(r)
      ready[#ready + 1] = -r.p
      ready[#ready + 1] = ready_member(r, id)
      if r.x then
        expiring[#expiring + 1] = r.x
        expiring[#expiring + 1] = id
      end
      jobs[#jobs + 1] = 0
      jobs[#jobs + 1] = listing_member(r, id)
      created[#created + 1] = 0
      created[#created + 1] = created_member(r, id)
    end
  end
  inbox_write('HSET', q.record, records)
  inbox_write('ZADD', q.ready, ready)
  inbox_write('ZADD', q.expiring, expiring)
  inbox_write('ZADD', q.jobs, jobs)
  inbox_write('ZADD', q.created, created)
  return n
end
