//! The engine's side of replication: what a store needs to keep an engine equal to the
//! authority, one implementation per aggregate kind.
//!
//! Every record carries the version the authority gave it; the engine keeps a change
//! only if it is newer than what it holds (deletes leave a tombstone version), so a
//! change applied twice, or late, changes nothing. Watchers are told of every change
//! kept, except by a bulk load into an engine that holds nothing yet (nobody watches it).

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    sync::Arc,
};

use parking_lot::Mutex;

use super::{ChangeKind, Engine, Slot, SlotState, index::IndexPoint, index::Tree};
use crate::domain::{CarParkId, CarParkState, Error, RegionId, Result, Timestamp};

/// How one aggregate kind lives in the engine.
pub trait Replica<A> {
    /// The version held for `id`, or the version it was deleted at, or 0 if never seen.
    fn version(&self, id: &str) -> u64;

    /// The record held for `id` and its version.
    fn get(&self, id: &str) -> Option<(A, u64)>;

    /// The version of `id` (as `version`) and whether a record is held, without
    /// copying it.
    fn held(&self, id: &str) -> (u64, bool) {
        match self.get(id) {
            Some((_, version)) => (version, true),
            None => (self.version(id), false),
        }
    }

    /// Sets a record at `version` unless the engine holds that version or a newer one;
    /// true if it was kept.
    fn put(&self, record: A, version: u64, now: Timestamp) -> bool;

    /// Removes `id` as of `version` unless the engine holds that version or a newer one.
    fn remove(&self, id: &str, version: u64) -> bool;

    /// Writes `states` in order, one version each (or removes `id`, when `states` is
    /// empty), only if the engine still holds `expected`: the embedded store's
    /// compare-and-set. The first new version is above both `expected` and `floor`;
    /// returns the last, or `None` if the engine holds another version.
    fn compare_and_set(
        &self,
        id: &str,
        expected: u64,
        floor: u64,
        states: Vec<A>,
        now: Timestamp,
    ) -> Option<u64>;

    /// Drops the tombstone of `id` if it is still the one removed at `version` (nothing
    /// was written since): its delete is past the change stream's reach. Whether it
    /// did. Kinds whose versions must outlive any delete (car parks) never do.
    fn forget(&self, id: &str, version: u64) -> bool;

    /// Makes `region` exactly what a snapshot says, whatever the versions (the snapshot
    /// is the authority). A region new here that nobody watches yet is one bulk pass.
    fn load_region(
        &self,
        region: &RegionId,
        loading: Loading,
        records: Vec<(A, u64)>,
        tombstones: Vec<(String, u64)>,
        now: Timestamp,
    ) -> Result<()>;
}

/// Admits a replicated change at `version` over the version held only if it is newer,
/// so a change applied twice, or late, changes nothing.
pub(super) fn newer(version: u64) -> impl Fn(u64) -> Option<u64> {
    move |held| (held < version).then_some(version)
}

/// Admits the embedded store's compare-and-set over the version held only if it is
/// `expected`: the first new version is above both it and `floor`, and a write of
/// `steps` states ends `steps` above that.
pub(super) fn expected(expected: u64, floor: u64, steps: u64) -> impl Fn(u64) -> Option<u64> {
    move |held| (held == expected).then(|| held.max(floor) + steps)
}

/// A record as held, or the version it was removed at (a tombstone).
pub(super) struct Held<T> {
    pub record: Option<Arc<T>>,
    pub version: u64,
}

/// The ids of a by-time index of finished records (the hand-off's), oldest first, up
/// to `cutoff`: before it, and at it too when `inclusive`.
pub(super) fn finished_by<K>(
    index: &std::collections::BTreeSet<(Timestamp, K)>,
    cutoff: Timestamp,
    inclusive: bool,
) -> impl Iterator<Item = &K> {
    index
        .iter()
        .take_while(move |(at, _)| *at < cutoff || (inclusive && *at == cutoff))
        .map(|(_, id)| id)
}

/// Takes `id` out of the set of `key`, dropping the set when it empties.
pub(super) fn unindex<K: Eq + Hash, V: Eq + Hash>(
    map: &mut HashMap<K, HashSet<V>>,
    key: &K,
    id: &V,
) {
    if let Some(set) = map.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// Sets record `id` of a keyed kind in the tables behind `lock` (through `set`, which
/// also indexes it) if `admit` accepts the version `held` finds; returns the version
/// written.
pub(super) fn write_keyed<S, K: Clone, T>(
    lock: &parking_lot::RwLock<S>,
    id: &K,
    record: Option<T>,
    held: impl Fn(&S, &K) -> u64,
    admit: impl Fn(u64) -> Option<u64>,
    set: impl FnOnce(&mut S, K, Option<Arc<T>>, u64),
) -> Option<u64> {
    let mut tables = lock.write();
    let version = admit(held(&tables, id))?;
    set(&mut tables, id.clone(), record.map(Arc::new), version);
    Some(version)
}

/// `Replica<$kind>` for a kind held in the map `$map` (of `Held` records keyed by
/// `$id`, their field `$field`, which `$parse` reads from the stored id) of the tables behind the engine's
/// lock `$lock`, whose method `$set` (re)indexes a record: the kinds kept this way
/// (shared offers and bookings, sessions, plate links, wallets, ledger entries) differ
/// in nothing else.
macro_rules! keyed_replica {
    ($kind:ty, $id:ty, $field:ident, $lock:ident, $map:ident, $set:ident, $parse:expr) => {
        impl $crate::engine::Replica<$kind> for $crate::engine::Engine {
            fn version(&self, id: &str) -> u64 {
                let parse: fn(&str) -> Option<$id> = $parse;
                let Some(id) = parse(id) else { return 0 };
                self.$lock.read().$map.get(&id).map_or(0, |h| h.version)
            }

            fn get(&self, id: &str) -> Option<($kind, u64)> {
                let parse: fn(&str) -> Option<$id> = $parse;
                let id = parse(id)?;
                let tables = self.$lock.read();
                let held = tables.$map.get(&id)?;
                Some(((**held.record.as_ref()?).clone(), held.version))
            }

            fn put(&self, record: $kind, version: u64, _now: $crate::domain::Timestamp) -> bool {
                let id = record.$field.clone();
                $crate::engine::replica::write_keyed(
                    &self.$lock,
                    &id,
                    Some(record),
                    |t, id| t.$map.get(id).map_or(0, |h| h.version),
                    $crate::engine::replica::newer(version),
                    |s, id, r, v| s.$set(id, r, v),
                )
                .is_some()
            }

            fn remove(&self, id: &str, version: u64) -> bool {
                let parse: fn(&str) -> Option<$id> = $parse;
                let Some(id) = parse(id) else {
                    return false;
                };
                $crate::engine::replica::write_keyed::<_, $id, $kind>(
                    &self.$lock,
                    &id,
                    None,
                    |t, id| t.$map.get(id).map_or(0, |h| h.version),
                    $crate::engine::replica::newer(version),
                    |s, id, r, v| s.$set(id, r, v),
                )
                .is_some()
            }

            fn forget(&self, id: &str, version: u64) -> bool {
                let parse: fn(&str) -> Option<$id> = $parse;
                let Some(id) = parse(id) else {
                    return false;
                };
                let mut tables = self.$lock.write();
                let tombstone = tables
                    .$map
                    .get(&id)
                    .is_some_and(|h| h.record.is_none() && h.version == version);
                if tombstone {
                    tables.$map.remove(&id);
                }
                tombstone
            }

            fn compare_and_set(
                &self,
                id: &str,
                expected_version: u64,
                floor: u64,
                states: Vec<$kind>,
                _now: $crate::domain::Timestamp,
            ) -> Option<u64> {
                let parse: fn(&str) -> Option<$id> = $parse;
                let id = parse(id)?;
                let steps = states.len().max(1) as u64;
                let last = states.into_iter().last();
                let admit = $crate::engine::replica::expected(expected_version, floor, steps);
                $crate::engine::replica::write_keyed(
                    &self.$lock,
                    &id,
                    last,
                    |t, id| t.$map.get(id).map_or(0, |h| h.version),
                    admit,
                    |s, id, r, v| s.$set(id, r, v),
                )
            }

            fn load_region(
                &self,
                region: &$crate::domain::RegionId,
                _loading: $crate::engine::Loading,
                records: Vec<($kind, u64)>,
                tombstones: Vec<(String, u64)>,
                _now: $crate::domain::Timestamp,
            ) -> $crate::domain::Result<()> {
                let parse: fn(&str) -> Option<$id> = $parse;
                let mut tables = self.$lock.write();
                let keep: std::collections::HashSet<$id> =
                    records.iter().map(|(r, _)| r.$field.clone()).collect();
                let gone: Vec<($id, u64)> = tables
                    .$map
                    .iter()
                    .filter(|(id, h)| {
                        h.record.as_ref().is_some_and(|r| &r.region == region)
                            && !keep.contains(*id)
                    })
                    .map(|(id, h)| (id.clone(), h.version))
                    .collect();
                for (id, version) in gone {
                    tables.$set(id, None, version);
                }
                for (record, version) in records {
                    tables.$set(
                        record.$field.clone(),
                        Some(std::sync::Arc::new(record)),
                        version,
                    );
                }
                for (id, version) in tombstones {
                    if let Some(id) = parse(&id)
                        && tables.$map.get(&id).is_none_or(|h| h.record.is_none())
                    {
                        tables.$set(id, None, version);
                    }
                }
                Ok(())
            }
        }
    };
}

pub(super) use keyed_replica;

/// A removed record's version, kept (so versions only grow and a late change cannot
/// bring the record back) until it is past the change stream's reach.
pub(super) struct Tombstone {
    at: std::time::Instant,
    kind: &'static str,
    id: String,
    version: u64,
    forget: fn(&Engine, &str, u64) -> bool,
}

/// The tombstones an engine holds, oldest first.
#[derive(Default)]
pub(super) struct Tombstones(Mutex<std::collections::VecDeque<Tombstone>>);

impl Engine {
    /// Notes that `id` of `kind` was removed at `version`: `compact_tombstones`
    /// forgets it (through `forget`) once it is older than the grace.
    pub fn note_tombstone(
        &self,
        kind: &'static str,
        id: &str,
        version: u64,
        forget: fn(&Engine, &str, u64) -> bool,
    ) {
        self.tombstones.0.lock().push_back(Tombstone {
            at: std::time::Instant::now(),
            kind,
            id: id.to_owned(),
            version,
            forget,
        });
    }

    /// Forgets the tombstones noted more than `grace` ago that are still tombstones
    /// at their version (a record written since is left alone); how many, by kind.
    pub fn compact_tombstones(&self, grace: std::time::Duration) -> Vec<(&'static str, u64)> {
        let mut due = Vec::new();
        {
            let mut queue = self.tombstones.0.lock();
            while queue.front().is_some_and(|t| t.at.elapsed() >= grace) {
                due.extend(queue.pop_front());
            }
        }
        let mut counts: Vec<(&'static str, u64)> = Vec::new();
        for t in due {
            if (t.forget)(self, &t.id, t.version) {
                match counts.iter_mut().find(|(k, _)| *k == t.kind) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((t.kind, 1)),
                }
            }
        }
        counts
    }

    /// Gives back the memory of tables far larger than what they hold (after the
    /// hand-off moved most of their records to history, and their tombstones went).
    pub fn shrink_tables(&self) {
        self.shrink_sessions();
        self.book.write().shrink();
        let mut tombstones = self.tombstones.0.lock();
        if tombstones.capacity() > 64 && tombstones.capacity() > 4 * tombstones.len() {
            tombstones.shrink_to_fit();
        }
    }

    /// Tombstones waiting for their grace to pass.
    pub fn tombstones_pending(&self) -> usize {
        self.tombstones.0.lock().len()
    }
}

/// How a region's snapshot meets the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loading {
    /// The region is new here: the engine holds none of its records.
    New,
    /// The engine follows the region already, and the snapshot replaces what it holds
    /// (after a hole in the change stream, or Redis lost data).
    Replace,
}

impl Engine {
    /// Sets a car park to each of `states` in turn (or removes it, when there are
    /// none), the first at the version `admit` gives for the version held, if it gives
    /// one, the next ones each one above; returns the last version written.
    fn write_car_park(
        &self,
        id: &str,
        states: Vec<CarParkState>,
        now: Timestamp,
        admit: impl Fn(u64) -> Option<u64>,
    ) -> Option<u64> {
        if !states.is_empty() {
            // An update that does not move the car park needs only the read lock and
            // the car park's own mutex, so ingest (here or replicated) never stops
            // queries. Watchers are told under that mutex, so they see its changes
            // in version order.
            let inner = self.inner.read();
            if let Some(slot) = inner.slot(id) {
                let mut held = slot.state.lock();
                let mut version = admit(held.version)?;
                if states
                    .iter()
                    .all(|s| s.car_park.location == held.car_park.location)
                {
                    let held_now = self.held_at(id, now);
                    for (k, mut state) in states.into_iter().enumerate() {
                        if k > 0 {
                            version += 1;
                        }
                        state.live.set_held(held_now);
                        let availability = state.live.availability(&state.car_park, now);
                        held.car_park = state.car_park;
                        held.live = state.live;
                        held.version = version;
                        held.last_status = availability.status;
                        held.learn();
                        self.publish(&held.car_park, ChangeKind::Updated(availability));
                    }
                    return Some(version);
                }
            }
        }
        let mut inner = self.inner.write();
        let mut version = admit(inner.version_of(id))?;
        if states.is_empty() {
            let id = CarParkId::parse(id).ok()?;
            inner.remove(self, &id, version);
            return Some(version);
        }
        for (k, state) in states.into_iter().enumerate() {
            if k > 0 {
                version += 1;
            }
            inner.put(self, state.car_park, state.live, version, now);
        }
        Some(version)
    }

    /// Loads many car parks at once, none of which the engine holds, telling no watcher
    /// (callers load only what nobody watches yet). When they at least double the
    /// engine, the R-tree is built anew in one bulk pass (far faster than one insert
    /// each); else they are inserted, so a start that loads region after region costs
    /// no more than one bulk load.
    pub fn load(
        &self,
        entries: impl IntoIterator<Item = (CarParkState, u64)>,
        now: Timestamp,
    ) -> Result<()> {
        let entries: Vec<(CarParkState, u64)> = entries.into_iter().collect();
        let mut ids: Vec<(CarParkId, u32)> = Vec::with_capacity(entries.len());
        let mut inner = self.inner.write();
        let first = inner.slots.len() as u32;
        for (k, (record, _)) in entries.iter().enumerate() {
            ids.push((record.car_park.id.clone(), first + k as u32));
        }
        ids.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let twice = ids.windows(2).find(|w| w[0].0 == w[1].0).map(|w| &w[0].0);
        if let Some(id) = twice.or_else(|| {
            ids.iter()
                .map(|(id, _)| id)
                .find(|id| inner.slot_of.contains_key(*id))
        }) {
            return Err(Error::Internal(format!("car park {id} loaded twice")));
        }
        for (record, version) in entries {
            let last_status = record.live.status(&record.car_park, now);
            inner.slots.push(Some(Slot {
                state: Mutex::new(SlotState::new(
                    record.car_park,
                    record.live,
                    version,
                    last_status,
                )),
            }));
        }
        inner.slot_of.reserve(ids.len());
        for (id, i) in &ids {
            inner.slot_of.insert(id.clone(), *i);
        }
        if inner.by_id.is_empty() {
            // Sorted, the map is built in one pass rather than an insert each.
            inner.by_id = ids.into_iter().collect();
        } else {
            inner.by_id.extend(ids);
        }
        let point = |(i, slot): (usize, &Option<Slot>)| {
            slot.as_ref()
                .map(|s| IndexPoint::new(s.state.lock().car_park.location, i as u32))
        };
        let added = inner.slots.len() - first as usize;
        if added >= inner.tree.size() {
            let points = inner.slots.iter().enumerate().filter_map(point).collect();
            inner.tree = Tree::bulk_load(points);
        } else {
            let points: Vec<IndexPoint> = inner.slots[first as usize..]
                .iter()
                .enumerate()
                .filter_map(|(k, slot)| point((first as usize + k, slot)))
                .collect();
            for p in points {
                inner.tree.insert(p);
            }
        }
        Ok(())
    }
}

impl Replica<CarParkState> for Engine {
    fn version(&self, id: &str) -> u64 {
        self.inner.read().version_of(id)
    }

    fn held(&self, id: &str) -> (u64, bool) {
        let inner = self.inner.read();
        match inner.slot(id) {
            Some(slot) => (slot.state.lock().version, true),
            None => (inner.version_of(id), false),
        }
    }

    fn get(&self, id: &str) -> Option<(CarParkState, u64)> {
        let inner = self.inner.read();
        let held = inner.slot(id)?.state.lock();
        Some((
            CarParkState {
                car_park: held.car_park.clone(),
                live: held.live.clone(),
            },
            held.version,
        ))
    }

    fn put(&self, record: CarParkState, version: u64, now: Timestamp) -> bool {
        let id = record.car_park.id.clone();
        self.write_car_park(id.as_str(), vec![record], now, newer(version))
            .is_some()
    }

    fn remove(&self, id: &str, version: u64) -> bool {
        self.write_car_park(id, Vec::new(), Timestamp::UNIX_EPOCH, newer(version))
            .is_some()
    }

    /// Never: a car park id's versions keep growing across deletes and regions (a
    /// re-created id continues above them), and car parks are few.
    fn forget(&self, _id: &str, _version: u64) -> bool {
        false
    }

    fn compare_and_set(
        &self,
        id: &str,
        expected: u64,
        floor: u64,
        states: Vec<CarParkState>,
        now: Timestamp,
    ) -> Option<u64> {
        // Each state after the first is one above it (`write_car_park`).
        self.write_car_park(id, states, now, self::expected(expected, floor, 1))
    }

    fn load_region(
        &self,
        region: &RegionId,
        loading: Loading,
        records: Vec<(CarParkState, u64)>,
        tombstones: Vec<(String, u64)>,
        now: Timestamp,
    ) -> Result<()> {
        // A region new here with nobody watching (a cold start, region after region):
        // one bulk pass. Otherwise watchers are told car park by car park.
        if loading == Loading::New && self.changes.receiver_count() == 0 {
            self.load(records, now)?;
        } else {
            let mut inner = self.inner.write();
            let keep: HashSet<&CarParkId> = records.iter().map(|(r, _)| &r.car_park.id).collect();
            let gone: Vec<(CarParkId, u64)> = inner
                .by_id
                .iter()
                .filter_map(|(id, &i)| {
                    let held = inner.slot_at(i).state.lock();
                    (&held.car_park.region == region && !keep.contains(id))
                        .then(|| (id.clone(), held.version))
                })
                .collect();
            for (id, version) in gone {
                inner.remove(self, &id, version);
            }
            for (record, version) in records {
                inner.put(self, record.car_park, record.live, version, now);
            }
        }
        let mut inner = self.inner.write();
        for (id, version) in tombstones {
            if inner.slot(&id).is_none()
                && let Ok(id) = CarParkId::parse(&id)
            {
                inner.tombstones.insert(id, version);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{
        BoundingBox, Capacity, CarPark, CarParkKind, LatLng, OpeningHours, OperatorId,
        SpaceCategory, Tariff, TimeZoneName,
    };

    fn record(id: &str, region: &str, lat: f64) -> (CarParkState, u64) {
        let car_park = CarPark {
            id: CarParkId::parse(id).unwrap(),
            region: RegionId::parse(region).unwrap(),
            operator: OperatorId::parse("op").unwrap(),
            name: id.into(),
            address: String::new(),
            location: LatLng::new(lat, 120.0).unwrap(),
            kind: CarParkKind::Garage,
            capacity: Capacity::new([(SpaceCategory::Standard, 10)]).unwrap(),
            time_zone: TimeZoneName::parse("Asia/Shanghai").unwrap(),
            opening_hours: OpeningHours::always(),
            closed: false,
            tariff: Tariff::default(),
            covered: false,
            max_height_cm: None,
            modified_at: Timestamp::UNIX_EPOCH,
            report_interval: Duration::from_secs(60),
            reservation_policy: None,
        };
        (CarParkState::new(car_park), 1)
    }

    fn ids_in_area(engine: &Engine) -> Vec<String> {
        let area = BoundingBox::new(
            LatLng::new(35.0, 119.0).unwrap(),
            LatLng::new(37.0, 121.0).unwrap(),
        )
        .unwrap();
        let now = Timestamp::UNIX_EPOCH;
        let found = engine.in_area(&area, usize::MAX, now).unwrap();
        found.into_iter().map(|a| a.car_park.to_string()).collect()
    }

    #[test]
    fn regions_loaded_one_after_another_are_all_indexed() {
        let engine = Engine::new(16);
        let now = Timestamp::UNIX_EPOCH;
        let big = (0..6).map(|i| record(&format!("a{i}"), "qingdao", 36.0 + i as f64 * 0.01));
        engine
            .load_region(
                &RegionId::parse("qingdao").unwrap(),
                Loading::New,
                big.collect(),
                vec![],
                now,
            )
            .unwrap();
        // Fewer than the engine holds: inserted into the R-tree, not rebuilt.
        let small = vec![record("b0", "jinan", 36.5), record("b1", "jinan", 36.6)];
        engine
            .load_region(
                &RegionId::parse("jinan").unwrap(),
                Loading::New,
                small,
                vec![],
                now,
            )
            .unwrap();
        // More than the engine holds: the R-tree is rebuilt over all of them.
        let many = (0..9).map(|i| record(&format!("c{i}"), "yantai", 35.5 + i as f64 * 0.01));
        engine
            .load_region(
                &RegionId::parse("yantai").unwrap(),
                Loading::New,
                many.collect(),
                vec![],
                now,
            )
            .unwrap();
        let ids = ids_in_area(&engine);
        assert_eq!(ids.len(), 17, "{ids:?}");
        assert!(ids.contains(&"b1".to_string()) && ids.contains(&"c8".to_string()));
        // A car park loaded twice is refused, not indexed twice.
        let again = vec![record("b0", "jinan", 36.5)];
        assert!(engine.load(again, now).is_err());
        assert_eq!(ids_in_area(&engine).len(), 17);
    }
}
