//! Reservations and slot counts in memory: every reservation at its version, indexed by
//! car park, driver and plate, with the RESERVED ones ordered by start (what holds a
//! space now) and by no-show time (what the sweeper expires); and each car park's slot
//! counts per day. What reservations hold is kept in the car parks' live counts, so every
//! query shows `available = free − held`.
//!
//! Locking: the book has its own `RwLock`, never held while taking the engine's `inner`
//! lock or a car park's mutex (the order is inner → car park → book), so reservation
//! writes and car park writes never wait on each other for long.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
};

use super::{
    ChangeKind, Engine, Loading, Replica,
    replica::{Held, expected, finished_by, newer, unindex},
};
use crate::domain::{
    CATEGORY_COUNT, CarParkId, DriverId, Plate, RegionId, Reservation, ReservationClaims,
    ReservationId, ReservationState, Result, SlotCounts, SpaceCategory, Timestamp,
};

/// Every reservation and slot count this engine holds.
#[derive(Default)]
pub(super) struct Book {
    reservations: HashMap<ReservationId, Held<Reservation>>,
    by_car_park: HashMap<CarParkId, HashSet<ReservationId>>,
    by_driver: HashMap<DriverId, HashSet<ReservationId>>,
    by_plate: HashMap<Plate, HashSet<ReservationId>>,
    /// RESERVED ones per car park by start: those holding a space now have started.
    reserved_by_start: HashMap<CarParkId, BTreeSet<(Timestamp, ReservationId)>>,
    /// RESERVED ones by no-show time.
    due: BTreeSet<(Timestamp, ReservationId)>,
    /// The others by when they finished (for the hand-off to history).
    finished: BTreeSet<(Timestamp, ReservationId)>,
    by_state: [usize; 5],
    days: HashMap<String, Held<SlotCounts>>,
    /// Per driver, the reservations its creates are taking (`ReservationClaims`).
    claims: HashMap<DriverId, Held<ReservationClaims>>,
}

fn state_index(state: ReservationState) -> usize {
    ReservationState::ALL
        .iter()
        .position(|s| *s == state)
        .expect("every state is listed")
}

impl Book {
    fn set_claims(
        &mut self,
        driver: DriverId,
        record: Option<Arc<ReservationClaims>>,
        version: u64,
    ) {
        self.claims.insert(driver, Held { record, version });
    }

    fn version(&self, id: &str) -> u64 {
        ReservationId::parse(id)
            .ok()
            .and_then(|id| self.reservations.get(&id))
            .map_or(0, |h| h.version)
    }

    fn get(&self, id: &ReservationId) -> Option<(Arc<Reservation>, u64)> {
        let held = self.reservations.get(id)?;
        Some((held.record.clone()?, held.version))
    }

    /// Gives back the memory of maps far larger than what they hold.
    pub(super) fn shrink(&mut self) {
        super::sessions::shrink(&mut self.reservations);
        super::sessions::shrink(&mut self.days);
    }

    /// Sets `id` to `record` (or removes it) at `version`, in every index.
    fn set(&mut self, id: ReservationId, record: Option<Arc<Reservation>>, version: u64) {
        let old = self.reservations.get(&id).and_then(|h| h.record.clone());
        if let Some(r) = &old {
            unindex(&mut self.by_car_park, &r.car_park, &id);
            unindex(&mut self.by_driver, &r.driver, &id);
            unindex(&mut self.by_plate, &r.plate, &id);
            if r.state == ReservationState::Reserved {
                if let Some(set) = self.reserved_by_start.get_mut(&r.car_park) {
                    set.remove(&(r.start, id.clone()));
                    if set.is_empty() {
                        self.reserved_by_start.remove(&r.car_park);
                    }
                }
                self.due.remove(&(r.no_show_at, id.clone()));
            }
            if let Some(at) = r.finished_at() {
                self.finished.remove(&(at, id.clone()));
            }
            self.by_state[state_index(r.state)] -= 1;
        }
        if let Some(r) = &record {
            self.by_car_park
                .entry(r.car_park.clone())
                .or_default()
                .insert(id.clone());
            self.by_driver
                .entry(r.driver.clone())
                .or_default()
                .insert(id.clone());
            self.by_plate
                .entry(r.plate.clone())
                .or_default()
                .insert(id.clone());
            if r.state == ReservationState::Reserved {
                self.reserved_by_start
                    .entry(r.car_park.clone())
                    .or_default()
                    .insert((r.start, id.clone()));
                self.due.insert((r.no_show_at, id.clone()));
            }
            if let Some(at) = r.finished_at() {
                self.finished.insert((at, id.clone()));
            }
            self.by_state[state_index(r.state)] += 1;
        }
        self.reservations.insert(id, Held { record, version });
    }

    /// Spaces held per category at `car_park` at `now`.
    fn held(&self, car_park: &CarParkId, now: Timestamp) -> [u32; CATEGORY_COUNT] {
        let mut held = [0; CATEGORY_COUNT];
        let Some(started) = self.reserved_by_start.get(car_park) else {
            return held;
        };
        for (_, id) in started.iter().take_while(|(start, _)| *start <= now) {
            if let Some((r, _)) = self.get(id)
                && r.holds_at(now)
            {
                held[r.category.index()] += 1;
            }
        }
        held
    }

    /// Copies of the reservations `ids` names.
    fn copies<'a>(&self, ids: impl IntoIterator<Item = &'a ReservationId>) -> Vec<Reservation> {
        ids.into_iter()
            .filter_map(|id| self.get(id))
            .map(|(r, _)| (*r).clone())
            .collect()
    }

    fn reserved(&self) -> usize {
        self.by_state[state_index(ReservationState::Reserved)]
    }
}

impl Engine {
    /// What reservations hold at `car_park` at `now`. A city with no RESERVED
    /// reservation pays one atomic load per car park write for this, not a lock.
    pub(super) fn held_at(&self, car_park: &str, now: Timestamp) -> [u32; CATEGORY_COUNT] {
        if self.reserved_count.load(Ordering::Relaxed) == 0 {
            return [0; CATEGORY_COUNT];
        }
        match CarParkId::parse(car_park) {
            Ok(id) => self.book.read().held(&id, now),
            Err(_) => [0; CATEGORY_COUNT],
        }
    }

    /// What reservations hold of `category` at `car_park` at `now`.
    pub fn held(&self, car_park: &CarParkId, category: SpaceCategory, now: Timestamp) -> u32 {
        self.held_at(car_park.as_str(), now)[category.index()]
    }

    /// A reservation and its version.
    pub fn reservation(&self, id: &ReservationId) -> Option<(Arc<Reservation>, u64)> {
        self.book.read().get(id)
    }

    /// A driver's reservations, at every car park.
    pub fn reservations_of(&self, driver: &DriverId) -> Vec<Reservation> {
        let book = self.book.read();
        book.by_driver
            .get(driver)
            .map_or_else(Vec::new, |ids| book.copies(ids))
    }

    /// Reservations at the given car parks.
    pub fn reservations_at(&self, car_parks: &[CarParkId]) -> Vec<Reservation> {
        let book = self.book.read();
        car_parks
            .iter()
            .filter_map(|cp| book.by_car_park.get(cp))
            .flat_map(|ids| book.copies(ids))
            .collect()
    }

    /// Reservations with plate `plate` at `car_park`.
    pub fn reservations_for_plate(&self, car_park: &CarParkId, plate: &Plate) -> Vec<Reservation> {
        let book = self.book.read();
        let Some(ids) = book.by_plate.get(plate) else {
            return Vec::new();
        };
        let mut found = book.copies(ids);
        found.retain(|r| &r.car_park == car_park);
        found
    }

    /// RESERVED reservations past their no-show time at `now`.
    pub fn reservations_overdue(&self, now: Timestamp) -> Vec<ReservationId> {
        let book = self.book.read();
        book.due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Up to `limit` reservations that finished by `cutoff`, oldest first, with their
    /// versions: what the hand-off moves to history.
    pub fn reservations_finished_by(
        &self,
        cutoff: Timestamp,
        limit: usize,
    ) -> Vec<(Arc<Reservation>, u64)> {
        let book = self.book.read();
        finished_by(&book.finished, cutoff, true)
            .take(limit)
            .filter_map(|id| book.get(id))
            .collect()
    }

    /// How many reservations finished by `cutoff` are still live.
    pub fn reservations_finished_count(&self, cutoff: Timestamp) -> usize {
        finished_by(&self.book.read().finished, cutoff, true).count()
    }

    /// Slot counts of days over, with their versions.
    pub fn slot_counts_past(&self, now: Timestamp) -> Vec<(Arc<SlotCounts>, u64)> {
        let book = self.book.read();
        book.days
            .values()
            .filter_map(|h| Some((h.record.clone()?, h.version)))
            .filter(|(d, _)| d.is_past(now))
            .collect()
    }

    /// Reservations per state (for the metrics).
    pub fn reservations_by_state(&self) -> [(ReservationState, usize); 5] {
        let book = self.book.read();
        let mut i = 0;
        ReservationState::ALL.map(|s| {
            i += 1;
            (s, book.by_state[i - 1])
        })
    }

    /// Brings a car park's held counts up to date at `now`, telling watchers when they
    /// changed.
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

    /// Held counts follow time alone too (a window starts holding): brings every car
    /// park with a RESERVED reservation up to date, telling watchers of each change. A
    /// hold ends by a write (a check-in, a no-show), which brings its car park up to
    /// date itself.
    pub fn sweep_held(&self, now: Timestamp) {
        let ids: Vec<CarParkId> = self.book.read().reserved_by_start.keys().cloned().collect();
        for id in ids {
            self.refresh_held(id.as_str(), now);
        }
    }

    /// Sets a reservation if `admit` accepts the version held; returns the version
    /// written.
    fn write_reservation(
        &self,
        id: &str,
        record: Option<Reservation>,
        now: Timestamp,
        admit: impl Fn(u64) -> Option<u64>,
    ) -> Option<u64> {
        let id = ReservationId::parse(id).ok()?;
        let car_park = id.car_park();
        let version = {
            let mut book = self.book.write();
            let version = admit(book.reservations.get(&id).map_or(0, |h| h.version))?;
            book.set(id, record.map(Arc::new), version);
            self.reserved_count
                .store(book.reserved(), Ordering::Relaxed);
            version
        };
        self.refresh_held(car_park.as_str(), now);
        Some(version)
    }

    /// Sets a day's slot counts if `admit` accepts the version held.
    fn write_slot_counts(
        &self,
        id: &str,
        record: Option<SlotCounts>,
        admit: impl Fn(u64) -> Option<u64>,
    ) -> Option<u64> {
        let mut book = self.book.write();
        let version = admit(book.days.get(id).map_or(0, |h| h.version))?;
        let held = Held {
            record: record.map(Arc::new),
            version,
        };
        book.days.insert(id.to_owned(), held);
        Some(version)
    }
}

impl Replica<Reservation> for Engine {
    fn version(&self, id: &str) -> u64 {
        self.book.read().version(id)
    }

    fn get(&self, id: &str) -> Option<(Reservation, u64)> {
        let id = ReservationId::parse(id).ok()?;
        self.reservation(&id).map(|(r, v)| ((*r).clone(), v))
    }

    fn put(&self, record: Reservation, version: u64, now: Timestamp) -> bool {
        let id = record.id.clone();
        self.write_reservation(id.as_str(), Some(record), now, newer(version))
            .is_some()
    }

    fn remove(&self, id: &str, version: u64) -> bool {
        self.write_reservation(id, None, Timestamp::UNIX_EPOCH, newer(version))
            .is_some()
    }

    fn forget(&self, id: &str, version: u64) -> bool {
        let Ok(id) = ReservationId::parse(id) else {
            return false;
        };
        let mut book = self.book.write();
        let tombstone = book
            .reservations
            .get(&id)
            .is_some_and(|h| h.record.is_none() && h.version == version);
        if tombstone {
            book.reservations.remove(&id);
        }
        tombstone
    }

    fn compare_and_set(
        &self,
        id: &str,
        expected: u64,
        floor: u64,
        states: Vec<Reservation>,
        now: Timestamp,
    ) -> Option<u64> {
        // Only the last state stays; the ones before it each take a version, as they
        // would in Redis.
        let steps = states.len().max(1) as u64;
        let last = states.into_iter().last();
        self.write_reservation(id, last, now, self::expected(expected, floor, steps))
    }

    fn load_region(
        &self,
        region: &RegionId,
        _loading: Loading,
        records: Vec<(Reservation, u64)>,
        tombstones: Vec<(String, u64)>,
        now: Timestamp,
    ) -> Result<()> {
        let touched: HashSet<CarParkId> = {
            let mut book = self.book.write();
            let keep: HashSet<ReservationId> = records.iter().map(|(r, _)| r.id.clone()).collect();
            let gone: Vec<(ReservationId, u64, CarParkId)> = book
                .reservations
                .iter()
                .filter_map(|(id, h)| {
                    let r = h.record.as_ref()?;
                    (&r.region == region && !keep.contains(id))
                        .then(|| (id.clone(), h.version, r.car_park.clone()))
                })
                .collect();
            let mut touched = HashSet::new();
            for (id, version, car_park) in gone {
                book.set(id, None, version);
                touched.insert(car_park);
            }
            for (r, version) in records {
                touched.insert(r.car_park.clone());
                book.set(r.id.clone(), Some(Arc::new(r)), version);
            }
            for (id, version) in tombstones {
                if let Ok(id) = ReservationId::parse(&id)
                    && book
                        .reservations
                        .get(&id)
                        .is_none_or(|h| h.record.is_none())
                {
                    book.set(id, None, version);
                }
            }
            self.reserved_count
                .store(book.reserved(), Ordering::Relaxed);
            touched
        };
        for id in touched {
            self.refresh_held(id.as_str(), now);
        }
        Ok(())
    }
}

impl Replica<SlotCounts> for Engine {
    fn version(&self, id: &str) -> u64 {
        self.book.read().days.get(id).map_or(0, |h| h.version)
    }

    fn get(&self, id: &str) -> Option<(SlotCounts, u64)> {
        let book = self.book.read();
        let held = book.days.get(id)?;
        Some(((**held.record.as_ref()?).clone(), held.version))
    }

    fn put(&self, record: SlotCounts, version: u64, _now: Timestamp) -> bool {
        let id = record.id();
        self.write_slot_counts(&id, Some(record), newer(version))
            .is_some()
    }

    fn remove(&self, id: &str, version: u64) -> bool {
        self.write_slot_counts(id, None, newer(version)).is_some()
    }

    fn forget(&self, id: &str, version: u64) -> bool {
        let mut book = self.book.write();
        let tombstone = book
            .days
            .get(id)
            .is_some_and(|h| h.record.is_none() && h.version == version);
        if tombstone {
            book.days.remove(id);
        }
        tombstone
    }

    fn compare_and_set(
        &self,
        id: &str,
        expected: u64,
        floor: u64,
        states: Vec<SlotCounts>,
        _now: Timestamp,
    ) -> Option<u64> {
        let steps = states.len().max(1) as u64;
        let last = states.into_iter().last();
        self.write_slot_counts(id, last, self::expected(expected, floor, steps))
    }

    fn load_region(
        &self,
        region: &RegionId,
        _loading: Loading,
        records: Vec<(SlotCounts, u64)>,
        tombstones: Vec<(String, u64)>,
        _now: Timestamp,
    ) -> Result<()> {
        let mut book = self.book.write();
        let keep: HashSet<String> = records.iter().map(|(d, _)| d.id()).collect();
        for (id, held) in book.days.iter_mut() {
            if held.record.as_ref().is_some_and(|d| &d.region == region) && !keep.contains(id) {
                held.record = None;
            }
        }
        for (record, version) in records {
            let held = Held {
                record: Some(Arc::new(record)),
                version,
            };
            book.days
                .insert(held.record.as_ref().expect("set").id(), held);
        }
        for (id, version) in tombstones {
            if book.days.get(&id).is_none_or(|h| h.record.is_none()) {
                book.days.insert(
                    id,
                    Held {
                        record: None,
                        version,
                    },
                );
            }
        }
        Ok(())
    }
}

super::replica::keyed_replica!(
    ReservationClaims,
    DriverId,
    driver,
    book,
    claims,
    set_claims,
    |id| { DriverId::parse(id).ok() }
);

impl Engine {
    /// Every driver's claims record held, with its version: the sweep drops the spent.
    pub fn reservation_claims(&self) -> Vec<(Arc<ReservationClaims>, u64)> {
        self.book
            .read()
            .claims
            .values()
            .filter_map(|h| Some((h.record.clone()?, h.version)))
            .collect()
    }
}
