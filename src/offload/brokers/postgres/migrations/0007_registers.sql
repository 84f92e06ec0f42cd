-- 0007: registers (`compare_and_set`): one value per name until `expires_at`, such as
-- the scheduler's current fire of each schedule.

CREATE TABLE offload_registers (
    name       text             PRIMARY KEY,
    value      text             NOT NULL,
    expires_at double precision NOT NULL
);
