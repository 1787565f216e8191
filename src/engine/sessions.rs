//! Parking sessions and drivers' accounts in memory: sessions by id, car park and
//! driver, the ones with a charge pending, the ones in arrears, the closed ones whose
//! plate is still kept; which session a plate is in at a car park; what sessions moved
//! to history leave owed (`Arrear`), by driver; plate links by plate and driver;
//! wallets and their ledger entries by driver.
//!
//! Locking: one `RwLock` for all of it, never held while taking another engine lock.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use super::{
    Engine,
    replica::{Held, finished_by, keyed_replica, unindex},
};
use crate::domain::{
    Arrear, CarParkId, DriverId, LedgerEntry, OpenSession, ParkingSession, Plate, PlateLink,
    SessionId, SessionState, Timestamp, Wallet,
};

/// Every session and account record this engine holds.
#[derive(Default)]
pub(super) struct SessionTables {
    sessions: HashMap<SessionId, Held<ParkingSession>>,
    by_car_park: HashMap<CarParkId, HashSet<SessionId>>,
    by_driver: HashMap<DriverId, HashSet<SessionId>>,
    /// Closed sessions with a charge to make.
    due: BTreeSet<SessionId>,
    /// Closed sessions whose charge was refused, by their driver.
    arrears: HashMap<DriverId, HashSet<SessionId>>,
    /// Closed sessions that still hold a plate, by exit time (for the retention sweep).
    plated: BTreeSet<(Timestamp, SessionId)>,
    /// Finished sessions (closed with nothing left to charge or owe), by exit time:
    /// what the hand-off moves to history.
    finished: BTreeSet<(Timestamp, SessionId)>,
    open: HashMap<String, Held<OpenSession>>,
    /// What sessions in arrears left owed when they moved to history, by session.
    owed: HashMap<SessionId, Held<Arrear>>,
    owed_by_driver: HashMap<DriverId, HashSet<SessionId>>,
    links: HashMap<Plate, Held<PlateLink>>,
    links_by_driver: HashMap<DriverId, HashSet<Plate>>,
    wallets: HashMap<DriverId, Held<Wallet>>,
    entries: HashMap<String, Held<LedgerEntry>>,
    entries_by_driver: HashMap<DriverId, BTreeSet<(Timestamp, String)>>,
    /// Every ledger entry by time, for the hand-off.
    entries_by_time: BTreeSet<(Timestamp, String)>,
    /// Kept as records come and go, so the metrics never walk every session.
    counts: SessionCounts,
}

/// When a session finished: closed, with nothing left to charge (a charge pending). A
/// session in arrears is finished too: what it owes stays live as an `Arrear`.
fn finished_at(s: &ParkingSession) -> Option<Timestamp> {
    (s.state.is_closed() && !s.is_due())
        .then_some(s.exit_time)
        .flatten()
}

/// Where a session stands in the retention sweep: closed, keeping its plate, since.
fn plated_since(s: &ParkingSession) -> Option<Timestamp> {
    let closed = s.state.is_closed() && !s.is_due();
    if closed && s.plate.is_some() {
        s.exit_time
    } else {
        None
    }
}

impl SessionTables {
    fn set_session(&mut self, id: SessionId, record: Option<Arc<ParkingSession>>, version: u64) {
        if let Some(old) = self.sessions.get(&id).and_then(|h| h.record.clone()) {
            unindex(&mut self.by_car_park, &id.car_park(), &id);
            if let Some(driver) = &old.driver {
                unindex(&mut self.by_driver, driver, &id);
                unindex(&mut self.arrears, driver, &id);
            }
            self.due.remove(&id);
            if let Some(at) = plated_since(&old) {
                self.plated.remove(&(at, id.clone()));
            }
            if let Some(at) = finished_at(&old) {
                self.finished.remove(&(at, id.clone()));
            }
            self.counts.count(&old, -1);
        }
        if let Some(new) = &record {
            self.by_car_park
                .entry(id.car_park())
                .or_default()
                .insert(id.clone());
            if let Some(driver) = &new.driver {
                self.by_driver
                    .entry(driver.clone())
                    .or_default()
                    .insert(id.clone());
                if new.is_arrears() {
                    self.arrears
                        .entry(driver.clone())
                        .or_default()
                        .insert(id.clone());
                }
            }
            if new.is_due() {
                self.due.insert(id.clone());
            }
            if let Some(at) = plated_since(new) {
                self.plated.insert((at, id.clone()));
            }
            if let Some(at) = finished_at(new) {
                self.finished.insert((at, id.clone()));
            }
            self.counts.count(new, 1);
        }
        self.sessions.insert(id, Held { record, version });
    }

    fn set_open(&mut self, id: String, record: Option<Arc<OpenSession>>, version: u64) {
        self.open.insert(id, Held { record, version });
    }

    fn set_arrear(&mut self, id: SessionId, record: Option<Arc<Arrear>>, version: u64) {
        if let Some(old) = self.owed.get(&id).and_then(|h| h.record.clone()) {
            unindex(&mut self.owed_by_driver, &old.driver, &id);
            self.counts.count_owed(&old, -1);
        }
        if let Some(new) = &record {
            self.owed_by_driver
                .entry(new.driver.clone())
                .or_default()
                .insert(id.clone());
            self.counts.count_owed(new, 1);
        }
        self.owed.insert(id, Held { record, version });
    }

    fn set_link(&mut self, plate: Plate, record: Option<Arc<PlateLink>>, version: u64) {
        if let Some(old) = self.links.get(&plate).and_then(|h| h.record.clone()) {
            unindex(&mut self.links_by_driver, &old.driver, &plate);
        }
        if let Some(new) = &record {
            self.links_by_driver
                .entry(new.driver.clone())
                .or_default()
                .insert(plate.clone());
        }
        self.links.insert(plate, Held { record, version });
    }

    fn set_wallet(&mut self, driver: DriverId, record: Option<Arc<Wallet>>, version: u64) {
        self.wallets.insert(driver, Held { record, version });
    }

    fn set_entry(&mut self, id: String, record: Option<Arc<LedgerEntry>>, version: u64) {
        if let Some(old) = self.entries.get(&id).and_then(|h| h.record.clone())
            && let Some(set) = self.entries_by_driver.get_mut(&old.driver)
        {
            set.remove(&(old.at, id.clone()));
            if set.is_empty() {
                self.entries_by_driver.remove(&old.driver);
            }
        }
        if let Some(old) = self.entries.get(&id).and_then(|h| h.record.clone()) {
            self.entries_by_time.remove(&(old.at, id.clone()));
        }
        if let Some(new) = &record {
            self.entries_by_driver
                .entry(new.driver.clone())
                .or_default()
                .insert((new.at, id.clone()));
            self.entries_by_time.insert((new.at, id.clone()));
        }
        self.entries.insert(id, Held { record, version });
    }

    fn copies<'a>(&self, ids: impl IntoIterator<Item = &'a SessionId>) -> Vec<ParkingSession> {
        ids.into_iter()
            .filter_map(|id| self.sessions.get(id)?.record.clone())
            .map(|s| (*s).clone())
            .collect()
    }
}

/// Session records counted by state, and the arrears: how many sessions and what they
/// owe, per currency.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SessionCounts {
    pub by_state: [usize; 5],
    pub arrears: usize,
    /// Every currency seen is reported, 0 once its arrears are gone.
    pub arrears_minor: HashMap<String, i64>,
}

impl SessionCounts {
    /// Counts `s` in (`sign` 1) or out (-1).
    fn count(&mut self, s: &ParkingSession, sign: i64) {
        let i = SessionState::ALL
            .iter()
            .position(|x| *x == s.state)
            .expect("every state is listed");
        self.by_state[i] = self.by_state[i].saturating_add_signed(sign as isize);
        let owed = self
            .arrears_minor
            .entry(s.tariff.currency.clone())
            .or_default();
        if s.is_arrears() {
            self.arrears = self.arrears.saturating_add_signed(sign as isize);
            *owed += sign * s.fee_minor;
        }
    }

    /// Counts what a session moved to history left owed in (1) or out (-1).
    fn count_owed(&mut self, a: &Arrear, sign: i64) {
        self.arrears = self.arrears.saturating_add_signed(sign as isize);
        *self.arrears_minor.entry(a.currency.clone()).or_default() += sign * a.fee_minor;
    }
}

impl Engine {
    /// A session and its version.
    pub fn session(&self, id: &SessionId) -> Option<(Arc<ParkingSession>, u64)> {
        let tables = self.sessions.read();
        let held = tables.sessions.get(id)?;
        Some((held.record.clone()?, held.version))
    }

    /// The sessions at `car_parks`.
    pub fn sessions_at(&self, car_parks: &[CarParkId]) -> Vec<ParkingSession> {
        let tables = self.sessions.read();
        car_parks
            .iter()
            .filter_map(|c| tables.by_car_park.get(c))
            .flat_map(|ids| tables.copies(ids))
            .collect()
    }

    /// The sessions charged to `driver`.
    pub fn sessions_of_driver(&self, driver: &DriverId) -> Vec<ParkingSession> {
        let tables = self.sessions.read();
        tables
            .by_driver
            .get(driver)
            .map_or_else(Vec::new, |ids| tables.copies(ids))
    }

    /// What `driver` owes: their sessions in arrears, live or moved to history (each
    /// once, though a session and its `Arrear` are both held for the moment between
    /// the two writes of its move).
    pub fn arrears_of(&self, driver: &DriverId) -> Vec<Arrear> {
        let tables = self.sessions.read();
        let mut owed: HashMap<SessionId, Arrear> = tables
            .owed_by_driver
            .get(driver)
            .into_iter()
            .flatten()
            .filter_map(|id| tables.owed.get(id)?.record.as_deref().cloned())
            .map(|a| (a.session.clone(), a))
            .collect();
        for session in tables
            .arrears
            .get(driver)
            .map_or_else(Vec::new, |ids| tables.copies(ids))
        {
            if let Some(a) = Arrear::of(&session) {
                owed.entry(a.session.clone()).or_insert(a);
            }
        }
        let mut owed: Vec<Arrear> = owed.into_values().collect();
        owed.sort_by(|a, b| (a.exit_time, &a.session).cmp(&(b.exit_time, &b.session)));
        owed
    }

    /// Closed sessions with a charge to make.
    pub fn sessions_due(&self) -> Vec<SessionId> {
        self.sessions.read().due.iter().cloned().collect()
    }

    /// Closed sessions that left before `cutoff` and still keep their plate.
    pub fn sessions_to_pseudonymise(&self, cutoff: Timestamp) -> Vec<SessionId> {
        let tables = self.sessions.read();
        tables
            .plated
            .iter()
            .take_while(|(at, _)| *at < cutoff)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Up to `limit` sessions that finished before `cutoff`, oldest first, with their
    /// versions: what the hand-off moves to history.
    pub fn sessions_finished_before(
        &self,
        cutoff: Timestamp,
        limit: usize,
    ) -> Vec<(Arc<ParkingSession>, u64)> {
        let tables = self.sessions.read();
        finished_by(&tables.finished, cutoff, false)
            .take(limit)
            .filter_map(|id| {
                let held = tables.sessions.get(id)?;
                Some((held.record.clone()?, held.version))
            })
            .collect()
    }

    /// How many sessions finished before `cutoff` are still live (the hand-off's
    /// backlog).
    pub fn sessions_finished_count(&self, cutoff: Timestamp) -> usize {
        finished_by(&self.sessions.read().finished, cutoff, false).count()
    }

    /// How many ledger entries posted before `cutoff` are still live.
    pub fn entries_count_before(&self, cutoff: Timestamp) -> usize {
        finished_by(&self.sessions.read().entries_by_time, cutoff, false).count()
    }

    /// Up to `limit` ledger entries posted before `cutoff`, oldest first, with their
    /// versions: what the hand-off moves to history (balances stay in the wallets).
    pub fn entries_before(&self, cutoff: Timestamp, limit: usize) -> Vec<(LedgerEntry, u64)> {
        let tables = self.sessions.read();
        finished_by(&tables.entries_by_time, cutoff, false)
            .take(limit)
            .filter_map(|id| {
                let held = tables.entries.get(id)?;
                Some(((**held.record.as_ref()?).clone(), held.version))
            })
            .collect()
    }

    /// The link of `plate`, if any.
    pub fn plate_link(&self, plate: &Plate) -> Option<PlateLink> {
        let tables = self.sessions.read();
        Some((*tables.links.get(plate)?.record.clone()?).clone())
    }

    /// The plates `driver` linked.
    pub fn plates_of(&self, driver: &DriverId) -> Vec<PlateLink> {
        let tables = self.sessions.read();
        let Some(plates) = tables.links_by_driver.get(driver) else {
            return Vec::new();
        };
        let mut links: Vec<PlateLink> = plates
            .iter()
            .filter_map(|p| tables.links.get(p)?.record.clone())
            .map(|l| (*l).clone())
            .collect();
        links.sort_by(|a, b| (a.linked_at, a.plate.as_str()).cmp(&(b.linked_at, b.plate.as_str())));
        links
    }

    /// `driver`'s wallet, if they have one.
    pub fn wallet(&self, driver: &DriverId) -> Option<Wallet> {
        let tables = self.sessions.read();
        Some((*tables.wallets.get(driver)?.record.clone()?).clone())
    }

    /// `driver`'s latest `limit` ledger entries, newest first.
    pub fn ledger_of(&self, driver: &DriverId, limit: usize) -> Vec<LedgerEntry> {
        let tables = self.sessions.read();
        let Some(ids) = tables.entries_by_driver.get(driver) else {
            return Vec::new();
        };
        ids.iter()
            .rev()
            .take(limit)
            .filter_map(|(_, id)| tables.entries.get(id)?.record.clone())
            .map(|e| (*e).clone())
            .collect()
    }

    /// Refunds from `operator`'s revenue in the ledger (for its settlement).
    pub fn refunds_of(&self, operator: &crate::domain::OperatorId) -> Vec<LedgerEntry> {
        let tables = self.sessions.read();
        let from = crate::domain::Account::Revenue(operator.clone());
        tables
            .entries
            .values()
            .filter_map(|h| h.record.as_ref())
            .filter(|e| e.kind == crate::domain::EntryKind::Refund && e.from == from)
            .map(|e| (**e).clone())
            .collect()
    }

    /// Gives back the memory of tables far larger than what they hold (after the
    /// hand-off moved most of their records to history): a hash map keeps its
    /// capacity otherwise.
    pub(super) fn shrink_sessions(&self) {
        let mut t = self.sessions.write();
        shrink(&mut t.sessions);
        shrink(&mut t.by_car_park);
        shrink(&mut t.by_driver);
        shrink(&mut t.open);
        shrink(&mut t.owed);
        shrink(&mut t.entries);
        shrink(&mut t.entries_by_driver);
        for ids in t.by_car_park.values_mut() {
            shrink_set(ids);
        }
    }

    /// Sessions by state and the arrears (for the metrics).
    pub fn session_counts(&self) -> SessionCounts {
        self.sessions.read().counts.clone()
    }
}

/// Shrinks `map` when its capacity is more than four times what it holds.
pub(super) fn shrink<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.capacity() > 4 * map.len() {
        map.shrink_to_fit();
    }
}

fn shrink_set<K: Eq + std::hash::Hash>(set: &mut HashSet<K>) {
    if set.capacity() > 64 && set.capacity() > 4 * set.len() {
        set.shrink_to_fit();
    }
}

fn any_text(id: &str) -> Option<String> {
    Some(id.to_owned())
}

keyed_replica!(
    ParkingSession,
    SessionId,
    id,
    sessions,
    sessions,
    set_session,
    |id| { SessionId::parse(id).ok() }
);
keyed_replica!(OpenSession, String, id, sessions, open, set_open, any_text);
keyed_replica!(
    Arrear,
    SessionId,
    session,
    sessions,
    owed,
    set_arrear,
    |id| { SessionId::parse(id).ok() }
);
keyed_replica!(PlateLink, Plate, plate, sessions, links, set_link, |id| {
    Plate::parse(id).ok()
});
keyed_replica!(
    Wallet,
    DriverId,
    driver,
    sessions,
    wallets,
    set_wallet,
    |id| { DriverId::parse(id).ok() }
);
keyed_replica!(
    LedgerEntry,
    String,
    id,
    sessions,
    entries,
    set_entry,
    any_text
);
