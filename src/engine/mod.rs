//! The city in memory: car parks, live counts, a spatial index and a change feed.
//!
//! Every query is answered here with no network round trip. In embedded mode the
//! engine is the store; with Redis it is each instance's replica.
//!
//! Locking: one `RwLock` guards the id map, the slots and the R-tree, and is held for
//! writing only to add, move or remove a car park (O(log n)). Reports take it for
//! reading plus the car park's own mutex, so ingest never stops readers, and readers
//! hold each car park's mutex only long enough to copy its numbers.

mod index;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;

use crate::domain::{
    Admitted, Availability, BoundingBox, CarPark, CarParkId, CarParkStatus, Error, LatLng, Live,
    NearbyQuery, OperatorId, RegionId, Report, ReportOutcome, Result, Timestamp, chord_to_m,
};
use index::{IndexPoint, Tree, envelope_of};

/// One change, as watchers receive it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub car_park: CarParkId,
    pub location: LatLng,
    /// Where it was before, when this change moved it (so area watchers learn that it
    /// left their area).
    pub moved_from: Option<LatLng>,
    pub kind: ChangeKind,
}

/// What changed.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeKind {
    /// New numbers, status or registration.
    Updated(Availability),
    /// Removed from the registry.
    Removed,
}

/// A car park in a nearby answer.
#[derive(Debug, Clone)]
pub struct Nearby {
    pub car_park: Arc<CarPark>,
    pub distance_m: f64,
    pub availability: Availability,
    pub admitted: Admitted,
}

/// The result of applying one report.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub outcome: ReportOutcome,
    pub availability: Availability,
}

struct SlotState {
    car_park: Arc<CarPark>,
    live: Live,
    /// Bumped by every write; a replica applies a change only if it is newer.
    version: u64,
    /// The status last sent to watchers, so the sweeper reports only transitions.
    last_status: CarParkStatus,
}

struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct Inner {
    /// Id order doubles as the listing order.
    by_id: BTreeMap<CarParkId, u32>,
    slots: Vec<Option<Slot>>,
    vacant: Vec<u32>,
    tree: Tree,
    /// Versions of deleted car parks, so a replica never lets an older change
    /// resurrect one.
    tombstones: HashMap<CarParkId, u64>,
}

impl Inner {
    /// Sets a car park's whole state, adding it or moving it in the index as needed,
    /// and tells watchers. Callers hold the write lock and have checked the version.
    fn put(
        &mut self,
        engine: &Engine,
        car_park: Arc<CarPark>,
        live: Live,
        version: u64,
        now: Timestamp,
    ) {
        let availability = live.availability(&car_park, now);
        self.tombstones.remove(&car_park.id);
        if let Some(&i) = self.by_id.get(&car_park.id) {
            let slot = self.slots[i as usize]
                .as_ref()
                .expect("the id map points at live slots only");
            let mut state = slot.state.lock();
            let old = state.car_park.location;
            let moved_from = (old != car_park.location).then_some(old);
            if moved_from.is_some() {
                self.tree.remove(&IndexPoint::new(old, i));
                self.tree.insert(IndexPoint::new(car_park.location, i));
            }
            *state = SlotState {
                car_park: car_park.clone(),
                live,
                version,
                last_status: availability.status,
            };
            engine.publish_move(&car_park, moved_from, ChangeKind::Updated(availability));
            return;
        }
        let slot = Slot {
            state: Mutex::new(SlotState {
                car_park: car_park.clone(),
                live,
                version,
                last_status: availability.status,
            }),
        };
        let i = match self.vacant.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(car_park.id.clone(), i);
        self.tree.insert(IndexPoint::new(car_park.location, i));
        engine.publish(&car_park, ChangeKind::Updated(availability));
    }

    /// Removes a car park, leaving a tombstone at `version`, and tells watchers.
    fn remove(&mut self, engine: &Engine, id: &CarParkId, version: u64) {
        self.tombstones.insert(id.clone(), version);
        let Some(i) = self.by_id.remove(id) else {
            return;
        };
        let car_park = self.slot_at(i).state.lock().car_park.clone();
        self.tree.remove(&IndexPoint::new(car_park.location, i));
        self.slots[i as usize] = None;
        self.vacant.push(i);
        engine.publish(&car_park, ChangeKind::Removed);
    }

    /// The version a car park has, or had when it was deleted, or 0.
    fn version_of(&self, id: &str) -> u64 {
        match self.slot(id) {
            Some(slot) => slot.state.lock().version,
            None => self.tombstones.get(id).copied().unwrap_or(0),
        }
    }

    fn slot(&self, id: &str) -> Option<&Slot> {
        self.by_id
            .get(id)
            .and_then(|&i| self.slots[i as usize].as_ref())
    }

    fn slot_at(&self, i: u32) -> &Slot {
        self.slots[i as usize]
            .as_ref()
            .expect("the index points at live slots only")
    }
}

/// The in-memory city.
pub struct Engine {
    inner: RwLock<Inner>,
    changes: broadcast::Sender<Arc<Change>>,
}

impl Engine {
    /// An empty city whose change feed keeps `change_buffer` changes for slow watchers.
    pub fn new(change_buffer: usize) -> Self {
        let (changes, _) = broadcast::channel(change_buffer.max(1));
        Self {
            inner: RwLock::default(),
            changes,
        }
    }

    /// Number of car parks.
    pub fn len(&self) -> usize {
        self.inner.read().by_id.len()
    }

    /// Whether there are no car parks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every change from now on. A receiver that lags is told how many it missed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    fn publish(&self, car_park: &CarPark, kind: ChangeKind) {
        self.publish_move(car_park, None, kind);
    }

    fn publish_move(&self, car_park: &CarPark, moved_from: Option<LatLng>, kind: ChangeKind) {
        // No receivers is normal: nobody is watching.
        let _ = self.changes.send(Arc::new(Change {
            car_park: car_park.id.clone(),
            location: car_park.location,
            moved_from,
            kind,
        }));
    }

    /// Registers or replaces a car park on behalf of `caller`; true if it is new.
    pub fn upsert(
        &self,
        car_park: CarPark,
        caller: &OperatorId,
        now: Timestamp,
    ) -> Result<(Arc<CarPark>, bool)> {
        let mut inner = self.inner.write();
        let existing = inner.slot(car_park.id.as_str()).map(|slot| {
            let state = slot.state.lock();
            (state.car_park.clone(), state.live.clone(), state.version)
        });
        let version = existing.as_ref().map_or_else(
            || inner.tombstones.get(&car_park.id).copied().unwrap_or(0),
            |e| e.2,
        );
        let (car_park, live) =
            car_park.replacing(existing.as_ref().map(|(c, l, _)| (&**c, l)), caller)?;
        let car_park = Arc::new(car_park);
        inner.put(self, car_park.clone(), live, version + 1, now);
        Ok((car_park, existing.is_none()))
    }

    /// Loads many car parks into an empty engine at once, building the R-tree in one
    /// bulk pass (far faster than one insert each). Live states come with them.
    pub fn load(
        &self,
        entries: impl IntoIterator<Item = (CarPark, Live)>,
        now: Timestamp,
    ) -> Result<()> {
        let mut inner = self.inner.write();
        if !inner.by_id.is_empty() {
            return Err(Error::Internal("bulk load into a non-empty engine".into()));
        }
        let mut points = Vec::new();
        for (car_park, live) in entries {
            let i = inner.slots.len() as u32;
            if inner.by_id.insert(car_park.id.clone(), i).is_some() {
                return Err(Error::Internal(format!(
                    "car park {} loaded twice",
                    car_park.id
                )));
            }
            points.push(IndexPoint::new(car_park.location, i));
            let last_status = live.status(&car_park, now);
            inner.slots.push(Some(Slot {
                state: Mutex::new(SlotState {
                    car_park: Arc::new(car_park),
                    live,
                    version: 1,
                    last_status,
                }),
            }));
        }
        inner.tree = Tree::bulk_load(points);
        Ok(())
    }

    /// Removes a car park on behalf of `caller`.
    pub fn delete(&self, id: &CarParkId, caller: &OperatorId) -> Result<()> {
        let mut inner = self.inner.write();
        let (car_park, version) = {
            let slot = inner
                .slot(id.as_str())
                .ok_or_else(|| Error::car_park_not_found(id))?;
            let state = slot.state.lock();
            (state.car_park.clone(), state.version)
        };
        car_park.check_owner(caller)?;
        inner.remove(self, id, version + 1);
        Ok(())
    }

    /// Applies one report on behalf of `caller`.
    pub fn apply(&self, report: &Report, caller: &OperatorId, now: Timestamp) -> Result<Applied> {
        let inner = self.inner.read();
        let slot = inner
            .slot(report.car_park.as_str())
            .ok_or_else(|| Error::car_park_not_found(&report.car_park))?;
        let mut state = slot.state.lock();
        let state = &mut *state;
        state.car_park.check_owner(caller)?;
        let outcome = state.live.apply(&state.car_park, report, now)?;
        let availability = state.live.availability(&state.car_park, now);
        if outcome != ReportOutcome::Duplicate {
            state.version += 1;
            state.last_status = availability.status;
            // Sent while the car park's lock is held, so watchers see its changes in order.
            self.publish(&state.car_park, ChangeKind::Updated(availability.clone()));
        }
        Ok(Applied {
            outcome,
            availability,
        })
    }

    /// One car park with its live state.
    pub fn get(&self, id: &str, now: Timestamp) -> Option<(Arc<CarPark>, Availability)> {
        let inner = self.inner.read();
        let state = inner.slot(id)?.state.lock();
        Some((
            state.car_park.clone(),
            state.live.availability(&state.car_park, now),
        ))
    }

    /// The live state of a car park.
    pub fn availability(&self, id: &str, now: Timestamp) -> Option<Availability> {
        let inner = self.inner.read();
        let state = inner.slot(id)?.state.lock();
        Some(state.live.availability(&state.car_park, now))
    }

    /// Car parks after `after` in id order, filtered, at most `limit`; and whether more follow.
    pub fn list(
        &self,
        region: Option<&RegionId>,
        operator: Option<&OperatorId>,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Arc<CarPark>>, bool) {
        use std::ops::Bound;
        let inner = self.inner.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = inner
            .by_id
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, &i)| inner.slot_at(i).state.lock().car_park.clone())
            .filter(|cp| {
                region.is_none_or(|r| &cp.region == r) && operator.is_none_or(|o| &cp.operator == o)
            });
        let page: Vec<_> = matching.by_ref().take(limit).collect();
        let more = matching.next().is_some();
        (page, more)
    }

    /// The nearest car parks that the query admits, nearest first, ties by id.
    pub fn nearby(&self, query: &NearbyQuery, now: Timestamp) -> Vec<Nearby> {
        let inner = self.inner.read();
        let center = query.center.unit_vector();
        let max_d2 = query.radius.chord().powi(2);
        let mut found: Vec<(f64, Nearby)> = Vec::with_capacity(query.limit);
        for (point, d2) in inner.tree.nearest_neighbor_iter_with_distance_2(&center) {
            if d2 > max_d2 {
                break;
            }
            // Once full, keep going only through exact ties with the last one, so that
            // the id tie-break below sees every car park at that distance.
            if found.len() >= query.limit && d2 > found[found.len() - 1].0 {
                break;
            }
            let state = inner.slot_at(point.slot).state.lock();
            if let Some(admitted) = query.admits(&state.car_park, &state.live, now) {
                let availability =
                    state
                        .live
                        .availability_with(&state.car_park, now, admitted.status);
                found.push((
                    d2,
                    Nearby {
                        car_park: state.car_park.clone(),
                        distance_m: chord_to_m(d2.sqrt()),
                        availability,
                        admitted,
                    },
                ));
            }
        }
        found.sort_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then_with(|| a.1.car_park.id.cmp(&b.1.car_park.id))
        });
        found.truncate(query.limit);
        found.into_iter().map(|(_, n)| n).collect()
    }

    /// Live states of the car parks inside `area`, or RESOURCE_EXHAUSTED past `max`.
    pub fn in_area(
        &self,
        area: &BoundingBox,
        max: usize,
        now: Timestamp,
    ) -> Result<Vec<Availability>> {
        let inner = self.inner.read();
        let envelope = envelope_of(area.south_west(), area.north_east());
        let mut out = Vec::new();
        for point in inner.tree.locate_in_envelope(&envelope) {
            let state = inner.slot_at(point.slot).state.lock();
            if area.contains(state.car_park.location) {
                if out.len() == max {
                    return Err(Error::ResourceExhausted(format!(
                        "the area holds more than {max} car parks; watch a smaller one"
                    )));
                }
                out.push(state.live.availability(&state.car_park, now));
            }
        }
        out.sort_by(|a, b| a.car_park.cmp(&b.car_park));
        Ok(out)
    }

    /// Tells watchers about car parks whose status changed with time alone (opening
    /// hours, staleness), and counts car parks by status for the metrics, in one pass.
    pub fn sweep_status(&self, now: Timestamp) -> [(CarParkStatus, usize); 4] {
        let inner = self.inner.read();
        let mut counts = [
            (CarParkStatus::Open, 0),
            (CarParkStatus::Closed, 0),
            (CarParkStatus::Stale, 0),
            (CarParkStatus::NoData, 0),
        ];
        for slot in inner.slots.iter().flatten() {
            let mut state = slot.state.lock();
            let status = state.live.status(&state.car_park, now);
            if let Some(entry) = counts.iter_mut().find(|(s, _)| *s == status) {
                entry.1 += 1;
            }
            if status != state.last_status {
                state.last_status = status;
                let availability = state.live.availability_with(&state.car_park, now, status);
                self.publish(&state.car_park, ChangeKind::Updated(availability));
            }
        }
        counts
    }

    /// A car park's whole state with its version, for a store that computes writes
    /// itself; and the version to expect when the car park does not exist (its
    /// tombstone's, or 0).
    pub fn versioned(&self, id: &str) -> (Option<(Arc<CarPark>, Live)>, u64) {
        let inner = self.inner.read();
        match inner.slot(id) {
            Some(slot) => {
                let state = slot.state.lock();
                (
                    Some((state.car_park.clone(), state.live.clone())),
                    state.version,
                )
            }
            None => (None, inner.version_of(id)),
        }
    }

    /// The version a car park has, or had when it was deleted, or 0 if never seen.
    pub fn version(&self, id: &str) -> u64 {
        self.inner.read().version_of(id)
    }

    /// Replica: sets a car park's registration and live state at `version`, unless the
    /// engine already holds that version or a newer one. True if it was applied.
    pub fn put_versioned(
        &self,
        car_park: CarPark,
        live: Live,
        version: u64,
        now: Timestamp,
    ) -> bool {
        let mut inner = self.inner.write();
        if inner.version_of(car_park.id.as_str()) >= version {
            return false;
        }
        inner.put(self, Arc::new(car_park), live, version, now);
        true
    }

    /// Replica: sets a car park's live state at `version` if it is newer than what the
    /// engine holds. True if it was applied.
    pub fn live_versioned(&self, id: &str, live: Live, version: u64, now: Timestamp) -> bool {
        let inner = self.inner.read();
        let Some(slot) = inner.slot(id) else {
            return false;
        };
        let mut state = slot.state.lock();
        if state.version >= version {
            return false;
        }
        let availability = live.availability(&state.car_park, now);
        state.live = live;
        state.version = version;
        state.last_status = availability.status;
        // Sent under the car park's lock, as in `apply`, to keep watchers in order.
        self.publish(&state.car_park, ChangeKind::Updated(availability));
        true
    }

    /// Replica: removes a car park deleted at `version` unless it was re-created later.
    pub fn delete_versioned(&self, id: &CarParkId, version: u64) -> bool {
        let mut inner = self.inner.write();
        if inner.version_of(id.as_str()) >= version {
            return false;
        }
        inner.remove(self, id, version);
        true
    }

    /// Replica: makes a region exactly what a snapshot says, whatever the versions
    /// (the snapshot is the authority), removing car parks it does not hold.
    pub fn replace_region(
        &self,
        region: &RegionId,
        car_parks: Vec<(CarPark, Live, u64)>,
        tombstones: Vec<(CarParkId, u64)>,
        now: Timestamp,
    ) {
        let mut inner = self.inner.write();
        let keep: std::collections::HashSet<CarParkId> =
            car_parks.iter().map(|(c, _, _)| c.id.clone()).collect();
        let gone: Vec<(CarParkId, u64)> = inner
            .by_id
            .iter()
            .filter_map(|(id, &i)| {
                let state = inner.slot_at(i).state.lock();
                (&state.car_park.region == region && !keep.contains(id))
                    .then(|| (id.clone(), state.version))
            })
            .collect();
        for (id, version) in gone {
            inner.remove(self, &id, version);
        }
        for (car_park, live, version) in car_parks {
            inner.put(self, Arc::new(car_park), live, version, now);
        }
        for (id, version) in tombstones {
            if inner.slot(id.as_str()).is_none() {
                inner.tombstones.insert(id, version);
            }
        }
    }
}
