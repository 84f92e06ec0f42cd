-- The named statements of the PostgreSQL broker, loaded by `_sql.py`.
--
-- Each starts at a `-- name: <name>` line and takes psycopg's %(name)s parameters.
-- State conditions are literals, never parameters, so the planner matches them to the
-- partial indexes of schema.sql even in a generic (prepared) plan. Statements that make
-- a job ready now call pg_notify(channel, queue) for it: inside a transaction the
-- notification is sent at commit, so a listening worker never wakes for a job it cannot
-- see yet, and never misses one that committed.
--
-- Statements that end a job (ack, bury, cancel, expiry) pass the ids they ended to
-- offload_notify_ends(%(ends)s, ...): one notification per statement, which wakes
-- `wait_finished` in every process. Those that end a waiting job without a worker
-- (cancel, expiry) also set its outbox_seq (if `flow`, set for every job since the
-- metrics count these ends): the outbox entry is the state change's row.
-- Every statement that ends a job or an attempt also counts it, per queue, in its minute
-- (%(minute)s) of offload_finished, by offload_count_finished (0012_finished.sql).

-- name: reserve
SELECT id, token, queue, attempt, deadline, payload
  FROM offload_reserve_v2(%(queues)s::text[], %(worker_id)s, %(now)s, %(lease_s)s,
                          %(limit)s, %(lease_error)s, %(retention_s)s, %(ends)s);

-- name: enqueue
-- Conflicts on `id` (the same envelope sent twice) or `key` store nothing; rows of one
-- call go in order, so the first of several jobs with one key wins. It writes only the
-- job rows: inside an application's transaction (`enqueue_in`), an uncommitted row of
-- ours in any other table would make other transactions wait for that commit. The one
-- wait left is inherent: a transaction enqueueing a KEY that another open transaction
-- has just enqueued waits for it to end (the key is unique).
WITH input AS (
    SELECT *
      FROM unnest(%(ids)s::text[], %(queues)s::text[], %(tasks)s::text[], %(states)s::text[],
                  %(priorities)s::integer[], %(max_attempts)s::integer[], %(keys)s::text[],
                  %(created)s::double precision[], %(due)s::double precision[],
                  %(expires)s::double precision[], %(payloads)s::bytea[],
                  %(flows)s::boolean[])
           WITH ORDINALITY
           AS t(id, queue, task, state, priority, max_attempts, key, created_at, due_at,
                expires_at, payload, flow, ord)
)
INSERT INTO offload_jobs
       (id, queue, task, state, priority, max_attempts, key, created_at, due_at,
        expires_at, payload, flow)
SELECT id, queue, task, state, priority, max_attempts, key, created_at, due_at,
       expires_at, payload, flow
  FROM input
 ORDER BY ord
ON CONFLICT DO NOTHING
RETURNING id, CASE WHEN state = 'queued' THEN pg_notify(%(channel)s, queue) END;

-- name: enqueue_one
-- `enqueue` for a call of one job (a request's `task.enqueue()`): the same row, the same
-- conflict rule and notification, from plain parameters (`_rows.enqueue_one_params`).
-- Dumping twelve one-element arrays took about a third of such a call's client CPU.
INSERT INTO offload_jobs
       (id, queue, task, state, priority, max_attempts, key, created_at, due_at,
        expires_at, payload, flow)
VALUES (%(id)s::text, %(queue)s::text, %(task)s::text, %(state)s::text,
        %(priority)s::integer, %(max_attempts)s::integer, %(key)s::text,
        %(created)s::double precision, %(due)s::double precision,
        %(expires)s::double precision, %(payload)s::bytea, %(flow)s::boolean)
ON CONFLICT DO NOTHING
RETURNING id, CASE WHEN state = 'queued' THEN pg_notify(%(channel)s, queue) END;

-- name: ids_for_keys
SELECT key, id FROM offload_jobs WHERE key = ANY(%(keys)s::text[]);

-- name: queued_exists
-- Whether a job waits in one of the queues now (offload_jobs_ready): asked once, by the
-- first `wait` of a listener, for jobs committed before its LISTEN took effect.
SELECT EXISTS (
       SELECT 1 FROM offload_jobs
        WHERE state = 'queued' AND queue = ANY(%(queues)s::text[])) AS found;

-- name: next_due
-- The earliest scheduled job of each queue (offload_jobs_scheduled_queue), then the least.
SELECT min(n.due_at)
  FROM unnest(%(queues)s::text[]) AS q(name)
 CROSS JOIN LATERAL (
       SELECT due_at FROM offload_jobs
        WHERE state = 'scheduled' AND queue = q.name
        ORDER BY due_at
        LIMIT 1) AS n;

-- name: extend
-- A lapsed lease that no reserve has taken back yet is still ours (as for ack).
UPDATE offload_jobs AS j
   SET lease_deadline = %(deadline)s
  FROM unnest(%(ids)s::text[], %(tokens)s::text[]) AS l(id, token)
 WHERE j.id = l.id AND j.lease_token = l.token AND j.state = 'running'
RETURNING l.id, l.token;

-- name: ack_many
-- Every ack of a batch in one statement; the (id, token) pairs it returns are the leases
-- that were still held. `ended` is a CTE (calling a volatile function, so never inlined
-- nor rescanned): the batch's ends are notified and counted once.
WITH acked AS (
    UPDATE offload_jobs AS j
       SET state = 'succeeded', result = a.result, finished_at = %(now)s, lease_token = NULL,
           lease_deadline = NULL, error = NULL, purge_at = %(now)s + a.ttl
      FROM unnest(%(ids)s::text[], %(tokens)s::text[], %(results)s::bytea[],
                  %(ttls)s::double precision[]) AS a(id, token, result, ttl)
     WHERE j.id = a.id AND j.lease_token = a.token AND j.state = 'running'
    RETURNING a.id, a.token, j.queue
), ended AS (
    SELECT offload_notify_ends(%(ends)s, array_agg(id)) AS sent,
           offload_count_finished(%(minute)s::bigint, 'succeeded', array_agg(queue)) AS counted
      FROM acked
)
SELECT acked.id, acked.token FROM acked, ended;

-- name: retry
WITH moved AS (
    UPDATE offload_jobs
       SET state = 'scheduled', due_at = %(at)s, error = %(error)s, lease_token = NULL,
           lease_deadline = NULL
     WHERE id = %(id)s AND lease_token = %(token)s AND state = 'running'
    RETURNING queue, CASE WHEN due_at <= %(now)s THEN pg_notify(%(channel)s, queue) END
)
SELECT offload_count_finished(%(minute)s::bigint, 'failed', ARRAY[queue]) FROM moved;

-- name: bury
UPDATE offload_jobs
   SET state = 'dead', error = %(error)s, finished_at = %(now)s, lease_token = NULL,
       lease_deadline = NULL
 WHERE id = %(id)s AND lease_token = %(token)s AND state = 'running'
RETURNING offload_notify_ends(%(ends)s, ARRAY[id]),
          offload_count_finished(%(minute)s::bigint, 'dead', ARRAY[queue]);

-- name: release
-- The attempt that was counted at reserve is given back: the job never ran.
UPDATE offload_jobs AS j
   SET state = 'queued', attempt = greatest(j.attempt - 1, 0), lease_token = NULL,
       lease_deadline = NULL, worker_id = NULL
  FROM unnest(%(ids)s::text[], %(tokens)s::text[]) AS l(id, token)
 WHERE j.id = l.id AND j.lease_token = l.token AND j.state = 'running'
RETURNING pg_notify(%(channel)s, j.queue);

-- name: defer
-- Like release, but due at %(at)s: the attempt is given back, the error kept.
UPDATE offload_jobs
   SET state = 'scheduled', due_at = %(at)s, attempt = greatest(attempt - 1, 0),
       lease_token = NULL, lease_deadline = NULL, worker_id = NULL
 WHERE id = %(id)s AND lease_token = %(token)s AND state = 'running'
RETURNING CASE WHEN due_at <= %(now)s THEN pg_notify(%(channel)s, queue) END;

-- name: take_rate
-- One GCRA step in one statement (offload.limits.gcra does the same sums). The upsert
-- locks the key's row and re-checks the WHERE on its latest version, so concurrent
-- takers serialize; when it takes nothing, the wait comes from the row as read.
WITH taken AS (
    INSERT INTO offload_rates AS r (key, tat)
    VALUES (%(key)s, %(now)s + %(interval)s)
    ON CONFLICT (key) DO UPDATE
       SET tat = greatest(r.tat, %(now)s) + %(interval)s
     WHERE greatest(r.tat, %(now)s) - %(now)s - %(tolerance)s <= %(epsilon)s
    RETURNING 1
)
SELECT CASE WHEN EXISTS (SELECT 1 FROM taken) THEN 0.0
            ELSE (SELECT greatest(tat - %(now)s - %(tolerance)s, %(epsilon)s)
                    FROM offload_rates WHERE key = %(key)s)
       END AS wait;

-- name: lock_key
-- Serializes the check-then-write of acquire_slot and bounded enqueue per key.
SELECT pg_advisory_xact_lock(hashtext(%(lock)s));

-- name: slots_lapsed
DELETE FROM offload_slots WHERE key = %(key)s AND expires_at <= %(now)s;

-- name: slot_renew
UPDATE offload_slots SET expires_at = %(until)s WHERE key = %(key)s AND holder = %(holder)s;

-- name: slot_take
INSERT INTO offload_slots (key, holder, expires_at)
SELECT %(key)s, %(holder)s, %(until)s
 WHERE (SELECT count(*) FROM offload_slots WHERE key = %(key)s) < %(limit)s;

-- name: slot_release
DELETE FROM offload_slots WHERE key = %(key)s AND holder = %(holder)s;

-- name: depth
SELECT count(*) AS n FROM offload_jobs
 WHERE queue = %(queue)s AND state IN ('queued', 'scheduled');

-- name: forget_idle_limits
WITH rates AS (DELETE FROM offload_rates WHERE tat <= %(now)s),
     registers AS (DELETE FROM offload_registers WHERE expires_at <= %(now)s)
DELETE FROM offload_slots WHERE expires_at <= %(now)s;

-- name: register_set
-- `compare_and_set` expecting an unset register: sets it if it has no row, a lapsed one
-- or already the new value; returns no row if it was left alone.
INSERT INTO offload_registers AS r (name, value, expires_at)
VALUES (%(name)s, %(new)s, %(until)s)
ON CONFLICT (name) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
 WHERE r.expires_at <= %(now)s OR r.value = excluded.value
RETURNING value;

-- name: register_move
-- `compare_and_set` expecting a value: sets the register if it holds that value or
-- already the new one (and has not lapsed); returns no row if it was left alone.
UPDATE offload_registers
   SET value = %(new)s, expires_at = %(until)s
 WHERE name = %(name)s AND expires_at > %(now)s AND value IN (%(expected)s, %(new)s)
RETURNING value;

-- name: register_get
SELECT value FROM offload_registers WHERE name = %(name)s AND expires_at > %(now)s;

-- name: cancel
-- Waiting jobs are cancelled (into the outbox, with their end notified); a
-- running one is flagged for cooperative cancellation.
UPDATE offload_jobs
   SET state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END,
       finished_at = CASE WHEN state = 'running' THEN finished_at ELSE %(now)s END,
       purge_at = CASE WHEN state = 'running' THEN purge_at ELSE %(purge_at)s END,
       cancel_requested = cancel_requested OR state = 'running',
       outbox_seq = CASE WHEN state <> 'running' AND flow
                         THEN nextval('offload_outbox_seq') END
 WHERE id = %(id)s AND state IN ('queued', 'scheduled', 'running')
RETURNING id, CASE WHEN state = 'cancelled' THEN offload_notify_ends(%(ends)s, ARRAY[id]) END,
          CASE WHEN state = 'cancelled'
               THEN offload_count_finished(%(minute)s::bigint, 'cancelled', ARRAY[queue]) END;

-- name: get_job
SELECT * FROM offload_jobs WHERE id = %(id)s;

-- name: find
SELECT * FROM offload_jobs WHERE key = %(key)s;

-- name: fold_counts
-- Move the deltas the count triggers appended into the counters (0009_counts.sql): a
-- delta is deleted and added in one statement, so a concurrent fold never counts it
-- twice; rows are upserted in key order, so two folds never deadlock.
WITH moved AS (DELETE FROM offload_count_deltas RETURNING queue, state, n)
INSERT INTO offload_counts AS c (queue, state, n)
SELECT queue, state, sum(n) FROM moved GROUP BY queue, state ORDER BY queue, state
ON CONFLICT (queue, state) DO UPDATE SET n = c.n + EXCLUDED.n;

-- name: count_states
SELECT queue, state, n FROM offload_counts WHERE n <> 0;

-- name: count_states_of
SELECT queue, state, n FROM offload_counts WHERE n <> 0 AND queue = ANY(%(queues)s::text[]);

-- name: oldest_queued
-- The earliest due time among each queue's ready jobs. The ready index is ordered by
-- priority before due time, so walk each queue's distinct priorities (one index seek
-- each; a queue uses a few) and take the first due time under each, instead of
-- reading every ready job.
WITH RECURSIVE levels(queue, priority) AS (
    SELECT q, (SELECT max(priority) FROM offload_jobs
                WHERE state = 'queued' AND queue = q)
      FROM unnest(%(queues)s::text[]) AS q
    UNION ALL
    SELECT l.queue, (SELECT max(priority) FROM offload_jobs
                      WHERE state = 'queued' AND queue = l.queue AND priority < l.priority)
      FROM levels AS l
     WHERE l.priority IS NOT NULL
)
SELECT queue, min((SELECT min(due_at) FROM offload_jobs
                    WHERE state = 'queued' AND queue = l.queue AND priority = l.priority))
       AS oldest
  FROM levels AS l
 WHERE l.priority IS NOT NULL
 GROUP BY queue;

-- name: queues
-- Every queue that holds a job (a loose scan of offload_jobs_queue_state: one index
-- probe per queue, however many jobs) or held one since purged (offload_queues, which
-- the statements that delete jobs fill; enqueue writes none, see `enqueue`).
WITH RECURSIVE held AS (
    (SELECT queue FROM offload_jobs ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM offload_jobs AS j
             WHERE j.queue > held.queue ORDER BY j.queue LIMIT 1)
      FROM held
     WHERE held.queue IS NOT NULL
)
SELECT queue AS name FROM held WHERE queue IS NOT NULL
 UNION
SELECT name FROM offload_queues
 ORDER BY name;

-- name: expire_due
-- Waiting jobs past their expiry will never run (the same step as in reserve, with the
-- outbox and the notification); returns how many expired.
WITH expired AS (
    UPDATE offload_jobs AS j
       SET state = 'expired', finished_at = %(now)s, purge_at = %(purge_at)s,
           outbox_seq = CASE WHEN j.flow THEN nextval('offload_outbox_seq') END
      FROM (SELECT w.seq FROM offload_jobs AS w
             WHERE w.expires_at IS NOT NULL AND w.state IN ('queued', 'scheduled')
               AND w.expires_at <= %(now)s
             FOR UPDATE SKIP LOCKED) AS stale
     WHERE j.seq = stale.seq
    RETURNING j.id, j.queue
)
SELECT count(*) AS n, offload_notify_ends(%(ends)s, array_agg(id)) AS sent,
       offload_count_finished(%(minute)s::bigint, 'expired', array_agg(queue)) AS counted
  FROM expired;

-- name: purge_finished
-- A bounded batch per call, so one sweep never holds a long transaction; rows
-- another sweeper is deleting are skipped. Dead jobs have no purge_at: they stay until
-- purge_dead. The queues of the deleted jobs are remembered (see `queues`).
WITH gone AS (
    DELETE FROM offload_jobs
     WHERE seq IN (SELECT seq FROM offload_jobs
                    WHERE purge_at IS NOT NULL AND purge_at <= %(now)s
                      AND state IN ('succeeded', 'expired', 'cancelled')
                    LIMIT %(batch)s
                      FOR UPDATE SKIP LOCKED)
    RETURNING queue
), remembered AS (
    INSERT INTO offload_queues (name)
    SELECT DISTINCT queue FROM gone ORDER BY 1
    ON CONFLICT DO NOTHING
)
SELECT count(*) AS n FROM gone;

-- name: register_worker
INSERT INTO offload_workers
       (id, hostname, pid, queues, concurrency, started_at, last_seen, running, processed,
        extra, expires_at)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s, %(started_at)s,
        %(last_seen)s, %(running)s, %(processed)s, %(extra)s, %(expires_at)s)
ON CONFLICT (id) DO UPDATE
   SET hostname = excluded.hostname, pid = excluded.pid, queues = excluded.queues,
       concurrency = excluded.concurrency, started_at = excluded.started_at,
       last_seen = excluded.last_seen, running = excluded.running,
       processed = excluded.processed, extra = excluded.extra,
       expires_at = excluded.expires_at;

-- name: unregister_worker
DELETE FROM offload_workers WHERE id = %(id)s;

-- name: live_workers
SELECT * FROM offload_workers WHERE expires_at > %(now)s ORDER BY id;

-- name: forget_lapsed_workers
DELETE FROM offload_workers WHERE expires_at <= %(now)s;

-- name: join_insert
INSERT INTO offload_joins (group_id, member_id, idx, outcome, joined_at)
VALUES (%(group_id)s, %(member_id)s, %(idx)s, %(outcome)s, %(now)s)
ON CONFLICT DO NOTHING;

-- name: join_count
SELECT count(*) AS n FROM offload_joins WHERE group_id = %(group_id)s;

-- name: join_outcomes
SELECT outcome FROM offload_joins WHERE group_id = %(group_id)s ORDER BY idx;

-- name: forget_lapsed_joins
DELETE FROM offload_joins WHERE joined_at <= %(before)s;

-- name: cancel_running
UPDATE offload_jobs
   SET state = 'cancelled', error = %(error)s, finished_at = %(now)s, purge_at = %(purge_at)s,
       lease_token = NULL, lease_deadline = NULL
 WHERE id = %(id)s AND lease_token = %(token)s AND state = 'running'
RETURNING offload_notify_ends(%(ends)s, ARRAY[id]),
          offload_count_finished(%(minute)s::bigint, 'cancelled', ARRAY[queue]);

-- name: cancel_requested
SELECT id FROM offload_jobs
 WHERE id = ANY(%(ids)s::text[]) AND state = 'running' AND cancel_requested;

-- name: workflow_jobs
-- The id floor bounds the scan to jobs made since the workflow (ids sort by time).
-- Matched on the envelope's bytes (`"workflow_id":"<id>"`, as offload writes it), not
-- by parsing them: one corrupt payload must not break the listing. The caller drops
-- rows whose decoded envelope names another workflow (the text in an argument).
SELECT * FROM offload_jobs
 WHERE id >= %(floor)s AND position(%(needle)s in payload) > 0
 ORDER BY seq LIMIT %(limit)s;

-- name: set_progress
INSERT INTO offload_progress (job_id, progress) VALUES (%(id)s, %(progress)s)
ON CONFLICT (job_id) DO UPDATE SET progress = EXCLUDED.progress;

-- name: get_job_with_progress
SELECT j.*, p.progress FROM offload_jobs AS j
  LEFT JOIN offload_progress AS p ON p.job_id = j.id
 WHERE j.id = %(id)s;

-- name: progress_orphans
DELETE FROM offload_progress AS p
 WHERE NOT EXISTS (SELECT 1 FROM offload_jobs AS j WHERE j.id = p.job_id);

-- name: outbox
SELECT id, state, payload FROM offload_jobs
 WHERE outbox_seq IS NOT NULL
 ORDER BY outbox_seq
 LIMIT %(limit)s;

-- name: clear_outbox
-- The rows it cleared: a concurrent call waits for the row lock, then sees NULL.
UPDATE offload_jobs SET outbox_seq = NULL
 WHERE id = ANY(%(ids)s::text[]) AND outbox_seq IS NOT NULL
RETURNING id;

-- name: job_state
SELECT state FROM offload_jobs WHERE id = %(id)s;

-- Ledger: this schema as the state store of a delivery-only broker (`_ledger.py`). A
-- ledger job has a stamp (its current copy; '' before the first) and `publish_by` while
-- that copy is unconfirmed; offload_reserve_v2 leaves such jobs alone.

-- name: ledger_enqueue
-- `enqueue` for ledger jobs, each with its first copy's stamp ('' if not due yet) and
-- `publish_by`; no NOTIFY: nobody reserves them here.
WITH input AS (
    SELECT *
      FROM unnest(%(ids)s::text[], %(queues)s::text[], %(tasks)s::text[], %(states)s::text[],
                  %(priorities)s::integer[], %(max_attempts)s::integer[], %(keys)s::text[],
                  %(created)s::double precision[], %(due)s::double precision[],
                  %(expires)s::double precision[], %(payloads)s::bytea[],
                  %(flows)s::boolean[], %(stamps)s::text[],
                  %(publish_by)s::double precision[])
           WITH ORDINALITY
           AS t(id, queue, task, state, priority, max_attempts, key, created_at, due_at,
                expires_at, payload, flow, stamp, publish_by, ord)
)
INSERT INTO offload_jobs
       (id, queue, task, state, priority, max_attempts, key, created_at, due_at,
        expires_at, payload, flow, stamp, publish_by)
SELECT id, queue, task, state, priority, max_attempts, key, created_at, due_at,
       expires_at, payload, flow, stamp, publish_by
  FROM input
 ORDER BY ord
ON CONFLICT DO NOTHING
RETURNING id;

-- name: ledger_due
-- Scheduled ledger jobs now due, and queued ones whose copy was not confirmed in time
-- (or replayed), each given a new copy; SKIP LOCKED: two workers never take one job.
WITH due AS (
    SELECT j.seq FROM offload_jobs AS j
     WHERE j.state = 'scheduled' AND j.due_at <= %(now)s AND j.stamp IS NOT NULL
       AND j.queue = ANY(%(queues)s::text[])
     ORDER BY j.due_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), unconfirmed AS (
    SELECT j.seq FROM offload_jobs AS j
     WHERE j.publish_by IS NOT NULL AND j.publish_by <= %(now)s AND j.state = 'queued'
       AND j.queue = ANY(%(queues)s::text[])
     ORDER BY j.publish_by
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
UPDATE offload_jobs AS j
   SET state = 'queued', stamp = replace(gen_random_uuid()::text, '-', ''),
       publish_by = %(publish_by)s
 WHERE j.seq IN (SELECT seq FROM due UNION ALL SELECT seq FROM unconfirmed)
RETURNING j.id, j.queue, j.priority, j.payload, j.stamp;

-- name: ledger_published
UPDATE offload_jobs AS j SET publish_by = NULL
  FROM unnest(%(ids)s::text[], %(stamps)s::text[]) AS c(id, stamp)
 WHERE j.id = c.id AND j.stamp = c.stamp;

-- name: ledger_claim
-- The copy `stamp` of a waiting job, or of a running one (delivered again: its holder is
-- gone), runs under a new lease. A waiting job past its expiry is not claimed (its copy
-- is dropped; `sweep` expires it).
UPDATE offload_jobs AS j
   SET state = 'running', lease_token = c.token, attempt = j.attempt + 1,
       started_at = %(now)s, worker_id = %(worker_id)s, lease_deadline = %(deadline)s,
       publish_by = NULL,
       error = CASE WHEN j.state = 'running' THEN %(lease_error)s ELSE j.error END
  FROM unnest(%(ids)s::text[], %(stamps)s::text[], %(tokens)s::text[]) AS c(id, stamp, token)
 WHERE j.id = c.id AND j.stamp = c.stamp
   AND (j.state = 'running'
        OR (j.state = 'queued' AND (j.expires_at IS NULL OR j.expires_at > %(now)s)))
RETURNING j.id, c.token, j.queue, j.attempt, j.payload;

-- name: finished
-- The shards of each minute summed (0012_finished.sql); the primary key's leading
-- `minute` bounds the read to the minutes asked for.
SELECT queue, minute, outcome, sum(n) AS n FROM offload_finished
 WHERE minute >= %(first)s AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
 GROUP BY queue, minute, outcome
 ORDER BY queue, minute, outcome;

-- name: finished_prune
DELETE FROM offload_finished WHERE minute < %(before)s;
