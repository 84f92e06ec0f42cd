-- 0001: the job table, its partial indexes, the queue and worker tables.

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
    max_attempts     integer,
    key              text             UNIQUE,
    created_at       double precision NOT NULL,
    due_at           double precision NOT NULL,
    expires_at       double precision,
    started_at       double precision,
    finished_at      double precision,
    worker_id        text,
    lease_token      text,
    lease_deadline   double precision,
    error            text,
    payload          bytea            NOT NULL,
    result           bytea,
    cancel_requested boolean          NOT NULL DEFAULT false,
    purge_at         double precision
);

CREATE INDEX offload_jobs_ready
    ON offload_jobs (queue, priority DESC, due_at, seq) WHERE state = 'queued';
CREATE INDEX offload_jobs_scheduled
    ON offload_jobs (due_at) WHERE state = 'scheduled';
CREATE INDEX offload_jobs_scheduled_queue
    ON offload_jobs (queue, due_at) WHERE state = 'scheduled';
CREATE INDEX offload_jobs_running
    ON offload_jobs (lease_deadline) WHERE state = 'running';
CREATE INDEX offload_jobs_expiry
    ON offload_jobs (expires_at)
    WHERE expires_at IS NOT NULL AND state IN ('queued', 'scheduled');
CREATE INDEX offload_jobs_purge
    ON offload_jobs (purge_at) WHERE purge_at IS NOT NULL;
CREATE INDEX offload_jobs_queue_state ON offload_jobs (queue, state, seq);
CREATE INDEX offload_jobs_state ON offload_jobs (state, seq);

CREATE TABLE offload_queues (
    name text PRIMARY KEY
);

CREATE TABLE offload_workers (
    id          text             PRIMARY KEY,
    hostname    text             NOT NULL,
    pid         integer          NOT NULL,
    queues      text             NOT NULL,
    concurrency integer          NOT NULL,
    started_at  double precision NOT NULL,
    last_seen   double precision NOT NULL,
    running     integer          NOT NULL,
    processed   integer          NOT NULL,
    extra       text             NOT NULL,
    expires_at  double precision NOT NULL
);
