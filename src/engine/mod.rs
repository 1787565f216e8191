//! The city in memory: car parks, live counts, a spatial index and a change feed.
//!
//! Every query is answered here with no network round trip. In embedded mode the
//! engine is the store; with Redis it is each instance's replica. It holds no rule of
//! who may write what: it keeps what the store committed (`replica.rs`), versioned.
//!
//! Locking: one `RwLock` guards the id map, the slots and the R-tree, and is held for
//! writing only to add, move or remove a car park (O(log n)). Reports take it for
//! reading plus the car park's own mutex, so ingest never stops readers, and readers
//! hold each car park's mutex only long enough to copy its numbers.

mod index;
mod replica;
mod reservations;
mod sessions;
mod shared;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, atomic::AtomicUsize},
};

use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;

use crate::domain::{
    Admitted, Availability, BoundingBox, CarPark, CarParkId, CarParkStatus, Error, Forecaster,
    Forecasts, LatLng, Live, NearbyQuery, OperatorId, Prediction, RegionId, Result, SpaceCategory,
    Timestamp, chord_to_m,
};
use index::{IndexPoint, Tree, envelope_of};
pub use replica::{Loading, Replica};
pub use sessions::SessionCounts;

/// Car parks by region, then by status in the order of [`CarParkStatus::ALL`].
pub type StatusCounts = BTreeMap<RegionId, [usize; CarParkStatus::ALL.len()]>;

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

/// A region's car parks: how many, and the smallest box that holds them (by latitude
/// and longitude, so a region across the antimeridian gets a box around the world).
#[derive(Debug, Clone, PartialEq)]
pub struct RegionExtent {
    pub region: RegionId,
    pub car_parks: usize,
    pub south_west: (f64, f64),
    pub north_east: (f64, f64),
}

/// A car park in a nearby answer.
#[derive(Debug, Clone)]
pub struct Nearby {
    pub car_park: Arc<CarPark>,
    pub distance_m: f64,
    pub availability: Availability,
    pub admitted: Admitted,
    /// The forecast at the query's arrival time, when it gave one and numbers were seen.
    pub forecast: Option<Prediction>,
}

struct SlotState {
    car_park: Arc<CarPark>,
    live: Live,
    /// Bumped by every write; a replica applies a change only if it is newer.
    version: u64,
    /// The status last sent to watchers, so the sweeper reports only transitions.
    last_status: CarParkStatus,
    /// What its numbers so far say of its numbers to come; learns each change.
    forecasts: Forecasts,
}

impl SlotState {
    fn new(car_park: Arc<CarPark>, live: Live, version: u64, last_status: CarParkStatus) -> Self {
        let mut state = Self {
            car_park,
            live,
            version,
            last_status,
            forecasts: Forecasts::default(),
        };
        state.learn();
        state
    }

    /// Lets the forecasters learn the numbers just set.
    fn learn(&mut self) {
        self.forecasts.observe(&self.car_park, &self.live);
    }
}

struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct Inner {
    /// Id order doubles as the listing order.
    by_id: BTreeMap<CarParkId, u32>,
    /// The same map, hashed: every write and lookup by id goes here (one hash and a
    /// compare, where the B-tree follows a pointer per key it passes); `by_id` serves
    /// the listings.
    slot_of: HashMap<CarParkId, u32>,
    slots: Vec<Option<Slot>>,
    vacant: Vec<u32>,
    /// Car parks per region, kept with the id maps: a listing's total is counted in
    /// the same read as its page.
    per_region: HashMap<RegionId, usize>,
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
        mut live: Live,
        version: u64,
        now: Timestamp,
    ) {
        live.set_held(engine.held_at(car_park.id.as_str(), now));
        let availability = live.availability(&car_park, now);
        self.tombstones.remove(&car_park.id);
        if let Some(&i) = self.slot_of.get(&car_park.id) {
            let slot = self.slots[i as usize]
                .as_ref()
                .expect("the id map points at live slots only");
            let mut state = slot.state.lock();
            let old = state.car_park.location;
            let moved_from = (old != car_park.location).then_some(old);
            if state.car_park.region != car_park.region {
                Self::count(&mut self.per_region, &state.car_park.region, -1);
                Self::count(&mut self.per_region, &car_park.region, 1);
            }
            if moved_from.is_some() {
                self.tree.remove(&IndexPoint::new(old, i));
                self.tree.insert(IndexPoint::new(car_park.location, i));
            }
            let forecasts = std::mem::take(&mut state.forecasts);
            *state = SlotState {
                car_park: car_park.clone(),
                live,
                version,
                last_status: availability.status,
                forecasts,
            };
            state.learn();
            engine.publish_move(&car_park, moved_from, ChangeKind::Updated(availability));
            return;
        }
        let slot = Slot {
            state: Mutex::new(SlotState::new(
                car_park.clone(),
                live,
                version,
                availability.status,
            )),
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
        self.slot_of.insert(car_park.id.clone(), i);
        Self::count(&mut self.per_region, &car_park.region, 1);
        self.tree.insert(IndexPoint::new(car_park.location, i));
        engine.publish(&car_park, ChangeKind::Updated(availability));
    }

    /// Removes a car park, leaving a tombstone at `version`, and tells watchers.
    fn remove(&mut self, engine: &Engine, id: &CarParkId, version: u64) {
        self.tombstones.insert(id.clone(), version);
        let Some(i) = self.by_id.remove(id) else {
            return;
        };
        self.slot_of.remove(id);
        let car_park = self.slot_at(i).state.lock().car_park.clone();
        Self::count(&mut self.per_region, &car_park.region, -1);
        self.tree.remove(&IndexPoint::new(car_park.location, i));
        self.slots[i as usize] = None;
        self.vacant.push(i);
        engine.publish(&car_park, ChangeKind::Removed);
    }

    /// Adds `by` (1 or -1) to `region`'s count in `per_region`, forgetting a region
    /// left without car parks.
    fn count(per_region: &mut HashMap<RegionId, usize>, region: &RegionId, by: isize) {
        if by > 0 {
            *per_region.entry(region.clone()).or_default() += 1;
        } else if let Some(n) = per_region.get_mut(region) {
            *n -= 1;
            if *n == 0 {
                per_region.remove(region);
            }
        }
    }

    /// The version a car park has, or had when it was deleted, or 0.
    fn version_of(&self, id: &str) -> u64 {
        match self.slot(id) {
            Some(slot) => slot.state.lock().version,
            None => self.tombstones.get(id).copied().unwrap_or(0),
        }
    }

    fn slot(&self, id: &str) -> Option<&Slot> {
        self.slot_of
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
    book: RwLock<reservations::Book>,
    /// How many RESERVED reservations `book` holds, read without its lock on every car
    /// park write.
    reserved_count: AtomicUsize,
    sharing: RwLock<shared::Sharing>,
    sessions: RwLock<sessions::SessionTables>,
    changes: broadcast::Sender<Arc<Change>>,
    change_buffer: usize,
    tombstones: replica::Tombstones,
}

impl Engine {
    /// An empty city whose change feed keeps `change_buffer` changes for slow watchers.
    pub fn new(change_buffer: usize) -> Self {
        let (changes, _) = broadcast::channel(change_buffer.max(1));
        Self {
            inner: RwLock::default(),
            book: RwLock::default(),
            reserved_count: AtomicUsize::new(0),
            sharing: RwLock::default(),
            sessions: RwLock::default(),
            changes,
            change_buffer: change_buffer.max(1),
            tombstones: replica::Tombstones::default(),
        }
    }

    /// How many changes the feed keeps for a slow watcher.
    pub fn change_buffer(&self) -> usize {
        self.change_buffer
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

    /// Free spaces of `category` at a car park, as last reported.
    pub fn free(&self, id: &str, category: SpaceCategory) -> Option<u32> {
        let inner = self.inner.read();
        let state = inner.slot(id)?.state.lock();
        Some(state.live.free(category))
    }

    /// Car parks after `after` in id order, filtered, at most `limit`; and whether more follow.
    pub fn list(
        &self,
        region: Option<&RegionId>,
        operator: Option<&OperatorId>,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Arc<CarPark>>, bool) {
        self.page(region, operator, after, limit, |state| {
            state.car_park.clone()
        })
    }

    /// As [`Self::list`] without the operator filter, each car park with its live
    /// state, read under the same lock.
    pub fn list_live(
        &self,
        region: Option<&RegionId>,
        after: Option<&str>,
        limit: usize,
        now: Timestamp,
    ) -> (Vec<(Arc<CarPark>, Availability)>, bool) {
        let (page, more, _) = self.list_live_counted(region, after, limit, now);
        (page, more)
    }

    /// Whether `region` has a car park now.
    pub fn has_region(&self, region: &RegionId) -> bool {
        self.inner.read().per_region.contains_key(region)
    }

    /// As [`Self::list_live`], with the number of car parks the listing has in all
    /// (in `region`, or everywhere), counted in the same read as the page.
    pub fn list_live_counted(
        &self,
        region: Option<&RegionId>,
        after: Option<&str>,
        limit: usize,
        now: Timestamp,
    ) -> (Vec<(Arc<CarPark>, Availability)>, bool, usize) {
        let inner = self.inner.read();
        let total = match region {
            Some(r) => inner.per_region.get(r).copied().unwrap_or(0),
            None => inner.by_id.len(),
        };
        let (page, more) = Self::page_of(&inner, region, None, after, limit, |state| {
            (
                state.car_park.clone(),
                state.live.availability(&state.car_park, now),
            )
        });
        (page, more, total)
    }

    /// One page in id order of what `read` takes from each matching car park.
    fn page<T>(
        &self,
        region: Option<&RegionId>,
        operator: Option<&OperatorId>,
        after: Option<&str>,
        limit: usize,
        read: impl Fn(&SlotState) -> T,
    ) -> (Vec<T>, bool) {
        Self::page_of(&self.inner.read(), region, operator, after, limit, read)
    }

    /// [`Self::page`] under a lock the caller holds.
    fn page_of<T>(
        inner: &Inner,
        region: Option<&RegionId>,
        operator: Option<&OperatorId>,
        after: Option<&str>,
        limit: usize,
        read: impl Fn(&SlotState) -> T,
    ) -> (Vec<T>, bool) {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = inner
            .by_id
            .range::<str, _>((start, Bound::Unbounded))
            .filter_map(|(_, &i)| {
                let state = inner.slot_at(i).state.lock();
                let cp = &state.car_park;
                (region.is_none_or(|r| &cp.region == r)
                    && operator.is_none_or(|o| &cp.operator == o))
                .then(|| read(&state))
            });
        let page: Vec<_> = matching.by_ref().take(limit).collect();
        let more = matching.next().is_some();
        (page, more)
    }

    /// `read` of a car park's registration, live numbers and forecasters; None if it
    /// is not registered.
    pub fn with_forecasts<R>(
        &self,
        id: &str,
        read: impl FnOnce(&CarPark, &Live, &Forecasts) -> R,
    ) -> Option<R> {
        let inner = self.inner.read();
        let state = inner.slot(id)?.state.lock();
        Some(read(&state.car_park, &state.live, &state.forecasts))
    }

    /// Every car park's id, time zone and the categories it has spaces of, in id order.
    pub fn categories(&self) -> Vec<(CarParkId, jiff::tz::TimeZone, Vec<SpaceCategory>)> {
        let inner = self.inner.read();
        inner
            .by_id
            .iter()
            .map(|(id, &i)| {
                let state = inner.slot_at(i).state.lock();
                let capacity = &state.car_park.capacity;
                let categories = SpaceCategory::ALL
                    .into_iter()
                    .filter(|c| capacity.of(*c) > 0)
                    .collect();
                (
                    id.clone(),
                    state.car_park.time_zone.zone().clone(),
                    categories,
                )
            })
            .collect()
    }

    /// Puts in `forecaster`, restored from history, for a car park's `category`, once
    /// it has learned the car park's current numbers too; false if the car park is gone.
    pub fn restore_forecaster(
        &self,
        id: &str,
        category: SpaceCategory,
        mut forecaster: Forecaster,
    ) -> bool {
        let inner = self.inner.read();
        let Some(slot) = inner.slot(id) else {
            return false;
        };
        let mut state = slot.state.lock();
        let capacity = state.car_park.capacity.of(category);
        if let Some(at) = state.live.observed_at()
            && capacity > 0
        {
            let zone = state.car_park.time_zone.zone().clone();
            forecaster.observe(at, &zone, state.live.free(category), capacity);
        }
        state.forecasts.set(category, forecaster);
        true
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
                let forecast = query.arrival.and_then(|arrival| {
                    state.forecasts.forecast(
                        &state.car_park,
                        &state.live,
                        query.category,
                        arrival.at,
                    )
                });
                if let Some(arrival) = query.arrival
                    && arrival.min_probability > 0.0
                    && forecast.is_none_or(|f| f.probability < arrival.min_probability)
                {
                    continue;
                }
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
                        forecast,
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
                    // The live map (web/src/main.ts) tells this from a rate limit by
                    // "watch a smaller": keep the words.
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

    /// Every region with car parks, in region order, with its extent. One pass over
    /// the city: callers cache it.
    pub fn regions(&self) -> Vec<RegionExtent> {
        let inner = self.inner.read();
        let mut regions: BTreeMap<RegionId, RegionExtent> = BTreeMap::new();
        for slot in inner.slots.iter().flatten() {
            let state = slot.state.lock();
            let car_park = &state.car_park;
            let (lat, lon) = (car_park.location.lat(), car_park.location.lon());
            match regions.get_mut(&car_park.region) {
                Some(extent) => {
                    extent.car_parks += 1;
                    extent.south_west =
                        (extent.south_west.0.min(lat), extent.south_west.1.min(lon));
                    extent.north_east =
                        (extent.north_east.0.max(lat), extent.north_east.1.max(lon));
                }
                // Cloned once per region, not once per car park.
                None => {
                    regions.insert(
                        car_park.region.clone(),
                        RegionExtent {
                            region: car_park.region.clone(),
                            car_parks: 1,
                            south_west: (lat, lon),
                            north_east: (lat, lon),
                        },
                    );
                }
            }
        }
        regions.into_values().collect()
    }

    /// Tells watchers about car parks whose status changed with time alone (opening
    /// hours, staleness), and counts car parks by region and status for the metrics, in
    /// one pass.
    pub fn sweep_status(&self, now: Timestamp) -> StatusCounts {
        let inner = self.inner.read();
        let mut counts = StatusCounts::new();
        for slot in inner.slots.iter().flatten() {
            let mut state = slot.state.lock();
            let status = state.live.status(&state.car_park, now);
            let region = &state.car_park.region;
            // Looked up before inserting, so a region is cloned once per sweep, not
            // once per car park.
            if !counts.contains_key(region) {
                counts.insert(region.clone(), Default::default());
            }
            let row = counts.get_mut(region).expect("inserted above");
            if let Some(i) = CarParkStatus::ALL.iter().position(|s| *s == status) {
                row[i] += 1;
            }
            if status != state.last_status {
                state.last_status = status;
                let availability = state.live.availability_with(&state.car_park, now, status);
                self.publish(&state.car_park, ChangeKind::Updated(availability));
            }
        }
        counts
    }
}
