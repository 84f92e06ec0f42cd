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

-- Append a pair (field, value) or (score, member) to a flat list for `write_all`.
local function push(list, a, b)
  list[#list + 1] = a
  list[#list + 1] = b
end

-- One variadic HSET or ZADD of every pair in `pairs`, in chunks; nothing if empty.
local function write_all(command, key, pairs)
  for i = 1, #pairs, INBOX_CHUNK do
    redis.call(command, key, unpack(pairs, i, math.min(i + INBOX_CHUNK - 1, #pairs)))
  end
end

-- Whether `r`, a decoded entry, is a usable map of a job's fields.
local function inbox_entry(r)
  return type(r) == 'table' and type(r.i) == 'string' and type(r.tk) == 'string'
    and tonumber(r.p) and tonumber(r.c) and tonumber(r.d) and tonumber(r.n)
end

-- The writes a drain gathers, in the order they go out: the key name in `q` and the
-- command of each.
local DRAIN_WRITES = {{'record', 'HSET'}, {'ready', 'ZADD'}, {'expiring', 'ZADD'},
  {'running', 'ZADD'}, {'jobs', 'ZADD'}, {'created', 'ZADD'}, {'handed', 'HSET'}}

-- Drain one list of lean enqueues of the queue whose keys are `q`, `q[list]`, into the
-- full state, oldest first, each job numbered in the queue's sequence. An inbox entry
-- (list 'inbox') becomes the queued job enqueue.lua writes: record, `ready`,
-- `expiring`. A `lent` entry (enqueue_one.lua, level 2: a job lent to a parked worker)
-- is the inbox entry followed by a second msgpack value, the lease {token prefix,
-- lease deadline, worker id, start time}, and becomes what the full path writes for a
-- handed job: the record running under token `<prefix>1` with attempt 1, `running`,
-- and its note in `handed` (which the worker's next reserve drops, or its `unpark`
-- reads if the handoff message was lost). Both get their `jobs` and `created` members.
-- An entry that does not decode to a usable map is dropped (only enqueue_one.lua
-- writes entries; a dropped lent one's lease lapses unseen).
local function drain(q, list)
  local entries = redis.call('LRANGE', q[list], 0, -1)
  local count = #entries
  if count == 0 then
    return
  end
  redis.call('DEL', q[list])
  local last = redis.call('INCRBY', q.seq, count)
  local lent = list == 'lent'
  local w = {record = {}, ready = {}, expiring = {}, running = {}, jobs = {}, created = {},
    handed = {}}
  local n = 0
  for i = count, 1, -1 do  -- LPUSHed: the oldest entry is the last one
    local ok, r, h = pcall(cmsgpack.unpack, entries[i])
    if ok and inbox_entry(r) and (not lent or (type(h) == 'table'
        and type(h[1]) == 'string' and tonumber(h[2]) and type(h[3]) == 'string'
        and tonumber(h[4]))) then
      local id = r.i
      r.i = nil
      n = n + 1
      r.q = last - count + n
      if lent then
        r.s, r.a = 'running', 1
        r.st, r.w, r.t, r.dl = tonumber(h[4]), h[3], h[1] .. '1', tonumber(h[2])
        push(w.running, r.dl, id)
        push(w.handed, h[1], string.format('%.17g', r.dl) .. ' ' .. id)
      else
        r.s, r.a = 'queued', 0
        push(w.ready, -r.p, ready_member(r, id))
        if r.x then
          push(w.expiring, r.x, id)
        end
      end
      push(w.record, id, cmsgpack.pack(r))
      push(w.jobs, 0, listing_member(r, id))
      push(w.created, 0, created_member(r, id))
    end
  end
  for _, write in ipairs(DRAIN_WRITES) do
    write_all(write[2], q[write[1]], w[write[1]])
  end
end

-- Drain the queue's lean enqueues (`q` needs inbox, lent, record, ready, expiring,
-- running, jobs, created, seq, handed) into the full state: the `lent` list first (its
-- entries were pushed while the inbox was empty, so they come before every job in it).
local function expand_inbox(q)
  drain(q, 'lent')
  drain(q, 'inbox')
end
