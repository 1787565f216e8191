//! The SQL history: one implementation over sqlx's SQLite and PostgreSQL pools, the
//! same statements on both (`$1` parameters, numbered in order of first use, read by
//! both), the dialects' differences named where they are (month partitions, upserts'
//! least/greatest).
//!
//! sqlx runs queries checked at run time (no database needed to build) and embeds the
//! versioned migrations of `migrations/<dialect>/` in the binary.

use std::{
    collections::{BTreeSet, HashSet},
    time::Duration,
};

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sqlx::{
    Row,
    migrate::Migrator,
    postgres::{PgPool, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions},
};

use super::{
    ClosedSession, History, Kept, KeptDay, KeptEntry, Location, Migrate, Query, Record, Sample,
    SessionSums, Value,
};
use crate::domain::{Error, OperatorId, Result, Settlement, SpaceCategory, Timestamp};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("src/history/migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("src/history/migrations/postgres");

/// Rows per multi-row insert: within SQLite's 32,766 parameters for the widest table.
const ROWS_PER_INSERT: usize = 1_000;
/// Rows deleted per statement by retention, so no statement holds locks for long.
const ROWS_PER_DELETE: i64 = 5_000;

enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same code on whichever pool it is: `$p` is the pool.
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

/// Binds `values` to query `$q` in order.
macro_rules! bind_all {
    ($q:expr, $values:expr) => {{
        let mut q = $q;
        for value in $values {
            q = match value {
                Value::Text(t) => q.bind(t.clone()),
                Value::Int(i) => q.bind(*i),
            };
        }
        q
    }};
}

/// History in SQLite or PostgreSQL.
pub struct SqlHistory {
    pool: Pool,
    /// Month partitions known to exist (PostgreSQL), so each is created once.
    partitions: Mutex<HashSet<String>>,
}

/// A database error, logged whole; the client learns only that history is unavailable.
fn unavailable(error: sqlx::Error) -> Error {
    tracing::warn!(%error, "history statement failed");
    Error::Unavailable("the history database is unavailable; try again".into())
}

fn corrupt(table: &str, error: impl std::fmt::Display) -> Error {
    Error::Internal(format!(
        "a {table} record in history is unreadable: {error}"
    ))
}

/// `$1, $2, …` from `first`, `n` of them.
fn params(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The month `ms` falls in, and its bounds in milliseconds.
fn month_of(ms: i64) -> (String, i64, i64) {
    let at = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
    let date = at.to_zoned(jiff::tz::TimeZone::UTC).date();
    let first = date.first_of_month();
    let next = first
        .checked_add(jiff::Span::new().months(1))
        .unwrap_or(first);
    let bound = |d: jiff::civil::Date| {
        d.to_zoned(jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp().as_millisecond())
            .unwrap_or(i64::MAX)
    };
    (
        format!("y{:04}m{:02}", first.year(), first.month()),
        bound(first),
        bound(next),
    )
}

/// The column a table's partitions and retention go by.
fn time_column(kept: Kept) -> &'static str {
    match kept {
        Kept::Occupancy => "bucket",
        _ => "listed_at",
    }
}

fn is_partitioned(table: &str) -> bool {
    table == Kept::Sessions.table() || table == Kept::Occupancy.table()
}

/// How long a connection to history stays open unused: the hand-off's bursts open
/// several, and each keeps buffers as large as the largest batch it sent (and, on
/// SQLite, a page cache) until it closes.
const IDLE_CONNECTION: Duration = Duration::from_secs(30);

impl SqlHistory {
    /// Connects (creating the SQLite file and its directory if absent) and applies or
    /// checks the migrations.
    pub async fn open(location: &Location, migrate: Migrate) -> Result<Self> {
        let history = Self::open_unchecked(location).await?;
        match migrate {
            Migrate::Auto => history.migrate().await?,
            Migrate::Check => history.check().await?,
        }
        Ok(history)
    }

    /// Connects without looking at the schema (to show its migrations).
    pub async fn open_unchecked(location: &Location) -> Result<Self> {
        let pool = match location {
            Location::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        Error::FailedPrecondition(format!(
                            "cannot create the data directory {}: {e}",
                            dir.display()
                        ))
                    })?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // WAL with NORMAL is durable against a crash of the process; a
                    // finished record is still in the live store until it is here.
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5));
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    // A connection holds its page cache and its buffers (as large as
                    // the largest batch it wrote): after a burst, idle ones close.
                    .idle_timeout(IDLE_CONNECTION)
                    .connect_with(options)
                    .await
                    .map_err(|e| {
                        Error::FailedPrecondition(format!(
                            "cannot open the history file {}: {e}",
                            path.display()
                        ))
                    })?;
                Pool::Sqlite(pool)
            }
            Location::Postgres(url) => {
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .idle_timeout(IDLE_CONNECTION)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(url)
                    .await
                    .map_err(|e| {
                        Error::FailedPrecondition(format!(
                            "cannot connect to the history database: {e}"
                        ))
                    })?;
                Pool::Postgres(pool)
            }
        };
        Ok(Self {
            pool,
            partitions: Mutex::new(HashSet::new()),
        })
    }

    fn migrator(&self) -> &'static Migrator {
        match self.pool {
            Pool::Sqlite(_) => &SQLITE_MIGRATIONS,
            Pool::Postgres(_) => &POSTGRES_MIGRATIONS,
        }
    }

    /// Applies the migrations not applied yet; the versions applied now.
    pub async fn migrate(&self) -> Result<()> {
        let migrator = self.migrator();
        let result = on_pool!(&self.pool, p => migrator.run(p).await);
        result.map_err(|e| Error::FailedPrecondition(format!("history migration failed: {e}")))
    }

    /// Refuses unless every migration this binary knows was applied.
    pub async fn check(&self) -> Result<()> {
        let applied: Vec<i64> = on_pool!(&self.pool, p => {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(p)
                .await
        })
        .unwrap_or_default();
        let missing: Vec<String> = self
            .migrator()
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .map(|m| format!("{} {}", m.version, m.description))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::FailedPrecondition(format!(
                "the history schema lacks migrations {} (run `citypark history migrate`, or \
                 start with --history-migrate=auto)",
                missing.join(", ")
            )))
        }
    }

    /// The migrations this binary carries: (version, description, applied?).
    pub async fn migrations(&self) -> Result<Vec<(i64, String, bool)>> {
        let applied: Vec<i64> = on_pool!(&self.pool, p => {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(p)
                .await
        })
        .unwrap_or_default();
        Ok(self
            .migrator()
            .iter()
            .map(|m| {
                (
                    m.version,
                    m.description.to_string(),
                    applied.contains(&m.version),
                )
            })
            .collect())
    }

    /// Creates the month partitions of `table` that rows at `times` (ms) need
    /// (PostgreSQL; SQLite has none).
    async fn ensure_partitions(&self, table: &str, times: impl Iterator<Item = i64>) -> Result<()> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(());
        };
        let months: BTreeSet<(String, i64, i64)> = times.map(month_of).collect();
        for (suffix, from, to) in months {
            let name = format!("{table}_{suffix}");
            if self.partitions.lock().contains(&name) {
                continue;
            }
            let ddl = format!(
                "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} FOR VALUES FROM ({from}) TO ({to})"
            );
            if let Err(error) = sqlx::query(&ddl).execute(pool).await {
                // Another instance created it at the same moment: it exists, which is
                // what was wanted.
                let exists = matches!(&error, sqlx::Error::Database(e)
                    if matches!(e.code().as_deref(), Some("42P07" | "23505")));
                if !exists {
                    return Err(unavailable(error));
                }
            }
            self.partitions.lock().insert(name);
        }
        Ok(())
    }

    /// A list's statement and its parameters.
    fn list_sql(table: &str, query: &Query) -> (String, Vec<Value>) {
        let mut sql = format!("SELECT body FROM {table} WHERE TRUE");
        let mut values = Vec::new();
        let next = |values: &mut Vec<Value>, v: Value| {
            values.push(v);
            format!("${}", values.len())
        };
        for (columns, value) in &query.filters {
            let any: Vec<String> = columns
                .iter()
                .map(|c| format!("{c} = {}", next(&mut values, Value::text(value.clone()))))
                .collect();
            sql.push_str(&format!(" AND ({})", any.join(" OR ")));
        }
        if let Some(from) = query.from {
            let p = next(&mut values, Value::Int(Some(from.as_millisecond())));
            sql.push_str(&format!(" AND listed_at >= {p}"));
        }
        if let Some(to) = query.to {
            let p = next(&mut values, Value::Int(Some(to.as_millisecond())));
            sql.push_str(&format!(" AND listed_at < {p}"));
        }
        if let Some(after) = &query.after {
            let at = after.at.as_millisecond();
            let a = next(&mut values, Value::Int(Some(at)));
            let b = next(&mut values, Value::Int(Some(at)));
            let id = next(&mut values, Value::text(after.id.clone()));
            sql.push_str(&format!(
                " AND (listed_at < {a} OR (listed_at = {b} AND id > {id}))"
            ));
        }
        sql.push_str(&format!(
            " ORDER BY listed_at DESC, id ASC LIMIT {}",
            query.limit
        ));
        (sql, values)
    }
}

impl History for SqlHistory {
    fn name(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    async fn put<R: Record>(&self, records: &[R]) -> Result<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        if is_partitioned(R::TABLE) {
            self.ensure_partitions(R::TABLE, records.iter().map(|r| r.at().as_millisecond()))
                .await?;
        }
        let width = R::COLUMNS.len() + 3;
        let columns = format!("id, listed_at, {}, body", R::COLUMNS.join(", "));
        let mut written = 0;
        for chunk in records.chunks(ROWS_PER_INSERT) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", params(1 + i * width, width)))
                .collect();
            // Written again only if it changed, so a repeated hand-off writes nothing.
            let updates: Vec<String> = R::COLUMNS
                .iter()
                .chain(&["body"])
                .map(|c| format!("{c} = excluded.{c}"))
                .collect();
            let sql = format!(
                "INSERT INTO {table} ({columns}) VALUES {} ON CONFLICT ({key}) DO UPDATE SET {} \
                 WHERE {table}.body <> excluded.body",
                rows.join(", "),
                updates.join(", "),
                table = R::TABLE,
                key = R::KEY,
            );
            let values: Vec<Value> = chunk
                .iter()
                .flat_map(|r| {
                    let mut row = vec![
                        Value::text(r.id()),
                        Value::Int(Some(r.at().as_millisecond())),
                    ];
                    row.extend(r.columns());
                    row.push(Value::text(r.body()));
                    row
                })
                .collect();
            let done = on_pool!(&self.pool, p => {
                bind_all!(sqlx::query(&sql), &values)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected())
            });
            written += done.map_err(unavailable)?;
        }
        // A session written to a day already kept reopens it; after the rows are in,
        // so a pass keeping the day meanwhile either counts them or loses its row
        // here (see `put_settlement`).
        let mut days: Vec<(String, String)> = records.iter().filter_map(R::settles).collect();
        days.sort();
        days.dedup();
        for chunk in days.chunks(ROWS_PER_INSERT) {
            let pairs: Vec<String> = (0..chunk.len())
                .map(|i| format!("(operator = ${} AND day = ${})", 2 * i + 1, 2 * i + 2))
                .collect();
            let sql = format!("DELETE FROM settlements WHERE {}", pairs.join(" OR "));
            let values: Vec<Value> = chunk
                .iter()
                .flat_map(|(operator, day)| {
                    [Value::text(operator.clone()), Value::text(day.clone())]
                })
                .collect();
            on_pool!(&self.pool, p => {
                bind_all!(sqlx::query(&sql), &values).execute(p).await.map(|_| ())
            })
            .map_err(unavailable)?;
        }
        Ok(written)
    }

    async fn get<R: Record>(&self, id: &str) -> Result<Option<R>> {
        let sql = format!("SELECT body FROM {} WHERE id = $1", R::TABLE);
        let body: Option<String> = on_pool!(&self.pool, p => {
            sqlx::query_scalar(&sql).bind(id).fetch_optional(p).await
        })
        .map_err(unavailable)?;
        body.map(|b| R::from_body(&b).map_err(|e| corrupt(R::TABLE, e)))
            .transpose()
    }

    async fn list<R: Record>(&self, query: &Query) -> Result<Vec<R>> {
        let (sql, values) = Self::list_sql(R::TABLE, query);
        let bodies: Vec<String> = on_pool!(&self.pool, p => {
            bind_all!(sqlx::query_scalar(&sql), &values).fetch_all(p).await
        })
        .map_err(unavailable)?;
        bodies
            .iter()
            .map(|b| R::from_body(b).map_err(|e| corrupt(R::TABLE, e)))
            .collect()
    }

    async fn day(
        &self,
        operator: &OperatorId,
        day: jiff::civil::Date,
        (from, to): (Timestamp, Timestamp),
        sessions: &[String],
        entries: &[String],
    ) -> Result<KeptDay> {
        let sums = "SELECT currency, state, payment_method, payment_status, \
                    CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(fee_minor), 0) AS BIGINT) AS fee \
                    FROM sessions WHERE operator = $1 AND exit_day = $2 \
                    GROUP BY currency, state, payment_method, payment_status";
        let refunds = "SELECT currency, CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) AS amount \
                       FROM ledger_entries \
                       WHERE operator = $1 AND kind = 'refund' AND listed_at >= $2 AND listed_at < $3 \
                       GROUP BY currency";
        let held = |table: &str, n: usize| {
            format!("SELECT id FROM {table} WHERE id IN ({})", params(1, n))
        };
        let postgres = matches!(self.pool, Pool::Postgres(_));
        let read = on_pool!(&self.pool, p => async {
            let mut tx = p.begin().await?;
            // Every statement below reads one snapshot: PostgreSQL's default (read
            // committed) takes one per statement; SQLite's read transaction is one
            // from its first read.
            if postgres {
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .execute(&mut *tx)
                    .await?;
            }
            let mut kept = KeptDay::default();
            for (table, ids, found) in [
                (ClosedSession::TABLE, sessions, &mut kept.sessions_held),
                (KeptEntry::TABLE, entries, &mut kept.entries_held),
            ] {
                for chunk in ids.chunks(ROWS_PER_INSERT) {
                    let values: Vec<Value> =
                        chunk.iter().map(|id| Value::text(id.clone())).collect();
                    let sql = held(table, chunk.len());
                    let ids: Vec<String> = bind_all!(sqlx::query_scalar(&sql), &values)
                        .fetch_all(&mut *tx)
                        .await?;
                    found.extend(ids);
                }
            }
            for row in sqlx::query(sums)
                .bind(operator.as_str())
                .bind(day.to_string())
                .fetch_all(&mut *tx)
                .await?
            {
                kept.sessions.push(SessionSums {
                    currency: row.try_get("currency")?,
                    state: row.try_get("state")?,
                    payment_method: row.try_get("payment_method")?,
                    payment_status: row.try_get("payment_status")?,
                    sessions: row.try_get("n")?,
                    fee_minor: row.try_get("fee")?,
                });
            }
            kept.refunds = sqlx::query_as(refunds)
                .bind(operator.as_str())
                .bind(from.as_millisecond())
                .bind(to.as_millisecond())
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(kept)
        }.await);
        read.map_err(unavailable)
    }

    async fn settled(
        &self,
        operator: &OperatorId,
        day: jiff::civil::Date,
    ) -> Result<Option<Settlement>> {
        let sql = "SELECT currency, sessions_paid, sessions_unpaid, sessions_free, \
                   sessions_voided, revenue_minor, refunds_minor, arrears_minor, barrier_minor, \
                   pending_minor FROM settlements WHERE operator = $1 AND day = $2";
        type Row = (String, i64, i64, i64, i64, i64, i64, i64, i64, i64);
        let row: Option<Row> = on_pool!(&self.pool, p => {
            sqlx::query_as(sql)
                .bind(operator.as_str())
                .bind(day.to_string())
                .fetch_optional(p)
                .await
        })
        .map_err(unavailable)?;
        let Some((
            currency,
            paid,
            unpaid,
            free,
            voided,
            revenue,
            refunds,
            arrears,
            barrier,
            pending,
        )) = row
        else {
            return Ok(None);
        };
        let count = |n: i64| u32::try_from(n).map_err(|_| corrupt("settlements", n));
        Ok(Some(Settlement {
            currency,
            sessions_paid: count(paid)?,
            sessions_unpaid: count(unpaid)?,
            sessions_free: count(free)?,
            sessions_voided: count(voided)?,
            revenue_minor: revenue,
            refunds_minor: refunds,
            arrears_minor: arrears,
            barrier_minor: barrier,
            pending_minor: pending,
        }))
    }

    async fn put_settlement(
        &self,
        operator: &OperatorId,
        day: jiff::civil::Date,
        start: Timestamp,
        settlement: &Settlement,
        now: Timestamp,
    ) -> Result<()> {
        // Kept only if the day's sessions in history are the ones it counts, and
        // dropped again if one came in before it was (a late session's `put` drops it
        // after): either way a kept day is never short of a session.
        const DAY_SESSIONS: &str =
            "(SELECT count(*) FROM sessions WHERE operator = $1 AND exit_day = $2)";
        let sql = format!(
            "INSERT INTO settlements (operator, day, listed_at, currency, sessions_paid, \
             sessions_unpaid, sessions_free, sessions_voided, revenue_minor, refunds_minor, \
             arrears_minor, barrier_minor, pending_minor, closed_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 \
             WHERE {DAY_SESSIONS} = $15 \
             ON CONFLICT (operator, day) DO NOTHING"
        );
        let recheck = format!(
            "DELETE FROM settlements WHERE operator = $1 AND day = $2 AND {DAY_SESSIONS} <> $3"
        );
        let s = settlement;
        let counted = i64::from(s.sessions_paid)
            + i64::from(s.sessions_unpaid)
            + i64::from(s.sessions_free)
            + i64::from(s.sessions_voided);
        let values = [
            Value::text(operator.as_str()),
            Value::text(day.to_string()),
            Value::Int(Some(start.as_millisecond())),
            Value::text(s.currency.clone()),
            Value::Int(Some(i64::from(s.sessions_paid))),
            Value::Int(Some(i64::from(s.sessions_unpaid))),
            Value::Int(Some(i64::from(s.sessions_free))),
            Value::Int(Some(i64::from(s.sessions_voided))),
            Value::Int(Some(s.revenue_minor)),
            Value::Int(Some(s.refunds_minor)),
            Value::Int(Some(s.arrears_minor)),
            Value::Int(Some(s.barrier_minor)),
            Value::Int(Some(s.pending_minor)),
            Value::Int(Some(now.as_millisecond())),
            Value::Int(Some(counted)),
        ];
        let again = [
            values[0].clone(),
            values[1].clone(),
            Value::Int(Some(counted)),
        ];
        on_pool!(&self.pool, p => {
            bind_all!(sqlx::query(&sql), &values).execute(p).await.map(|_| ())
        })
        .map_err(unavailable)?;
        on_pool!(&self.pool, p => {
            bind_all!(sqlx::query(&recheck), &again).execute(p).await.map(|_| ())
        })
        .map_err(unavailable)
    }

    async fn unsettled_days(
        &self,
        operators: &[OperatorId],
        first: jiff::civil::Date,
        last: jiff::civil::Date,
    ) -> Result<Vec<(OperatorId, jiff::civil::Date)>> {
        // Each operator's day is probed by its own index seek, not found by reading
        // every session of the window (a city's million a day).
        let kept: Vec<(String, String)> = on_pool!(&self.pool, p => {
            sqlx::query_as("SELECT operator, day FROM settlements WHERE day >= $1 AND day <= $2")
                .bind(first.to_string())
                .bind(last.to_string())
                .fetch_all(p)
                .await
        })
        .map_err(unavailable)?;
        let kept: HashSet<(String, String)> = kept.into_iter().collect();
        let probe = "SELECT 1 FROM sessions WHERE exit_day = $1 AND operator = $2 LIMIT 1";
        let mut found = Vec::new();
        let mut day = first;
        while day <= last {
            for operator in operators {
                let key = (operator.to_string(), day.to_string());
                if kept.contains(&key) {
                    continue;
                }
                let any: Option<i32> = on_pool!(&self.pool, p => {
                    sqlx::query_scalar(probe).bind(&key.1).bind(&key.0).fetch_optional(p).await
                })
                .map_err(unavailable)?;
                if any.is_some() {
                    found.push((operator.clone(), day));
                }
            }
            day = day
                .tomorrow()
                .map_err(|e| Error::Internal(format!("the day after {day}: {e}")))?;
        }
        Ok(found)
    }

    async fn put_samples(&self, samples: &[Sample]) -> Result<()> {
        if samples.is_empty() {
            return Ok(());
        }
        let table = Kept::Occupancy.table();
        self.ensure_partitions(table, samples.iter().map(|s| s.bucket.as_millisecond()))
            .await?;
        // A batch may hold a bucket twice (two flushes merged): one row per key per
        // statement, as an upsert requires.
        let mut merged: Vec<Sample> = Vec::with_capacity(samples.len());
        let mut seen = std::collections::HashMap::new();
        for s in samples {
            let key = (s.car_park.clone(), s.category, s.bucket);
            match seen.get(&key) {
                Some(&i) => {
                    let m: &mut Sample = &mut merged[i];
                    m.min_free = m.min_free.min(s.min_free);
                    m.max_free = m.max_free.max(s.max_free);
                    m.last_free = s.last_free;
                    m.capacity = s.capacity;
                    m.status = s.status.clone();
                }
                None => {
                    seen.insert(key, merged.len());
                    merged.push(s.clone());
                }
            }
        }
        let (least, greatest) = match self.pool {
            Pool::Sqlite(_) => ("min", "max"),
            Pool::Postgres(_) => ("LEAST", "GREATEST"),
        };
        for chunk in merged.chunks(ROWS_PER_INSERT) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", params(1 + i * 9, 9)))
                .collect();
            let sql = format!(
                "INSERT INTO {table} (car_park, category, bucket, region, min_free, max_free, \
                 last_free, capacity, status) VALUES {} \
                 ON CONFLICT (car_park, category, bucket) DO UPDATE SET \
                 min_free = {least}({table}.min_free, excluded.min_free), \
                 max_free = {greatest}({table}.max_free, excluded.max_free), \
                 last_free = excluded.last_free, capacity = excluded.capacity, \
                 status = excluded.status",
                rows.join(", ")
            );
            let values: Vec<Value> = chunk
                .iter()
                .flat_map(|s| {
                    [
                        Value::text(s.car_park.clone()),
                        Value::text(s.category.name()),
                        Value::Int(Some(s.bucket.as_millisecond())),
                        Value::text(s.region.clone()),
                        Value::Int(Some(i64::from(s.min_free))),
                        Value::Int(Some(i64::from(s.max_free))),
                        Value::Int(Some(i64::from(s.last_free))),
                        Value::Int(Some(i64::from(s.capacity))),
                        Value::text(s.status.clone()),
                    ]
                })
                .collect();
            on_pool!(&self.pool, p => {
                bind_all!(sqlx::query(&sql), &values).execute(p).await.map(|_| ())
            })
            .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn samples(
        &self,
        car_park: &str,
        category: SpaceCategory,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Sample>> {
        let sql = "SELECT car_park, region, bucket, min_free, max_free, last_free, capacity, status \
                   FROM occupancy_samples \
                   WHERE car_park = $1 AND category = $2 AND bucket >= $3 AND bucket < $4 \
                   ORDER BY bucket";
        type Row = (String, String, i64, i64, i64, i64, i64, String);
        let rows: Vec<Row> = on_pool!(&self.pool, p => {
            sqlx::query_as(sql)
                .bind(car_park)
                .bind(category.name())
                .bind(from.as_millisecond())
                .bind(to.as_millisecond())
                .fetch_all(p)
                .await
        })
        .map_err(unavailable)?;
        let count = |n: i64| u32::try_from(n).unwrap_or(0);
        rows.into_iter()
            .map(
                |(car_park, region, bucket, min, max, last, capacity, status)| {
                    Ok(Sample {
                        car_park,
                        region,
                        category,
                        bucket: Timestamp::from_millisecond(bucket)
                            .map_err(|e| corrupt("occupancy_samples", e))?,
                        min_free: count(min),
                        max_free: count(max),
                        last_free: count(last),
                        capacity: count(capacity),
                        status,
                    })
                },
            )
            .collect()
    }

    async fn pseudonymise(&self, cutoff: Timestamp, key: &[u8], limit: usize) -> Result<u64> {
        let select = format!(
            "SELECT body FROM sessions WHERE plate_kept = 1 AND exit_at < $1 LIMIT {limit}"
        );
        let bodies: Vec<String> = on_pool!(&self.pool, p => {
            sqlx::query_scalar(&select)
                .bind(cutoff.as_millisecond())
                .fetch_all(p)
                .await
        })
        .map_err(unavailable)?;
        let mut done = 0;
        for body in bodies {
            let mut kept = ClosedSession::from_body(&body).map_err(|e| corrupt("sessions", e))?;
            let Some(plate) = kept.session.plate.take() else {
                continue;
            };
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
            mac.update(plate.as_str().as_bytes());
            let hash = hex::encode(mac.finalize().into_bytes());
            let update = "UPDATE sessions SET plate_kept = 0, plate_hash = $1, plate_masked = $2, \
                          body = $3 WHERE id = $4 AND listed_at = $5";
            let at = kept.at().as_millisecond();
            let changed = on_pool!(&self.pool, p => {
                sqlx::query(update)
                    .bind(hash.as_str())
                    .bind(plate.masked())
                    .bind(kept.body())
                    .bind(kept.id())
                    .bind(at)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected())
            })
            .map_err(unavailable)?;
            done += changed;
        }
        Ok(done)
    }

    async fn expire(&self, kept: Kept, cutoff: Timestamp) -> Result<u64> {
        let table = kept.table();
        let column = time_column(kept);
        let cutoff_ms = cutoff.as_millisecond();
        if let (Pool::Postgres(pool), true) = (&self.pool, is_partitioned(table)) {
            // Whole months past the cutoff go at once; the month the cutoff falls in
            // is trimmed row by row below.
            let partitions: Vec<String> = sqlx::query_scalar(
                "SELECT c.relname::text FROM pg_inherits i \
                 JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
                 WHERE p.relname = $1",
            )
            .bind(table)
            .fetch_all(pool)
            .await
            .map_err(unavailable)?;
            for name in partitions {
                let Some(suffix) = name.strip_prefix(&format!("{table}_")) else {
                    continue;
                };
                let Some((_, _, end)) = month_from_suffix(suffix) else {
                    continue;
                };
                if end <= cutoff_ms {
                    sqlx::query(&format!("DROP TABLE IF EXISTS {name}"))
                        .execute(pool)
                        .await
                        .map_err(unavailable)?;
                    self.partitions.lock().remove(&name);
                    tracing::info!(partition = %name, "history partition past its retention dropped");
                }
            }
        }
        let key = match kept {
            Kept::Occupancy => "car_park, category, bucket",
            Kept::Settlements => "operator, day",
            _ => "id",
        };
        let sql = format!(
            "DELETE FROM {table} WHERE ({key}) IN \
             (SELECT {key} FROM {table} WHERE {column} < $1 LIMIT {ROWS_PER_DELETE})"
        );
        let mut deleted = 0;
        loop {
            let n = on_pool!(&self.pool, p => {
                sqlx::query(&sql).bind(cutoff_ms).execute(p).await.map(|r| r.rows_affected())
            })
            .map_err(unavailable)?;
            deleted += n;
            if n < ROWS_PER_DELETE as u64 {
                return Ok(deleted);
            }
        }
    }

    async fn close(&self) {
        on_pool!(&self.pool, p => p.close().await);
    }
}

/// A partition's month from its suffix (`y2026m12`): (year, month, end in ms).
fn month_from_suffix(suffix: &str) -> Option<(i16, i8, i64)> {
    let (y, m) = suffix.strip_prefix('y')?.split_once('m')?;
    let (year, month): (i16, i8) = (y.parse().ok()?, m.parse().ok()?);
    let first = jiff::civil::Date::new(year, month, 1).ok()?;
    let (_, _, end) = month_of(
        first
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp()
            .as_millisecond(),
    );
    Some((year, month, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_their_partitions() {
        let ms = Timestamp::from_second(1_796_000_000)
            .unwrap()
            .as_millisecond(); // 2026-11
        let (suffix, from, to) = month_of(ms);
        assert_eq!(suffix, "y2026m11");
        assert!(from <= ms && ms < to);
        assert_eq!(month_from_suffix(&suffix).unwrap().2, to);
        assert_eq!(month_of(to).1, to, "months are adjacent");
    }

    #[test]
    fn lists_number_their_parameters_in_order() {
        let query = Query {
            filters: vec![(&["driver", "host"], "d1".into())],
            from: Some(Timestamp::UNIX_EPOCH),
            to: None,
            after: Some(super::super::Cursor {
                at: Timestamp::UNIX_EPOCH,
                id: "x".into(),
            }),
            limit: 10,
        };
        let (sql, values) = SqlHistory::list_sql("bookings", &query);
        assert_eq!(values.len(), 6);
        for i in 1..=6 {
            assert!(sql.contains(&format!("${i}")), "{sql}");
        }
        assert!(sql.find("$1").unwrap() < sql.find("$6").unwrap());
    }
}
