-- extend: push the deadline of leases still held (token matches; a lease past its
-- deadline that no reserve has taken back yet is still held, as for ack).
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: [1] now, [2] new deadline, then pairs of job id and token.
-- Returns: per lease, 1 if extended, 0 if it is no longer ours.
local q = queue_at(1)
local now, deadline = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local r = load(q, id)
  if r and r.s == 'running' and r.t == token then
    detach(q, id, r)
    r.dl = deadline
    attach(q, id, r)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
