-- list_jobs (read only): the jobs of one queue, newest first, below a cursor, that
-- are in a given state. Scans at most `budget` jobs per call, so a sparse filter never
-- blocks Redis for long; the caller continues from the returned position.
-- KEYS: the 16 keys of the queue (QueueKeys order).
-- ARGV: [1] start below this listing member ('' = from the newest), [2] state ('' =
--       any), [3] most matches wanted, [4] budget.
-- Returns: {position, exhausted (1/0), then member, record, payload, result per match}
--          where `position` is the last member scanned ('' if none).
local q = queue_at(1)
local below, state = ARGV[1], ARGV[2]
local want, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local max = '+'
if below ~= '' then max = '(' .. below end
local members = redis.call('ZREVRANGEBYLEX', q.jobs, max, '-', 'LIMIT', 0, budget)
local out = {'', 0}
local found = 0
for _, member in ipairs(members) do
  out[1] = member
  local id = string.sub(member, 28)
  local raw = redis.call('HGET', q.record, id)
  -- A corrupt record is listed as dead: inspection shows it as an undecodable dead
  -- job, which the broker makes it once its housekeeping reaches it.
  local r = raw and load(q, id)
  local s = r and r.s or 'dead'
  if raw and (state == '' or s == state) then
    out[#out + 1] = member
    out[#out + 1] = raw
    out[#out + 1] = redis.call('HGET', q.payload, id) or ''
    out[#out + 1] = redis.call('HGET', q.result, id) or false
    found = found + 1
    if found == want then return out end
  end
end
if #members < budget then out[2] = 1 end
return out
