-- 0013: offload_reserve_v2's plan no longer depends on the table's statistics (see
-- schema.sql). Right after many rows arrive (a million finished jobs inserted, before
-- autovacuum analyzes the table) the planner took the ready jobs by a bitmap heap scan
-- of offload_jobs_ready plus a sort, reading every ready job on each reserve (2-3 ms at
-- 10,000 queued, against 0.08 ms for the ordered index scan that stops at the limit).
-- The function now runs with the plan shapes that read past what it needs turned off:
-- each of its statements has a partial index that answers it in order. `jit = off`
-- because the planner's penalty for a disabled plan node (1e10) would otherwise push
-- the unavoidable final sort past jit_above_cost and compile every statement (0.4 s).
ALTER FUNCTION offload_reserve_v2(text[], text, double precision, double precision, integer,
                                  text, double precision, text)
    SET enable_bitmapscan = off
    SET enable_seqscan = off
    SET enable_sort = off
    SET jit = off;
