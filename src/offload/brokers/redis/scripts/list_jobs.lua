-- list_jobs (read only): the jobs of one queue, newest first, below a cursor, that
-- are in a given state and were created within a time range. Newest first is the
-- listing set `jobs` (enqueue order); with a time range it is the creation index
-- `created` (created_at, then enqueue order), whose members start with the creation
-- time in ms, so the range is a lex range of it. Two ways, whichever reads fewer jobs:
--  * in a queue of more than `budget` jobs, a state with at most `direct` jobs in its
--    own set (ready, scheduled, running, dead, ...) is read from that set whole: each
--    job's member is rebuilt from its record, those below the cursor and in the range
--    sorted newest first. A few dead or running jobs among a million are found without
--    walking the million. (A record corrupted in place is listed from its set only
--    once housekeeping has buried it; the walk lists it as dead at once.)
--  * otherwise (no state, or a common one) the index is walked from the cursor (or the
--    range's end) down to the range's start, at most `budget` jobs per call, so a sparse
--    filter never blocks Redis for long; the caller continues from the returned
--    position.
-- A queue whose `created` misses jobs (stored before the index existed) is listed by a
-- time range from `jobs`, every job's time checked (the range is then no seek).
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: [1] start below this member ('' = from the newest), [2] state ('' = any),
--       [3] most matches wanted, [4] budget, [5] direct (largest state set read whole),
--       [6] since, [7] until (creation times, '' = unbounded), [8] lex start and
--       [9] lex end of the range in `created` ('-' and '+' when unbounded).
-- Returns: {position, exhausted (1/0), index ('created' or 'jobs'), then member,
--          record, payload, result per match} where `position` is the last member
--          scanned ('' if none).
local q = queue_at(1)
local below, state = ARGV[1], ARGV[2]
local want, budget, direct = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local since, till = tonumber(ARGV[6]), tonumber(ARGV[7])
local ranged = since ~= nil or till ~= nil
local index, member_of, lo, hi = q.jobs, listing_member, '-', '+'
local index_name = 'jobs'
if ranged and redis.call('ZCARD', q.created) >= redis.call('ZCARD', q.jobs) then
  index, member_of, lo, hi = q.created, created_member, ARGV[8], ARGV[9]
  index_name = 'created'
end
-- Where the id starts in a member of the index.
local id_at = (index_name == 'created') and 43 or 28

local function in_range(r)
  return (since == nil or r.c >= since) and (till == nil or r.c <= till)
end

local function emit(out, member, id, raw)
  out[#out + 1] = member
  out[#out + 1] = raw
  out[#out + 1] = redis.call('HGET', q.payload, id) or ''
  out[#out + 1] = redis.call('HGET', q.result, id) or false
end

local STATE_SET = {
  queued = q.ready, scheduled = q.scheduled, running = q.running, dead = q.dead,
  succeeded = q.succeeded, expired = q.expired, cancelled = q.cancelled,
}
local set = STATE_SET[state]
if set and redis.call('ZCARD', q.jobs) > budget and redis.call('ZCARD', set) <= direct then
  -- Members of `ready` carry a 27-character order prefix; the others are bare ids.
  local skip = (state == 'queued') and 28 or 1
  local found = {}
  for _, member in ipairs(redis.call('ZRANGE', set, 0, -1)) do
    local id = string.sub(member, skip)
    local r = load(q, id)
    if r and r.s == state and in_range(r) then
      local listed = member_of(r, id)
      if below == '' or listed < below then
        found[#found + 1] = {listed, id}
      end
    end
  end
  table.sort(found, function(a, b) return a[1] > b[1] end)
  local out = {'', 1, index_name}
  for i = 1, math.min(want, #found) do
    local listed, id = found[i][1], found[i][2]
    emit(out, listed, id, redis.call('HGET', q.record, id))
    out[1] = listed
  end
  if #found > want then out[2] = 0 end
  return out
end

local max = hi
if below ~= '' and (max == '+' or '(' .. below < max) then max = '(' .. below end
local members = redis.call('ZREVRANGEBYLEX', index, max, lo, 'LIMIT', 0, budget)
local out = {'', 0, index_name}
local found = 0
for _, member in ipairs(members) do
  out[1] = member
  local id = string.sub(member, id_at)
  local raw = redis.call('HGET', q.record, id)
  -- A corrupt record is listed as dead: inspection shows it as an undecodable dead
  -- job, which the broker makes it once its housekeeping reaches it.
  local r = raw and load(q, id)
  local s = r and r.s or 'dead'
  if raw and (state == '' or s == state) and (not ranged or (r and in_range(r))) then
    emit(out, member, id, raw)
    found = found + 1
    if found == want then return out end
  end
end
if #members < budget then out[2] = 1 end
return out
