-- 0012: list_jobs by creation time, and jobs that ended, per minute (`finished`), for
-- the dashboard's time-range filter, throughput and failure rate over the last hour. An
-- index, a table and the function that adds to it (see schema.sql), and `offload_reserve_v2` again with the same signature and results (and
-- 0011's skipping of ledger jobs), now also counting the jobs its expiry step ends (workers of older versions call it too,
-- and their expiries are counted as well).
-- The index is built in the migration's transaction, which holds writes to the jobs
-- table back until it is done: on a table of many millions, run `offload migrate` at a
-- quiet moment.
CREATE INDEX offload_jobs_created ON offload_jobs (created_at, seq);

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

CREATE OR REPLACE FUNCTION offload_reserve_v2(
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
             FOR UPDATE SKIP LOCKED) AS due
     WHERE j.seq = due.seq;

    UPDATE offload_jobs AS j
       SET state = 'queued', lease_token = NULL, lease_deadline = NULL, worker_id = NULL,
           error = p_lease_error
      FROM (SELECT r.seq FROM offload_jobs AS r
             WHERE r.state = 'running' AND r.lease_deadline <= p_now AND r.stamp IS NULL
             FOR UPDATE SKIP LOCKED) AS lapsed
     WHERE j.seq = lapsed.seq;

    WITH expired AS (
        UPDATE offload_jobs AS j
           SET state = 'expired', finished_at = p_now, purge_at = p_now + p_retention_s,
               outbox_seq = CASE WHEN j.flow THEN nextval('offload_outbox_seq') END
          FROM (SELECT w.seq FROM offload_jobs AS w
                 WHERE w.expires_at IS NOT NULL AND w.state IN ('queued', 'scheduled')
                   AND w.expires_at <= p_now
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
