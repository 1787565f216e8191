//! Occupancy reports and the live counts they change: sequence, clamping, availability.

use std::{collections::HashMap, time::Duration};

use super::{
    BayId, CATEGORY_COUNT, Capacity, CarPark, CarParkId, CarParkStatus, Error, PlateColor,
    SpaceCategory, Timestamp,
};

/// How far ahead of the server's clock `observed_at` may be (operators' clocks drift).
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(5 * 60);

/// What an operator observed.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportBody {
    /// Absolute free counts for the categories given.
    Snapshot(Vec<(SpaceCategory, u32)>),
    /// Vehicles in and out since the previous report.
    Delta {
        entries: [u32; CATEGORY_COUNT],
        exits: [u32; CATEGORY_COUNT],
        plate: Option<String>,
        /// The plate's colour, when a plate is read.
        plate_color: PlateColor,
        /// The lane that read it, as the operator names it (may be empty).
        lane: String,
    },
    /// One bay's sensor.
    Bay {
        bay: BayId,
        category: SpaceCategory,
        occupied: bool,
    },
}

fn count(field: String, n: i64) -> Result<u32, Error> {
    if n < 0 {
        return Err(Error::invalid(field, format!("{n} is negative")));
    }
    u32::try_from(n).map_err(|_| Error::invalid(field, format!("{n} is too large")))
}

impl ReportBody {
    /// Absolute free counts; each category once, none negative. Errors name `[i].count`.
    pub fn snapshot(
        entries: impl IntoIterator<Item = (SpaceCategory, i64)>,
    ) -> Result<Self, Error> {
        let mut seen = [false; CATEGORY_COUNT];
        let mut free = Vec::new();
        for (i, (category, n)) in entries.into_iter().enumerate() {
            if std::mem::replace(&mut seen[category.index()], true) {
                return Err(Error::invalid(
                    format!("[{i}].category"),
                    format!("{} is listed twice", category.name()),
                ));
            }
            free.push((category, count(format!("[{i}].count"), n)?));
        }
        if free.is_empty() {
            return Err(Error::invalid("", "a snapshot needs at least one category"));
        }
        Ok(Self::Snapshot(free))
    }

    /// Entries and exits per category; none negative. Errors name `entries[i].count`,
    /// `exits[i].count`, `plate` or `lane`.
    pub fn delta(
        entries: impl IntoIterator<Item = (SpaceCategory, i64)>,
        exits: impl IntoIterator<Item = (SpaceCategory, i64)>,
        plate: &str,
        plate_color: PlateColor,
        lane: &str,
    ) -> Result<Self, Error> {
        fn sum(
            name: &str,
            list: impl IntoIterator<Item = (SpaceCategory, i64)>,
        ) -> Result<[u32; CATEGORY_COUNT], Error> {
            let mut out = [0u32; CATEGORY_COUNT];
            for (i, (category, n)) in list.into_iter().enumerate() {
                let n = count(format!("{name}[{i}].count"), n)?;
                out[category.index()] = out[category.index()].saturating_add(n);
            }
            Ok(out)
        }
        let (entries, exits) = (sum("entries", entries)?, sum("exits", exits)?);
        let plate = match plate.trim() {
            "" => None,
            p if p.chars().count() > 16 || p.chars().any(char::is_control) => {
                return Err(Error::invalid(
                    "plate",
                    "must be at most 16 printable characters",
                ));
            }
            p => Some(p.to_owned()),
        };
        let lane = lane.trim();
        if lane.chars().count() > 32 || lane.chars().any(char::is_control) {
            return Err(Error::invalid(
                "lane",
                "must be at most 32 printable characters",
            ));
        }
        Ok(Self::Delta {
            entries,
            exits,
            plate,
            plate_color,
            lane: lane.to_owned(),
        })
    }
}

/// One validated occupancy report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub car_park: CarParkId,
    /// Operator's per-car-park sequence, 1 or more.
    pub sequence: u64,
    pub observed_at: Timestamp,
    pub body: ReportBody,
    /// Starts the car park's numbering again (see `restarting`).
    pub restart: bool,
}

/// Highest sequence number accepted: 2^53, which every JSON number holds exactly and
/// which leaves room for millisecond or microsecond timestamps used as sequences.
pub const MAX_SEQUENCE: u64 = 1 << 53;
/// Furthest a sequence may jump past the last applied one: 2^44, so a feed may switch
/// from a counter to millisecond timestamps (which reach 2^44 in 2527) at once. A
/// report beyond it is refused rather than applied, so one bad number cannot put every
/// later report below it.
pub const MAX_SEQUENCE_JUMP: u64 = 1 << 44;

impl Report {
    /// Checks the sequence (errors name `sequence`).
    pub fn new(
        car_park: CarParkId,
        sequence: u64,
        observed_at: Timestamp,
        body: ReportBody,
    ) -> Result<Self, Error> {
        if sequence == 0 {
            return Err(Error::invalid("sequence", "must be 1 or more"));
        }
        if sequence > MAX_SEQUENCE {
            return Err(Error::invalid(
                "sequence",
                format!("must be at most {MAX_SEQUENCE} (2^53)"),
            ));
        }
        Ok(Self {
            car_park,
            sequence,
            observed_at,
            body,
            restart: false,
        })
    }

    /// This report starts the car park's numbering again: it is applied whatever the
    /// last applied sequence, and later reports continue from its own. Only a snapshot
    /// may do it (errors name `restart_sequence`), because a snapshot applied twice
    /// changes nothing more than once.
    pub fn restarting(mut self) -> Result<Self, Error> {
        if !matches!(self.body, ReportBody::Snapshot(_)) {
            return Err(Error::invalid(
                "restart_sequence",
                "only a snapshot report may restart the sequence",
            ));
        }
        self.restart = true;
        Ok(self)
    }
}

/// What a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The counts changed; `clamped` counts the categories pulled back into [0, capacity].
    Applied { clamped: u32 },
    /// Not newer than the last applied report: nothing changed.
    Duplicate,
}

/// The live state of one car park.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Live {
    free: [u32; CATEGORY_COUNT],
    /// Worked out by each instance from its reservations (the engine sets it), so never
    /// stored: written as zeros, which instances of format 1 that predate reservations
    /// require and show as "nothing held", and ignored when read.
    #[serde(serialize_with = "none_held", deserialize_with = "ignore_held")]
    held: [u32; CATEGORY_COUNT],
    last_sequence: u64,
    /// When the operator observed the numbers: their age, and so the status, follow it.
    observed_at: Option<Timestamp>,
    /// When the last applied report arrived. Kept (stored records carry it), but it
    /// decides nothing: a report that arrives now with old numbers is still old news.
    received_at: Option<Timestamp>,
    drift_count: u64,
    /// Last known state of each bay that has a sensor; only on-street zones have any,
    /// so it is boxed to keep the common case small (8 bytes instead of 48).
    #[allow(clippy::box_collection)]
    bays: Option<Box<HashMap<BayId, (SpaceCategory, bool)>>>,
}

fn none_held<S: serde::Serializer>(_: &[u32; CATEGORY_COUNT], s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&[0u32; CATEGORY_COUNT], s)
}

fn ignore_held<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u32; CATEGORY_COUNT], D::Error> {
    <[u32; CATEGORY_COUNT] as serde::Deserialize>::deserialize(d)?;
    Ok([0; CATEGORY_COUNT])
}

impl Live {
    /// A car park nobody has reported on: every space counts as free.
    pub fn new(capacity: Capacity) -> Self {
        Self {
            free: capacity.as_array(),
            held: [0; CATEGORY_COUNT],
            last_sequence: 0,
            observed_at: None,
            received_at: None,
            drift_count: 0,
            bays: None,
        }
    }

    /// Sequence of the last applied report (0 if none).
    /// When the newest numbers were observed; None before the first report.
    pub fn observed_at(&self) -> Option<Timestamp> {
        self.observed_at
    }

    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    /// Free spaces of a category as last reported.
    pub fn free(&self, category: SpaceCategory) -> u32 {
        self.free[category.index()]
    }

    /// Spaces of a category held for reservations not arrived yet.
    pub fn held(&self, category: SpaceCategory) -> u32 {
        self.held[category.index()]
    }

    /// Sets what reservations hold now (the engine keeps it current from the car
    /// park's reservations); true if it changed.
    pub fn set_held(&mut self, held: [u32; CATEGORY_COUNT]) -> bool {
        std::mem::replace(&mut self.held, held) != held
    }

    /// Free minus held, never below 0.
    pub fn available(&self, category: SpaceCategory) -> u32 {
        self.free[category.index()].saturating_sub(self.held[category.index()])
    }

    /// Follows a capacity change: free counts and bays beyond the new capacity are cut.
    /// Before any report nothing is known, so every space of the new capacity is free.
    pub fn resize(&mut self, capacity: Capacity) {
        if self.last_sequence == 0 {
            self.free = capacity.as_array();
            return;
        }
        for c in SpaceCategory::ALL {
            self.free[c.index()] = self.free[c.index()].min(capacity.of(c));
        }
        if let Some(bays) = &mut self.bays {
            bays.retain(|_, (c, _)| capacity.of(*c) > 0);
        }
    }

    /// Applies `report` at server time `now`, or says why not. Nothing changes on error.
    ///
    /// A duplicate is detected before the counts are checked, so an operator who resends
    /// an old report after a capacity change is told DUPLICATE, not rejected. A duplicate
    /// changes nothing, not even the feed's liveness: only new reports keep it OPEN.
    pub fn apply(
        &mut self,
        car_park: &CarPark,
        report: &Report,
        now: Timestamp,
    ) -> Result<ReportOutcome, Error> {
        let limit = now.as_millisecond() + MAX_FUTURE_SKEW.as_millis() as i64;
        if report.observed_at.as_millisecond() > limit {
            return Err(Error::invalid(
                "observed_at",
                "is more than 5 minutes ahead of the server's clock",
            ));
        }
        if !report.restart {
            if report.sequence <= self.last_sequence {
                return Ok(ReportOutcome::Duplicate);
            }
            if self.last_sequence > 0 && report.sequence - self.last_sequence > MAX_SEQUENCE_JUMP {
                return Err(Error::invalid(
                    "sequence",
                    format!(
                        "jumps {} past the last applied ({}); at most {MAX_SEQUENCE_JUMP} \
                         (2^44) is taken: to number again from a new point, send a snapshot \
                         with restart_sequence",
                        report.sequence - self.last_sequence,
                        self.last_sequence
                    ),
                ));
            }
        }
        let capacity = car_park.capacity;
        let mut clamped = 0;
        match &report.body {
            ReportBody::Snapshot(free) => {
                for (i, &(category, n)) in free.iter().enumerate() {
                    if n > capacity.of(category) {
                        return Err(Error::invalid(
                            format!("snapshot.free[{i}].count"),
                            format!(
                                "{n} free exceeds the {} capacity of {}",
                                category.name(),
                                capacity.of(category)
                            ),
                        ));
                    }
                }
                for &(category, n) in free {
                    self.free[category.index()] = n;
                }
            }
            ReportBody::Delta { entries, exits, .. } => {
                for c in SpaceCategory::ALL {
                    let i = c.index();
                    let cap = i64::from(capacity.of(c));
                    let free =
                        i64::from(self.free[i]) - i64::from(entries[i]) + i64::from(exits[i]);
                    if !(0..=cap).contains(&free) {
                        clamped += 1;
                    }
                    self.free[i] = free.clamp(0, cap) as u32;
                }
            }
            ReportBody::Bay {
                bay,
                category,
                occupied,
            } => {
                if capacity.of(*category) == 0 {
                    return Err(Error::invalid(
                        "bay.category",
                        format!("the car park has no {} spaces", category.name()),
                    ));
                }
                let bays = self.bays.get_or_insert_with(Default::default);
                if !bays.contains_key(bay) && bays.len() >= capacity.total() as usize {
                    return Err(Error::invalid(
                        "bay.bay_id",
                        "more bays than the car park's capacity",
                    ));
                }
                // A bay heard of for the first time was free: every space counts as free
                // until reported otherwise.
                let before = bays
                    .insert(bay.clone(), (*category, *occupied))
                    .unwrap_or((*category, false));
                let mut shift = |c: SpaceCategory, delta: i64| {
                    let cap = i64::from(capacity.of(c));
                    let free = i64::from(self.free[c.index()]) + delta;
                    if !(0..=cap).contains(&free) {
                        clamped += 1;
                    }
                    self.free[c.index()] = free.clamp(0, cap) as u32;
                };
                if before.1 {
                    shift(before.0, 1);
                }
                if *occupied {
                    shift(*category, -1);
                }
            }
        }
        self.drift_count += u64::from(clamped);
        self.last_sequence = report.sequence;
        self.observed_at = Some(report.observed_at);
        self.received_at = Some(now);
        Ok(ReportOutcome::Applied { clamped })
    }

    /// The honest status at `now`.
    pub fn status(&self, car_park: &CarPark, now: Timestamp) -> CarParkStatus {
        if !car_park.is_open_at(now) {
            return CarParkStatus::Closed;
        }
        self.data_status(car_park, now)
    }

    /// How fresh the numbers are, whatever the opening hours: NO_DATA, STALE or OPEN.
    ///
    /// STALE: the newest numbers were observed more than 3 report intervals ago (the
    /// car park's staleness window). It is the numbers' age that counts, not when the
    /// report arrived, so a late report of old numbers is applied (it is the newest the
    /// operator has) yet leaves the car park STALE, with the same age clients see.
    pub fn data_status(&self, car_park: &CarPark, now: Timestamp) -> CarParkStatus {
        let Some(observed) = self.observed_at else {
            return CarParkStatus::NoData;
        };
        let age_ms = now.as_millisecond() - observed.as_millisecond();
        if age_ms > car_park.staleness_window().as_millis() as i64 {
            CarParkStatus::Stale
        } else {
            CarParkStatus::Open
        }
    }

    /// Everything a client sees about this car park at `now`.
    pub fn availability(&self, car_park: &CarPark, now: Timestamp) -> Availability {
        self.availability_with(car_park, now, self.status(car_park, now))
    }

    /// As [`Self::availability`], with the status already worked out for `now` (a
    /// nearby query has it from its filter and saves working it out twice).
    pub fn availability_with(
        &self,
        car_park: &CarPark,
        now: Timestamp,
        status: CarParkStatus,
    ) -> Availability {
        let categories = SpaceCategory::ALL
            .into_iter()
            .filter(|c| car_park.capacity.of(*c) > 0)
            .map(|c| CategoryAvailability {
                category: c,
                capacity: car_park.capacity.of(c),
                free: self.free(c),
                available: self.available(c),
                held: self.held(c),
            })
            .collect();
        Availability {
            car_park: car_park.id.clone(),
            region: car_park.region.clone(),
            status,
            categories,
            observed_at: self.observed_at,
            data_age: self.observed_at.map(|t| {
                Duration::from_millis((now.as_millisecond() - t.as_millisecond()).max(0) as u64)
            }),
            last_sequence: self.last_sequence,
            drift_count: self.drift_count,
        }
    }
}

/// One category's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CategoryAvailability {
    pub category: SpaceCategory,
    pub capacity: u32,
    pub free: u32,
    pub available: u32,
    /// Held for reservations whose drivers have not arrived yet.
    pub held: u32,
}

/// A car park's live state as shown to clients.
#[derive(Debug, Clone, PartialEq)]
pub struct Availability {
    pub car_park: CarParkId,
    pub region: super::RegionId,
    pub status: CarParkStatus,
    /// Categories the car park has, in category order.
    pub categories: Vec<CategoryAvailability>,
    pub observed_at: Option<Timestamp>,
    pub data_age: Option<Duration>,
    pub last_sequence: u64,
    pub drift_count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        CarParkKind, LatLng, OpeningHours, OperatorId, RegionId, Tariff, TimeZoneName,
    };
    use SpaceCategory::*;

    fn car_park() -> CarPark {
        CarPark {
            id: CarParkId::parse("g1").unwrap(),
            region: RegionId::parse("qingdao").unwrap(),
            operator: OperatorId::parse("op").unwrap(),
            name: "Garage".into(),
            address: String::new(),
            location: LatLng::new(36.0, 120.0).unwrap(),
            kind: CarParkKind::Garage,
            capacity: Capacity::new([(Standard, 10), (EvCharging, 2)]).unwrap(),
            time_zone: TimeZoneName::parse("Asia/Shanghai").unwrap(),
            opening_hours: OpeningHours::always(),
            closed: false,
            tariff: Tariff::default(),
            covered: true,
            max_height_cm: None,
            modified_at: Timestamp::UNIX_EPOCH,
            report_interval: Duration::from_secs(60),
            reservation_policy: None,
        }
    }

    fn now() -> Timestamp {
        "2026-11-30T01:00:00Z".parse().unwrap()
    }

    fn report(seq: u64, body: ReportBody) -> Report {
        Report::new(CarParkId::parse("g1").unwrap(), seq, now(), body).unwrap()
    }

    #[test]
    fn held_spaces_are_never_stored() {
        let mut live = Live::new(car_park().capacity);
        live.set_held([2, 1, 0, 0]);
        let json = serde_json::to_string(&live).unwrap();
        assert!(json.contains("\"held\":[0,0,0,0]"), "{json}");
        let stored = json.replace("\"held\":[0,0,0,0]", "\"held\":[5,0,0,0]");
        let read: Live = serde_json::from_str(&stored).unwrap();
        assert_eq!(
            read.held(SpaceCategory::Standard),
            0,
            "a stored hold is ignored"
        );
    }

    #[test]
    fn snapshot_then_duplicate() {
        let cp = car_park();
        let mut live = Live::new(cp.capacity);
        assert_eq!(live.status(&cp, now()), CarParkStatus::NoData);
        let snap = report(5, ReportBody::snapshot([(Standard, 4)]).unwrap());
        assert_eq!(
            live.apply(&cp, &snap, now()),
            Ok(ReportOutcome::Applied { clamped: 0 })
        );
        assert_eq!((live.free(Standard), live.free(EvCharging)), (4, 2));
        let older = report(5, ReportBody::snapshot([(Standard, 9)]).unwrap());
        assert_eq!(live.apply(&cp, &older, now()), Ok(ReportOutcome::Duplicate));
        assert_eq!(live.free(Standard), 4);
        assert_eq!(live.status(&cp, now()), CarParkStatus::Open);
    }

    #[test]
    fn rejections_change_nothing() {
        let cp = car_park();
        let mut live = Live::new(cp.capacity);
        let before = live.clone();
        let over = report(1, ReportBody::snapshot([(Standard, 11)]).unwrap());
        let err = live.apply(&cp, &over, now()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { ref field, .. } if field == "snapshot.free[0].count")
        );
        let mut future = report(2, ReportBody::snapshot([(Standard, 1)]).unwrap());
        future.observed_at = Timestamp::from_second(now().as_second() + 301).unwrap();
        assert!(live.apply(&cp, &future, now()).is_err());
        assert_eq!(live, before);
        assert!(ReportBody::snapshot([(Standard, -1)]).is_err());
        assert!(ReportBody::delta([(Standard, -1)], [], "", PlateColor::Unspecified, "").is_err());
    }

    #[test]
    fn deltas_clamp_and_count_drift() {
        let cp = car_park();
        let mut live = Live::new(cp.capacity);
        let d = ReportBody::delta(
            [(Standard, 3)],
            [(EvCharging, 5)],
            "鲁B12345",
            PlateColor::Blue,
            "in-1",
        )
        .unwrap();
        assert_eq!(
            live.apply(&cp, &report(1, d), now()),
            Ok(ReportOutcome::Applied { clamped: 1 })
        );
        assert_eq!((live.free(Standard), live.free(EvCharging)), (7, 2));
        let d = ReportBody::delta([(Standard, 20)], [], "", PlateColor::Unspecified, "").unwrap();
        assert_eq!(
            live.apply(&cp, &report(2, d), now()),
            Ok(ReportOutcome::Applied { clamped: 1 })
        );
        assert_eq!(live.free(Standard), 0);
        assert_eq!(live.availability(&cp, now()).drift_count, 2);
    }

    #[test]
    fn bays_toggle_once() {
        let cp = car_park();
        let mut live = Live::new(cp.capacity);
        let bay = |seq, occupied| {
            report(
                seq,
                ReportBody::Bay {
                    bay: BayId::parse("b1").unwrap(),
                    category: Standard,
                    occupied,
                },
            )
        };
        live.apply(&cp, &bay(1, true), now()).unwrap();
        live.apply(&cp, &bay(2, true), now()).unwrap();
        assert_eq!(live.free(Standard), 9, "a repeated occupied is one car");
        live.apply(&cp, &bay(3, false), now()).unwrap();
        assert_eq!(live.free(Standard), 10);
    }

    #[test]
    fn staleness_follows_the_report_interval() {
        let cp = car_park();
        let mut live = Live::new(cp.capacity);
        live.apply(
            &cp,
            &report(1, ReportBody::snapshot([(Standard, 1)]).unwrap()),
            now(),
        )
        .unwrap();
        let later = |s| Timestamp::from_second(now().as_second() + s).unwrap();
        assert_eq!(live.status(&cp, later(180)), CarParkStatus::Open);
        assert_eq!(live.status(&cp, later(181)), CarParkStatus::Stale);
        let mut closed = cp.clone();
        closed.closed = true;
        assert_eq!(live.status(&closed, later(1)), CarParkStatus::Closed);
    }

    #[test]
    fn staleness_follows_when_the_numbers_were_observed_not_received() {
        let cp = car_park();
        let mut live = Live::new(cp.capacity);
        let at = |s| Timestamp::from_second(now().as_second() + s).unwrap();
        let observed = |seq, free, when| Report {
            observed_at: when,
            restart: false,
            ..report(seq, ReportBody::snapshot([(Standard, free)]).unwrap())
        };

        // Numbers an hour old, received now: applied, the newest there are, but STALE.
        let old = observed(1, 4, at(-3600));
        assert_eq!(
            live.apply(&cp, &old, now()),
            Ok(ReportOutcome::Applied { clamped: 0 })
        );
        assert_eq!(live.free(Standard), 4);
        let shown = live.availability(&cp, now());
        assert_eq!(
            (shown.status, shown.data_age),
            (CarParkStatus::Stale, Some(Duration::from_secs(3600)))
        );

        // Observed 180 s ago (3 intervals of 60 s): OPEN, until one more second passes.
        live.apply(&cp, &observed(2, 5, at(-180)), now()).unwrap();
        assert_eq!(live.status(&cp, now()), CarParkStatus::Open);
        assert_eq!(live.status(&cp, at(1)), CarParkStatus::Stale);

        // Fresh numbers make it OPEN again.
        live.apply(&cp, &observed(3, 6, now()), at(1)).unwrap();
        assert_eq!(live.status(&cp, at(1)), CarParkStatus::Open);
        assert_eq!(live.status(&cp, at(180)), CarParkStatus::Open);
        assert_eq!(live.status(&cp, at(181)), CarParkStatus::Stale);
    }

    #[test]
    fn shrinking_capacity_clamps_free() {
        let mut cp = car_park();
        let mut live = Live::new(cp.capacity);
        cp.capacity = Capacity::new([(Standard, 3)]).unwrap();
        live.resize(cp.capacity);
        assert_eq!((live.free(Standard), live.free(EvCharging)), (3, 0));
    }
}
