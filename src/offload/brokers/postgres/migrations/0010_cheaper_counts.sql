-- 0010: the count triggers of 0009 for less. Their functions built the delta query as
-- text (EXECUTE format(...), to name the deltas table in the jobs table's schema), so
-- every UPDATE of offload_jobs, even one that moved no job (an extend, the three empty
-- steps of most reserves), parsed and planned it again; the update function also read
-- the transition tables twice. Now the query is static, planned once per session, and
-- each function runs with search_path fixed to the schema it was created in (SET
-- search_path FROM CURRENT), which names the deltas table as well from an application's
-- transaction (`enqueue_in`), whatever its own search_path. The triggers stay: a worker
-- of an older version, during an upgrade, keeps the counts exact too.

CREATE OR REPLACE FUNCTION offload_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO offload_count_deltas (queue, state, n)
    SELECT queue, state, count(*) FROM offload_new GROUP BY queue, state;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION offload_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO offload_count_deltas (queue, state, n)
    SELECT queue, state, -count(*) FROM offload_old GROUP BY queue, state;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION offload_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
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
