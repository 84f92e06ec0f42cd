-- worker_register: record or refresh a live worker until `until`.
-- KEYS: [1] workers hash, [2] workers:seen zset.
-- ARGV: [1] worker id, [2] worker info (JSON), [3] until.
-- Returns: nothing.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
