-- release: running → queued at once, the attempt not counted, in its old place.
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: [1] wake-up channel, then pairs of job id and token.
-- Returns: how many jobs went back (leases no longer ours are ignored).
local q = queue_at(1)
local n = 0
for i = 2, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local r = load(q, id)
  if r and r.s == 'running' and r.t == token then
    detach(q, id, r)
    r.s, r.a, r.t, r.dl, r.w = 'queued', math.max(r.a - 1, 0), nil, nil, nil
    attach(q, id, r)
    n = n + 1
  end
end
if n > 0 then
  redis.call('PUBLISH', ARGV[1], '1')
end
return n
