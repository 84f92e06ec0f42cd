-- 0004: chord joins: one row per terminal member of a chord, with its outcome.

CREATE TABLE offload_joins (
    group_id  text             NOT NULL,
    member_id text             NOT NULL,
    idx       integer          NOT NULL,
    outcome   bytea            NOT NULL,
    joined_at double precision NOT NULL,
    PRIMARY KEY (group_id, member_id)
);
