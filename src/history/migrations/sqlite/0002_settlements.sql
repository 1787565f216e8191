-- Daily settlements per operator: each local day, once nothing of it can change any
-- more (it ended more than the hot window and a day and a half ago, and none of its
-- sessions or refunds is live), is kept as one row, what GetSettlement then reads.
-- `listed_at` is the day's start (UTC), for retention.

CREATE TABLE settlements (
    operator TEXT NOT NULL,
    day TEXT NOT NULL,
    listed_at BIGINT NOT NULL,
    currency TEXT NOT NULL,
    sessions_paid BIGINT NOT NULL,
    sessions_unpaid BIGINT NOT NULL,
    sessions_free BIGINT NOT NULL,
    sessions_voided BIGINT NOT NULL,
    revenue_minor BIGINT NOT NULL,
    refunds_minor BIGINT NOT NULL,
    arrears_minor BIGINT NOT NULL,
    barrier_minor BIGINT NOT NULL,
    closed_at BIGINT NOT NULL,
    PRIMARY KEY (operator, day)
);
CREATE INDEX settlements_by_time ON settlements (listed_at);

-- The days to close are found by day across operators: the day leads the index (a
-- day's settlement still finds its sessions by both).
DROP INDEX sessions_by_day;
CREATE INDEX sessions_by_day ON sessions (exit_day, operator);
