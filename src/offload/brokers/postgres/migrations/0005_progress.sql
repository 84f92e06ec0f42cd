-- 0005: progress reports: the last one per job.

CREATE TABLE offload_progress (
    job_id   text  PRIMARY KEY,
    progress bytea NOT NULL
);
