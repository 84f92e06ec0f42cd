-- The offload SQLite schema, version 9 (kept in offload_meta, not in PRAGMA user_version,
-- which belongs to whoever else may share the file).
--
-- Applied when a connecting broker finds an older version (0: a new file), in the same
-- BEGIN IMMEDIATE transaction as that check. Every statement is idempotent (IF NOT
-- EXISTS), so a half-initialised file can never exist. Any change to this file needs a
-- new version number and a migration for files already in use: a new table is created by
-- re-running this script, a new column is added by `_connection.ADDED_COLUMNS`.
--
-- Times are Unix epoch seconds (REAL). `seq` gives enqueue order and is never reused
-- (AUTOINCREMENT), so list_jobs cursors stay valid after deletes. Every index on a
-- rowid table ends with the rowid, so `seq` is the implicit last column of each one:
-- that is what makes "priority, then due time, then enqueue order" an index walk.

CREATE TABLE IF NOT EXISTS offload_jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    queue            TEXT    NOT NULL,
    task             TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN (
                         'scheduled', 'queued', 'running',
                         'succeeded', 'dead', 'expired', 'cancelled')),
    priority         INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER,                 -- NULL: the worker's task default
    key              TEXT    UNIQUE,          -- idempotency key; NULLs never collide
    created_at       REAL    NOT NULL,
    due_at           REAL    NOT NULL,        -- when the job is (or was) ready
    expires_at       REAL,
    started_at       REAL,
    finished_at      REAL,
    worker_id        TEXT,
    lease_token      TEXT,
    lease_deadline   REAL,
    error            TEXT,                    -- JSON ErrorInfo (offload.codec)
    payload          BLOB    NOT NULL,        -- the encoded envelope, never rewritten
    result           BLOB,                    -- encoded JSON result
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    purge_at         REAL,                    -- when sweep may delete a finished job
    flow             INTEGER NOT NULL DEFAULT 0, -- 1: the envelope has `then` or `chord`
    stamp            TEXT,                    -- v9, a ledger job (`_ledger.py`): its copy
    publish_by       REAL                     -- v9: until when that copy may be unconfirmed
);

-- reserve: the best ready jobs of one queue, in the order they must be taken.
CREATE INDEX IF NOT EXISTS offload_jobs_ready
    ON offload_jobs (queue, priority DESC, due_at) WHERE state = 'queued';

-- reserve: scheduled jobs that have become due.
CREATE INDEX IF NOT EXISTS offload_jobs_scheduled
    ON offload_jobs (due_at) WHERE state = 'scheduled';

-- reserve: running jobs whose lease has lapsed.
CREATE INDEX IF NOT EXISTS offload_jobs_running
    ON offload_jobs (lease_deadline) WHERE state = 'running';

-- reserve and sweep: waiting jobs past their expiry.
CREATE INDEX IF NOT EXISTS offload_jobs_expiry
    ON offload_jobs (expires_at)
    WHERE expires_at IS NOT NULL AND state IN ('queued', 'scheduled');

-- Version 9, ledger: a job another part delivers (a ledger job, `_ledger.py`) has the
-- stamp of its current copy ('' before the first; NULL: not a ledger job) and, while
-- the delivery has not confirmed that copy, `publish_by`: this index finds those (and
-- replayed jobs) for `ledger_unconfirmed`.
CREATE INDEX IF NOT EXISTS offload_jobs_publish
    ON offload_jobs (publish_by) WHERE publish_by IS NOT NULL;

-- sweep: finished jobs past their result TTL or retention.
CREATE INDEX IF NOT EXISTS offload_jobs_purge
    ON offload_jobs (purge_at) WHERE purge_at IS NOT NULL;

-- counts (a covering scan), and list_jobs by queue and state, newest first.
CREATE INDEX IF NOT EXISTS offload_jobs_queue_state ON offload_jobs (queue, state);

-- list_jobs by queue alone, newest first. `queue` never changes, so this index is
-- written only on insert and delete, never on a state change.
CREATE INDEX IF NOT EXISTS offload_jobs_queue ON offload_jobs (queue);

-- list_jobs by state, and the dead-letter operations.
CREATE INDEX IF NOT EXISTS offload_jobs_state ON offload_jobs (state);

-- Live workers, refreshed by their heartbeat; `expires_at` is last refresh + TTL.
CREATE TABLE IF NOT EXISTS offload_workers (
    id          TEXT    PRIMARY KEY,
    hostname    TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    queues      TEXT    NOT NULL,             -- JSON array of queue names
    concurrency INTEGER NOT NULL,
    started_at  REAL    NOT NULL,
    last_seen   REAL    NOT NULL,
    running     INTEGER NOT NULL,
    processed   INTEGER NOT NULL,
    extra       TEXT    NOT NULL,             -- JSON object
    expires_at  REAL    NOT NULL
) WITHOUT ROWID;

-- Every queue that holds or held a job (`queues` lists it even after its jobs are
-- purged), with a counter bumped in the same transaction as anything that makes a job of
-- that queue ready now (enqueue, due retry, release, replay). `wait` in other processes
-- watches the counters, so that acks and heartbeats (which also change the file) do not
-- wake idle workers for nothing.
CREATE TABLE IF NOT EXISTS offload_queues (
    name   TEXT    PRIMARY KEY,
    signal INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Version 2: flow control. Applied to a version-1 file by re-running this script (every
-- statement above is IF NOT EXISTS, so only these tables are new to it).

-- Rate limits (`take_rate`): one GCRA theoretical arrival time per key. A row whose
-- `tat` is past means an idle key; `sweep` deletes those.
CREATE TABLE IF NOT EXISTS offload_rates (
    key TEXT PRIMARY KEY,
    tat REAL NOT NULL
) WITHOUT ROWID;

-- Concurrency limits (`acquire_slot`): one row per held slot, until `expires_at`.
CREATE TABLE IF NOT EXISTS offload_slots (
    key        TEXT NOT NULL,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key, holder)
) WITHOUT ROWID;

-- Chord joins (`join`): one row per terminal member of a chord, its outcome kept for
-- the callback. The primary key makes a member's second record a no-op; `sweep`
-- deletes a group's rows after the retention.
CREATE TABLE IF NOT EXISTS offload_joins (
    group_id  TEXT    NOT NULL,
    member_id TEXT    NOT NULL,
    idx       INTEGER NOT NULL,
    outcome   BLOB    NOT NULL,
    joined_at REAL    NOT NULL,
    PRIMARY KEY (group_id, member_id)
) WITHOUT ROWID;

-- Progress reports (`set_progress`): the last one per job; `sweep` drops the rows of
-- jobs that were purged.
CREATE TABLE IF NOT EXISTS offload_progress (
    job_id   TEXT PRIMARY KEY,
    progress BLOB NOT NULL
) WITHOUT ROWID;

-- Version 5: the outbox (`outbox`). Workflow jobs (`flow = 1`) that end without a worker
-- (cancelled while waiting, expired) get a row here in the same transaction as the state
-- change, until a worker has run their follow-ups and clears it. `seq` gives the order
-- they ended in; rows of purged jobs are skipped when read and deleted by `sweep`.
CREATE TABLE IF NOT EXISTS offload_outbox (
    seq    INTEGER PRIMARY KEY,
    job_id TEXT    NOT NULL UNIQUE
);

-- Version 6: registers (`compare_and_set`): one value per name, until `expires_at`; a
-- row past it reads as unset, and `sweep` deletes it. The scheduler's current fire of
-- each schedule lives here.
CREATE TABLE IF NOT EXISTS offload_registers (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

-- Version 7: operations (`operate.sql`). Pause flags (`set_paused`): one row per paused
-- queue (`queue:<name>`) or schedule (`schedule:<id>`), until it is resumed.
CREATE TABLE IF NOT EXISTS offload_paused (
    name      TEXT PRIMARY KEY,
    paused_at REAL NOT NULL
) WITHOUT ROWID;

-- Attempt history (`record_attempt`): the newest records of each job. `n` numbers every
-- record a job ever had, so the first kept one tells how many were dropped; `token` is
-- the lease's, so a record written twice is kept once. `sweep` drops the rows of jobs
-- that were purged.
CREATE TABLE IF NOT EXISTS offload_attempts (
    job_id TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    token  TEXT    NOT NULL,
    record BLOB    NOT NULL,
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;

-- Version 8: job counts per queue and state (`counts`), kept by triggers in the same
-- transaction as every insert, delete and state change, so the dashboard's overview
-- reads a few rows instead of counting a million (SQLite has one writer at a time, so
-- the counter rows cost no contention). A file from before version 8 gets the table,
-- then its counts once (`_connection._install_schema`), in the same transaction.
CREATE TABLE IF NOT EXISTS offload_counts (
    queue TEXT    NOT NULL,
    state TEXT    NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;

CREATE TRIGGER IF NOT EXISTS offload_count_insert AFTER INSERT ON offload_jobs
BEGIN
    INSERT INTO offload_counts (queue, state, n) VALUES (new.queue, new.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER IF NOT EXISTS offload_count_delete AFTER DELETE ON offload_jobs
BEGIN
    UPDATE offload_counts SET n = n - 1 WHERE queue = old.queue AND state = old.state;
END;

CREATE TRIGGER IF NOT EXISTS offload_count_update AFTER UPDATE OF state, queue ON offload_jobs
    WHEN old.state IS NOT new.state OR old.queue IS NOT new.queue
BEGIN
    UPDATE offload_counts SET n = n - 1 WHERE queue = old.queue AND state = old.state;
    INSERT INTO offload_counts (queue, state, n) VALUES (new.queue, new.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;
