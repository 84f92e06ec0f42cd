-- acquire_slot: take (or renew) one of `limit` slots of a concurrency limit.
-- KEYS: [1] the limit's zset (P:{%slots:<key>}:holders): holder → end of its TTL.
-- ARGV: [1] now, [2] limit, [3] holder, [4] until, [5] TTL in ms (key lapse, Redis time).
-- Returns: 1 if held now, 0 if every slot is taken.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[3])
    and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
local ttl = tonumber(ARGV[5])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
