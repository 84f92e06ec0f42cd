-- Shared helpers, prepended (after `_members.lua` and `_inbox.lua`) to every script of this directory
-- but the lean ones when it is loaded (see offload/brokers/redis/_scripts.py). Defines no keys of its own: a script's keys
-- all come through KEYS, as groups of 23 per queue in the order of
-- offload.brokers.redis.keys.QueueKeys, read here by `queue_at(group)`.
--
-- A job is a field in the queue's `payload`, `record` and `result` hashes; its state
-- decides which one of the state zsets holds it. `detach` takes it out of the zset of
-- its current state and `attach` puts it into the zset of its new one, so every
-- transition is: load, detach, change fields, attach, save.

local FIELDS = {'payload', 'record', 'result', 'ready', 'scheduled', 'running',
  'expiring', 'dead', 'succeeded', 'expired', 'cancelled', 'jobs', 'keys', 'seq', 'outbox',
  'waiters', 'created', 'finished', 'parked', 'handed', 'paused', 'inbox', 'lent'}

-- The keys of the `group`-th queue of KEYS, its inbox drained first (`_inbox.lua`):
-- every script that reads or changes a queue's state starts here, so each sees the
-- jobs of a lean enqueue with their full state.
local function queue_at(group)
  local q = {}
  for i, name in ipairs(FIELDS) do
    q[name] = KEYS[(group - 1) * #FIELDS + i]
  end
  expand_inbox(q)
  return q
end

-- Lua's `unpack` has a stack limit (about 8,000 values): variadic commands go out in
-- chunks of this many arguments (even, so field/value and score/member pairs stay
-- whole).
local CHUNK = 4000

-- HMGET of many fields in chunks; the values in `fields` order (false where absent).
local function hmget_all(key, fields)
  local values = {}
  for i = 1, #fields, CHUNK do
    local got = redis.call('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
    for _, value in ipairs(got) do values[#values + 1] = value end
  end
  return values
end

-- (`push` and `write_all`, for variadic writes, are in `_inbox.lua`, which precedes
-- this file in every script.)

-- What a record must hold for the scripts to use it. A record that does not (garbage
-- written over it, a field missing or of the wrong type) must cost one job, never a
-- script error that would stop every reservation of its queues: `load` reports it and
-- the housekeeping that meets it buries it (`bury_broken`).
local STATES = {scheduled = true, queued = true, running = true, succeeded = true,
  dead = true, expired = true, cancelled = true}
local NUMBERS = {'p', 'a', 'c', 'd', 'q', 'n'}
local OPTIONAL_NUMBERS = {'m', 'x', 'st', 'f', 'dl', 'u'}
local OPTIONAL_STRINGS = {'k', 'w', 't', 'e'}
-- Bounds that keep the fixed-width members of `ready` and `jobs` fixed-width.
local LIMITS = {d = 1e12, q = 1e12, n = 1e15}

local function is_number(value)
  return type(value) == 'number' and value == value and value > -1e300 and value < 1e300
end

-- Why the unpacked record `r` cannot be used, or nil if it can.
local function record_problem(r)
  if type(r) ~= 'table' then
    return 'not a msgpack map'
  end
  if type(r.s) ~= 'string' or not STATES[r.s] then
    return "field 's' (state) is not a job state"
  end
  if type(r.tk) ~= 'string' then
    return "field 'tk' (task) is not a string"
  end
  for _, f in ipairs(NUMBERS) do
    if not is_number(r[f]) then
      return "field '" .. f .. "' is not a number"
    end
  end
  for f, bound in pairs(LIMITS) do
    if r[f] < 0 or r[f] >= bound then
      return "field '" .. f .. "' is out of range"
    end
  end
  for _, f in ipairs(OPTIONAL_NUMBERS) do
    if r[f] ~= nil and not is_number(r[f]) then
      return "field '" .. f .. "' is not a number"
    end
  end
  for _, f in ipairs(OPTIONAL_STRINGS) do
    if r[f] ~= nil and type(r[f]) ~= 'string' then
      return "field '" .. f .. "' is not a string"
    end
  end
  if r.s == 'running' and (r.dl == nil or r.t == nil) then
    return 'a running job without a lease'
  end
  if r.s == 'dead' and r.f == nil then
    return 'a dead job without a finish time'
  end
  if (r.s == 'succeeded' or r.s == 'expired' or r.s == 'cancelled') and r.u == nil then
    return 'a finished job without a purge time'
  end
  return nil
end

-- The record read as `raw` (false or nil if there is none): nil if there is none; nil
-- and the problem if it is unusable. (`load`, or a script's one HMGET of many.)
local function decode(raw)
  if not raw then
    return nil
  end
  local ok, r = pcall(cmsgpack.unpack, raw)
  local problem = ok and record_problem(r) or (not ok and 'not msgpack') or nil
  if problem then
    return nil, problem
  end
  return r
end

-- The job's record, or nil if there is none; nil and the problem if it is unusable.
local function load(q, id)
  return decode(redis.call('HGET', q.record, id))
end

-- The writes of `detach`, `attach` and `save`, held back between `hold_writes` and
-- `flush_writes` by a script that moves a batch of jobs (reserve's leases, ack): then
-- a batch costs one variadic ZREM, ZADD and HSET per key instead of a call per job.
-- Sound only while no job is moved twice and nothing reads a held write before the
-- flush (the callers skip a job id seen twice, and flush before reading `ready`
-- again); removals go out first, then additions, then records: one job's detach,
-- attach and save, in their order.
local HELD = nil

local function hold_writes()
  HELD = {ZREM = {}, ZADD = {}, HSET = {}, order = {ZREM = {}, ZADD = {}, HSET = {}}}
end

local function held(command, key)
  local list = HELD[command][key]
  if not list then
    list = {}
    HELD[command][key] = list
    local order = HELD.order[command]
    order[#order + 1] = key
  end
  return list
end

local function zrem(key, member)
  if HELD then
    local list = held('ZREM', key)
    list[#list + 1] = member
  else
    redis.call('ZREM', key, member)
  end
end

local function zadd(key, score, member)
  if HELD then push(held('ZADD', key), score, member) else redis.call('ZADD', key, score, member) end
end

local function hset(key, field, value)
  if HELD then push(held('HSET', key), field, value) else redis.call('HSET', key, field, value) end
end

-- Send the held writes and stop holding.
local function flush_writes()
  local h = HELD
  HELD = nil
  if not h then return end
  for _, command in ipairs({'ZREM', 'ZADD', 'HSET'}) do
    for _, key in ipairs(h.order[command]) do
      write_all(command, key, h[command][key])
    end
  end
end

local function save(q, id, r)
  hset(q.record, id, cmsgpack.pack(r))
end

-- Outbox order within one end time: the queue's enqueue sequence (ends in one call share
-- their time); the member of `outbox`, whose score is the end time.
local function outbox_member(r, id)
  return string.format('%012.0f', r.q) .. id
end

local PURGED_BY_TIME = {succeeded = true, expired = true, cancelled = true}

-- `expiring` holds a waiting job only if its record has `x` (`attach`, both enqueue
-- scripts; no version writes it otherwise and none clears `x`), so a job without one
-- costs no ZREM there: most jobs have no expiry.
local function detach(q, id, r)
  local s = r.s
  if s == 'queued' then
    zrem(q.ready, ready_member(r, id))
    if r.x then zrem(q.expiring, id) end
  elseif s == 'scheduled' then
    zrem(q.scheduled, id)
    if r.x then zrem(q.expiring, id) end
  elseif s == 'running' then
    zrem(q.running, id)
  elseif s == 'dead' then
    zrem(q.dead, id)
  elseif PURGED_BY_TIME[s] then
    zrem(q[s], id)
  end
end

local function attach(q, id, r)
  local s = r.s
  if s == 'queued' then
    zadd(q.ready, -r.p, ready_member(r, id))
  elseif s == 'scheduled' then
    zadd(q.scheduled, r.d, id)
  elseif s == 'running' then
    zadd(q.running, r.dl, id)
  elseif s == 'dead' then
    zadd(q.dead, r.f, id)
  elseif PURGED_BY_TIME[s] then
    zadd(q[s], r.u, id)
  end
  if r.x and (s == 'queued' or s == 'scheduled') then
    zadd(q.expiring, r.x, id)
  end
  save(q, id, r)
end

-- Lease a queued job: running until `deadline` under `token`, its attempt counted
-- (`reserve`, and `enqueue` handing jobs to a parked worker).
local function lease(q, id, r, now, worker, token, deadline)
  detach(q, id, r)
  r.s, r.a, r.st, r.w, r.t, r.dl = 'running', r.a + 1, now, worker, token, deadline
  attach(q, id, r)
end

-- Ids of jobs ended by this call that a `wait_finished` registered in `waiters`;
-- `publish_ends` announces them all in one message at the end of the script.
local ENDED = {}
-- Per `waiters` key: whether it existed when first looked at (most queues have no
-- waiter, and then an end costs one EXISTS per call, not a command per job).
local WATCHED = {}

local function watched(q)
  local found = WATCHED[q.waiters]
  if found == nil then
    found = redis.call('EXISTS', q.waiters) == 1
    WATCHED[q.waiters] = found
  end
  return found
end

local function note_end(q, id)
  if watched(q) and redis.call('HDEL', q.waiters, id) == 1 then
    ENDED[#ENDED + 1] = id
  end
end

-- Jobs ended by this call, per `finished` key and field (`<minute>:<outcome>`): one
-- HINCRBY per queue, minute and outcome at the end of the script, not one per job.
local TALLY = {}

local function count_end(q, outcome, now)
  local field = string.format('%d:%s', math.floor(now / 60), outcome)
  local fields = TALLY[q.finished]
  if not fields then
    fields = {}
    TALLY[q.finished] = fields
  end
  fields[field] = (fields[field] or 0) + 1
end

local function flush_counts()
  for key, fields in pairs(TALLY) do
    for field, n in pairs(fields) do
      redis.call('HINCRBY', key, field, n)
    end
  end
  TALLY = {}
end

-- The end of every script that ends jobs: their counts written, then their waiters told.
local function publish_ends(channel)
  flush_counts()
  if #ENDED > 0 then
    redis.call('PUBLISH', channel, table.concat(ENDED, ' '))
  end
end

-- Finish a job now: `state` is succeeded, expired or cancelled (kept until `purge_at`)
-- or dead (kept until purged by hand). Clears the lease.
local function finish(q, id, r, state, now, purge_at)
  detach(q, id, r)
  r.s = state
  r.f = now
  r.u = purge_at
  r.t = nil
  r.dl = nil
  attach(q, id, r)
  note_end(q, id)
  count_end(q, state, now)
end

-- A waiting job ends without a worker (cancelled or expired): it is also recorded in
-- the outbox, in this same atomic step, for a worker to run its workflow follow-ups
-- and count it; `o` on the record says so (`delete` and `clear_outbox` look at it).
local function end_unrun(q, id, r, state, now, purge_at)
  r.o = 1
  finish(q, id, r, state, now, purge_at)
  redis.call('ZADD', q.outbox, now, outbox_member(r, id))
end

-- Forget a job entirely, with its key (if the key still names it) and listing entry.
local function delete(q, id, r)
  detach(q, id, r)
  redis.call('HDEL', q.record, id)
  redis.call('HDEL', q.payload, id)
  redis.call('HDEL', q.result, id)
  redis.call('ZREM', q.jobs, listing_member(r, id))
  redis.call('ZREM', q.created, created_member(r, id))
  if r.o then
    redis.call('ZREM', q.outbox, outbox_member(r, id))
  end
  if watched(q) then
    redis.call('HDEL', q.waiters, id)
  end
  if r.k and redis.call('HGET', q.keys, r.k) == id then
    redis.call('HDEL', q.keys, r.k)
  end
end

-- A job whose record is unusable (`load`'s problem) goes to the dead-letter queue
-- with the reason, under a rebuilt record that keeps what can still be read (task,
-- attempt, key, priority, times). Its payload is kept, so it can be inspected and,
-- if it decodes, replayed. Removes it from every zset keyed by id; a caller that found
-- it in `ready` removes that member itself (the member cannot be rebuilt).
local function bury_broken(q, id, problem, now)
  for _, key in ipairs({q.scheduled, q.running, q.expiring, q.succeeded, q.expired,
      q.cancelled}) do
    redis.call('ZREM', key, id)
  end
  local r = {s = 'dead', tk = '?', p = 0, a = 0, c = now, d = now, q = 0,
    n = math.floor(now * 1000)}
  local ok, old = pcall(cmsgpack.unpack, redis.call('HGET', q.record, id) or '')
  if ok and type(old) == 'table' then
    for _, f in ipairs({'p', 'a', 'c', 'd', 'q', 'n', 'm'}) do
      if is_number(old[f]) and (not LIMITS[f] or (old[f] >= 0 and old[f] < LIMITS[f])) then
        r[f] = old[f]
      end
    end
    for _, f in ipairs({'tk', 'k'}) do
      if type(old[f]) == 'string' then r[f] = old[f] end
    end
    if old.o then r.o = 1 end
  end
  r.e = cjson.encode({type = 'Undecodable',
    message = "the broker's record of this job is corrupt (" .. problem .. ')'})
  finish(q, id, r, 'dead', now, nil)
end

-- Expire waiting jobs past `expires_at` (at most `batch`); returns how many.
local function expire_due(q, now, purge_at, batch)
  local n = 0
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', q.expiring, '-inf', now, 'LIMIT', 0, batch)) do
    local r, problem = load(q, id)
    if problem then
      bury_broken(q, id, problem, now)
    elseif r and (r.s == 'queued' or r.s == 'scheduled') then
      end_unrun(q, id, r, 'expired', now, purge_at)
      n = n + 1
    else
      redis.call('ZREM', q.expiring, id)
    end
  end
  return n
end
