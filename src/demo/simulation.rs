//! The occupancy the demo's operators report: a day-shaped model of how full each kind
//! of car park is, and [`SimPark`], one car park's simulated truth and the reports
//! that describe its changes, including the plates its gates read ([`Plates`]).
//!
//! No I/O: the operator client in [`super::operator`] decides when to step a car park
//! and sends what the step returns.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::pb;
use crate::pb::occupancy_report::Body;
use crate::pb::{CarParkKind, SpaceCategory};
use crate::rng::Rng;

/// A smooth step from 0 to 1 around x = 0, over about two hours.
fn rise(x: f64) -> f64 {
    1.0 / (1.0 + (-1.6 * x).exp())
}

/// 1 between the two hours, 0 well outside, with soft edges (arrivals spread out).
fn plateau(hour: f64, from: f64, to: f64) -> f64 {
    rise(hour - from) * (1.0 - rise(hour - to))
}

/// A peak at `centre`, measured around the clock so late-evening peaks wrap past midnight.
fn bump(hour: f64, centre: f64, width: f64) -> f64 {
    let d = (hour - centre + 12.0).rem_euclid(24.0) - 12.0;
    (-0.5 * (d / width).powi(2)).exp()
}

/// Day-shaped occupancy: the fraction of spaces occupied (0..=1) for a kind of car park
/// at a local time of day (hours, 0.0..24.0) on a weekday or at a weekend.
pub fn occupancy_fraction(kind: CarParkKind, local_hour: f64, weekend: bool) -> f64 {
    let h = local_hour.rem_euclid(24.0);
    let f = match (kind, weekend) {
        // Office and mall garages: full through working hours, then a smaller evening
        // peak from restaurants and shopping.
        (
            CarParkKind::Garage | CarParkKind::UndergroundGarage | CarParkKind::Unspecified,
            false,
        ) => 0.12 + 0.72 * plateau(h, 8.5, 18.0) + 0.12 * bump(h, 20.0, 1.5),
        (CarParkKind::Garage | CarParkKind::UndergroundGarage | CarParkKind::Unspecified, true) => {
            0.12 + 0.58 * bump(h, 15.0, 3.5)
        }
        // Commuters on weekdays; beaches and parks at weekends.
        (CarParkKind::SurfaceLot, false) => {
            0.08 + 0.62 * plateau(h, 8.0, 17.5) + 0.10 * bump(h, 19.5, 1.5)
        }
        (CarParkKind::SurfaceLot, true) => 0.10 + 0.70 * bump(h, 14.0, 3.5),
        // Errands and deliveries peak around lunch; residents keep some bays overnight.
        (CarParkKind::OnStreet, false) => 0.22 + 0.68 * bump(h, 12.5, 3.5),
        (CarParkKind::OnStreet, true) => 0.25 + 0.60 * bump(h, 14.0, 4.0),
        // Residential spaces: full at night, emptied by commuters during the day.
        (CarParkKind::SharedPrivate, false) => 0.92 - 0.60 * plateau(h, 8.0, 18.0),
        (CarParkKind::SharedPrivate, true) => 0.88 - 0.35 * plateau(h, 10.0, 17.0),
    };
    f.clamp(0.0, 1.0)
}

/// Local hour of day and weekend flag in Asia/Shanghai. China has not observed DST
/// since 1991, so a fixed UTC+8 offset is exact and needs no time-zone database.
pub(super) fn shanghai_clock(now: SystemTime) -> (f64, bool) {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() + 8 * 3_600;
    let days = secs / 86_400;
    let hour = (secs % 86_400) as f64 / 3_600.0;
    // 1970-01-01 was a Thursday: with Monday as 0, day 0 is 3.
    let weekday = (days + 3) % 7;
    (hour, weekday >= 5)
}

/// A full round of reports on every car park is followed by a snapshot on every tenth,
/// so a count the server clamped or missed is corrected within minutes.
const SNAPSHOT_EVERY: u64 = 10;

/// The share of cars entering a garage or surface lot whose plate the gates read and
/// report. Each is a parking session the server keeps, so the share is small: the
/// city sees about 10,000 entries a round (500 a second at the default 20 s
/// interval), most at garages and lots, and 0.5% of them is about 2 sessions a
/// second, 170,000 a day.
const PLATED_SHARE: f64 = 0.005;

/// How long a demo driver's car stays away after it left a car park, in seconds: its
/// driver's day goes on elsewhere.
const AWAY_SECONDS: (i64, i64) = (30 * 60, 3 * 3600);

/// Letters of Chinese plates: I and O are not used (they read as 1 and 0).
const PLATE_LETTERS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";

/// A made-up Qingdao plate, 鲁B and then five letters or digits (mostly digits) for a
/// blue plate, or D (electric) or F (hybrid) and five digits for a new-energy green one.
pub(super) fn demo_plate(rng: &mut Rng, color: pb::PlateColor) -> String {
    let mut plate = String::from("鲁B");
    if color == pb::PlateColor::Green {
        plate.push(if rng.chance(0.8) { 'D' } else { 'F' });
        for _ in 0..5 {
            plate.push(char::from(b'0' + rng.below(10) as u8));
        }
    } else {
        for _ in 0..5 {
            plate.push(if rng.chance(0.2) {
                char::from(*rng.pick(PLATE_LETTERS))
            } else {
                char::from(b'0' + rng.below(10) as u8)
            });
        }
    }
    plate
}

/// The colour of a car's plate by the space it takes: electric cars charge, most
/// others are small petrol cars (blue), some new-energy ones (green).
fn plate_color(category: SpaceCategory, rng: &mut Rng) -> pb::PlateColor {
    if category == SpaceCategory::EvCharging || rng.chance(0.15) {
        pb::PlateColor::Green
    } else {
        pb::PlateColor::Blue
    }
}

/// Where the plates of entering cars come from: the demo drivers' linked plates that
/// one operator's car parks see (each in at most one of them at a time, and away for a
/// while after it left), or else a made-up plate.
#[derive(Debug, Clone, Default)]
pub(super) struct Plates {
    /// A linked plate, its colour, and from when (Unix seconds) it may enter again;
    /// `None` while it is parked.
    linked: Vec<(String, pb::PlateColor, Option<i64>)>,
}

impl Plates {
    pub(super) fn new(linked: Vec<(String, pb::PlateColor)>) -> Self {
        Self {
            linked: linked
                .into_iter()
                .map(|(plate, color)| (plate, color, Some(i64::MIN)))
                .collect(),
        }
    }

    /// A plate for a car entering a space of `category` at `now`: half the time a
    /// linked plate that may enter, if any, else a made-up one.
    fn entering(
        &mut self,
        category: SpaceCategory,
        now: i64,
        rng: &mut Rng,
    ) -> (String, pb::PlateColor) {
        if rng.chance(0.5) {
            let free = self
                .linked
                .iter()
                .filter(|(_, _, back)| back.is_some_and(|b| b <= now))
                .count();
            if free > 0 {
                let nth = rng.below(free);
                let (plate, color, back) = self
                    .linked
                    .iter_mut()
                    .filter(|(_, _, back)| back.is_some_and(|b| b <= now))
                    .nth(nth)
                    .expect("nth of the free ones");
                *back = None;
                return (plate.clone(), *color);
            }
        }
        let color = plate_color(category, rng);
        (demo_plate(rng, color), color)
    }

    /// `plate` left at `now`: a linked one may enter again after a while.
    fn left(&mut self, plate: &str, now: i64, rng: &mut Rng) {
        if let Some((_, _, back)) = self.linked.iter_mut().find(|(p, _, _)| p == plate) {
            *back = Some(now + rng.between(AWAY_SECONDS.0, AWAY_SECONDS.1));
        }
    }

    /// `plate` is parked (found so at start-up): a linked one stays until it leaves.
    pub(super) fn parked(&mut self, plate: &str) {
        if let Some((_, _, back)) = self.linked.iter_mut().find(|(p, _, _)| p == plate) {
            *back = None;
        }
    }
}

/// A parked car whose plate the gates read: it leaves through them with that plate,
/// which closes its parking session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PlatedCar {
    pub(super) plate: String,
    pub(super) color: pb::PlateColor,
    /// Its category's index in the car park's categories.
    category: usize,
}

#[derive(Debug, Clone, Copy)]
struct SimCategory {
    category: SpaceCategory,
    capacity: i32,
    occupied: i32,
}

impl SimCategory {
    /// Chargers and blue-badge spaces fill less than ordinary ones.
    fn demand(&self) -> f64 {
        match self.category {
            SpaceCategory::EvCharging => 0.75,
            SpaceCategory::Accessible => 0.5,
            SpaceCategory::Motorcycle => 0.8,
            _ => 1.0,
        }
    }
}

/// The simulated truth of one car park, which its operator reports on.
#[derive(Debug, Clone)]
pub(super) struct SimPark {
    pub(super) id: String,
    pub(super) kind: CarParkKind,
    categories: Vec<SimCategory>,
    /// On-street zones only: one flag per standard bay, true when occupied, so every
    /// bay report describes a real change of a real bay.
    bays: Vec<bool>,
    /// How much busier than its kind's day shape this car park runs.
    bias: f64,
    snapshot_phase: u64,
    rounds: u64,
    pub(super) next_sequence: u64,
    /// The plated cars parked here: each leaves with its plate in a later round, so
    /// every session an entry opens, an exit closes.
    pub(super) parked: Vec<PlatedCar>,
}

impl SimPark {
    pub(super) fn new(
        car_park: &pb::CarPark,
        rng: &mut Rng,
        shape_at: impl Fn(CarParkKind) -> f64,
    ) -> Self {
        let kind = car_park.kind();
        let mut park = Self {
            id: car_park.id.clone(),
            kind,
            categories: car_park
                .capacity
                .iter()
                .map(|c| SimCategory {
                    category: c.category(),
                    capacity: c.spaces,
                    occupied: 0,
                })
                .collect(),
            bays: Vec::new(),
            bias: 0.75 + 0.4 * rng.unit(),
            snapshot_phase: rng.below(SNAPSHOT_EVERY as usize) as u64,
            rounds: 0,
            next_sequence: 1,
            parked: Vec::new(),
        };
        let shape = shape_at(kind);
        for i in 0..park.categories.len() {
            park.categories[i].occupied = park.target(i, shape, rng);
        }
        if kind == CarParkKind::OnStreet
            && let Some(i) = park.standard_index()
        {
            let cat = park.categories[i];
            let fraction = f64::from(cat.occupied) / f64::from(cat.capacity.max(1));
            park.bays = (0..cat.capacity).map(|_| rng.chance(fraction)).collect();
            park.categories[i].occupied = park.bays_occupied();
        }
        park
    }

    fn standard_index(&self) -> Option<usize> {
        self.categories
            .iter()
            .position(|c| c.category == SpaceCategory::Standard)
    }

    /// Whether the gates read the plates of category `i`'s cars: at garages' and
    /// lots' barriers, for cars (not motorcycles); kerbside zones have bay sensors.
    fn reads_plates(&self, i: usize) -> bool {
        matches!(self.kind, CarParkKind::Garage | CarParkKind::SurfaceLot)
            && self.categories[i].category != SpaceCategory::Motorcycle
    }

    /// Takes over a car parked with `plate` (a session an earlier run of the demo left
    /// open), in the standard spaces if the gates read them, else the first that are
    /// read; whether it could.
    pub(super) fn adopt(&mut self, plate: String, color: pb::PlateColor) -> bool {
        let Some(category) = self
            .standard_index()
            .filter(|i| self.reads_plates(*i))
            .or_else(|| (0..self.categories.len()).find(|i| self.reads_plates(*i)))
        else {
            return false;
        };
        if self.parked.iter().any(|c| c.plate == plate) {
            return true;
        }
        self.parked.push(PlatedCar {
            plate,
            color,
            category,
        });
        true
    }

    /// Which of `exits` cars leaving category `i` (of `occupied` parked before) are
    /// plated, drawn without replacement, so each parked car is as likely to leave as
    /// any other; they leave `parked`.
    fn plated_exits(
        &mut self,
        i: usize,
        exits: i32,
        occupied: i32,
        rng: &mut Rng,
    ) -> Vec<PlatedCar> {
        let mut out = Vec::new();
        let mut remaining = occupied;
        for _ in 0..exits {
            let plated = self.parked.iter().filter(|c| c.category == i).count();
            // More plated cars than parked ones (taken over from an earlier run): the
            // plated go first.
            if plated > 0 && rng.unit() * f64::from(remaining.max(1)) < plated as f64 {
                let nth = rng.below(plated);
                let at = self
                    .parked
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.category == i)
                    .nth(nth)
                    .map(|(at, _)| at)
                    .expect("nth of the plated ones");
                out.push(self.parked.swap_remove(at));
            }
            remaining -= 1;
        }
        out
    }

    fn bays_occupied(&self) -> i32 {
        self.bays.iter().filter(|b| **b).count() as i32
    }

    fn target(&self, i: usize, shape: f64, rng: &mut Rng) -> i32 {
        let cat = self.categories[i];
        let fraction = (shape * self.bias * cat.demand() + 0.03 * rng.normal()).clamp(0.0, 1.0);
        (fraction * f64::from(cat.capacity)).round() as i32
    }

    /// The next sequence number, taken.
    pub(super) fn sequence(&mut self) -> u64 {
        let s = self.next_sequence;
        self.next_sequence += 1;
        s
    }

    /// Entries and exits that move a category part of the way towards its target, plus
    /// turnover: cars leave and arrive even when the level holds. Entries never exceed
    /// the free spaces and exits never exceed the parked cars, so the server applies
    /// them in any order without clamping.
    fn move_category(&mut self, i: usize, target: i32, rng: &mut Rng) -> (i32, i32) {
        let cat = &mut self.categories[i];
        let gap = f64::from(target - cat.occupied);
        let step = (gap * 0.35 + rng.normal()).round() as i32;
        let turnover = rng.below((f64::from(cat.capacity) * 0.02).ceil() as usize + 1) as i32;
        let entries = (step.max(0) + turnover).min(cat.capacity - cat.occupied);
        let exits = ((-step).max(0) + turnover).min(cat.occupied);
        cat.occupied += entries - exits;
        (entries, exits)
    }

    /// Flips a few bays towards the target; returns (bay index, now occupied).
    fn flip_bays(&mut self, target: i32, rng: &mut Rng) -> Vec<(usize, bool)> {
        let wanted = (target - self.bays_occupied()).clamp(-3, 3);
        // One car leaving and another arriving keeps kerbside sensors busy even when
        // the level holds.
        let churn = usize::from(rng.chance(0.6));
        let departures = (-wanted).max(0) as usize + churn;
        let arrivals = wanted.max(0) as usize + churn;
        let mut flips = Vec::with_capacity(departures + arrivals);
        for (count, to) in [(departures, false), (arrivals, true)] {
            for _ in 0..count {
                let candidates = self.bays.iter().filter(|b| **b != to).count();
                if candidates == 0 {
                    break;
                }
                let nth = rng.below(candidates);
                if let Some(bay) = self
                    .bays
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b != to)
                    .nth(nth)
                    .map(|(i, _)| i)
                {
                    self.bays[bay] = to;
                    flips.push((bay, to));
                }
            }
        }
        flips
    }

    fn snapshot(&self) -> Body {
        Body::Snapshot(pb::SnapshotReport {
            free: self
                .categories
                .iter()
                .map(|c| pb::CategoryCount {
                    category: c.category as i32,
                    count: c.capacity - c.occupied,
                })
                .collect(),
        })
    }

    /// A car with a reservation at the gate: one entry (or exit) of `category` with
    /// its plate, counted in the simulated truth like any other car. `None` if the
    /// car park has no space of it free (or, for an exit, none taken).
    pub(super) fn gate(
        &mut self,
        category: i32,
        plate: &str,
        entry: bool,
        observed_at: prost_types::Timestamp,
    ) -> Option<pb::OccupancyReport> {
        let cat = self
            .categories
            .iter_mut()
            .find(|c| c.category as i32 == category)?;
        if entry && cat.occupied < cat.capacity {
            cat.occupied += 1;
        } else if !entry && cat.occupied > 0 {
            cat.occupied -= 1;
        } else {
            return None;
        }
        let one = vec![pb::CategoryCount { category, count: 1 }];
        let (entries, exits) = if entry { (one, vec![]) } else { (vec![], one) };
        Some(pb::OccupancyReport {
            car_park_id: self.id.clone(),
            sequence: self.sequence(),
            observed_at: Some(observed_at),
            body: Some(Body::Delta(pb::DeltaReport {
                entries,
                exits,
                plate: plate.to_owned(),
                ..Default::default()
            })),
            restart_sequence: false,
        })
    }

    /// This round's reports: the first and every tenth are snapshots, on-street zones
    /// send their bay flips, everything else entries and exits; a plated car's entry
    /// or exit is a report of its own, with its plate (from `plates`), before them.
    pub(super) fn step(
        &mut self,
        shape: f64,
        observed_at: prost_types::Timestamp,
        rng: &mut Rng,
        plates: &mut Plates,
    ) -> Vec<pb::OccupancyReport> {
        let snapshot_round =
            self.next_sequence == 1 || self.rounds % SNAPSHOT_EVERY == self.snapshot_phase;
        // The first report of a run may number below what the server applied before a
        // restart, and come back a duplicate (the sequence then catches up): a plate
        // on it would be a session opened or closed only here.
        let read_plates = self.next_sequence > 1;
        self.rounds += 1;
        let sensors = if self.bays.is_empty() {
            None
        } else {
            self.standard_index()
        };
        let mut bodies = Vec::new();
        let mut plated_out = Vec::new();
        let mut plated_in = Vec::new();
        let mut entries = Vec::new();
        let mut exits = Vec::new();
        for i in 0..self.categories.len() {
            let target = self.target(i, shape, rng);
            if Some(i) == sensors {
                for (bay, occupied) in self.flip_bays(target, rng) {
                    bodies.push(Body::Bay(pb::BayStatusReport {
                        bay_id: bay_id(bay),
                        category: SpaceCategory::Standard as i32,
                        occupied,
                    }));
                }
                self.categories[i].occupied = self.bays_occupied();
                continue;
            }
            let before = self.categories[i].occupied;
            let (mut entered, mut left) = self.move_category(i, target, rng);
            if read_plates && self.reads_plates(i) {
                for car in self.plated_exits(i, left, before, rng) {
                    plates.left(&car.plate, observed_at.seconds, rng);
                    plated_out.push(car);
                    left -= 1;
                }
                let category = self.categories[i].category;
                for _ in 0..entered {
                    if rng.chance(PLATED_SHARE) {
                        let (plate, color) = plates.entering(category, observed_at.seconds, rng);
                        let car = PlatedCar {
                            plate,
                            color,
                            category: i,
                        };
                        self.parked.push(car.clone());
                        plated_in.push(car);
                    }
                }
                entered -= plated_in.iter().filter(|c| c.category == i).count() as i32;
            }
            let category = self.categories[i].category as i32;
            if entered > 0 {
                entries.push(pb::CategoryCount {
                    category,
                    count: entered,
                });
            }
            if left > 0 {
                exits.push(pb::CategoryCount {
                    category,
                    count: left,
                });
            }
        }
        if !entries.is_empty() || !exits.is_empty() {
            bodies.push(Body::Delta(pb::DeltaReport {
                entries,
                exits,
                ..Default::default()
            }));
        }
        // Exits before entries, so a car that leaves and comes back in one round does
        // so in that order.
        let mut reads: Vec<Body> = plated_out
            .iter()
            .map(|car| self.plate_read(car, false, rng))
            .collect();
        reads.extend(plated_in.iter().map(|car| self.plate_read(car, true, rng)));
        if snapshot_round || (bodies.is_empty() && reads.is_empty()) {
            // A snapshot after the moves carries them all, and keeps an idle car park
            // from going stale; the plate reads still go first, as single cars, so their
            // sessions open and close.
            bodies = vec![self.snapshot()];
        }
        reads
            .into_iter()
            .chain(bodies)
            .map(|body| pb::OccupancyReport {
                car_park_id: self.id.clone(),
                sequence: self.sequence(),
                observed_at: Some(observed_at),
                body: Some(body),
                restart_sequence: false,
            })
            .collect()
    }

    /// One car through a gate with its plate, at one of two lanes.
    fn plate_read(&self, car: &PlatedCar, entry: bool, rng: &mut Rng) -> Body {
        let one = vec![pb::CategoryCount {
            category: self.categories[car.category].category as i32,
            count: 1,
        }];
        let (entries, exits, lane) = if entry {
            (one, vec![], "in")
        } else {
            (vec![], one, "out")
        };
        Body::Delta(pb::DeltaReport {
            entries,
            exits,
            plate: car.plate.clone(),
            plate_color: car.color as i32,
            lane: format!("{lane}-{}", 1 + rng.below(2)),
        })
    }
}

/// Bay ids `b001`, `b002`, ... as printed on kerbside bay markings.
fn bay_id(index: usize) -> String {
    format!("b{:03}", index + 1)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::demo::city::generate_city;

    #[test]
    fn occupancy_fraction_is_a_fraction() {
        for kind in [
            CarParkKind::Unspecified,
            CarParkKind::Garage,
            CarParkKind::SurfaceLot,
            CarParkKind::OnStreet,
            CarParkKind::SharedPrivate,
        ] {
            for weekend in [false, true] {
                for quarter in -4..=100 {
                    let f = occupancy_fraction(kind, f64::from(quarter) / 4.0, weekend);
                    assert!(
                        (0.0..=1.0).contains(&f),
                        "{kind:?} {quarter} {weekend}: {f}"
                    );
                }
            }
        }
        assert!(
            occupancy_fraction(CarParkKind::Garage, 11.0, false)
                > occupancy_fraction(CarParkKind::Garage, 3.0, false) + 0.4
        );
        assert!(
            occupancy_fraction(CarParkKind::SharedPrivate, 2.0, false)
                > occupancy_fraction(CarParkKind::SharedPrivate, 12.0, false) + 0.4
        );
    }

    #[test]
    fn shanghai_clock_is_utc_plus_eight() {
        // 2024-01-06T00:00:00Z is a Saturday, 08:00 in Shanghai.
        let saturday = UNIX_EPOCH + Duration::from_secs(1_704_499_200);
        assert_eq!(shanghai_clock(saturday), (8.0, true));
        // 2024-01-07T16:30:00Z is Monday 00:30 in Shanghai.
        let monday = saturday + Duration::from_secs(40 * 3_600 + 1_800);
        assert_eq!(shanghai_clock(monday), (0.5, false));
    }

    fn check_counts(park: &SimPark) {
        for c in &park.categories {
            assert!((0..=c.capacity).contains(&c.occupied), "{}: {c:?}", park.id);
        }
    }

    #[test]
    fn simulated_reports_are_sequenced_and_consistent() {
        let city = generate_city(9);
        let mut rng = Rng::new(1);
        let timestamp = prost_types::Timestamp::from(SystemTime::now());
        let linked: Vec<_> = (0..4)
            .map(|_| {
                (
                    demo_plate(&mut rng, pb::PlateColor::Blue),
                    pb::PlateColor::Blue,
                )
            })
            .collect();
        let mut plates = Plates::new(linked);
        let mut reads = 0;
        for car_park in city.iter().take(300) {
            let mut park = SimPark::new(car_park, &mut rng, |kind| {
                occupancy_fraction(kind, 12.0, false)
            });
            let mut expected = 1;
            let mut free: HashMap<i32, i32> = HashMap::new();
            // The plates the server would hold sessions open for here.
            let mut open: Vec<String> = Vec::new();
            for round in 0..30 {
                let shape = occupancy_fraction(park.kind, f64::from(round) * 0.8, false);
                let reports = park.step(shape, timestamp, &mut rng, &mut plates);
                assert!(!reports.is_empty());
                if round == 0 {
                    assert!(matches!(reports[0].body, Some(Body::Snapshot(_))));
                    assert_eq!(reports.len(), 1, "no plate on a run's first report");
                }
                for report in reports {
                    assert_eq!(report.sequence, expected);
                    expected += 1;
                    // Replays the reports as a server would, checking none needs clamping.
                    match report.body.expect("body") {
                        Body::Snapshot(s) => {
                            free = s.free.iter().map(|c| (c.category, c.count)).collect();
                        }
                        Body::Delta(d) => {
                            for e in &d.entries {
                                *free.get_mut(&e.category).expect("known") -= e.count;
                            }
                            for x in &d.exits {
                                *free.get_mut(&x.category).expect("known") += x.count;
                            }
                            if !d.plate.is_empty() {
                                reads += 1;
                                let cars: i32 =
                                    d.entries.iter().chain(&d.exits).map(|c| c.count).sum();
                                assert_eq!(cars, 1, "a plate is read for one car");
                                assert!(d.lane.starts_with(if d.entries.is_empty() {
                                    "out-"
                                } else {
                                    "in-"
                                }));
                                assert!(
                                    citypark_plate_ok(&d.plate),
                                    "a Qingdao plate: {}",
                                    d.plate
                                );
                                if d.entries.is_empty() {
                                    let at = open.iter().position(|p| *p == d.plate);
                                    open.swap_remove(at.expect("an exit closes an entry"));
                                } else {
                                    assert!(!open.contains(&d.plate), "one car per plate");
                                    open.push(d.plate.clone());
                                }
                            }
                        }
                        Body::Bay(b) => {
                            assert!(b.bay_id.starts_with('b') && b.bay_id.len() == 4);
                            *free.get_mut(&b.category).expect("known") +=
                                if b.occupied { -1 } else { 1 };
                        }
                    }
                }
                check_counts(&park);
                for c in &park.categories {
                    assert_eq!(
                        free[&(c.category as i32)],
                        c.capacity - c.occupied,
                        "{}",
                        park.id
                    );
                }
                // Nothing leaks: every session open on the server is a car the
                // simulation will drive out, and no category has more plated cars
                // than cars.
                let mut parked: Vec<String> = park.parked.iter().map(|c| c.plate.clone()).collect();
                parked.sort();
                open.sort();
                assert_eq!(parked, open, "{}", park.id);
                for (i, c) in park.categories.iter().enumerate() {
                    let plated = park.parked.iter().filter(|p| p.category == i).count();
                    assert!(plated as i32 <= c.occupied, "{}: {c:?}", park.id);
                }
            }
        }
        assert!(reads > 100, "{reads} plates read");
    }

    fn citypark_plate_ok(plate: &str) -> bool {
        crate::domain::Plate::parse(plate).is_ok_and(|p| p.as_str() == plate)
            && plate.starts_with("鲁B")
            && (7..=8).contains(&plate.chars().count())
    }

    #[test]
    fn plates_look_real_and_linked_ones_are_one_car_each() {
        let mut rng = Rng::new(7);
        for _ in 0..1_000 {
            let blue = demo_plate(&mut rng, pb::PlateColor::Blue);
            assert!(
                citypark_plate_ok(&blue) && blue.chars().count() == 7,
                "{blue}"
            );
            assert!(!blue.contains('I') && !blue.contains('O'), "{blue}");
            let green = demo_plate(&mut rng, pb::PlateColor::Green);
            assert!(
                citypark_plate_ok(&green) && green.chars().count() == 8,
                "{green}"
            );
        }
        let mut plates = Plates::new(vec![("鲁B12345".into(), pb::PlateColor::Blue)]);
        let mut linked_in = 0;
        for _ in 0..100 {
            let (plate, _) = plates.entering(SpaceCategory::Standard, 0, &mut rng);
            linked_in += usize::from(plate == "鲁B12345");
        }
        assert_eq!(linked_in, 1, "parked until it leaves");
        plates.left("鲁B12345", 0, &mut rng);
        let back = plates.linked[0].2.expect("away");
        assert!((AWAY_SECONDS.0..=AWAY_SECONDS.1).contains(&back));
        let (plate, color) = (0..100)
            .map(|_| plates.entering(SpaceCategory::EvCharging, back - 1, &mut rng))
            .find(|(p, _)| p == "鲁B12345")
            .map_or((String::new(), pb::PlateColor::Green), |x| x);
        assert!(plate.is_empty(), "not back before its time");
        assert_eq!(
            color,
            pb::PlateColor::Green,
            "electric cars have green plates"
        );
        assert!(
            (0..100)
                .any(|_| plates.entering(SpaceCategory::Standard, back, &mut rng).0 == "鲁B12345"),
            "back in time"
        );
    }

    #[test]
    fn cars_taken_over_from_an_earlier_run_leave_in_time() {
        let city = generate_city(9);
        let garage = city
            .iter()
            .find(|c| c.kind() == CarParkKind::Garage)
            .expect("a garage");
        let mut rng = Rng::new(3);
        // Full at closing time: nearly every car leaves within the hour.
        let mut park = SimPark::new(garage, &mut rng, |_| 0.9);
        let mut plates = Plates::default();
        assert!(park.adopt("鲁B11111".into(), pb::PlateColor::Blue));
        assert!(park.adopt("鲁B11111".into(), pb::PlateColor::Blue), "once");
        assert_eq!(park.parked.len(), 1);
        let timestamp = prost_types::Timestamp::from(SystemTime::now());
        let mut left = false;
        for _ in 0..100 {
            for r in park.step(0.0, timestamp, &mut rng, &mut plates) {
                if let Some(Body::Delta(d)) = r.body
                    && d.plate == "鲁B11111"
                {
                    assert!(d.entries.is_empty(), "it only leaves");
                    left = true;
                }
            }
            if left {
                break;
            }
        }
        assert!(left, "the taken-over car left");
        assert!(park.parked.iter().all(|c| c.plate != "鲁B11111"));
        let street = city
            .iter()
            .find(|c| c.kind() == CarParkKind::OnStreet && c.capacity.len() == 1)
            .expect("a kerbside zone of standard bays only");
        let mut zone = SimPark::new(street, &mut rng, |_| 0.5);
        assert!(
            !zone.adopt("鲁B22222".into(), pb::PlateColor::Blue),
            "bay sensors read no plates"
        );
    }
}
