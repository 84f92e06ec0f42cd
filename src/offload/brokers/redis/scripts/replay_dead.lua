-- replay_dead: dead → queued now, attempt count reset, a cancel request of its last run
-- cleared (the replayed run is not one anyone cancelled).
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: [1] now, [2] wake-up channel, [3..] job ids (none: every dead job).
-- Returns: how many jobs moved.
local q = queue_at(1)
local now = tonumber(ARGV[1])
local ids = {}
if #ARGV > 2 then
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', q.dead, 0, -1)
end
local n = 0
for _, id in ipairs(ids) do
  local r = load(q, id)
  if r and r.s == 'dead' then
    detach(q, id, r)
    r.s, r.a, r.d, r.f, r.w, r.cx = 'queued', 0, now, nil, nil, nil
    attach(q, id, r)
    n = n + 1
  end
end
if n > 0 then
  redis.call('PUBLISH', ARGV[2], '1')
end
return n
