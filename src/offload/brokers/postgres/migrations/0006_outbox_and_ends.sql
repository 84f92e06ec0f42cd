-- 0006: the outbox of jobs that end without a worker (cancelled while waiting, expired),
-- and a NOTIFY of every job's end for `wait_finished`.

-- `flow`: the envelope has workflow follow-ups (`then` or `chord`), set at enqueue.
-- `outbox_seq`: set (from offload_outbox_seq) by the statement that cancels or expires a
-- flow job, cleared by `clear_outbox`; the outbox is the rows where it is set, so an
-- entry is written with the state change and vanishes with its job. Neither column
-- rewrites the table (a constant default and a NULL column are catalog-only).
ALTER TABLE offload_jobs ADD COLUMN flow boolean NOT NULL DEFAULT false;
ALTER TABLE offload_jobs ADD COLUMN outbox_seq bigint;

CREATE SEQUENCE offload_outbox_seq;

CREATE INDEX offload_jobs_outbox ON offload_jobs (outbox_seq) WHERE outbox_seq IS NOT NULL;

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
    v_ids text[];
BEGIN
    UPDATE offload_jobs AS j SET state = 'queued'
      FROM (SELECT s.seq FROM offload_jobs AS s
             WHERE s.state = 'scheduled' AND s.due_at <= p_now
             FOR UPDATE SKIP LOCKED) AS due
     WHERE j.seq = due.seq;

    UPDATE offload_jobs AS j
       SET state = 'queued', lease_token = NULL, lease_deadline = NULL, worker_id = NULL,
           error = p_lease_error
      FROM (SELECT r.seq FROM offload_jobs AS r
             WHERE r.state = 'running' AND r.lease_deadline <= p_now
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
        RETURNING j.id
    )
    SELECT array_agg(e.id) INTO v_ids FROM expired AS e;
    PERFORM offload_notify_ends(p_ends, v_ids);

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
                WHERE r.state = 'queued' AND r.queue = q.name
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

CREATE OR REPLACE FUNCTION offload_reserve_v1(
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
