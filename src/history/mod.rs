//! History: every finished record, in SQL — PostgreSQL for a deployment of several
//! instances (shared by all), SQLite under `--data-dir` for the single binary.
//!
//! Live state (`store/`, the engine) holds what the service decides on now; once a
//! record is finished and past the hot window, the hand-off (`service/handoff.rs`)
//! writes it here (idempotent by its id) and then deletes it from the live store by
//! compare-and-set. Reads merge both (`service/`), live first, so a record moving
//! between them is seen in one or the other, never in neither.
//!
//! One seam ([`History`]), two backends in one implementation (`sql.rs`: the same
//! queries on both, the dialects' differences named where they are), and one
//! conformance suite (`tests/it/history_conformance.rs`) that both pass. What a kept
//! record is, per kind, is [`Record`] (`records.rs`), like `store::Aggregate`.

pub mod records;
pub mod sql;

use std::{future::Future, path::Path};

use crate::domain::{Error, OperatorId, Result, Settlement, SpaceCategory, Timestamp};

pub use records::{ClosedSession, KeptEntry, KeptReservation, Record};
pub use sql::SqlHistory;

/// A column's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(Option<String>),
    Int(Option<i64>),
}

impl Value {
    pub fn text(s: impl Into<String>) -> Self {
        Value::Text(Some(s.into()))
    }
}

/// Where a newest-first list stopped: lists are ordered by time descending, then id
/// ascending, the order of the live lists' page tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at: Timestamp,
    pub id: String,
}

/// Which records of a kind to list: every filter must match; a filter matches when
/// any of its columns equals its value.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub filters: Vec<(&'static [&'static str], String)>,
    /// Listed at or after.
    pub from: Option<Timestamp>,
    /// Listed before.
    pub to: Option<Timestamp>,
    /// Strictly after this one in list order.
    pub after: Option<Cursor>,
    pub limit: usize,
}

impl Query {
    /// The first `limit` records.
    pub fn first(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// Only records whose `column` is `value`.
    pub fn with(mut self, column: &'static [&'static str], value: impl Into<String>) -> Self {
        self.filters.push((column, value.into()));
        self
    }
}

/// Sums of one operator's local day of sessions, by state and payment, as one SQL
/// aggregate computes them; the domain turns them into a `Settlement`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSums {
    pub currency: String,
    pub state: String,
    pub payment_method: String,
    pub payment_status: String,
    pub sessions: i64,
    pub fee_minor: i64,
}

/// One operator's local day as history holds it ([`History::day`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptDay {
    /// The day's sessions, summed by state and payment.
    pub sessions: Vec<SessionSums>,
    /// The refunds posted on the day, by currency.
    pub refunds: Vec<(String, i64)>,
    /// Which of the live sessions asked about history holds too.
    pub sessions_held: Vec<String>,
    /// Which of the live ledger entries asked about history holds too.
    pub entries_held: Vec<String>,
}

/// One car park's numbers of one category over one 5-minute bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub car_park: String,
    pub region: String,
    pub category: SpaceCategory,
    /// The bucket's start (a multiple of 5 minutes since the epoch).
    pub bucket: Timestamp,
    pub min_free: u32,
    pub max_free: u32,
    /// Free at the bucket's last change.
    pub last_free: u32,
    pub capacity: u32,
    /// The car park's status at the last change (`CarParkStatus::name`).
    pub status: String,
}

/// The width of an occupancy bucket.
pub const BUCKET_MS: i64 = 5 * 60 * 1000;

/// The bucket `at` falls in.
pub fn bucket_of(at: Timestamp) -> Timestamp {
    let ms = at.as_millisecond();
    Timestamp::from_millisecond(ms - ms.rem_euclid(BUCKET_MS)).expect("in range")
}

/// One step of a car park's occupancy over time: the samples of the 5-minute buckets
/// in it rolled up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub start: Timestamp,
    pub min_free: u32,
    pub max_free: u32,
    pub last_free: u32,
    pub capacity: u32,
    pub status: String,
    /// False when no sample fell in the step: the numbers are carried forward.
    pub observed: bool,
}

/// Rolls `samples` (one car park and category, oldest first) into steps of `step_ms`
/// (a multiple of [`BUCKET_MS`]) over [from, to), from the first step with a sample:
/// the fewest of the fewest, the most of the most, the last of the last; a step with
/// no sample carries the last numbers forward.
pub fn roll_up(samples: &[Sample], from: Timestamp, to: Timestamp, step_ms: i64) -> Vec<Step> {
    let (from, to) = (from.as_millisecond(), to.as_millisecond());
    let mut steps: Vec<Step> = Vec::new();
    let mut next = samples.iter().peekable();
    let mut start = from - from.rem_euclid(step_ms);
    while start < to {
        let end = start + step_ms;
        let mut step: Option<Step> = None;
        while let Some(s) = next.next_if(|s| s.bucket.as_millisecond() < end) {
            if s.bucket.as_millisecond() < start {
                continue;
            }
            let merged = step.get_or_insert_with(|| Step {
                start: Timestamp::from_millisecond(start).expect("in range"),
                min_free: s.min_free,
                max_free: s.max_free,
                last_free: s.last_free,
                capacity: s.capacity,
                status: s.status.clone(),
                observed: true,
            });
            merged.min_free = merged.min_free.min(s.min_free);
            merged.max_free = merged.max_free.max(s.max_free);
            merged.last_free = s.last_free;
            merged.capacity = s.capacity;
            merged.status = s.status.clone();
        }
        match (step, steps.last()) {
            (Some(step), _) => steps.push(step),
            (None, Some(last)) => steps.push(Step {
                start: Timestamp::from_millisecond(start).expect("in range"),
                min_free: last.last_free,
                max_free: last.last_free,
                observed: false,
                ..last.clone()
            }),
            (None, None) => {}
        }
        start = end;
    }
    steps
}

/// What history keeps and for how long: each kind kept has a retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kept {
    Sessions,
    Reservations,
    Bookings,
    Ledger,
    Occupancy,
    Settlements,
}

impl Kept {
    pub const ALL: [Kept; 6] = [
        Kept::Sessions,
        Kept::Reservations,
        Kept::Bookings,
        Kept::Ledger,
        Kept::Occupancy,
        Kept::Settlements,
    ];

    /// The table, and a metric label.
    pub fn table(self) -> &'static str {
        match self {
            Kept::Sessions => "sessions",
            Kept::Reservations => "reservations",
            Kept::Bookings => "bookings",
            Kept::Ledger => "ledger_entries",
            Kept::Occupancy => "occupancy_samples",
            Kept::Settlements => "settlements",
        }
    }
}

/// Whether migrations are applied at start or only checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Migrate {
    /// Apply pending migrations at start.
    #[default]
    Auto,
    /// Refuse to start unless every migration was applied (`citypark history migrate`).
    Check,
}

/// The history of record: finished records, written idempotently, read newest first.
/// Every method is one statement or one transaction; an error is `Unavailable` (the
/// database is unreachable or refused the statement) and changed nothing, or (a lost
/// answer) may have: every write is idempotent, so it is simply made again.
pub trait History: Send + Sync + 'static {
    /// "sqlite" or "postgres", for logs.
    fn name(&self) -> &'static str;

    /// Writes `records` (by id, replacing an earlier state); how many were new or
    /// changed, so writing the same records again counts 0.
    fn put<R: Record>(&self, records: &[R]) -> impl Future<Output = Result<u64>> + Send;

    /// One record by id.
    fn get<R: Record>(&self, id: &str) -> impl Future<Output = Result<Option<R>>> + Send;

    /// Records matching `query`, newest first.
    fn list<R: Record>(&self, query: &Query) -> impl Future<Output = Result<Vec<R>>> + Send;

    /// `operator`'s local `day` as history holds it: the sessions that left on it
    /// summed by state and payment, the refunds posted in `[from, to)` by currency,
    /// and which of the live `sessions` and `entries` (ids) it holds too, all read in
    /// one snapshot. A record that moves from live state meanwhile is then in both the
    /// sums and the "held too" lists or in neither, so live plus history counts it once.
    fn day(
        &self,
        operator: &OperatorId,
        day: jiff::civil::Date,
        refunds_in: (Timestamp, Timestamp),
        sessions: &[String],
        entries: &[String],
    ) -> impl Future<Output = Result<KeptDay>> + Send;

    /// The settlement of `operator`'s local `day` as it was kept when the day closed,
    /// if it was.
    fn settled(
        &self,
        operator: &OperatorId,
        day: jiff::civil::Date,
    ) -> impl Future<Output = Result<Option<Settlement>>> + Send;

    /// Keeps `settlement` as `operator`'s closed local `day` (starting at `start`, for
    /// retention), closed at `now`, if the day's sessions in history are as many as it
    /// counts; a day kept already keeps its first. A session written to the day later
    /// (`put`) drops it again, to be kept anew.
    fn put_settlement(
        &self,
        operator: &OperatorId,
        day: jiff::civil::Date,
        start: Timestamp,
        settlement: &Settlement,
        now: Timestamp,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Which of `operators`' local days in [first, last] sessions in history left on
    /// and have no settlement kept yet, oldest first.
    fn unsettled_days(
        &self,
        operators: &[OperatorId],
        first: jiff::civil::Date,
        last: jiff::civil::Date,
    ) -> impl Future<Output = Result<Vec<(OperatorId, jiff::civil::Date)>>> + Send;

    /// Merges samples into their buckets (min of mins, max of maxes, the later last).
    fn put_samples(&self, samples: &[Sample]) -> impl Future<Output = Result<()>> + Send;

    /// One car park's samples of one category with buckets in [from, to), oldest first.
    fn samples(
        &self,
        car_park: &str,
        category: SpaceCategory,
        from: Timestamp,
        to: Timestamp,
    ) -> impl Future<Output = Result<Vec<Sample>>> + Send;

    /// Forgets the plates of sessions that left before `cutoff`, keeping a keyed hash
    /// (HMAC-SHA256 with `key`) and the masked form; at most `limit`; how many.
    fn pseudonymise(
        &self,
        cutoff: Timestamp,
        key: &[u8],
        limit: usize,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Deletes what of `kept` is older than `cutoff` (whole partitions on PostgreSQL,
    /// batches on SQLite); how many rows, where counted.
    fn expire(&self, kept: Kept, cutoff: Timestamp) -> impl Future<Output = Result<u64>> + Send;

    /// Closes the connections.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// Where history lives, from `--history` (a URL) or, by default, the SQLite file in
/// the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Location {
    /// `--history` as given, or the data directory's SQLite file.
    pub fn parse(url: Option<&str>, data_dir: &Path) -> Result<Self> {
        match url {
            None | Some("") => Ok(Location::Sqlite(data_dir.join("history.sqlite3"))),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Location::Postgres(url.to_owned()))
            }
            Some(url) if url.starts_with("sqlite://") => {
                Ok(Location::Sqlite(url.trim_start_matches("sqlite://").into()))
            }
            Some(_) => Err(Error::invalid(
                "history",
                "expected postgres://… or sqlite://PATH (default: a SQLite file in --data-dir)",
            )),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }
}

/// Opens history at `location`, applying or checking the migrations.
pub async fn open(location: &Location, migrate: Migrate) -> Result<SqlHistory> {
    SqlHistory::open(location, migrate).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_five_minutes() {
        let at = Timestamp::from_second(1_700_000_123).unwrap();
        let b = bucket_of(at);
        assert_eq!(b.as_millisecond() % BUCKET_MS, 0);
        assert!(b <= at && at.as_millisecond() - b.as_millisecond() < BUCKET_MS);
    }

    fn sample(minute: i64, min: u32, max: u32, last: u32) -> Sample {
        Sample {
            car_park: "g1".into(),
            region: "qingdao".into(),
            category: SpaceCategory::Standard,
            bucket: Timestamp::from_second(minute * 60).unwrap(),
            min_free: min,
            max_free: max,
            last_free: last,
            capacity: 10,
            status: "open".into(),
        }
    }

    #[test]
    fn samples_roll_up_into_steps_and_gaps_carry_forward() {
        let at = |minute: i64| Timestamp::from_second(minute * 60).unwrap();
        let samples = [
            sample(5, 4, 6, 5),
            sample(10, 2, 5, 3),
            sample(15, 3, 9, 9),
            sample(40, 1, 1, 1),
        ];
        // 15-minute steps over [0, 60): nothing before the first sample.
        let steps = roll_up(&samples, at(0), at(60), 15 * 60_000);
        let got: Vec<(i64, u32, u32, u32, bool)> = steps
            .iter()
            .map(|s| {
                let m = s.start.as_second() / 60;
                (m, s.min_free, s.max_free, s.last_free, s.observed)
            })
            .collect();
        assert_eq!(
            got,
            [
                (0, 2, 6, 3, true),
                (15, 3, 9, 9, true),
                (30, 1, 1, 1, true),
                (45, 1, 1, 1, false)
            ]
        );
        // A window that starts mid-step begins at the step's start; 5-minute steps are
        // the samples themselves.
        let fine = roll_up(&samples, at(7), at(20), BUCKET_MS);
        assert_eq!(fine.len(), 3);
        assert_eq!(fine[0].start, at(5));
        assert!(roll_up(&samples, at(45), at(60), BUCKET_MS).is_empty());
    }

    #[test]
    fn locations() {
        let dir = Path::new("/d");
        assert_eq!(
            Location::parse(None, dir).unwrap(),
            Location::Sqlite("/d/history.sqlite3".into())
        );
        assert!(
            Location::parse(Some("postgres://u@h/db"), dir)
                .unwrap()
                .is_postgres()
        );
        assert!(Location::parse(Some("mysql://x"), dir).is_err());
    }
}
