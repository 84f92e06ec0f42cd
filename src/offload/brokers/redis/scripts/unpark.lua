-- unpark: end a worker's parking in a queue (see reserve.lua's ARGV[11]), and return
-- what `enqueue` handed it meanwhile that it still holds (the worker drops what its
-- handoff message gave it already: a lost message costs no lease).
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: [1] the ticket (as parked), [2] its token prefix.
-- Returns: per job handed to the ticket and still leased under it, its id, token,
--          attempt, lease deadline and payload.
local q = queue_at(1)
local prefix = ARGV[2]
redis.call('ZREM', q.parked, ARGV[1])
local handed = redis.call('HGET', q.handed, prefix)
local out = {}
if handed then
  redis.call('HDEL', q.handed, prefix)
  local first = true
  for id in string.gmatch(handed, '%S+') do
    if first then
      first = false  -- the lease deadline
    else
      local r = load(q, id)
      if r and r.s == 'running' and r.t and string.sub(r.t, 1, #prefix) == prefix then
        out[#out + 1] = id
        out[#out + 1] = r.t
        out[#out + 1] = r.a
        out[#out + 1] = string.format('%.17g', r.dl)
        out[#out + 1] = redis.call('HGET', q.payload, id) or ''
      end
    end
  end
end
return out
