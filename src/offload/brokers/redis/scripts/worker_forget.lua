-- worker_forget: forget one worker (clean shutdown), or every worker whose
-- registration has lapsed (sweep).
-- KEYS: [1] workers hash, [2] workers:seen zset.
-- ARGV: [1] 'id' and a worker id, or 'lapsed' and now.
-- Returns: how many workers were forgotten.
local ids
if ARGV[1] == 'id' then
  ids = {ARGV[2]}
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
end
for _, id in ipairs(ids) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return #ids
