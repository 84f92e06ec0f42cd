-- 0009: job counts per queue and state (`counts`), so the dashboard's overview reads a
-- few rows instead of counting a million. Statement triggers append what each insert,
-- delete or state change did to `offload_count_deltas` (one row per queue and state a
-- statement touched, never an update of a shared row, so concurrent workers do not
-- queue behind a counter); `counts` and `sweep` fold the deltas into `offload_counts`.
-- The triggers come first: creating one waits for running writers and holds new ones
-- back until this migration commits, so the count below misses nothing and doubles
-- nothing.

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

-- The deltas table is named in the jobs table's own schema (TG_TABLE_SCHEMA): an
-- application's transaction (`enqueue_in`) runs with its own search_path.
CREATE FUNCTION offload_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('INSERT INTO %I.offload_count_deltas (queue, state, n)
                    SELECT queue, state, count(*) FROM offload_new GROUP BY queue, state',
                   TG_TABLE_SCHEMA);
    RETURN NULL;
END $$;

CREATE FUNCTION offload_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('INSERT INTO %I.offload_count_deltas (queue, state, n)
                    SELECT queue, state, -count(*) FROM offload_old GROUP BY queue, state',
                   TG_TABLE_SCHEMA);
    RETURN NULL;
END $$;

CREATE FUNCTION offload_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('INSERT INTO %I.offload_count_deltas (queue, state, n)
        SELECT queue, state, sum(n)
          FROM (SELECT o.queue, o.state, -1 AS n
                  FROM offload_old AS o JOIN offload_new AS w ON w.seq = o.seq
                 WHERE o.state <> w.state OR o.queue <> w.queue
                UNION ALL
                SELECT w.queue, w.state, 1
                  FROM offload_old AS o JOIN offload_new AS w ON w.seq = o.seq
                 WHERE o.state <> w.state OR o.queue <> w.queue) AS moves
         GROUP BY queue, state
        HAVING sum(n) <> 0', TG_TABLE_SCHEMA);
    RETURN NULL;
END $$;

CREATE TRIGGER offload_count_insert AFTER INSERT ON offload_jobs
    REFERENCING NEW TABLE AS offload_new
    FOR EACH STATEMENT EXECUTE FUNCTION offload_count_inserted();
CREATE TRIGGER offload_count_delete AFTER DELETE ON offload_jobs
    REFERENCING OLD TABLE AS offload_old
    FOR EACH STATEMENT EXECUTE FUNCTION offload_count_deleted();
CREATE TRIGGER offload_count_update AFTER UPDATE ON offload_jobs
    REFERENCING OLD TABLE AS offload_old NEW TABLE AS offload_new
    FOR EACH STATEMENT EXECUTE FUNCTION offload_count_updated();

INSERT INTO offload_counts (queue, state, n)
SELECT queue, state, count(*) FROM offload_jobs GROUP BY queue, state;
