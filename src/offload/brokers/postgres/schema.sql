-- The offload PostgreSQL schema for a fresh install: what migrations/0001..0013 build,
-- in one file. `connect()` and `offload migrate` run this on an empty schema and record
-- every migration as applied; a schema that has some of them gets the rest instead.
-- tests/migrations/ proves that both roads end at the same catalog. Any change here
-- needs a new migration file, and vice versa.
--
-- Times are Unix epoch seconds (double precision) from the broker's injected clock, not
-- now(), so tests drive leases and delays with a fake clock. `seq` is enqueue order.
--
-- Every hot path has a partial index whose predicate repeats the query's literal state
-- condition, so each index only holds the rows in that state: reserving, promoting,
-- reclaiming and expiring cost the same with a million finished jobs in the table.

CREATE TABLE offload_jobs (
    seq              bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               text             NOT NULL UNIQUE,
    queue            text             NOT NULL,
    task             text             NOT NULL,
    state            text             NOT NULL CHECK (state IN (
                         'scheduled', 'queued', 'running',
                         'succeeded', 'dead', 'expired', 'cancelled')),
    priority         integer          NOT NULL DEFAULT 0,
    attempt          integer          NOT NULL DEFAULT 0,
    max_attempts     integer,                          -- NULL: the worker's task default
    key              text             UNIQUE,          -- idempotency key; NULLs never collide
    created_at       double precision NOT NULL,
    due_at           double precision NOT NULL,        -- when the job is (or was) ready
    expires_at       double precision,
    started_at       double precision,
    finished_at      double precision,
    worker_id        text,
    lease_token      text,
    lease_deadline   double precision,
    error            text,                             -- JSON ErrorInfo (offload.codec)
    payload          bytea            NOT NULL,        -- the encoded envelope, never rewritten
    result           bytea,                            -- encoded JSON result
    cancel_requested boolean          NOT NULL DEFAULT false,
    purge_at         double precision,                 -- when sweep may delete a finished job
    flow             boolean          NOT NULL DEFAULT false, -- the envelope has `then`/`chord`
    outbox_seq       bigint,                           -- set while in the outbox (`outbox`)
    stamp            text,                             -- a ledger job's copy (`_ledger.py`)
    publish_by       double precision                  -- until when that copy may be unconfirmed
);

-- reserve: the best ready jobs of one queue, in the order they are taken.
CREATE INDEX offload_jobs_ready
    ON offload_jobs (queue, priority DESC, due_at, seq) WHERE state = 'queued';
-- reserve: scheduled jobs that have become due (all queues at once).
CREATE INDEX offload_jobs_scheduled
    ON offload_jobs (due_at) WHERE state = 'scheduled';
-- next_due: the earliest scheduled job of one queue.
CREATE INDEX offload_jobs_scheduled_queue
    ON offload_jobs (queue, due_at) WHERE state = 'scheduled';
-- reserve: running jobs whose lease has lapsed.
CREATE INDEX offload_jobs_running
    ON offload_jobs (lease_deadline) WHERE state = 'running';
-- reserve and sweep: waiting jobs past their expiry.
CREATE INDEX offload_jobs_expiry
    ON offload_jobs (expires_at)
    WHERE expires_at IS NOT NULL AND state IN ('queued', 'scheduled');
-- ledger: copies the delivery has not confirmed (or replayed jobs).
CREATE INDEX offload_jobs_publish
    ON offload_jobs (publish_by) WHERE publish_by IS NOT NULL;
-- sweep: finished jobs past their result TTL or retention.
CREATE INDEX offload_jobs_purge
    ON offload_jobs (purge_at) WHERE purge_at IS NOT NULL;
-- counts, and list_jobs by queue (and state), newest first.
CREATE INDEX offload_jobs_queue_state ON offload_jobs (queue, state, seq);
-- list_jobs by state, and the dead-letter operations.
CREATE INDEX offload_jobs_state ON offload_jobs (state, seq);
-- outbox: the flow jobs that ended without a worker (cancelled while waiting, expired),
-- in the order they ended. The statement that cancels or expires a flow job sets its
-- outbox_seq, so the entry is written with the state change and vanishes with the job;
-- clear_outbox sets it back to NULL.
CREATE SEQUENCE offload_outbox_seq;
CREATE INDEX offload_jobs_outbox ON offload_jobs (outbox_seq) WHERE outbox_seq IS NOT NULL;

-- Queues whose jobs were purged, written by the purges, so that `queues` (which finds the
-- others in offload_jobs) still lists them. Enqueue never writes here (see queries.sql).
CREATE TABLE offload_queues (
    name text PRIMARY KEY
);

-- Live workers, refreshed by their heartbeat; `expires_at` is last refresh + TTL.
CREATE TABLE offload_workers (
    id          text             PRIMARY KEY,
    hostname    text             NOT NULL,
    pid         integer          NOT NULL,
    queues      text             NOT NULL,             -- JSON array of queue names
    concurrency integer          NOT NULL,
    started_at  double precision NOT NULL,
    last_seen   double precision NOT NULL,
    running     integer          NOT NULL,
    processed   integer          NOT NULL,
    extra       text             NOT NULL,             -- JSON object
    expires_at  double precision NOT NULL
);

-- wait_finished: NOTIFY the ids of jobs that ended on channel p_channel (none if NULL),
-- newline-separated, in as many notifications as the 8000-byte payload limit needs
-- (usually one). One call per statement, so a batch of acks sends one notification, not
-- one per job. In a batch too big for one payload, ids over 500 bytes or holding a
-- newline are left out (ids are 32 hex digits; an odd one's waiter times out, re-reads).
CREATE FUNCTION offload_notify_ends(p_channel text, p_ids text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_payload text;
    v_sent    integer := 0;
BEGIN
    IF p_channel IS NULL OR coalesce(cardinality(p_ids), 0) = 0 THEN
        RETURN 0;
    END IF;
    v_payload := array_to_string(p_ids, E'\n');
    IF octet_length(v_payload) <= 7500 THEN  -- the common case: one notification
        PERFORM pg_notify(p_channel, v_payload);
        RETURN 1;
    END IF;
    FOR v_payload IN
        SELECT string_agg(c.id, E'\n' ORDER BY c.ord)
          FROM (SELECT u.id, u.ord,
                       sum(octet_length(u.id) + 1) OVER (ORDER BY u.ord) / 7000 AS chunk
                  FROM unnest(p_ids) WITH ORDINALITY AS u(id, ord)
                 WHERE octet_length(u.id) <= 500 AND strpos(u.id, E'\n') = 0) AS c
         GROUP BY c.chunk
    LOOP
        PERFORM pg_notify(p_channel, v_payload);
        v_sent := v_sent + 1;
    END LOOP;
    RETURN v_sent;
END
$$;

-- reserve, in one round trip and one transaction: promote due scheduled jobs, reclaim
-- lapsed leases, expire stale waiting jobs (recording flow jobs in the outbox and
-- notifying p_ends of their end), each an index range scan that finds nothing in the
-- common case, skipping rows another reserver is already moving; then claim up to
-- p_limit jobs in one statement: per queue, the best ready rows FOR UPDATE SKIP LOCKED,
-- merged by priority, due time and enqueue order, feeding UPDATE ... RETURNING.
-- Versioned by name: a change of signature is a new function, so old workers keep
-- working during a rolling upgrade.
CREATE FUNCTION offload_reserve_v2(
    p_queues      text[],
    p_worker      text,
    p_now         double precision,
    p_lease_s     double precision,
    p_limit       integer,
    p_lease_error text,
    p_retention_s double precision,
    p_ends        text
) RETURNS TABLE (
    id       text,
    token    text,
    queue    text,
    attempt  integer,
    deadline double precision,
    payload  bytea
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_ids    text[];
    v_queues text[];
BEGIN
    UPDATE offload_jobs AS j SET state = 'queued'
      FROM (SELECT s.seq FROM offload_jobs AS s
             WHERE s.state = 'scheduled' AND s.due_at <= p_now AND s.stamp IS NULL
             ORDER BY s.due_at
               FOR UPDATE SKIP LOCKED) AS due
     WHERE j.seq = due.seq;

    UPDATE offload_jobs AS j
       SET state = 'queued', lease_token = NULL, lease_deadline = NULL, worker_id = NULL,
           error = p_lease_error
      FROM (SELECT r.seq FROM offload_jobs AS r
             WHERE r.state = 'running' AND r.lease_deadline <= p_now AND r.stamp IS NULL
             ORDER BY r.lease_deadline
               FOR UPDATE SKIP LOCKED) AS lapsed
     WHERE j.seq = lapsed.seq;

    WITH expired AS (
        UPDATE offload_jobs AS j
           SET state = 'expired', finished_at = p_now, purge_at = p_now + p_retention_s,
               outbox_seq = CASE WHEN j.flow THEN nextval('offload_outbox_seq') END
          FROM (SELECT w.seq FROM offload_jobs AS w
                 WHERE w.expires_at IS NOT NULL AND w.state IN ('queued', 'scheduled')
                   AND w.expires_at <= p_now
                 ORDER BY w.expires_at
                   FOR UPDATE SKIP LOCKED) AS stale
         WHERE j.seq = stale.seq
        RETURNING j.id, j.queue
    )
    SELECT array_agg(e.id), array_agg(e.queue) INTO v_ids, v_queues FROM expired AS e;
    PERFORM offload_notify_ends(p_ends, v_ids);
    PERFORM offload_count_finished(floor(p_now / 60)::bigint, 'expired', v_queues);

    IF p_limit <= 0 THEN
        RETURN;
    END IF;

    RETURN QUERY
    WITH picked AS (
        SELECT c.seq
          FROM unnest(p_queues) AS q(name)
         CROSS JOIN LATERAL (
               SELECT r.seq, r.priority, r.due_at
                 FROM offload_jobs AS r
                WHERE r.state = 'queued' AND r.queue = q.name AND r.stamp IS NULL
                  AND (r.expires_at IS NULL OR r.expires_at > p_now)
                ORDER BY r.priority DESC, r.due_at, r.seq
                LIMIT p_limit
                  FOR UPDATE SKIP LOCKED) AS c
         ORDER BY c.priority DESC, c.due_at, c.seq
         LIMIT p_limit
    ), leased AS (
        UPDATE offload_jobs AS j
           SET state = 'running', lease_token = replace(gen_random_uuid()::text, '-', ''),
               attempt = j.attempt + 1, started_at = p_now, worker_id = p_worker,
               lease_deadline = p_now + p_lease_s
          FROM picked
         WHERE j.seq = picked.seq
        RETURNING j.id, j.lease_token, j.queue, j.attempt, j.lease_deadline, j.payload,
                  j.priority, j.due_at, j.seq
    )
    SELECT l.id, l.lease_token, l.queue, l.attempt, l.lease_deadline, l.payload
      FROM leased AS l
     ORDER BY l.priority DESC, l.due_at, l.seq;
END
$$;

-- 0013: the plan of every statement above must not depend on the table's statistics.
-- Without them (a million rows just inserted, not yet analyzed), or with stale ones (taken
-- before a burst of jobs), the planner took `picked` by a bitmap heap scan of
-- offload_jobs_ready, or an index scan of offload_jobs_queue_state, plus a sort: every
-- ready job read on each call, where the ordered walk of offload_jobs_ready stops at
-- p_limit. Stale statistics also sent the lapsed-lease step through offload_jobs_state
-- (every running job read per call). So the function runs with bitmap scans, sequential
-- scans and sorts off, and each step orders by its partial index's column (due_at,
-- lease_deadline, expires_at): the only plan left for each is the walk of the partial
-- index that answers it, in order. The sorts it cannot avoid (merging queues, the
-- returned order) are over at most p_limit rows. `jit = off`: the planner's penalty for
-- a disabled node (1e10) would otherwise lift the plan's cost past jit_above_cost and
-- compile each statement (0.4 s).
ALTER FUNCTION offload_reserve_v2(text[], text, double precision, double precision, integer,
                                  text, double precision, text)
    SET enable_bitmapscan = off
    SET enable_seqscan = off
    SET enable_sort = off
    SET jit = off;

-- The reserve of schema versions 2..5, for workers still running an older offload during
-- an upgrade: v2 without the end notifications (it has no channel), so the jobs those
-- workers expire still reach the outbox.
CREATE FUNCTION offload_reserve_v1(
    p_queues      text[],
    p_worker      text,
    p_now         double precision,
    p_lease_s     double precision,
    p_limit       integer,
    p_lease_error text,
    p_retention_s double precision
) RETURNS TABLE (
    id       text,
    token    text,
    queue    text,
    attempt  integer,
    deadline double precision,
    payload  bytea
) LANGUAGE sql AS $$
    SELECT * FROM offload_reserve_v2(p_queues, p_worker, p_now, p_lease_s, p_limit,
                                     p_lease_error, p_retention_s, NULL);
$$;

-- Rate limits (`take_rate`): the GCRA theoretical arrival time of each key. A past
-- `tat` is an idle key; `sweep` deletes those.
CREATE TABLE offload_rates (
    key text             PRIMARY KEY,
    tat  double precision NOT NULL
);

-- Concurrency limits (`acquire_slot`): one row per held slot, until `expires_at`.
CREATE TABLE offload_slots (
    key        text             NOT NULL,
    holder     text             NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (key, holder)
);

-- Chord joins (`join`): one row per terminal member of a chord, its outcome kept for
-- the callback. The primary key makes a member's second record a no-op; `sweep`
-- deletes a group's rows after the retention.
CREATE TABLE offload_joins (
    group_id  text             NOT NULL,
    member_id text             NOT NULL,
    idx       integer          NOT NULL,
    outcome   bytea            NOT NULL,
    joined_at double precision NOT NULL,
    PRIMARY KEY (group_id, member_id)
);

-- Progress reports (`set_progress`): the last one per job; `sweep` drops the rows of
-- jobs that were purged.
CREATE TABLE offload_progress (
    job_id   text  PRIMARY KEY,
    progress bytea NOT NULL
);

-- Registers (`compare_and_set`): one value per name until `expires_at`; a row past it
-- reads as unset, and `sweep` deletes it. The scheduler's current fire of each schedule.
CREATE TABLE offload_registers (
    name       text             PRIMARY KEY,
    value      text             NOT NULL,
    expires_at double precision NOT NULL
);

-- Pause flags (`set_paused`): one row per paused queue (`queue:<name>`) or schedule
-- (`schedule:<id>`), until it is resumed.
CREATE TABLE offload_paused (
    name      text             PRIMARY KEY,
    paused_at double precision NOT NULL
);

-- Attempt history (`record_attempt`): the newest records of each job. `n` numbers every
-- record a job ever had, so the first kept one tells how many were dropped; `token` is
-- the lease's, so a record written twice is kept once. `sweep` drops the rows of jobs
-- that were purged.
CREATE TABLE offload_attempts (
    job_id text    NOT NULL,
    n      integer NOT NULL,
    token  text    NOT NULL,
    record bytea   NOT NULL,
    PRIMARY KEY (job_id, n)
);

-- Job counts per queue and state, kept by statement triggers (0009_counts.sql, 0010).
CREATE TABLE offload_counts (
    queue text   NOT NULL,
    state text   NOT NULL,
    n     bigint NOT NULL,
    PRIMARY KEY (queue, state)
);

CREATE TABLE offload_count_deltas (
    queue text   NOT NULL,
    state text   NOT NULL,
    n     bigint NOT NULL
);

-- Static queries, each function run with the search_path of its creation, so the deltas
-- table is the jobs table's own from an application's transaction too (0010).
CREATE FUNCTION offload_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO offload_count_deltas (queue, state, n)
    SELECT queue, state, count(*) FROM offload_new GROUP BY queue, state;
    RETURN NULL;
END $$;

CREATE FUNCTION offload_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO offload_count_deltas (queue, state, n)
    SELECT queue, state, -count(*) FROM offload_old GROUP BY queue, state;
    RETURN NULL;
END $$;

CREATE FUNCTION offload_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO offload_count_deltas (queue, state, n)
    SELECT m.queue, m.state, sum(m.n)
      FROM offload_old AS o
      JOIN offload_new AS w ON w.seq = o.seq
     CROSS JOIN LATERAL (VALUES (o.queue, o.state, -1), (w.queue, w.state, 1))
           AS m(queue, state, n)
     WHERE o.state <> w.state OR o.queue <> w.queue
     GROUP BY m.queue, m.state
    HAVING sum(m.n) <> 0;
    RETURN NULL;
END $$;

ALTER FUNCTION offload_count_inserted() SET search_path FROM CURRENT;
ALTER FUNCTION offload_count_deleted() SET search_path FROM CURRENT;
ALTER FUNCTION offload_count_updated() SET search_path FROM CURRENT;

CREATE TRIGGER offload_count_insert AFTER INSERT ON offload_jobs
    REFERENCING NEW TABLE AS offload_new
    FOR EACH STATEMENT EXECUTE FUNCTION offload_count_inserted();
CREATE TRIGGER offload_count_delete AFTER DELETE ON offload_jobs
    REFERENCING OLD TABLE AS offload_old
    FOR EACH STATEMENT EXECUTE FUNCTION offload_count_deleted();
CREATE TRIGGER offload_count_update AFTER UPDATE ON offload_jobs
    REFERENCING OLD TABLE AS offload_old NEW TABLE AS offload_new
    FOR EACH STATEMENT EXECUTE FUNCTION offload_count_updated();

-- 0012: list_jobs by creation time (a time range), newest created first: an index walk,
-- so a range deep in a million jobs is a seek.
CREATE INDEX offload_jobs_created ON offload_jobs (created_at, seq);

-- 0012 too: jobs that ended, per minute (`finished`): how many of each queue ended each
-- minute (Unix time // 60, by the broker's clock) as each outcome (succeeded, failed,
-- dead, cancelled, expired). Every statement that ends jobs adds its own in the same
-- statement (`offload_count_finished`), one upsert per queue it touched; `shard` is the
-- writer's backend pid mod 8, so concurrent workers rarely wait on one row (`finished`
-- sums the shards). `sweep` deletes the minutes past FINISHED_KEEP_S (2 hours).
CREATE TABLE offload_finished (
    minute  bigint  NOT NULL,
    queue   text    NOT NULL,
    outcome text    NOT NULL,
    shard   integer NOT NULL,
    n       bigint  NOT NULL,
    PRIMARY KEY (minute, queue, outcome, shard)
);

-- Count one end per element of `p_queues` (a queue once per job that ended there) as
-- `p_outcome` in minute `p_minute`; nothing for an empty or NULL array. Rows are
-- upserted in queue order, so two statements never deadlock on them.
CREATE FUNCTION offload_count_finished(p_minute bigint, p_outcome text, p_queues text[])
RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(cardinality(p_queues), 0) = 0 THEN
        RETURN 0;
    END IF;
    INSERT INTO offload_finished AS f (minute, queue, outcome, shard, n)
    SELECT p_minute, q, p_outcome, pg_backend_pid() % 8, count(*)
      FROM unnest(p_queues) AS q
     GROUP BY q
     ORDER BY q
    ON CONFLICT (minute, queue, outcome, shard) DO UPDATE SET n = f.n + excluded.n;
    RETURN cardinality(p_queues);
END $$;
