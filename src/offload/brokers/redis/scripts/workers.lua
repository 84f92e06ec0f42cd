-- workers (read only): every worker whose registration has not lapsed.
-- KEYS: [1] workers hash, [2] workers:seen zset.
-- ARGV: [1] now.
-- Returns: the JSON info of each live worker, by id.
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')
table.sort(ids)
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = redis.call('HGET', KEYS[1], id) or '{}'
end
return out
