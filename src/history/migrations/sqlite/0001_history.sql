-- History of record, SQLite (the single binary's, under --data-dir).
-- Times are milliseconds since the Unix epoch; bodies are `<format>:<json>` of the
-- domain record, as in the live store. Lists are newest first: (listed_at DESC, id).

CREATE TABLE sessions (
    id TEXT NOT NULL,
    listed_at BIGINT NOT NULL,
    car_park TEXT NOT NULL,
    operator TEXT NOT NULL,
    driver TEXT,
    state TEXT NOT NULL,
    exit_at BIGINT,
    exit_day TEXT,
    fee_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    payment_method TEXT NOT NULL,
    payment_status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    receipt_id TEXT NOT NULL,
    plate_kept BIGINT NOT NULL,
    plate_masked TEXT,
    plate_hash TEXT,
    body TEXT NOT NULL,
    -- As on PostgreSQL, where the time is the partition key: unique by id all the same.
    PRIMARY KEY (id, listed_at)
);
CREATE INDEX sessions_by_driver ON sessions (driver, listed_at DESC, id);
CREATE INDEX sessions_by_car_park ON sessions (car_park, listed_at DESC, id);
CREATE INDEX sessions_by_operator ON sessions (operator, listed_at DESC, id);
CREATE INDEX sessions_by_day ON sessions (operator, exit_day);
CREATE INDEX sessions_plated ON sessions (exit_at) WHERE plate_kept = 1;

CREATE TABLE reservations (
    id TEXT PRIMARY KEY,
    listed_at BIGINT NOT NULL,
    car_park TEXT NOT NULL,
    operator TEXT,
    driver TEXT NOT NULL,
    state TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX reservations_by_driver ON reservations (driver, listed_at DESC, id);
CREATE INDEX reservations_by_operator ON reservations (operator, listed_at DESC, id);

CREATE TABLE bookings (
    id TEXT PRIMARY KEY,
    listed_at BIGINT NOT NULL,
    offer TEXT NOT NULL,
    host TEXT NOT NULL,
    driver TEXT NOT NULL,
    state TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX bookings_by_driver ON bookings (driver, listed_at DESC, id);
CREATE INDEX bookings_by_host ON bookings (host, listed_at DESC, id);

CREATE TABLE ledger_entries (
    id TEXT PRIMARY KEY,
    listed_at BIGINT NOT NULL,
    driver TEXT NOT NULL,
    kind TEXT NOT NULL,
    operator TEXT,
    currency TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX ledger_by_driver ON ledger_entries (driver, listed_at DESC, id);
CREATE INDEX ledger_by_operator ON ledger_entries (operator, kind, listed_at);

CREATE TABLE occupancy_samples (
    car_park TEXT NOT NULL,
    category TEXT NOT NULL,
    bucket BIGINT NOT NULL,
    region TEXT NOT NULL,
    min_free BIGINT NOT NULL,
    max_free BIGINT NOT NULL,
    last_free BIGINT NOT NULL,
    capacity BIGINT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (car_park, category, bucket)
);
CREATE INDEX occupancy_by_bucket ON occupancy_samples (bucket);
