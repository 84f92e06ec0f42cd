-- The PostgreSQL broker's operations statements (pause flags, attempt history), apart
-- from the job lifecycle in queries.sql. Tables: migrations/0008_operate.sql.

-- name: pause_set
INSERT INTO offload_paused (name, paused_at) VALUES (%(name)s, %(now)s)
ON CONFLICT DO NOTHING;

-- name: pause_clear
DELETE FROM offload_paused WHERE name = %(name)s;

-- name: paused
SELECT name, paused_at FROM offload_paused;

-- name: attempt_add
-- One statement: append unless the newest record has this token, then trim to `keep`.
WITH last AS (
    SELECT n, token FROM offload_attempts WHERE job_id = %(id)s ORDER BY n DESC LIMIT 1
), added AS (
    INSERT INTO offload_attempts (job_id, n, token, record)
    SELECT %(id)s, coalesce((SELECT n FROM last), 0) + 1, %(token)s, %(record)s
    WHERE NOT EXISTS (SELECT 1 FROM last WHERE token = %(token)s)
    ON CONFLICT DO NOTHING
    RETURNING n
)
DELETE FROM offload_attempts
WHERE job_id = %(id)s AND n <= (SELECT n FROM added) - %(keep)s;

-- name: attempts
SELECT n, record FROM offload_attempts WHERE job_id = %(id)s ORDER BY n;

-- name: attempts_orphans
DELETE FROM offload_attempts a
WHERE NOT EXISTS (SELECT 1 FROM offload_jobs j WHERE j.id = a.job_id);
