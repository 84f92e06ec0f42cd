-- clear_outbox: forget outbox entries whose follow-ups are done. Idempotent: ids the
-- queue's outbox does not hold are ignored.
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: job ids.
-- Returns: the ids whose entries this call removed (so each end is reported once).
local q = queue_at(1)
local removed = {}
for _, id in ipairs(ARGV) do
  local r = load(q, id)
  if r and r.o and redis.call('ZREM', q.outbox, outbox_member(r, id)) == 1 then
    removed[#removed + 1] = id
  end
end
return removed
