-- 0013: offload_reserve_v2's plans no longer depend on the table's statistics (see
-- schema.sql). Right after many rows arrive (a million finished jobs inserted, before
-- autovacuum analyzes the table), or with statistics taken before a burst of jobs, the
-- planner took the ready jobs by a scan that reads all of them plus a sort (2-3 ms per
-- reserve at 10,000 queued, against 0.08 ms for the ordered index scan that stops at
-- the limit), and lapsed leases by reading every running job. The same function, its
-- signature and results unchanged, with each step ordered by its partial index's column
-- and run with bitmap scans, sequential scans and sorts off (and JIT, which the
-- planner's penalty for a disabled node would otherwise switch on).
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

ALTER FUNCTION offload_reserve_v2(text[], text, double precision, double precision, integer,
                                  text, double precision, text)
    SET enable_bitmapscan = off
    SET enable_seqscan = off
    SET enable_sort = off
    SET jit = off;
