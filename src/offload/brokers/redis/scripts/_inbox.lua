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

-- Drain the inbox of the queue whose keys are `q` (needs q.inbox, q.record, q.ready,
-- q.expiring, q.jobs, q.created, q.seq) into the full state. An entry that does not
-- decode to a usable map is dropped (only enqueue_one.lua writes entries).
local function expand_inbox(q)
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
    if ok and type(r) == 'table' and type(r.i) == 'string' and type(r.tk) == 'string'
        and tonumber(r.p) and tonumber(r.c) and tonumber(r.d) and tonumber(r.n) then
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
