//! The hand-off: finished records leave live state for history, so live state follows
//! the city (car parks, cars parked now), never its age.
//!
//! A record is finished when nothing can change it any more: a session closed with
//! nothing left to charge (one in arrears leaves what it owes live as an `Arrear`,
//! written in the step that deletes it), a reservation or booking completed,
//! cancelled or a no-show (or checked in and never seen leaving, a day after its
//! window), a ledger entry (its wallet's balance stays live). Once it has been
//! finished for the hot window, any instance's sweep moves it in two steps:
//!
//! 1. written to history, idempotently by its id (a repeat writes the same row);
//! 2. deleted from the live store by compare-and-set on the version it read, so a
//!    record that changed meanwhile stays (and is moved again, in its new state, next
//!    round).
//!
//! A crash between the steps leaves a record in both, which the next round (on any
//! instance) writes again harmlessly and deletes. Reads merge live and history, live
//! first (`merged_page`), so a record in flight is found in one or the other.
//!
//! History being slow or down pauses the hand-off (live state grows until it is back)
//! and never touches ingest or queries; the `citypark_history_*` metrics say so.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use super::Service;
use crate::{
    domain::{
        Arrear, LedgerEntry, OperatorId, ParkingSession, RegionId, Reservation, Result,
        SharedBooking, Timestamp,
    },
    history::{
        ClosedSession, Cursor, History, Kept, KeptEntry, KeptReservation, Query, Record, SqlHistory,
    },
    metrics,
    store::{Aggregate, AnyWrite, Change, Committed, Store, Write},
};

/// A record history keeps, as the hand-off moves it: with what it leaves in the live
/// store in its place, if anything.
trait Moved: Record {
    /// The write of what stays live once the record moved, committed with its delete.
    fn leaves(&self) -> Option<AnyWrite> {
        None
    }
}

/// A session refused for good leaves what it owes.
impl Moved for ClosedSession {
    fn leaves(&self) -> Option<AnyWrite> {
        let owed = Arrear::of(&self.session)?;
        Some(super::reservations::put(owed.session.to_string(), owed, 0))
    }
}

impl Moved for KeptReservation {}
impl Moved for SharedBooking {}
impl Moved for KeptEntry {}

/// How finished records move to history and how long history keeps them.
#[derive(Debug, Clone)]
pub struct HistorySettings {
    /// How long a record stays live after it finished (`--hot-window-minutes`).
    pub hot_window: Duration,
    /// How often the hand-off runs.
    pub every: Duration,
    /// Records moved per batch (one multi-row insert, one store commit).
    pub batch: usize,
    /// Records moved a second at most (`--hand-off-rate`; `None`: as fast as history
    /// takes them). The hand-off shares the cores with the calls it must not slow.
    pub rate: Option<NonZeroU32>,
    /// How long history keeps each kind (`--history-retention-*-days`).
    pub retention: Retention,
    /// How often retention (pseudonymisation, expiry) runs in history.
    pub retention_every: Duration,
    /// The key of the plates' keyed hash (HMAC-SHA256) once they are pseudonymised.
    pub plate_key: Arc<[u8]>,
    /// Occupancy samples waiting at most; more are dropped and counted.
    pub sample_queue: usize,
    /// How long a removed record's tombstone (its last version) is kept: longer than
    /// any instance takes to read the change stream, so no late change of it can
    /// bring it back (`--tombstone-grace-minutes`).
    pub tombstone_grace: Duration,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            hot_window: Duration::from_secs(24 * 3600),
            every: Duration::from_secs(5),
            batch: 2_000,
            rate: NonZeroU32::new(2_000),
            retention: Retention::default(),
            retention_every: Duration::from_secs(3600),
            plate_key: Arc::from(&b"citypark"[..]),
            sample_queue: 100_000,
            tombstone_grace: Duration::from_secs(3600),
        }
    }
}

/// How long history keeps each kind.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Money records: sessions, reservations, bookings, ledger entries.
    pub money: Duration,
    pub occupancy: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            money: Duration::from_secs(3_650 * DAY),
            occupancy: Duration::from_secs(730 * DAY),
        }
    }
}

impl Retention {
    pub fn of(&self, kept: Kept) -> Duration {
        match kept {
            Kept::Occupancy => self.occupancy,
            _ => self.money,
        }
    }
}

/// Batches a second when the hand-off is paced: small bursts, so no call waits behind
/// a long one.
const PACED_BATCHES_PER_SECOND: u32 = 4;

/// How long one kind's hand-off may run in one round before the next kind's turn (the
/// rest waits for the next round, which follows at once).
const KIND_BUDGET: Duration = Duration::from_secs(2);

/// Chunks of a batch moved at once (history's inserts and the store's deletes of
/// different chunks overlap).
const CHUNKS_IN_FLIGHT: usize = 4;

/// Deletes committed as one group.
const DELETE_GROUP: usize = 50;

/// Records gone for good (their tombstones compacted) before the allocator is asked
/// to give their memory back (also once no tombstone is left waiting): a city's
/// hand-off frees this many every few minutes, a burst after an outage many times over.
const RELEASE_AFTER: u64 = 10_000;

/// `at - d`, or `None` before the epoch's range.
fn before(at: Timestamp, d: Duration) -> Option<Timestamp> {
    let d = jiff::SignedDuration::try_from(d).ok()?;
    at.checked_sub(d).ok()
}

impl Service {
    /// This service with `history` as its history of record.
    pub fn with_history(mut self, history: Arc<SqlHistory>, settings: HistorySettings) -> Self {
        self.history = Some(history);
        self.keeping = Arc::new(settings);
        self
    }

    /// The history of record, if this service has one.
    pub fn history(&self) -> Option<&Arc<SqlHistory>> {
        self.history.as_ref()
    }

    /// Until `stop`: moves finished records past the hot window to history (once an
    /// hour applying history's retention) and compacts tombstones past their grace.
    /// Without a history, only the latter.
    pub async fn sweep_history(&self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.keeping.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_retention: Option<tokio::time::Instant> = None;
        let mut gone = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Some(history) = self.history.clone() {
                let now = self.now();
                let result = self.hand_off(&history, now).await;
                metrics::record_history_up(result.is_ok());
                if let Ok(true) = result {
                    // A kind's turn ended with records left: the next round follows
                    // at once (the pace, not the tick, sets the rate).
                    tick.reset_immediately();
                }
                match result {
                    Err(error) => {
                        metrics::record_history_error("hand_off");
                        tracing::warn!(%error, "hand-off to history paused");
                    }
                    Ok(_)
                        if last_retention
                            .is_none_or(|at| at.elapsed() >= self.keeping.retention_every) =>
                    {
                        last_retention = Some(tokio::time::Instant::now());
                        if let Err(error) = self.apply_retention(&history, now).await {
                            metrics::record_history_error("retention");
                            tracing::warn!(%error, "history retention not applied yet");
                        }
                    }
                    Ok(_) => {}
                }
            }
            self.compact_tombstones(&mut gone).await;
        }
    }

    /// Forgets this engine's tombstones past the grace, and the store's; once many
    /// records are gone for good, has the allocator give their memory back.
    async fn compact_tombstones(&self, gone: &mut u64) {
        let grace = self.keeping.tombstone_grace;
        let mut compacted = 0;
        for (kind, n) in self.engine.compact_tombstones(grace) {
            metrics::record_tombstones_compacted(kind, n);
            compacted += n;
        }
        if compacted > 0 {
            self.engine.shrink_tables();
            *gone += compacted;
            // Many gone, or a burst over (nothing left waiting for its grace).
            if *gone >= RELEASE_AFTER || self.engine.tombstones_pending() == 0 {
                *gone = 0;
                crate::memory::released();
            }
        }
        match self.store.compact_tombstones(grace).await {
            Ok(counts) => {
                for (kind, n) in counts {
                    tracing::debug!(kind, tombstones = n, "store tombstones compacted");
                }
            }
            Err(error) => tracing::warn!(%error, "store tombstones not compacted yet"),
        }
    }

    /// One round: every kind's finished records past the hot window, a batch at a time;
    /// says whether a kind has records left that its turn had no time for.
    pub async fn hand_off(&self, history: &SqlHistory, now: Timestamp) -> Result<bool> {
        let Some(cutoff) = before(now, self.keeping.hot_window) else {
            return Ok(false);
        };
        let engine = &self.engine;
        let mut left = self
            .hand_off_kind::<ParkingSession, _, _>(
                history,
                "session",
                |n| engine.sessions_finished_before(cutoff, n),
                || engine.sessions_finished_count(cutoff),
                |s| Some(self.closed_session((**s).clone(), now)),
                now,
            )
            .await?;
        left |= self
            .hand_off_kind::<Reservation, _, _>(
                history,
                "reservation",
                |n| engine.reservations_finished_by(cutoff, n),
                || engine.reservations_finished_count(cutoff),
                |r| {
                    Some(KeptReservation {
                        operator: engine
                            .get(r.car_park.as_str(), now)
                            .map(|(c, _)| c.operator.clone()),
                        reservation: (**r).clone(),
                    })
                },
                now,
            )
            .await?;
        left |= self
            .hand_off_kind::<SharedBooking, _, _>(
                history,
                "booking",
                |n| engine.bookings_finished_by(cutoff, n),
                || engine.bookings_finished_count(cutoff),
                |b| Some((**b).clone()),
                now,
            )
            .await?;
        left |= self
            .hand_off_kind::<LedgerEntry, _, _>(
                history,
                "ledger_entry",
                |n| engine.entries_before(cutoff, n),
                || engine.entries_count_before(cutoff),
                // A charge whose session is still due stays: the charge's first step
                // writes its entry only if absent, so a retry must find it.
                |e| (!self.charge_pending(e)).then(|| KeptEntry(e.clone())),
                now,
            )
            .await?;
        Ok(left)
    }

    /// Moves the records `due(n)` finds (the first `n` finished ones, oldest first,
    /// with their versions) that `keep` turns into history's records (`None`: it stays
    /// live), each with what it leaves live in its place (`Moved`), a batch at a time,
    /// for at most `KIND_BUDGET`, paced at the settings' rate; then records how many
    /// are left (`backlog`, counted without copying them) and says whether its turn
    /// ended with a full batch still to move.
    async fn hand_off_kind<A: Aggregate, T, R: Moved>(
        &self,
        history: &SqlHistory,
        kind: &'static str,
        due: impl Fn(usize) -> Vec<(T, u64)>,
        backlog: impl Fn() -> usize,
        keep: impl Fn(&T) -> Option<R>,
        now: Timestamp,
    ) -> Result<bool> {
        let rate = self.keeping.rate;
        let batch = match rate {
            Some(rate) => (rate.get() / PACED_BATCHES_PER_SECOND).max(1) as usize,
            None => usize::MAX,
        }
        .min(self.keeping.batch);
        let started = Instant::now();
        loop {
            let began = Instant::now();
            let found = due(batch);
            let full = found.len() == batch;
            let kept: Vec<(R, u64)> = found
                .iter()
                .filter_map(|(record, version)| keep(record).map(|k| (k, *version)))
                .collect();
            let moving = kept.len();
            // In chunks moved side by side: each chunk's two steps stay in order,
            // while one chunk's insert overlaps another's deletes.
            let chunk = batch.div_ceil(CHUNKS_IN_FLIGHT).max(1);
            let mut kept = kept.into_iter();
            let mut moves = Vec::new();
            loop {
                let k: Vec<(R, u64)> = kept.by_ref().take(chunk).collect();
                if k.is_empty() {
                    break;
                }
                moves.push(self.move_to_history::<A, R>(history, kind, k, now));
            }
            for moved in futures_util::future::join_all(moves).await {
                moved?;
            }
            // The pace holds across turns and kinds: a batch's time is taken out
            // before whatever moves next.
            if let Some(rate) = rate {
                let paced = Duration::from_secs_f64(moving as f64 / f64::from(rate.get()));
                tokio::time::sleep(paced.saturating_sub(began.elapsed())).await;
            }
            // A full batch of which nothing could move (charges still pending) ends
            // the turn too: the next round, a tick later, tries again.
            let more = full && moving > 0;
            if !more || started.elapsed() >= KIND_BUDGET {
                metrics::record_history_backlog(kind, backlog());
                return Ok(more);
            }
        }
    }

    /// Whether `entry` is the charge of a session still due (its second step not made
    /// yet).
    fn charge_pending(&self, entry: &LedgerEntry) -> bool {
        entry
            .id
            .strip_prefix("charge:")
            .and_then(|id| crate::domain::SessionId::parse(id).ok())
            .and_then(|id| self.engine.session(&id))
            .is_some_and(|(s, _)| s.is_due())
    }

    /// A session as history keeps it: with the local day it left on, in its car park's
    /// time zone (UTC if the car park is gone).
    pub(super) fn closed_session(&self, session: ParkingSession, now: Timestamp) -> ClosedSession {
        let zone = self
            .engine
            .get(session.id.car_park().as_str(), now)
            .map_or(jiff::tz::TimeZone::UTC, |(c, _)| c.time_zone.zone().clone());
        let exit_day = session.exit_time.map(|t| t.to_zoned(zone).date());
        ClosedSession { session, exit_day }
    }

    /// Writes `kept` to history, then deletes each from the live store at the version
    /// it was read at (with it, in one atomic step, what it leaves live in its place);
    /// how many were deleted. A record that changed since it was read stays:
    /// the next round moves its new state.
    async fn move_to_history<A: Aggregate, R: Moved>(
        &self,
        history: &SqlHistory,
        kind: &'static str,
        kept: Vec<(R, u64)>,
        now: Timestamp,
    ) -> Result<u64> {
        if kept.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let (records, versions): (Vec<R>, Vec<u64>) = kept.into_iter().unzip();
        history.put(&records).await?;
        metrics::record_history_write(kind, started.elapsed().as_secs_f64());
        // A record's move in the live store: what it leaves, then its delete.
        let writes_of = |(record, version): (&R, u64)| -> Vec<AnyWrite> {
            let delete = Write::<A> {
                region: record.region(),
                id: record.id(),
                expected: version,
                floor: 0,
                change: Change::Delete,
            };
            record.leaves().into_iter().chain([delete.into()]).collect()
        };
        let all_written =
            |done: &[Committed]| done.iter().all(|c| matches!(c, Committed::Written { .. }));
        let mut moved = 0;
        let mut failed = None;
        // The moves of one region go as groups (one atomic write each, in Redis one
        // script call for many records); a group that meets a record changed since it
        // was read is not made, and its moves go one by one, so the rest still go.
        let mut by_region: HashMap<RegionId, Vec<(&R, u64)>> = HashMap::new();
        for (record, version) in records.iter().zip(versions) {
            by_region
                .entry(record.region())
                .or_default()
                .push((record, version));
        }
        for group in by_region.values().flat_map(|ks| ks.chunks(DELETE_GROUP)) {
            let writes: Vec<AnyWrite> = group.iter().flat_map(|k| writes_of(*k)).collect();
            match self.store.commit_group(writes, "history", now).await {
                Ok(done) if all_written(&done) => moved += group.len() as u64,
                Ok(_) => {
                    for k in group {
                        match self.store.commit_group(writes_of(*k), "history", now).await {
                            Ok(done) if all_written(&done) => moved += 1,
                            Ok(_) => {}
                            Err(error) => failed = Some(error),
                        }
                    }
                }
                Err(error) => failed = Some(error),
            }
        }
        metrics::record_handed_off(kind, moved);
        match failed {
            Some(error) => Err(error),
            None => Ok(moved),
        }
    }

    /// Keeps the settlement of each operator's local day that can no longer change:
    /// it ended (in every time zone) more than the hot window ago, so every session and
    /// refund of it finished and moved, unless one is still live (a charge pending),
    /// which keeps the day open until a later pass. The days of the last
    /// `SETTLE_DAYS` of every operator with car parks are looked at, so a history down
    /// for weeks still gets its days closed.
    async fn settle_days(&self, history: &SqlHistory, now: Timestamp) -> Result<()> {
        /// A local day ends at most this long after its UTC midnight (UTC−12).
        const LAST_ZONE: Duration = Duration::from_secs(36 * 3600);
        const SETTLE_DAYS: i64 = 14;
        let Some(closed_by) = before(now, self.keeping.hot_window + LAST_ZONE) else {
            return Ok(());
        };
        // A day whose UTC midnight is `closed_by` or earlier ended everywhere by then.
        let last = closed_by.to_zoned(jiff::tz::TimeZone::UTC).date();
        let first = last
            .checked_sub(jiff::Span::new().days(SETTLE_DAYS))
            .map_err(|e| crate::domain::Error::Internal(e.to_string()))?;
        let mut kept = 0;
        let mut operators: Vec<OperatorId> = self
            .engine
            .list(None, None, None, usize::MAX)
            .0
            .iter()
            .map(|c| c.operator.clone())
            .collect();
        operators.sort();
        operators.dedup();
        for (operator, day) in history.unsettled_days(&operators, first, last).await? {
            let (settlement, done) = self.settle(&operator, day, false).await?;
            if !done {
                continue;
            }
            let start = day
                .to_zoned(jiff::tz::TimeZone::UTC)
                .map_err(|e| crate::domain::Error::Internal(e.to_string()))?
                .timestamp();
            history
                .put_settlement(&operator, day, start, &settlement, now)
                .await?;
            kept += 1;
        }
        if kept > 0 {
            tracing::info!(days = kept, "operators' daily settlements kept in history");
        }
        Ok(())
    }

    /// Keeps the settlements of the days that closed, forgets the plates of sessions
    /// past `--session-retention-days` (keeping a keyed hash and the masked form) and
    /// deletes what each kind keeps no longer.
    async fn apply_retention(&self, history: &SqlHistory, now: Timestamp) -> Result<()> {
        const PER_STATEMENT: usize = 1_000;
        self.settle_days(history, now).await?;
        if let Some(cutoff) = before(now, self.payments.session_retention) {
            while history
                .pseudonymise(cutoff, &self.keeping.plate_key, PER_STATEMENT)
                .await?
                == PER_STATEMENT as u64
            {}
        }
        for kept in Kept::ALL {
            if let Some(cutoff) = before(now, self.keeping.retention.of(kept)) {
                let n = history.expire(kept, cutoff).await?;
                if n > 0 {
                    tracing::info!(
                        table = kept.table(),
                        rows = n,
                        "history past its retention deleted"
                    );
                }
            }
        }
        Ok(())
    }

    /// A page of a newest-first list of `live` records (what the caller may see, all
    /// of them) merged with history's (`query`, the same filters): ordered by time
    /// descending then id, one page token for both (`<ms>_<id>`), no record twice.
    /// Live is read before history, and the hand-off writes history before it deletes
    /// from live, so a record moving meanwhile is in one or the other.
    pub(super) async fn merged_page<T, R: Record>(
        &self,
        live: Vec<T>,
        key: impl Fn(&T) -> (Timestamp, String),
        mut query: Query,
        from_history: impl Fn(R) -> T,
    ) -> Result<(Vec<T>, Option<String>)> {
        let size = query.limit;
        let after = query.after.clone();
        let order = |t: &T| {
            let (at, id) = key(t);
            (std::cmp::Reverse(at), id)
        };
        let is_after = |t: &T| {
            after.as_ref().is_none_or(|c| {
                let (r, id) = order(t);
                (r, id) > (std::cmp::Reverse(c.at), c.id.clone())
            })
        };
        let mut all: Vec<T> = live.into_iter().filter(is_after).collect();
        if let Some(history) = &self.history {
            query.limit = size + 1;
            let kept: Vec<R> = history.list(&query).await.inspect_err(|_| {
                metrics::record_history_error("read");
            })?;
            let live_ids: HashSet<String> = all.iter().map(|t| key(t).1).collect();
            all.extend(
                kept.into_iter()
                    .filter(|r| !live_ids.contains(&r.id()))
                    .map(from_history),
            );
        }
        all.sort_by_key(order);
        all.truncate(size + 1);
        let next = (all.len() > size).then(|| {
            all.truncate(size);
            let (at, id) = key(all.last().expect("a full page"));
            format!("{}_{id}", at.as_millisecond())
        });
        Ok((all, next))
    }

    /// One record from history, if there is a history and it holds it.
    pub(super) async fn kept<R: Record>(&self, id: &str) -> Result<Option<R>> {
        match &self.history {
            None => Ok(None),
            Some(history) => history.get(id).await.inspect_err(|_| {
                metrics::record_history_error("read");
            }),
        }
    }
}

/// The history query of a list page: `limit` records after the page token's place.
pub(super) fn page_query(size: usize, after: Option<(Timestamp, String)>) -> Query {
    Query {
        after: after.map(|(at, id)| Cursor { at, id }),
        ..Query::first(size)
    }
}
