-- clear_outbox: forget outbox entries whose follow-ups are done. Idempotent: ids the
-- queue's outbox does not hold are ignored.
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: job ids.
-- Returns: how many entries were removed.
local q = queue_at(1)
local n = 0
for _, id in ipairs(ARGV) do
  local r = load(q, id)
  if r and r.o then
    n = n + redis.call('ZREM', q.outbox, outbox_member(r, id))
  end
end
return n
