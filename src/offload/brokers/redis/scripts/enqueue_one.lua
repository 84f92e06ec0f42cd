-- enqueue_one: `enqueue` of one job, the call a sync `task.enqueue()` or an
-- `enqueue_async()` makes (issue 16). It is loaded with `_members.lua` and
-- `_inbox.lua` only, not the whole `_lib.lua` (whose definitions every script runs on
-- every call), and takes three keys and eight arguments: Redis spends about a
-- microsecond per ten keys and arguments of a call before the script starts.
--
-- The plain case (ARGV[8] = '1', set by the producer for a job due now, without key,
-- max depth or workflow, while every live worker expands inboxes) stores the payload
-- (HSETNX: an id already there is a retried call, answered as a duplicate) and
-- LPUSHes ARGV[7], already the inbox entry (`_inbox.lua`), then wakes the queue if the
-- inbox was empty: two or three writes, no msgpack work. Unless a worker is parked on
-- the queue or the inbox is full.
-- A parked worker is lent the job in the plain case itself when ARGV[8] = '2' (every
-- live worker also drains `lent`: `_inbox.py`), else handed it by the full path below:
-- the same lease either way, the lent one written in fewer calls (its record waits in
-- `lent` for the next script of the queue). Every other call first drains the inbox (so the job
-- gets its sequence after the jobs before it) and then writes exactly what enqueue.lua
-- writes for a call of one job (the same keys, records and members).
--
-- Only the keys of the plain case come through KEYS; the full path names the queue's
-- other keys from KEYS[1]'s prefix, which holds the queue's hash tag, so they are in
-- the same slot (Redis Cluster allows a script undeclared keys of its slot).
-- KEYS: payload, inbox, parked (of one queue: `ONE_KEYS` in keys.py).
-- ARGV: [1] now, [2] wake-up channel, [3] max depth ('' = none), [4] id, [5] key
--       ('' = none), [6] payload, [7] the job's fields, a msgpack map with the record's
--       names (keys.py): i (id), tk, p, c, d, n, and m, x, o when set; [8] '1' if the
--       inbox may be used, '2' if a parked worker may also be lent the job (below).
-- Returns: {id, 1} if stored; {id of the existing job, 0} if the key or the id was
--          taken; {-1, depth} and nothing stored if the job would pass the max depth.
--          The plain case answers 1 or 0 alone (the id is the caller's): a shorter
--          reply for Redis to build and the client to read.
--
-- The plain case runs first, before the shared helpers are defined (`_scripts.py`
-- puts `_members.lua` and `_inbox.lua` at the `@helpers` line below): it needs none of
-- them, and defining them costs Redis time on every call.
local payload, inbox, parked = KEYS[1], KEYS[2], KEYS[3]
local id, key = ARGV[4], ARGV[5]
-- Most entries an inbox holds: past it the next call drains it (the full path), which
-- bounds the work of that one expansion (a few ms per 1,000 entries).
local INBOX_MAX = 10000
-- Only a push onto an empty inbox looks for a parked worker: a worker parks only in a
-- `reserve` that drained the inbox first (`queue_at`), so none has parked since the
-- push that found it empty (and found none parked).
if ARGV[8] == '1' or ARGV[8] == '2' then
  if redis.call('HSETNX', payload, id, ARGV[6]) == 0 then
    return 0
  end
  local n = redis.call('LPUSH', inbox, ARGV[7])
  if n > 1 and n <= INBOX_MAX then
    -- No wake-up: the push that made the inbox non-empty published one, and no
    -- script of the queue has run since (each drains the inbox), so every worker it
    -- woke has yet to reserve, and that reserve takes this job too.
    return 1
  end
  if n == 1 and ARGV[8] == '1' and redis.call('EXISTS', parked) == 0 then
    redis.call('PUBLISH', ARGV[2], '1')
    return 1
  end
  if n == 1 and ARGV[8] == '2' then
    -- Lent (level 2, every live worker drains `lent`): the first parked worker takes
    -- the job with the fewest writes that keep it safe (the full path's checks; the
    -- producer sends '2' only for a job not expired), its state left in the queue's
    -- `lent` list (`expand_lent` in _inbox.lua), its lease sent on the worker's
    -- channel. Fewer Redis calls here is time off every idle worker's pick-up.
    local head = redis.call('ZPOPMIN', parked)
    if not head[1] then
      redis.call('PUBLISH', ARGV[2], '1')
      return 1
    end
    local now = tonumber(ARGV[1])
    local base = string.sub(payload, 1, -8)  -- 'P:{q}:' ('payload' is 7 characters)
    local ok, t = pcall(cmsgpack.unpack, head[1])
    local usable = tonumber(head[2]) >= now and ok and type(t) == 'table'
      and type(t[1]) == 'string' and tonumber(t[2]) and tonumber(t[3])
      and type(t[4]) == 'string' and type(t[5]) == 'string'
    if usable and tonumber(t[2]) >= 1
        and redis.call('EXISTS', base .. 'paused', base .. 'ready') == 0
        and #redis.call('ZRANGEBYSCORE', base .. 'scheduled', '-inf', now, 'LIMIT', 0, 1) == 0
        and #redis.call('ZRANGEBYSCORE', base .. 'running', '-inf', now, 'LIMIT', 0, 1) == 0 then
      local deadline = string.format('%.17g', now + tonumber(t[3]))
      redis.call('LPOP', inbox)
      redis.call('LPUSH', base .. 'lent',
        ARGV[7] .. cmsgpack.pack({t[1], tonumber(deadline), t[5], now}))
      redis.call('PUBLISH', t[4], #t[1] .. ':' .. t[1] .. #deadline .. ':' .. deadline
        .. #id .. ':' .. id .. (#t[1] + 1) .. ':' .. t[1] .. '1' .. '1:1'
        .. #ARGV[6] .. ':' .. ARGV[6])
      return 1
    end
    if usable then  -- not to be handed now: parked again, for the full path to judge
      redis.call('ZADD', parked, head[2], head[1])
    end
  end
  -- A parked worker (handed the job below) or a full inbox: taken back, the full way.
  redis.call('LPOP', inbox)
  redis.call('HDEL', payload, id)
end
--@helpers
local now = tonumber(ARGV[1])
local base = string.sub(payload, 1, -8)  -- 'P:{q}:' ('payload' is 7 characters)
local record, ready, scheduled, running = base .. 'record', base .. 'ready',
  base .. 'scheduled', base .. 'running'
local expiring, jobs, keys, seq = base .. 'expiring', base .. 'jobs', base .. 'keys',
  base .. 'seq'
local created, handed, paused = base .. 'created', base .. 'handed', base .. 'paused'
-- Checked before the first write: a script error stops a script, not its writes.
local ok, r = pcall(cmsgpack.unpack, ARGV[7])
assert(ok and type(r) == 'table' and type(r.tk) == 'string' and tonumber(r.p)
  and tonumber(r.c) and tonumber(r.d) and tonumber(r.n) and r.i == id,
  'enqueue_one: the fields must be a msgpack map of the job (task, priority, times)')
r.i, r.a = nil, 0
expand_inbox({inbox = inbox, record = record, ready = ready, expiring = expiring,
  jobs = jobs, created = created, seq = seq, lent = base .. 'lent', running = running,
  handed = handed})
if ARGV[3] ~= '' then
  local depth = redis.call('ZCARD', ready) + redis.call('ZCARD', scheduled)
  if depth + 1 > tonumber(ARGV[3]) then
    return {-1, depth}
  end
end
if key ~= '' then
  local owner = redis.call('HGET', keys, key)
  if owner then
    return {owner, 0}
  end
end
-- Payload and record are written and deleted together: a payload already there is a
-- job with this id (a retried call), left as it is.
if redis.call('HSETNX', payload, id, ARGV[6]) == 0 then
  return {id, 0}
end
r.q = redis.call('INCR', seq)
if key ~= '' then
  r.k = key
  redis.call('HSET', keys, key, id)
end

-- A parked worker takes the job if it is made ready now, as in enqueue.lua (read the
-- reasons there): nothing else ready or due, the queue not paused, room on the ticket.
local handed_to
if r.d <= now and not (r.x and r.x <= now) then
  local head = redis.call('ZRANGE', parked, 0, 0, 'WITHSCORES')
  if head[1] and tonumber(head[2]) < now then
    redis.call('ZREMRANGEBYSCORE', parked, '-inf', '(' .. ARGV[1])
    head = redis.call('ZRANGE', parked, 0, 0, 'WITHSCORES')
  end
  if head[1] and redis.call('EXISTS', paused) == 0 and redis.call('EXISTS', ready) == 0
      and #redis.call('ZRANGEBYSCORE', scheduled, '-inf', now, 'LIMIT', 0, 1) == 0
      and #redis.call('ZRANGEBYSCORE', running, '-inf', now, 'LIMIT', 0, 1) == 0 then
    local ok, t = pcall(cmsgpack.unpack, head[1])
    if not (ok and type(t) == 'table' and type(t[1]) == 'string' and tonumber(t[2])
        and tonumber(t[3]) and type(t[4]) == 'string' and type(t[5]) == 'string') then
      redis.call('ZREM', parked, head[1])  -- not ours to use
    elseif tonumber(t[2]) >= 1 then
      redis.call('ZREM', parked, head[1])
      handed_to = t
    end
  end
end

if r.d > now then
  r.s = 'scheduled'
  redis.call('ZADD', scheduled, r.d, id)
  if r.x then redis.call('ZADD', expiring, r.x, id) end
elseif handed_to then
  local t = handed_to
  local deadline = string.format('%.17g', now + tonumber(t[3]))
  local token = t[1] .. '1'
  r.s, r.a, r.st, r.w, r.t, r.dl = 'running', 1, now, t[5], token, tonumber(deadline)
  redis.call('ZADD', running, r.dl, id)
else
  r.s = 'queued'
  redis.call('ZADD', ready, -r.p, ready_member(r, id))
  if r.x then redis.call('ZADD', expiring, r.x, id) end
end
redis.call('HSET', record, id, cmsgpack.pack(r))
redis.call('ZADD', jobs, 0, listing_member(r, id))
redis.call('ZADD', created, 0, created_member(r, id))
if handed_to then
  -- Noted, so that the worker's next reserve finds it if the message is lost
  -- (unpark.lua); then the lease goes to the worker on its channel (enqueue.lua's
  -- message for one job).
  local t = handed_to
  local deadline = string.format('%.17g', now + tonumber(t[3]))
  redis.call('HSET', handed, t[1], deadline .. ' ' .. id)
  local function netstring(s)
    return #s .. ':' .. s
  end
  redis.call('PUBLISH', t[4], netstring(t[1]) .. netstring(deadline) .. netstring(id)
    .. netstring(r.t) .. '1:1' .. netstring(ARGV[6]))
elseif r.s == 'queued' then
  redis.call('PUBLISH', ARGV[2], '1')
end
return {id, 1}
