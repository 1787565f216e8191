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

use std::{collections::BTreeMap, sync::Arc};

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
}

impl Inner {
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
        // No receivers is normal: nobody is watching.
        let _ = self.changes.send(Arc::new(Change {
            car_park: car_park.id.clone(),
            location: car_park.location,
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
        car_park.check_owner(caller)?;
        let car_park = Arc::new(car_park);
        let mut inner = self.inner.write();
        let inner = &mut *inner;
        if let Some(&i) = inner.by_id.get(&car_park.id) {
            let slot = inner.slots[i as usize]
                .as_ref()
                .expect("the id map points at live slots only");
            let mut state = slot.state.lock();
            state.car_park.check_owner(caller)?;
            if state.car_park.region != car_park.region {
                return Err(Error::FailedPrecondition(format!(
                    "car park {} is in region {}; delete it to move it to {}",
                    car_park.id, state.car_park.region, car_park.region
                )));
            }
            if state.car_park.location != car_park.location {
                inner
                    .tree
                    .remove(&IndexPoint::new(state.car_park.location, i));
                inner.tree.insert(IndexPoint::new(car_park.location, i));
            }
            state.live.resize(car_park.capacity);
            state.car_park = car_park.clone();
            let availability = state.live.availability(&car_park, now);
            state.last_status = availability.status;
            self.publish(&car_park, ChangeKind::Updated(availability));
            return Ok((car_park, false));
        }
        let live = Live::new(car_park.capacity);
        let availability = live.availability(&car_park, now);
        let slot = Slot {
            state: Mutex::new(SlotState {
                car_park: car_park.clone(),
                live,
                last_status: availability.status,
            }),
        };
        let i = match inner.vacant.pop() {
            Some(i) => {
                inner.slots[i as usize] = Some(slot);
                i
            }
            None => {
                inner.slots.push(Some(slot));
                (inner.slots.len() - 1) as u32
            }
        };
        inner.by_id.insert(car_park.id.clone(), i);
        inner.tree.insert(IndexPoint::new(car_park.location, i));
        self.publish(&car_park, ChangeKind::Updated(availability));
        Ok((car_park, true))
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
        let i = *inner
            .by_id
            .get(id)
            .ok_or_else(|| Error::car_park_not_found(id))?;
        let car_park = inner.slot_at(i).state.lock().car_park.clone();
        car_park.check_owner(caller)?;
        inner.by_id.remove(id);
        inner.tree.remove(&IndexPoint::new(car_park.location, i));
        inner.slots[i as usize] = None;
        inner.vacant.push(i);
        self.publish(&car_park, ChangeKind::Removed);
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

    /// The owner of a car park, if it exists.
    pub fn owner(&self, id: &str) -> Option<OperatorId> {
        let inner = self.inner.read();
        let state = inner.slot(id)?.state.lock();
        Some(state.car_park.operator.clone())
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
                let availability = state.live.availability(&state.car_park, now);
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
    /// hours, staleness); returns how many changed.
    pub fn sweep_status(&self, now: Timestamp) -> usize {
        let inner = self.inner.read();
        let mut changed = 0;
        for slot in inner.slots.iter().flatten() {
            let mut state = slot.state.lock();
            let status = state.live.status(&state.car_park, now);
            if status != state.last_status {
                state.last_status = status;
                changed += 1;
                self.publish(
                    &state.car_park,
                    ChangeKind::Updated(state.live.availability(&state.car_park, now)),
                );
            }
        }
        changed
    }

    /// Counts car parks by status, for the metrics.
    pub fn status_counts(&self, now: Timestamp) -> [(CarParkStatus, usize); 4] {
        let inner = self.inner.read();
        let mut counts = [
            (CarParkStatus::Open, 0),
            (CarParkStatus::Closed, 0),
            (CarParkStatus::Stale, 0),
            (CarParkStatus::NoData, 0),
        ];
        for slot in inner.slots.iter().flatten() {
            let state = slot.state.lock();
            let status = state.live.status(&state.car_park, now);
            if let Some(entry) = counts.iter_mut().find(|(s, _)| *s == status) {
                entry.1 += 1;
            }
        }
        counts
    }
}
