//! Car parks: kinds, space categories, capacity, status.
//!
//! Each enum has one name table (`ALL`, `name`, `parse`): snake_case names that logs,
//! error messages, metric labels, the CLI and the stored JSON (serde) all share.

use std::{sync::Arc, time::Duration};

use super::{
    Availability, CarParkId, Error, LatLng, Live, OpeningHours, OperatorId, RegionId, Report,
    ReportOutcome, ReservationPolicy, Tariff, TimeZoneName, Timestamp,
};

/// How many space categories there are; counts are kept in arrays of this length.
pub const CATEGORY_COUNT: usize = 4;

/// A category of parking space.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SpaceCategory {
    Standard = 0,
    EvCharging = 1,
    Accessible = 2,
    Motorcycle = 3,
}

impl SpaceCategory {
    /// Every category, in index order.
    pub const ALL: [SpaceCategory; CATEGORY_COUNT] = [
        Self::Standard,
        Self::EvCharging,
        Self::Accessible,
        Self::Motorcycle,
    ];

    /// The index into per-category arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The one name: for logs, error messages and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::EvCharging => "ev_charging",
            Self::Accessible => "accessible",
            Self::Motorcycle => "motorcycle",
        }
    }

    /// The category of a [`Self::name`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// What kind of place a car park is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CarParkKind {
    /// Multi-storey, or not known to be underground.
    Garage,
    SurfaceLot,
    OnStreet,
    SharedPrivate,
    /// Below ground.
    UndergroundGarage,
}

impl CarParkKind {
    /// Every kind.
    pub const ALL: [CarParkKind; 5] = [
        Self::Garage,
        Self::SurfaceLot,
        Self::OnStreet,
        Self::SharedPrivate,
        Self::UndergroundGarage,
    ];

    /// The one name: for logs and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Self::Garage => "garage",
            Self::SurfaceLot => "surface_lot",
            Self::OnStreet => "on_street",
            Self::SharedPrivate => "shared_private",
            Self::UndergroundGarage => "underground_garage",
        }
    }

    /// The kind of a [`Self::name`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// How honest a car park's live numbers are right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CarParkStatus {
    /// Open, with numbers observed within its staleness window.
    Open,
    /// Outside opening hours or declared closed.
    Closed,
    /// The newest numbers were observed more than 3 report intervals ago.
    Stale,
    /// Never reported.
    NoData,
}

impl CarParkStatus {
    /// Every status.
    pub const ALL: [CarParkStatus; 4] = [Self::Open, Self::Closed, Self::Stale, Self::NoData];

    /// The one name: a bounded metric label, and what the CLI prints.
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Stale => "stale",
            Self::NoData => "no_data",
        }
    }

    /// The status of a [`Self::name`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Spaces per category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Capacity([u32; CATEGORY_COUNT]);

impl Capacity {
    /// Most spaces of one category in one car park.
    pub const MAX_PER_CATEGORY: u32 = 100_000;

    /// From (category, spaces) pairs; each category at most once, at least one space in all.
    /// Errors name the entry as `[i].category` or `[i].spaces`.
    pub fn new(entries: impl IntoIterator<Item = (SpaceCategory, i64)>) -> Result<Self, Error> {
        let mut spaces = [0u32; CATEGORY_COUNT];
        let mut seen = [false; CATEGORY_COUNT];
        for (i, (category, n)) in entries.into_iter().enumerate() {
            if std::mem::replace(&mut seen[category.index()], true) {
                return Err(Error::invalid(
                    format!("[{i}].category"),
                    format!("{} is listed twice", category.name()),
                ));
            }
            if !(0..=i64::from(Self::MAX_PER_CATEGORY)).contains(&n) {
                return Err(Error::invalid(
                    format!("[{i}].spaces"),
                    format!("{n} is not in [0, {}]", Self::MAX_PER_CATEGORY),
                ));
            }
            spaces[category.index()] = n as u32;
        }
        if spaces.iter().all(|&n| n == 0) {
            return Err(Error::invalid("", "a car park needs at least one space"));
        }
        Ok(Self(spaces))
    }

    /// Spaces of one category.
    pub fn of(&self, category: SpaceCategory) -> u32 {
        self.0[category.index()]
    }

    /// All spaces.
    pub fn total(&self) -> u32 {
        self.0.iter().sum()
    }

    /// Per-category array.
    pub fn as_array(&self) -> [u32; CATEGORY_COUNT] {
        self.0
    }
}

/// A registered car park: static data only (live counts are [`Live`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CarPark {
    pub id: CarParkId,
    pub region: RegionId,
    pub operator: OperatorId,
    pub name: String,
    pub address: String,
    pub location: LatLng,
    pub kind: CarParkKind,
    pub capacity: Capacity,
    pub time_zone: TimeZoneName,
    pub opening_hours: OpeningHours,
    pub closed: bool,
    pub tariff: Tariff,
    pub covered: bool,
    /// Maximum vehicle height; `None` means no limit.
    pub max_height_cm: Option<u32>,
    /// How often the operator reports; numbers observed more than three of these ago
    /// are STALE.
    pub report_interval: Duration,
    /// What it offers for reservation; `None`: it takes none. Boxed: most car parks
    /// take none, and a national city holds a million car parks.
    #[serde(default)]
    pub reservation_policy: Option<Box<ReservationPolicy>>,
    /// When its registration last changed: set by [`CarPark::replacing`], whatever a
    /// caller sends. Open data publishes it (ParkAPI's `static_data_updated_at`). A car
    /// park stored before citypark kept it reads as the Unix epoch until it changes.
    #[serde(default)]
    pub modified_at: Timestamp,
}

impl CarPark {
    /// Default expected report interval.
    pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(60);
    /// Report intervals after which the newest numbers are STALE.
    pub const STALE_AFTER_INTERVALS: u32 = 3;

    /// Checks the free-text fields that have no type of their own.
    pub fn validated(self) -> Result<Self, Error> {
        super::check_text("name", &self.name, 200, true)?;
        super::check_text("address", &self.address, 300, false)?;
        let secs = self.report_interval.as_secs();
        if !(10..=86_400).contains(&secs) {
            return Err(Error::invalid(
                "report_interval_seconds",
                format!("{secs} is not in [10, 86400]"),
            ));
        }
        if self.max_height_cm.is_some_and(|h| h > 2_000) {
            return Err(Error::invalid("max_height_cm", "must be at most 2000"));
        }
        if let Some(policy) = &self.reservation_policy {
            for c in SpaceCategory::ALL {
                if policy.quota(c) > self.capacity.of(c) {
                    return Err(Error::invalid(
                        "reservation_policy.quota",
                        format!(
                            "{} quota {} is above its capacity {}",
                            c.name(),
                            policy.quota(c),
                            self.capacity.of(c)
                        ),
                    ));
                }
            }
        }
        Ok(self)
    }

    /// Operators may change only their own car parks: the one ownership rule, checked
    /// by every write of a car park (upsert, delete, report) below.
    fn check_owner(&self, caller: &OperatorId) -> Result<(), Error> {
        if &self.operator == caller {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "car park {} belongs to another operator",
                self.id
            )))
        }
    }

    /// The state an upsert of `self` by `caller` at `now` leaves, given what exists: an
    /// operator changes only its own car parks, the region never changes, and live
    /// counts survive (cut to a smaller capacity). `modified_at` becomes `now` unless
    /// the upsert changes nothing, so a feed that sends the same registration again
    /// does not look updated to open data's consumers. Every store backend computes
    /// upserts with this.
    pub fn replacing(
        self,
        existing: Option<(&CarPark, &Live)>,
        caller: &OperatorId,
        now: Timestamp,
    ) -> Result<(CarPark, Live), Error> {
        self.check_owner(caller)?;
        let Some((old, live)) = existing else {
            let live = Live::new(self.capacity);
            return Ok((
                Self {
                    modified_at: now,
                    ..self
                },
                live,
            ));
        };
        old.check_owner(caller)?;
        if old.region != self.region {
            return Err(Self::region_taken(&self.id, &old.region, &self.region));
        }
        let mut live = live.clone();
        live.resize(self.capacity);
        let tariff = self.tariff.clone().replacing(&old.tariff);
        let unchanged = Self {
            tariff,
            modified_at: old.modified_at,
            ..self
        };
        if unchanged == *old {
            return Ok((unchanged, live));
        }
        Ok((
            Self {
                modified_at: now,
                ..unchanged
            },
            live,
        ))
    }

    /// Why a car park cannot be registered in `wanted`: its id is held in `held`. Ids
    /// are unique across regions, and a car park never changes region in place.
    pub fn region_taken(id: &CarParkId, held: &RegionId, wanted: &RegionId) -> Error {
        Error::FailedPrecondition(format!(
            "car park {id} is in region {held}; delete it to move it to {wanted}"
        ))
    }

    /// How old (since observed) the newest numbers may be before they are STALE.
    pub fn staleness_window(&self) -> Duration {
        self.report_interval * Self::STALE_AFTER_INTERVALS
    }

    /// Whether it is open at `at` (declared state and opening hours).
    pub fn is_open_at(&self, at: Timestamp) -> bool {
        !self.closed && self.opening_hours.is_open(at, self.time_zone.zone())
    }
}

/// A car park with its live counts: the aggregate that the registry and ingest change,
/// one version for both. Every rule of a write to it is here.
#[derive(Debug, Clone, PartialEq)]
pub struct CarParkState {
    pub car_park: Arc<CarPark>,
    pub live: Live,
}

impl CarParkState {
    /// A car park nobody has reported on.
    pub fn new(car_park: CarPark) -> Self {
        let live = Live::new(car_park.capacity);
        Self {
            car_park: Arc::new(car_park),
            live,
        }
    }

    /// The state an upsert of `car_park` by `caller` at `now` leaves over `existing` (see
    /// [`CarPark::replacing`]).
    pub fn upserted(
        existing: Option<&CarParkState>,
        car_park: CarPark,
        caller: &OperatorId,
        now: Timestamp,
    ) -> Result<Self, Error> {
        let (car_park, live) =
            car_park.replacing(existing.map(|s| (&*s.car_park, &s.live)), caller, now)?;
        Ok(Self {
            car_park: Arc::new(car_park),
            live,
        })
    }

    /// Whether `caller` may delete it.
    pub fn check_delete(&self, caller: &OperatorId) -> Result<(), Error> {
        self.car_park.check_owner(caller)
    }

    /// Applies reports in order at `now`, each by its caller and with its own result,
    /// and returns the states the car park passed through: one after each report that
    /// changed its counts, oldest first (empty if none did). A rejected report changes
    /// nothing.
    pub fn apply_reports<'a>(
        &self,
        reports: impl IntoIterator<Item = (&'a Report, &'a OperatorId)>,
        now: Timestamp,
    ) -> (Vec<Result<Applied, Error>>, Vec<CarParkState>) {
        let mut live = self.live.clone();
        let mut states = Vec::new();
        let results = reports
            .into_iter()
            .map(|(report, caller)| {
                self.car_park.check_owner(caller)?;
                let outcome = live.apply(&self.car_park, report, now)?;
                if outcome != ReportOutcome::Duplicate {
                    states.push(CarParkState {
                        car_park: self.car_park.clone(),
                        live: live.clone(),
                    });
                }
                Ok(Applied {
                    outcome,
                    availability: live.availability(&self.car_park, now),
                    gate: None,
                })
            })
            .collect();
        (results, states)
    }
}

/// The result of applying one report.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub outcome: ReportOutcome,
    pub availability: Availability,
    /// What the report's plate did at the gate (a parking session), when it had one.
    pub gate: Option<super::GateNote>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_and_matches_the_stored_json() {
        for c in SpaceCategory::ALL {
            assert_eq!(SpaceCategory::parse(c.name()), Some(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.name()));
        }
        for k in CarParkKind::ALL {
            assert_eq!(CarParkKind::parse(k.name()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
        }
        for s in CarParkStatus::ALL {
            assert_eq!(CarParkStatus::parse(s.name()), Some(s));
        }
        assert_eq!(SpaceCategory::parse("ev-charging"), None, "one spelling");
        assert_eq!(CarParkKind::parse(""), None);
        assert_eq!(
            CarParkStatus::ALL.map(CarParkStatus::name),
            ["open", "closed", "stale", "no_data"]
        );
    }

    #[test]
    fn a_replace_stamps_its_time_only_when_it_changes_something() {
        let (t0, t1, t2) = (
            Timestamp::from_second(1_000).unwrap(),
            Timestamp::from_second(2_000).unwrap(),
            Timestamp::from_second(3_000).unwrap(),
        );
        let sent = super::super::reservation::tests::car_park(5);
        let owner = sent.operator.clone();
        let (first, live) = sent.clone().replacing(None, &owner, t0).unwrap();
        assert_eq!(first.modified_at, t0);
        // What a caller sends as modified_at is not what is kept.
        let resent = CarPark {
            modified_at: t2,
            ..sent.clone()
        };
        let (same, _) = resent.replacing(Some((&first, &live)), &owner, t1).unwrap();
        assert_eq!(
            same, first,
            "the same registration: the time it last changed"
        );
        let renamed = CarPark {
            name: "Renamed".into(),
            ..sent
        };
        let (changed, _) = renamed
            .replacing(Some((&first, &live)), &owner, t2)
            .unwrap();
        assert_eq!(
            (changed.name.as_str(), changed.modified_at),
            ("Renamed", t2)
        );
    }

    #[test]
    fn capacity_rules() {
        use SpaceCategory::*;
        let c = Capacity::new([(Standard, 100), (EvCharging, 10)]).unwrap();
        assert_eq!(
            (
                c.of(Standard),
                c.of(EvCharging),
                c.of(Accessible),
                c.total()
            ),
            (100, 10, 0, 110)
        );
        let twice = Capacity::new([(Standard, 1), (Standard, 2)]).unwrap_err();
        assert!(
            matches!(twice, Error::InvalidArgument { ref field, .. } if field == "[1].category")
        );
        assert!(Capacity::new([(Standard, -1)]).is_err());
        assert!(Capacity::new([(Standard, 100_001)]).is_err());
        assert!(Capacity::new([(Standard, 0)]).is_err());
        assert!(Capacity::new([]).is_err());
    }
}
