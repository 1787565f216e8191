//! The city itself: about 2,350 car parks dressed as `pb::CarPark`s, deterministic
//! per seed, and the operator companies that own them.
//!
//! Where a car park stands comes from [`super::geo`]; this module decides what it is
//! (garage, lot or kerbside zone), how big, who runs it, its hours and its tariff.

use crate::pb;
use crate::pb::{CarParkKind, SpaceCategory};
use crate::rng::Rng;

use super::geo::{DISTRICTS, District, sample_location};

/// The region every demo car park belongs to.
pub const DEMO_REGION: &str = "qingdao";
/// The IANA zone of [`DEMO_REGION`]; opening hours are in this zone.
pub const DEMO_TIME_ZONE: &str = "Asia/Shanghai";

/// One simulated operator company and its (clearly demo-only) API key.
#[derive(Debug, Clone)]
pub struct DemoOperator {
    /// The operator id car parks are registered under.
    pub id: String,
    /// Sent as `authorization: Bearer <api_key>`.
    pub api_key: String,
}

/// How many car parks the city has (Qingdao's platform joined 2,350+).
const CITY_CAR_PARKS: usize = 2_350;
/// How many spaces the city has in all (Qingdao's platform: 580,000+).
const CITY_SPACES: i64 = 580_000;

const GARAGE_SPACES: (i32, i32) = (150, 2_000);
const LOT_SPACES: (i32, i32) = (30, 400);
const STREET_BAYS: (i32, i32) = (8, 60);

/// The operator that runs the kerbside zones and a share of everything else, as
/// city-owned parking companies do.
const CITY_OPERATOR: &str = "qd-parking-group";

const OPERATOR_IDS: [&str; 7] = [
    CITY_OPERATOR,
    "shinan-city-parking",
    "shibei-harbour-parking",
    "licang-mall-parking",
    "laoshan-garages",
    "chengyang-parking",
    "west-coast-parking",
];

/// The fixed demo operators, with keys `demo-key-<id>`.
pub fn demo_operators() -> Vec<DemoOperator> {
    OPERATOR_IDS
        .iter()
        .map(|id| DemoOperator {
            id: (*id).to_owned(),
            api_key: format!("demo-key-{id}"),
        })
        .collect()
}

/// A car park before it is dressed up as a `pb::CarPark`: capacities are rescaled
/// first so the city adds up to its headline number.
struct Site {
    district: &'static District,
    kind: CarParkKind,
    lat: f64,
    lon: f64,
    spaces: i32,
}

/// Skewed sizes: most car parks are small, a few are very large.
fn sample_spaces(rng: &mut Rng, kind: CarParkKind) -> i32 {
    let (lo, hi, mean_extra) = match kind {
        CarParkKind::Garage => (GARAGE_SPACES.0, GARAGE_SPACES.1, 400.0),
        CarParkKind::SurfaceLot => (LOT_SPACES.0, LOT_SPACES.1, 110.0),
        _ => (STREET_BAYS.0, STREET_BAYS.1, 16.0),
    };
    let extra = -mean_extra * (1.0 - rng.unit()).ln();
    (lo + extra.round() as i32).min(hi)
}

fn sample_site(rng: &mut Rng) -> Site {
    let district = &DISTRICTS[rng.weighted(DISTRICTS.iter().map(|d| d.share))];
    let kind = [
        CarParkKind::Garage,
        CarParkKind::SurfaceLot,
        CarParkKind::OnStreet,
    ][rng.weighted(district.kind_mix.iter().copied())];
    let (lat, lon) = sample_location(rng, district);
    let spaces = sample_spaces(rng, kind);
    Site {
        district,
        kind,
        lat,
        lon,
        spaces,
    }
}

/// Garages hold most of a city's spaces, so scaling them alone makes the total match
/// [`CITY_SPACES`] without distorting the small car parks.
fn scale_garages(sites: &mut [Site]) {
    let (garages, others) = sites.iter().fold((0i64, 0i64), |(g, o), s| {
        if s.kind == CarParkKind::Garage {
            (g + i64::from(s.spaces), o)
        } else {
            (g, o + i64::from(s.spaces))
        }
    });
    if garages == 0 {
        return;
    }
    let factor = (CITY_SPACES - others) as f64 / garages as f64;
    for site in sites.iter_mut().filter(|s| s.kind == CarParkKind::Garage) {
        site.spaces = ((f64::from(site.spaces) * factor).round() as i32)
            .clamp(GARAGE_SPACES.0, GARAGE_SPACES.1);
    }
}

fn capacity(category: SpaceCategory, spaces: i32) -> pb::CategoryCapacity {
    pb::CategoryCapacity {
        category: category as i32,
        spaces,
    }
}

fn split_capacity(rng: &mut Rng, kind: CarParkKind, total: i32) -> Vec<pb::CategoryCapacity> {
    let mut caps = Vec::with_capacity(4);
    if kind == CarParkKind::OnStreet {
        // Kerbside zones are standard bays with sensors; some have a blue-badge bay or
        // a scooter corner at the end of the zone.
        let accessible = i32::from(total >= 20 && rng.chance(0.5));
        caps.push(capacity(SpaceCategory::Standard, total - accessible));
        if accessible > 0 {
            caps.push(capacity(SpaceCategory::Accessible, accessible));
        }
        if rng.chance(0.2) {
            caps.push(capacity(
                SpaceCategory::Motorcycle,
                rng.between(2, 6) as i32,
            ));
        }
        return caps;
    }
    let share = |rng: &mut Rng, lo: f64, hi: f64| {
        (f64::from(total) * (lo + (hi - lo) * rng.unit())).round() as i32
    };
    let ev = share(rng, 0.05, 0.15).max(1);
    let accessible = (f64::from(total) * 0.02).round().max(1.0) as i32;
    let motorcycle = if rng.chance(0.4) {
        share(rng, 0.01, 0.05)
    } else {
        0
    };
    caps.push(capacity(
        SpaceCategory::Standard,
        total - ev - accessible - motorcycle,
    ));
    caps.push(capacity(SpaceCategory::EvCharging, ev));
    caps.push(capacity(SpaceCategory::Accessible, accessible));
    if motorcycle > 0 {
        caps.push(capacity(SpaceCategory::Motorcycle, motorcycle));
    }
    caps
}

fn every_day(open_hour: i32, close_hour: i32) -> Vec<pb::OpeningPeriod> {
    (1..=7)
        .map(|day| pb::OpeningPeriod {
            day,
            open_minute: open_hour * 60,
            close_minute: close_hour * 60,
        })
        .collect()
}

fn operator_for(rng: &mut Rng, index: usize, site: &Site) -> &'static str {
    if site.kind == CarParkKind::OnStreet {
        return CITY_OPERATOR;
    }
    let x = rng.unit();
    if x < 0.65 {
        site.district.operator
    } else if x < 0.85 {
        CITY_OPERATOR
    } else {
        OPERATOR_IDS[index % OPERATOR_IDS.len()]
    }
}

fn dress(rng: &mut Rng, index: usize, site: Site) -> pb::CarPark {
    let number = index + 1;
    let district = site.district;
    let (label, opening_hours, covered, max_height_cm) = match site.kind {
        CarParkKind::Garage => {
            // Mall and office garages close at night; most others never do.
            let hours = if rng.chance(0.15) {
                every_day(6, 24)
            } else {
                Vec::new()
            };
            ("Garage", hours, true, *rng.pick(&[190, 200, 210, 220]))
        }
        CarParkKind::SurfaceLot => {
            let hours = if rng.chance(0.4) {
                every_day(6, 23)
            } else {
                Vec::new()
            };
            ("Lot", hours, false, 0)
        }
        _ => ("Street Parking", every_day(7, 21), false, 0),
    };
    let hourly = rng.between(district.hourly_fen.0 / 50, district.hourly_fen.1 / 50) * 50;
    let daily_cap = if site.kind == CarParkKind::OnStreet && rng.chance(0.4) {
        // Kerbside charges are meant to keep bays turning over, so many have no cap.
        0
    } else {
        rng.between(6, 16) * 500
    };
    let free_minutes = if site.kind == CarParkKind::OnStreet || rng.chance(0.5) {
        15
    } else {
        30
    };
    let operator = operator_for(rng, index, &site);
    let capacity = split_capacity(rng, site.kind, site.spaces);
    let address = format!(
        "{} {}, {} District, Qingdao",
        rng.between(1, 320),
        rng.pick(district.streets),
        district.name
    );
    // Garages offer a tenth of their standard spaces (1 to 50) for reservation.
    let reservation_policy =
        (site.kind == pb::CarParkKind::Garage).then(|| pb::ReservationPolicy {
            quota: capacity
                .iter()
                .filter(|c| c.category == pb::SpaceCategory::Standard as i32)
                .map(|c| pb::CategoryCapacity {
                    category: c.category,
                    spaces: (c.spaces / 10).clamp(1, 50),
                })
                .collect(),
            ..Default::default()
        });
    pb::CarPark {
        id: format!("qd-{number:06}"),
        region: DEMO_REGION.to_owned(),
        operator_id: operator.to_owned(),
        name: format!("{} {label} {number}", district.name),
        address,
        location: Some(pb::LatLng {
            latitude: site.lat,
            longitude: site.lon,
        }),
        kind: site.kind as i32,
        capacity,
        time_zone: DEMO_TIME_ZONE.to_owned(),
        opening_hours,
        closed: false,
        tariff: Some(pb::Tariff {
            currency: "CNY".to_owned(),
            hourly_rate_minor: hourly,
            daily_cap_minor: daily_cap,
            free_minutes,
            ..Default::default()
        }),
        covered,
        max_height_cm,
        report_interval_seconds: 30,
        reservation_policy,
        // The server's to set.
        modified_at: None,
    }
}

/// Deterministic city for a seed: about 2,350 car parks with about 580,000 spaces in
/// Qingdao's urban districts, ids `qd-000001` onwards.
pub fn generate_city(seed: u64) -> Vec<pb::CarPark> {
    let mut rng = Rng::new(seed);
    let mut sites: Vec<Site> = (0..CITY_CAR_PARKS).map(|_| sample_site(&mut rng)).collect();
    scale_garages(&mut sites);
    sites
        .into_iter()
        .enumerate()
        .map(|(i, site)| dress(&mut rng, i, site))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::demo::geo::on_land;

    fn valid_id(id: &str) -> bool {
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }

    fn spaces(car_park: &pb::CarPark) -> i64 {
        car_park.capacity.iter().map(|c| i64::from(c.spaces)).sum()
    }

    #[test]
    fn city_is_deterministic_per_seed() {
        assert_eq!(generate_city(7), generate_city(7));
        assert_ne!(generate_city(7), generate_city(8));
    }

    #[test]
    fn default_city_is_unchanged() {
        // `--demo-seed` defaults to 2026; README and BENCHMARKS quote this city, so a
        // change to the generator (or to the Rng) must be deliberate.
        let city = generate_city(2026);
        assert_eq!(city.len(), 2_350);
        assert_eq!(city.iter().map(spaces).sum::<i64>(), 579_933);
        assert_eq!(city[0].id, "qd-000001");
    }

    #[test]
    fn city_has_qingdao_scale() {
        for seed in [0, 1, 42, u64::MAX] {
            let city = generate_city(seed);
            let parks = city.len() as f64;
            let total: i64 = city.iter().map(spaces).sum();
            assert!(
                (parks - 2_350.0).abs() <= 2_350.0 * 0.05,
                "seed {seed}: {parks} car parks"
            );
            assert!(
                (total as f64 - 580_000.0).abs() <= 580_000.0 * 0.05,
                "seed {seed}: {total} spaces"
            );
        }
    }

    #[test]
    fn ids_are_unique_and_valid() {
        let city = generate_city(3);
        let ids: HashSet<&str> = city.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids.len(), city.len());
        assert!(city.iter().all(|c| valid_id(&c.id)));
    }

    #[test]
    fn car_parks_are_on_land_in_qingdao() {
        for car_park in generate_city(11) {
            let at = car_park.location.expect("location");
            assert!(
                (35.9..=36.4).contains(&at.latitude) && (120.0..=120.6).contains(&at.longitude),
                "{} at {at:?}",
                car_park.id
            );
            assert!(
                on_land(at.latitude, at.longitude),
                "{} in the sea at {at:?}",
                car_park.id
            );
        }
    }

    #[test]
    fn car_parks_are_well_formed() {
        let operators: HashSet<String> = demo_operators().into_iter().map(|o| o.id).collect();
        let city = generate_city(5);
        for c in &city {
            assert!(spaces(c) >= 1, "{}", c.id);
            assert!(c.capacity.iter().all(|cap| cap.spaces > 0), "{}", c.id);
            let categories: HashSet<i32> = c.capacity.iter().map(|cap| cap.category).collect();
            assert_eq!(categories.len(), c.capacity.len(), "{}", c.id);
            assert_eq!(c.region, DEMO_REGION);
            assert_eq!(c.time_zone, DEMO_TIME_ZONE);
            assert!(operators.contains(&c.operator_id), "{}", c.operator_id);
            assert!(matches!(c.opening_hours.len(), 0 | 7), "{}", c.id);
            assert!(
                c.opening_hours.iter().all(
                    |p| (0..p.close_minute).contains(&p.open_minute) && p.close_minute <= 1_440
                )
            );
            let tariff = c.tariff.as_ref().expect("tariff");
            assert!((300..=1_000).contains(&tariff.hourly_rate_minor));
            assert!(
                tariff.daily_cap_minor == 0 || (3_000..=8_000).contains(&tariff.daily_cap_minor)
            );
            assert!(matches!(tariff.free_minutes, 15 | 30));
            let (lo, hi) = match c.kind() {
                CarParkKind::Garage => GARAGE_SPACES,
                CarParkKind::SurfaceLot => LOT_SPACES,
                _ => (STREET_BAYS.0, STREET_BAYS.1 + 6),
            };
            assert!(
                (i64::from(lo)..=i64::from(hi)).contains(&spaces(c)),
                "{}: {}",
                c.id,
                spaces(c)
            );
        }
        for kind in [
            CarParkKind::Garage,
            CarParkKind::SurfaceLot,
            CarParkKind::OnStreet,
        ] {
            assert!(
                city.iter().filter(|c| c.kind() == kind).count() > 300,
                "{kind:?}"
            );
        }
    }
}
