//! The reservation ledgers in memory: each car park's ledger at its version, which
//! ledgers each driver has reservations in, and what the ledgers hold now, kept in the
//! car parks' live counts so every query shows `available = free − held`.
//!
//! Locking: the ledger map has its own `RwLock`, never held while taking the engine's
//! `inner` lock or a car park's mutex (the order is inner → car park → ledgers), so
//! reservation writes and car park writes never wait on each other for long.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
};

use super::{ChangeKind, Engine, Loading, Replica};
use crate::domain::{
    CATEGORY_COUNT, CarParkId, DriverId, Ledger, RegionId, Reservation, ReservationState, Result,
    Timestamp,
};

/// A ledger as held, or the version it was removed at.
struct Held {
    ledger: Option<Arc<Ledger>>,
    version: u64,
}

/// Every ledger this engine holds.
#[derive(Default)]
pub(super) struct Ledgers {
    by_car_park: HashMap<CarParkId, Held>,
    /// The ledgers each driver has reservations in.
    by_driver: HashMap<DriverId, HashSet<CarParkId>>,
}

impl Ledgers {
    fn set(&mut self, id: CarParkId, ledger: Option<Arc<Ledger>>, version: u64) {
        let old = self.by_car_park.get(&id).and_then(|h| h.ledger.clone());
        match (old.as_deref(), ledger.as_deref()) {
            // A ledger changes by appending (a create) and by changing states in place;
            // then only the appended reservations' drivers are new here. Anything else
            // (reservations pruned, a ledger replaced by a snapshot) reindexes it.
            (Some(old), Some(new)) if appended(old, new).is_some() => {
                let from = appended(old, new).expect("just checked");
                for r in &new.reservations[from..] {
                    self.by_driver
                        .entry(r.driver.clone())
                        .or_default()
                        .insert(id.clone());
                }
            }
            (old, new) => {
                for r in old.iter().flat_map(|l| &l.reservations) {
                    if let Some(set) = self.by_driver.get_mut(&r.driver) {
                        set.remove(&id);
                        if set.is_empty() {
                            self.by_driver.remove(&r.driver);
                        }
                    }
                }
                for r in new.iter().flat_map(|l| &l.reservations) {
                    self.by_driver
                        .entry(r.driver.clone())
                        .or_default()
                        .insert(id.clone());
                }
            }
        }
        self.by_car_park.insert(id, Held { ledger, version });
    }

    fn len(&self) -> usize {
        self.by_car_park.len()
    }

    /// Copies of the reservations `keep` accepts in the ledgers of `car_parks`.
    fn gather<'a>(
        &self,
        car_parks: impl IntoIterator<Item = &'a CarParkId>,
        keep: impl Fn(&Reservation) -> bool,
    ) -> Vec<Reservation> {
        car_parks
            .into_iter()
            .filter_map(|id| self.by_car_park.get(id)?.ledger.as_deref())
            .flat_map(|l| &l.reservations)
            .filter(|r| keep(r))
            .map(|r| (**r).clone())
            .collect()
    }

    fn version(&self, id: &str) -> u64 {
        self.by_car_park.get(id).map_or(0, |h| h.version)
    }

    /// Held spaces per category at `car_park` at `now`.
    fn held(&self, car_park: &str, now: Timestamp) -> [u32; CATEGORY_COUNT] {
        match self
            .by_car_park
            .get(car_park)
            .and_then(|h| h.ledger.as_ref())
        {
            Some(ledger) => ledger.held_all(now),
            None => [0; CATEGORY_COUNT],
        }
    }
}

/// Where `new`'s appended reservations begin, if `new` is `old` with reservations
/// appended (states may differ): then every driver of `old` is still in `new`.
fn appended(old: &Ledger, new: &Ledger) -> Option<usize> {
    let n = old.reservations.len();
    let same = new.reservations.len() >= n
        && old
            .reservations
            .last()
            .is_none_or(|last| new.reservations[n - 1].id == last.id)
        && old
            .reservations
            .first()
            .is_none_or(|first| new.reservations[0].id == first.id);
    same.then_some(n)
}

impl Engine {
    /// What reservations hold at `car_park` at `now`. A city without ledgers (or before
    /// its first reservation) pays one atomic load per car park write for this, not a
    /// lock.
    pub(super) fn held_at(&self, car_park: &str, now: Timestamp) -> [u32; CATEGORY_COUNT] {
        if self.ledger_count.load(Ordering::Relaxed) == 0 {
            return [0; CATEGORY_COUNT];
        }
        self.ledgers.read().held(car_park, now)
    }

    /// A car park's ledger and its version.
    pub fn ledger(&self, car_park: &str) -> Option<(Arc<Ledger>, u64)> {
        let ledgers = self.ledgers.read();
        let held = ledgers.by_car_park.get(car_park)?;
        Some((held.ledger.clone()?, held.version))
    }

    /// A driver's reservations, at every car park.
    pub fn reservations_of(&self, driver: &DriverId) -> Vec<Reservation> {
        let ledgers = self.ledgers.read();
        match ledgers.by_driver.get(driver) {
            Some(car_parks) => ledgers.gather(car_parks, |r| &r.driver == driver),
            None => Vec::new(),
        }
    }

    /// Reservations at the given car parks.
    pub fn reservations_at(&self, car_parks: &[CarParkId]) -> Vec<Reservation> {
        self.ledgers.read().gather(car_parks, |_| true)
    }

    /// Car parks whose ledger has a RESERVED reservation past its no-show time.
    pub fn ledgers_overdue(&self, now: Timestamp) -> Vec<CarParkId> {
        let ledgers = self.ledgers.read();
        ledgers
            .by_car_park
            .iter()
            .filter(|(_, h)| h.ledger.as_ref().is_some_and(|l| l.has_overdue(now)))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Reservations per state in every ledger held (for the metrics).
    pub fn reservations_by_state(&self) -> [(ReservationState, usize); 5] {
        let mut counts = ReservationState::ALL.map(|s| (s, 0));
        for held in self.ledgers.read().by_car_park.values() {
            for r in held.ledger.iter().flat_map(|l| &l.reservations) {
                counts[ReservationState::ALL
                    .iter()
                    .position(|s| *s == r.state)
                    .expect("all")]
                .1 += 1;
            }
        }
        counts
    }

    /// Brings a car park's held counts up to date with its ledger at `now`, telling
    /// watchers when they changed.
    pub(super) fn refresh_held(&self, car_park: &str, now: Timestamp) {
        let inner = self.inner.read();
        let Some(slot) = inner.slot(car_park) else {
            return;
        };
        let mut state = slot.state.lock();
        let held = self.held_at(car_park, now);
        if state.live.set_held(held) {
            let availability = state.live.availability(&state.car_park, now);
            state.last_status = availability.status;
            self.publish(&state.car_park, ChangeKind::Updated(availability));
        }
    }

    /// Held counts follow time alone too (a window starts, a grace runs out): brings
    /// every car park with a ledger up to date, telling watchers of each change.
    pub fn sweep_held(&self, now: Timestamp) {
        let ids: Vec<CarParkId> = self.ledgers.read().by_car_park.keys().cloned().collect();
        for id in ids {
            self.refresh_held(id.as_str(), now);
        }
    }

    /// Sets a ledger if `admit` accepts the version held; returns the version written.
    fn write_ledger(
        &self,
        id: &str,
        ledger: Option<Ledger>,
        now: Timestamp,
        admit: impl Fn(u64) -> Option<u64>,
    ) -> Option<u64> {
        let car_park = CarParkId::parse(id).ok()?;
        let version = {
            let mut ledgers = self.ledgers.write();
            let version = admit(ledgers.version(id))?;
            ledgers.set(car_park, ledger.map(Arc::new), version);
            self.ledger_count.store(ledgers.len(), Ordering::Relaxed);
            version
        };
        self.refresh_held(id, now);
        Some(version)
    }
}

impl Replica<Ledger> for Engine {
    fn version(&self, id: &str) -> u64 {
        self.ledgers.read().version(id)
    }

    fn get(&self, id: &str) -> Option<(Ledger, u64)> {
        self.ledger(id).map(|(l, v)| ((*l).clone(), v))
    }

    fn put(&self, record: Ledger, version: u64, now: Timestamp) -> bool {
        let id = record.car_park.clone();
        self.write_ledger(id.as_str(), Some(record), now, |held| {
            (held < version).then_some(version)
        })
        .is_some()
    }

    fn remove(&self, id: &str, version: u64) -> bool {
        self.write_ledger(id, None, Timestamp::UNIX_EPOCH, |held| {
            (held < version).then_some(version)
        })
        .is_some()
    }

    fn compare_and_set(
        &self,
        id: &str,
        expected: u64,
        floor: u64,
        states: Vec<Ledger>,
        now: Timestamp,
    ) -> Option<u64> {
        // Only the last state stays; the ones before it each take a version, as they
        // would in Redis.
        let steps = states.len().max(1) as u64;
        let last = states.into_iter().last();
        self.write_ledger(id, last, now, |held| {
            (held == expected).then(|| held.max(floor) + steps)
        })
    }

    fn load_region(
        &self,
        region: &RegionId,
        _loading: Loading,
        records: Vec<(Ledger, u64)>,
        tombstones: Vec<(String, u64)>,
        now: Timestamp,
    ) -> Result<()> {
        let touched: Vec<CarParkId> = {
            let mut ledgers = self.ledgers.write();
            let keep: HashSet<CarParkId> =
                records.iter().map(|(l, _)| l.car_park.clone()).collect();
            let gone: Vec<(CarParkId, u64)> = ledgers
                .by_car_park
                .iter()
                .filter(|(id, h)| {
                    h.ledger.as_ref().is_some_and(|l| &l.region == region) && !keep.contains(*id)
                })
                .map(|(id, h)| (id.clone(), h.version))
                .collect();
            let mut touched: Vec<CarParkId> = gone.iter().map(|(id, _)| id.clone()).collect();
            for (id, version) in gone {
                ledgers.set(id, None, version);
            }
            for (ledger, version) in records {
                touched.push(ledger.car_park.clone());
                ledgers.set(ledger.car_park.clone(), Some(Arc::new(ledger)), version);
            }
            for (id, version) in tombstones {
                if let Ok(id) = CarParkId::parse(&id)
                    && ledgers
                        .by_car_park
                        .get(&id)
                        .is_none_or(|h| h.ledger.is_none())
                {
                    ledgers.set(id, None, version);
                }
            }
            touched
        };
        for id in touched {
            self.refresh_held(id.as_str(), now);
        }
        Ok(())
    }
}
