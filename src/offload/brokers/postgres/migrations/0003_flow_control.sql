-- 0003: flow control: rate limits (GCRA state per key) and concurrency slots.

CREATE TABLE offload_rates (
    key text             PRIMARY KEY,
    tat  double precision NOT NULL
);

CREATE TABLE offload_slots (
    key        text             NOT NULL,
    holder     text             NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (key, holder)
);
