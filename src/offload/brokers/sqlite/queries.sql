-- The named statements of the SQLite broker, loaded by `_store.py` and the modules
-- beside it (`_inspect.py`, `_flow.py`, `_ledger.py`).
--
-- Each starts at a `-- name: <name>` line. Partial indexes are only used when a query's
-- WHERE clause repeats the index's condition word for word, so conditions such as
-- `state = 'queued'` are literals here, never parameters. Without ANALYZE statistics
-- SQLite prefers an equality on the plain `state` index to a range on a partial index,
-- and would then read every job in that state; the hot statements therefore name their
-- index with INDEXED BY, which also turns a lost index into an error, not a slow scan. Statements marked "(hot)" take
-- positional parameters: executemany over tuples is faster than over dicts.

-- Every statement that inserts, deletes or moves jobs returns their queue (and the state
-- a RETURNING clause cannot see: a moved job's old one, a deleted job's), so that the
-- transaction updates `offload_counts` once per queue and state (`_store.Store._write`).

-- name: promote_due
-- Scheduled jobs whose time has come become ready (index offload_jobs_scheduled).
-- Ledger jobs (stamp set) are published when due by `ledger_due` instead.
UPDATE offload_jobs INDEXED BY offload_jobs_scheduled SET state = 'queued'
 WHERE state = 'scheduled' AND due_at <= :now AND stamp IS NULL
RETURNING queue;

-- name: reclaim_lapsed
-- The visibility timeout: a lease that ran out puts its job back.
UPDATE offload_jobs INDEXED BY offload_jobs_running
   SET state = 'queued', lease_token = NULL, lease_deadline = NULL, worker_id = NULL,
       error = :error
 WHERE state = 'running' AND lease_deadline <= :now AND stamp IS NULL
RETURNING queue;

-- name: expiring
-- Waiting jobs past their expiry will never run: found here with their state, then
-- expired by `expire_job`, recorded in the outbox, and their waiters woken.
SELECT seq, id, queue, state FROM offload_jobs INDEXED BY offload_jobs_expiry
 WHERE expires_at IS NOT NULL AND state IN ('queued', 'scheduled') AND expires_at <= :now;

-- name: expire_job
-- Parameters: now, purge_at, seq.
UPDATE offload_jobs SET state = 'expired', finished_at = ?, purge_at = ? WHERE seq = ?;

-- name: ready_in_queue
-- The best ready jobs of one queue, in index order: no sort, stops after `limit` rows.
-- The casts keep a row whose numbers were overwritten with text (SQLite stores what it
-- is given) from failing the reservation in Python: it costs that job, not the queue.
-- ORDER BY names the table's columns: a bare `priority` would be the cast's alias, an
-- expression no index holds, and SQLite would sort every ready job of the queue.
SELECT seq, id, queue, CAST(priority AS INTEGER) AS priority, CAST(due_at AS REAL) AS due_at,
       CAST(attempt AS INTEGER) AS attempt, payload
  FROM offload_jobs INDEXED BY offload_jobs_ready
 WHERE state = 'queued' AND queue = :queue AND stamp IS NULL
 ORDER BY offload_jobs.priority DESC, offload_jobs.due_at, offload_jobs.seq
 LIMIT :limit;

-- name: lease_job
-- (hot) Parameters: token, now, worker_id, deadline, seq.
UPDATE offload_jobs
   SET state = 'running', lease_token = ?, attempt = attempt + 1, started_at = ?,
       worker_id = ?, lease_deadline = ?
 WHERE seq = ?;

-- name: insert_job
-- (hot) A conflict on `id` or `key` stores nothing; the caller then looks the key up.
INSERT INTO offload_jobs
       (id, queue, task, state, priority, max_attempts, key, created_at, due_at,
        expires_at, payload, flow)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING;

-- name: insert_ledger_job
-- `insert_job` for a job another part delivers (`_ledger.py`): stamp '' until its
-- first copy is made.
INSERT INTO offload_jobs
       (id, queue, task, state, priority, max_attempts, key, created_at, due_at,
        expires_at, payload, flow, stamp)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')
ON CONFLICT DO NOTHING;

-- name: id_for_key
SELECT id FROM offload_jobs WHERE key = ?;

-- name: touch_queue
-- (hot) Parameters: queue, how much to bump its signal (0: just record the queue).
INSERT INTO offload_queues (name, signal) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET signal = signal + excluded.signal WHERE excluded.signal > 0;

-- name: next_due
-- The earliest scheduled job of these queues, walking the scheduled index in due order.
SELECT due_at
  FROM offload_jobs INDEXED BY offload_jobs_scheduled
 WHERE state = 'scheduled' AND queue IN (SELECT value FROM json_each(?))
 ORDER BY due_at
 LIMIT 1;

-- name: signal_total
-- Signals only grow, so any change to one of these queues changes the sum.
SELECT coalesce(sum(signal), 0)
  FROM offload_queues
 WHERE name IN (SELECT value FROM json_each(?));

-- name: extend_lease
-- (hot) Parameters: deadline, id, token. A lapsed lease nobody took back is still ours.
UPDATE offload_jobs SET lease_deadline = ?
 WHERE id = ? AND lease_token = ? AND state = 'running';

-- name: ack
UPDATE offload_jobs
   SET state = 'succeeded', result = :result, finished_at = :now, lease_token = NULL,
       lease_deadline = NULL, error = NULL, purge_at = :purge_at
 WHERE id = :id AND lease_token = :token AND state = 'running'
RETURNING queue;

-- name: running_tokens
-- The lease tokens and queues of running jobs, for a batch of acks (`ack_held`).
-- Parameter: a JSON array of ids.
SELECT id, lease_token, queue FROM offload_jobs
 WHERE id IN (SELECT value FROM json_each(?)) AND state = 'running';

-- name: ack_held
-- (hot) `ack` of a lease `running_tokens` found held, in the same write.
UPDATE offload_jobs
   SET state = 'succeeded', result = :result, finished_at = :now, lease_token = NULL,
       lease_deadline = NULL, error = NULL, purge_at = :purge_at
 WHERE id = :id;

-- name: retry
UPDATE offload_jobs
   SET state = 'scheduled', due_at = :at, error = :error, lease_token = NULL,
       lease_deadline = NULL
 WHERE id = :id AND lease_token = :token AND state = 'running'
RETURNING queue;

-- name: bury
UPDATE offload_jobs
   SET state = 'dead', error = :error, finished_at = :now, lease_token = NULL,
       lease_deadline = NULL
 WHERE id = :id AND lease_token = :token AND state = 'running'
RETURNING queue;

-- name: release
-- The attempt that was counted at reserve is given back: the job never ran.
UPDATE offload_jobs
   SET state = 'queued', attempt = max(attempt - 1, 0), lease_token = NULL,
       lease_deadline = NULL, worker_id = NULL
 WHERE id = :id AND lease_token = :token AND state = 'running'
RETURNING queue;

-- name: defer
-- Like release, but due at :at: the attempt is given back, the error kept as it was.
UPDATE offload_jobs
   SET state = 'scheduled', due_at = :at, attempt = max(attempt - 1, 0), lease_token = NULL,
       lease_deadline = NULL, worker_id = NULL
 WHERE id = :id AND lease_token = :token AND state = 'running'
RETURNING queue;

-- name: depth
SELECT count(*) FROM offload_jobs WHERE queue = ? AND state IN ('queued', 'scheduled');

-- name: rate_tat
SELECT tat FROM offload_rates WHERE key = ?;

-- name: rate_set
INSERT INTO offload_rates (key, tat) VALUES (?, ?)
    ON CONFLICT (key) DO UPDATE SET tat = excluded.tat;

-- name: rates_idle
DELETE FROM offload_rates WHERE tat <= ?;

-- name: slots_lapsed
DELETE FROM offload_slots WHERE key = ? AND expires_at <= ?;

-- name: slot_renew
UPDATE offload_slots SET expires_at = :until WHERE key = :key AND holder = :holder;

-- name: slot_take
-- Takes a slot only while fewer than :limit are held (lapsed ones were deleted first).
INSERT INTO offload_slots (key, holder, expires_at)
SELECT :key, :holder, :until
 WHERE (SELECT count(*) FROM offload_slots WHERE key = :key) < :limit;

-- name: slot_release
DELETE FROM offload_slots WHERE key = ? AND holder = ?;

-- name: slots_all_lapsed
DELETE FROM offload_slots WHERE expires_at <= ?;

-- name: register_get
SELECT value FROM offload_registers WHERE name = ? AND expires_at > ?;

-- name: register_set
INSERT INTO offload_registers (name, value, expires_at) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at;

-- name: registers_lapsed
DELETE FROM offload_registers WHERE expires_at <= ?;

-- name: job_place
SELECT queue, state FROM offload_jobs WHERE id = ?;

-- name: cancel_waiting
UPDATE offload_jobs
   SET state = 'cancelled', finished_at = :now, purge_at = :purge_at
 WHERE id = :id AND state IN ('queued', 'scheduled');

-- name: flag_cancel
UPDATE offload_jobs SET cancel_requested = 1 WHERE id = :id AND state = 'running';

-- name: job_state
SELECT state FROM offload_jobs WHERE id = ?;

-- name: get_job
SELECT * FROM offload_jobs WHERE id = ?;

-- name: find
SELECT * FROM offload_jobs WHERE key = ?;

-- name: count_states
-- The counters the triggers keep (schema.sql, version 8): a few rows, however many jobs.
SELECT queue, state, n FROM offload_counts WHERE n <> 0;

-- name: count_states_of
SELECT queue, state, n
  FROM offload_counts
 WHERE n <> 0 AND queue IN (SELECT value FROM json_each(?));

-- name: oldest_queued
-- The earliest due time among one queue's ready jobs: the ready index is ordered by
-- priority before due time, so walk its distinct priorities (a seek each; a queue uses
-- a few) and take the first due time under each, instead of reading every ready job.
WITH RECURSIVE levels(priority) AS (
    SELECT max(priority) FROM offload_jobs INDEXED BY offload_jobs_ready
     WHERE state = 'queued' AND queue = :queue
    UNION ALL
    SELECT (SELECT max(priority) FROM offload_jobs INDEXED BY offload_jobs_ready
             WHERE state = 'queued' AND queue = :queue AND priority < levels.priority)
      FROM levels
     WHERE levels.priority IS NOT NULL
)
SELECT min((SELECT min(due_at) FROM offload_jobs INDEXED BY offload_jobs_ready
             WHERE state = 'queued' AND queue = :queue AND priority = levels.priority))
  FROM levels
 WHERE levels.priority IS NOT NULL;

-- name: queues
SELECT name FROM offload_queues ORDER BY name;

-- name: replay_dead
-- A ledger job needs a new copy in its delivery: `ledger_unconfirmed` makes it at once.
-- A cancel requested while the job last ran is cleared: nobody cancelled the replay.
UPDATE offload_jobs
   SET state = 'queued', attempt = 0, due_at = :now, finished_at = NULL, worker_id = NULL,
       cancel_requested = 0,
       publish_by = CASE WHEN stamp IS NULL THEN NULL ELSE :now END
 WHERE state = 'dead'
   AND (:queue IS NULL OR queue = :queue)
   AND (:ids IS NULL OR id IN (SELECT value FROM json_each(:ids)))
RETURNING queue;

-- name: purge_dead
DELETE FROM offload_jobs
 WHERE state = 'dead'
   AND (:queue IS NULL OR queue = :queue)
   AND (:ids IS NULL OR id IN (SELECT value FROM json_each(:ids)))
   AND (:cutoff IS NULL OR coalesce(finished_at, :now) < :cutoff)
RETURNING queue;

-- name: purge_finished
-- Dead jobs have no purge_at: they stay until purge_dead. The state test is a guard.
DELETE FROM offload_jobs INDEXED BY offload_jobs_purge
 WHERE purge_at IS NOT NULL AND purge_at <= :now
   AND state IN ('succeeded', 'expired', 'cancelled')
RETURNING queue, state;

-- name: count_add
-- (hot) One row per queue and state a transaction moved jobs in: queue, state, delta.
INSERT INTO offload_counts (queue, state, n) VALUES (?, ?, ?)
    ON CONFLICT (queue, state) DO UPDATE SET n = n + excluded.n;

-- name: register_worker
INSERT OR REPLACE INTO offload_workers
       (id, hostname, pid, queues, concurrency, started_at, last_seen, running, processed,
        extra, expires_at)
VALUES (:id, :hostname, :pid, :queues, :concurrency, :started_at, :last_seen, :running,
        :processed, :extra, :expires_at);

-- name: unregister_worker
DELETE FROM offload_workers WHERE id = ?;

-- name: live_workers
SELECT * FROM offload_workers WHERE expires_at > ? ORDER BY id;

-- name: forget_lapsed_workers
DELETE FROM offload_workers WHERE expires_at <= ?;

-- name: join_insert
INSERT OR IGNORE INTO offload_joins (group_id, member_id, idx, outcome, joined_at)
VALUES (?, ?, ?, ?, ?);

-- name: join_count
SELECT count(*) FROM offload_joins WHERE group_id = ?;

-- name: join_outcomes
SELECT outcome FROM offload_joins WHERE group_id = ? ORDER BY idx;

-- name: joins_lapsed
DELETE FROM offload_joins WHERE joined_at <= ?;

-- name: cancel_running
UPDATE offload_jobs
   SET state = 'cancelled', error = :error, finished_at = :now, purge_at = :purge_at,
       lease_token = NULL, lease_deadline = NULL
 WHERE id = :id AND lease_token = :token AND state = 'running'
RETURNING queue;

-- name: cancel_requested
SELECT id FROM offload_jobs
 WHERE id IN (SELECT value FROM json_each(?)) AND state = 'running' AND cancel_requested = 1;

-- name: workflow_jobs
-- The id floor bounds the scan to jobs made since the workflow (ids sort by time).
-- A payload that is not JSON is skipped (one corrupt row must not break the listing).
SELECT * FROM offload_jobs
 WHERE id >= :floor
   AND CASE WHEN json_valid(CAST(payload AS TEXT))
       THEN json_extract(CAST(payload AS TEXT), '$.workflow_id') = :wf END
 ORDER BY seq LIMIT :limit;

-- name: set_progress
INSERT OR REPLACE INTO offload_progress (job_id, progress) VALUES (?, ?);

-- name: get_progress
SELECT progress FROM offload_progress WHERE job_id = ?;

-- name: progress_orphans
DELETE FROM offload_progress WHERE job_id NOT IN (SELECT id FROM offload_jobs);

-- name: outbox_add
INSERT INTO offload_outbox (job_id) VALUES (?) ON CONFLICT DO NOTHING;

-- name: outbox
-- Oldest first; the join leaves out the entries of purged jobs.
SELECT o.job_id, j.state, j.payload
  FROM offload_outbox AS o JOIN offload_jobs AS j ON j.id = o.job_id
 ORDER BY o.seq
 LIMIT ?;

-- name: outbox_clear
-- Returns the entries it removed: one writer at a time, so each id once across callers.
DELETE FROM offload_outbox WHERE job_id IN (SELECT value FROM json_each(?))
RETURNING job_id;

-- name: outbox_orphans
DELETE FROM offload_outbox WHERE job_id NOT IN (SELECT id FROM offload_jobs);

-- Ledger: the state of jobs another part delivers (`_ledger.py`, `Ledger` in roles.py).
-- A ledger job has a stamp (its current copy; '' before the first), and `publish_by`
-- while that copy is not known to be held by the delivery.

-- name: ledger_due
-- Scheduled ledger jobs whose time has come, in due order (index offload_jobs_scheduled).
SELECT id, queue, CAST(priority AS INTEGER) AS priority, payload, state
  FROM offload_jobs INDEXED BY offload_jobs_scheduled
 WHERE state = 'scheduled' AND due_at <= :now AND stamp IS NOT NULL
   AND queue IN (SELECT value FROM json_each(:queues))
 ORDER BY due_at
 LIMIT :limit;

-- name: any_expiring
-- Whether `expiring` would find anything (read without the write lock).
SELECT 1 FROM offload_jobs INDEXED BY offload_jobs_expiry
 WHERE expires_at IS NOT NULL AND state IN ('queued', 'scheduled') AND expires_at <= :now
 LIMIT 1;

-- name: ledger_unconfirmed
-- Queued ledger jobs whose copy was not confirmed in time (or replayed ones).
SELECT id, queue, CAST(priority AS INTEGER) AS priority, payload, state
  FROM offload_jobs INDEXED BY offload_jobs_publish
 WHERE publish_by IS NOT NULL AND publish_by <= :now AND state = 'queued'
   AND queue IN (SELECT value FROM json_each(:queues))
 ORDER BY publish_by
 LIMIT :limit;

-- name: ledger_copy
-- (hot) Parameters: stamp, publish_by, id.
UPDATE offload_jobs SET state = 'queued', stamp = ?, publish_by = ? WHERE id = ?;

-- name: ledger_published
-- (hot) Parameters: id, stamp.
UPDATE offload_jobs SET publish_by = NULL WHERE id = ? AND stamp = ?;

-- name: ledger_copies
-- The rows of the jobs of delivered copies (`claim` decides in Python which copy
-- runs, under the write lock). Parameter: a JSON array of ids.
SELECT id, stamp, state, queue, CAST(attempt AS INTEGER) AS attempt, payload
  FROM offload_jobs WHERE id IN (SELECT value FROM json_each(?));

-- name: ledger_claim
-- (hot) A claimed copy's job runs under a new lease; the error of a job taken back
-- from a dead holder says so. Parameters: token, attempt, now, worker_id, deadline,
-- error or NULL (kept), id.
UPDATE offload_jobs
   SET state = 'running', lease_token = ?, attempt = ?, started_at = ?, worker_id = ?,
       lease_deadline = ?, publish_by = NULL, error = coalesce(?, error)
 WHERE id = ?;

-- name: finished_add
-- (hot: once per queue and outcome of a batch) Parameters: minute, queue, outcome, n.
INSERT INTO offload_finished (minute, queue, outcome, n) VALUES (?, ?, ?, ?)
    ON CONFLICT (minute, queue, outcome) DO UPDATE SET n = n + excluded.n;

-- name: finished
SELECT queue, minute, outcome, n FROM offload_finished
 WHERE minute >= :first AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
 ORDER BY queue, minute, outcome;

-- name: finished_prune
DELETE FROM offload_finished WHERE minute < ?;
