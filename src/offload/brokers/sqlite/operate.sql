-- The SQLite broker's operations statements (pause flags, attempt history), apart from
-- the job lifecycle in queries.sql. Tables: schema.sql, version 7.

-- name: pause_set
INSERT INTO offload_paused (name, paused_at) VALUES (?, ?) ON CONFLICT DO NOTHING;

-- name: pause_clear
DELETE FROM offload_paused WHERE name = ?;

-- name: paused
SELECT name, paused_at FROM offload_paused;

-- name: attempt_last
SELECT n, token FROM offload_attempts WHERE job_id = ? ORDER BY n DESC LIMIT 1;

-- name: attempt_add
INSERT INTO offload_attempts (job_id, n, token, record) VALUES (?, ?, ?, ?);

-- name: attempt_trim
DELETE FROM offload_attempts WHERE job_id = ? AND n <= ?;

-- name: attempts
SELECT n, record FROM offload_attempts WHERE job_id = ? ORDER BY n;

-- name: attempts_orphans
DELETE FROM offload_attempts WHERE job_id NOT IN (SELECT id FROM offload_jobs);
