-- expand: drain the queue's inbox into the full state (`queue_at` does it, see
-- _inbox.lua), for a reader that found a job's payload without its record (`get_job`
-- right after a lean enqueue).
-- KEYS: the keys of the queue (QueueKeys order).
-- ARGV: none.
-- Returns: nothing.
queue_at(1)
