-- 0008: operations. Pause flags (`set_paused`): one row per paused queue or schedule;
-- attempt history (`record_attempt`): the newest records of each job, numbered by `n`
-- over the job's life (so the first kept one tells how many were dropped).

CREATE TABLE offload_paused (
    name      text             PRIMARY KEY,
    paused_at double precision NOT NULL
);

CREATE TABLE offload_attempts (
    job_id text    NOT NULL,
    n      integer NOT NULL,
    token  text    NOT NULL,
    record bytea   NOT NULL,
    PRIMARY KEY (job_id, n)
);
