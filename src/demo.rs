//! The demo city: a generated Qingdao-scale set of car parks and simulated operators.
//!
//! [`generate_city`] builds a deterministic city from a seed; [`run_operators`] plays its
//! operator companies, registering the car parks and streaming occupancy through the
//! public gRPC API exactly as a real integration would, so the demo exercises the same
//! paths (auth, sequencing, duplicates, reconnects) that production traffic does.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::Streaming;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::pb;
use crate::pb::ingest_client::IngestClient;
use crate::pb::occupancy_report::Body;
use crate::pb::registry_client::RegistryClient;
use crate::pb::{CarParkKind, SpaceCategory};
use crate::rng::Rng;

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

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The endpoint is not a valid URI.
    #[error("invalid demo server endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was refused.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server could not be reached at start, even after retrying.
    #[error("cannot connect to demo server {endpoint}: {source}")]
    Connect {
        /// The endpoint connected to.
        endpoint: String,
        /// The last connection error.
        #[source]
        source: tonic::transport::Error,
    },
    /// An API key cannot be sent as a header value.
    #[error("api key of demo operator {operator} is not a valid header value")]
    InvalidApiKey {
        /// The operator whose key is bad.
        operator: String,
    },
    /// A car park names an operator that was not given.
    #[error("car park {car_park} belongs to operator {operator:?}, which has no demo api key")]
    UnknownOperator {
        /// The car park.
        car_park: String,
        /// Its operator id.
        operator: String,
    },
    /// The server refused to register a car park.
    #[error("registering car park {car_park} failed: {code:?}: {message}")]
    Register {
        /// The car park.
        car_park: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
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

/// A centre of activity inside a district (a CBD, an old town, a mall cluster).
struct Hotspot {
    lat: f64,
    lon: f64,
    sigma_km: f64,
    weight: f64,
}

const fn spot(lat: f64, lon: f64, sigma_km: f64, weight: f64) -> Hotspot {
    Hotspot {
        lat,
        lon,
        sigma_km,
        weight,
    }
}

struct District {
    name: &'static str,
    share: f64,
    /// A box that holds the district's urban area; combined with [`on_land`] it keeps
    /// samples out of Jiaozhou Bay and the Yellow Sea.
    south: f64,
    north: f64,
    west: f64,
    east: f64,
    hotspots: &'static [Hotspot],
    streets: &'static [&'static str],
    operator: &'static str,
    /// Probability of garage, surface lot and on-street zone.
    kind_mix: [f64; 3],
    hourly_fen: (i64, i64),
}

impl District {
    fn contains(&self, lat: f64, lon: f64) -> bool {
        (self.south..=self.north).contains(&lat) && (self.west..=self.east).contains(&lon)
    }
}

/// Shares follow density: the old town and CBD of Shinan and Shibei are packed, the
/// outer districts spread out.
const DISTRICTS: [District; 6] = [
    District {
        name: "Shinan",
        share: 0.24,
        south: 36.045,
        north: 36.085,
        west: 120.305,
        east: 120.445,
        hotspots: &[
            spot(36.0665, 120.3200, 0.6, 1.0),
            spot(36.0570, 120.3520, 0.5, 0.5),
            spot(36.0690, 120.3600, 0.8, 1.0),
            spot(36.0660, 120.3850, 0.9, 1.6),
            spot(36.0720, 120.4150, 0.9, 1.0),
        ],
        streets: &[
            "Xianggang Middle Road",
            "Zhongshan Road",
            "Yan'an Third Road",
            "Nanjing Road",
            "Donghai West Road",
            "Fuzhou South Road",
            "Taiping Road",
            "Jiangxi Road",
            "Minjiang Road",
        ],
        operator: "shinan-city-parking",
        kind_mix: [0.42, 0.13, 0.45],
        hourly_fen: (600, 1_000),
    },
    District {
        name: "Shibei",
        share: 0.24,
        south: 36.075,
        north: 36.135,
        west: 120.315,
        east: 120.425,
        hotspots: &[
            spot(36.0885, 120.3620, 0.7, 1.4),
            spot(36.0850, 120.3850, 0.8, 1.2),
            spot(36.0950, 120.4000, 1.0, 1.0),
            spot(36.0800, 120.3340, 0.6, 0.6),
            spot(36.1100, 120.3750, 1.0, 0.9),
        ],
        streets: &[
            "Liaoning Road",
            "Taidong First Road",
            "Yan'an Road",
            "Dengzhou Road",
            "Liaoyang West Road",
            "Dunhua Road",
            "Hangzhou Road",
            "Changle Road",
            "Weihai Road",
        ],
        operator: "shibei-harbour-parking",
        kind_mix: [0.40, 0.20, 0.40],
        hourly_fen: (500, 1_000),
    },
    District {
        name: "Licang",
        share: 0.13,
        south: 36.130,
        north: 36.215,
        west: 120.360,
        east: 120.480,
        hotspots: &[
            spot(36.1630, 120.4280, 1.0, 1.4),
            spot(36.1850, 120.4300, 1.0, 0.9),
            spot(36.1420, 120.4050, 0.9, 0.8),
        ],
        streets: &[
            "Jiushui Road",
            "Xiazhuang Road",
            "Wannianquan Road",
            "Jinshui Road",
            "Yongping Road",
            "Chongqing Middle Road",
        ],
        operator: "licang-mall-parking",
        kind_mix: [0.35, 0.30, 0.35],
        hourly_fen: (400, 800),
    },
    District {
        name: "Laoshan",
        share: 0.13,
        south: 36.070,
        north: 36.160,
        west: 120.420,
        east: 120.520,
        hotspots: &[
            spot(36.1050, 120.4620, 1.2, 1.4),
            spot(36.1050, 120.4300, 0.8, 0.8),
            spot(36.1250, 120.4800, 1.0, 0.8),
        ],
        streets: &[
            "Xianggang East Road",
            "Haier Road",
            "Songling Road",
            "Shenzhen Road",
            "Miaoling Road",
            "Tong'an Road",
            "Qinling Road",
        ],
        operator: "laoshan-garages",
        kind_mix: [0.40, 0.28, 0.32],
        hourly_fen: (400, 900),
    },
    District {
        name: "Chengyang",
        share: 0.11,
        south: 36.230,
        north: 36.340,
        west: 120.330,
        east: 120.470,
        hotspots: &[
            spot(36.3070, 120.3960, 1.2, 1.4),
            spot(36.2650, 120.3800, 1.0, 0.8),
            spot(36.3000, 120.4200, 1.0, 0.8),
        ],
        streets: &[
            "Zhengyang Road",
            "Chunyang Road",
            "Changcheng Road",
            "Wenyang Road",
            "Qianyang Road",
            "Chongyang Road",
        ],
        operator: "chengyang-parking",
        kind_mix: [0.30, 0.40, 0.30],
        hourly_fen: (300, 600),
    },
    District {
        name: "Huangdao",
        share: 0.15,
        south: 35.955,
        north: 36.030,
        west: 120.100,
        east: 120.225,
        hotspots: &[
            spot(35.9650, 120.1900, 1.0, 1.4),
            spot(35.9700, 120.1550, 0.9, 1.0),
            spot(35.9750, 120.2150, 0.6, 0.7),
            spot(36.0000, 120.1800, 1.2, 0.6),
        ],
        streets: &[
            "Changjiang Middle Road",
            "Jialingjiang Road",
            "Zhuzhou Road",
            "Wutaishan Road",
            "Jiangshan Middle Road",
            "Lijiang West Road",
            "Huanghe East Road",
        ],
        operator: "west-coast-parking",
        kind_mix: [0.32, 0.38, 0.30],
        hourly_fen: (300, 700),
    },
];

/// Yellow Sea shore south of the eastern peninsula, as (longitude, latitude) from west
/// to east: from the Tuandao tip past Taiping Bay and Fushan Bay to Shilaoren.
const SOUTH_SHORE: [(f64, f64); 11] = [
    (120.290, 36.064),
    (120.318, 36.060),
    (120.340, 36.057),
    (120.352, 36.052),
    (120.370, 36.058),
    (120.385, 36.061),
    (120.410, 36.064),
    (120.440, 36.075),
    (120.470, 36.095),
    (120.500, 36.105),
    (120.560, 36.125),
];

/// Jiaozhou Bay's eastern shore, as (latitude, longitude) from south to north: the
/// harbour, Sifang, Licang and on towards Chengyang.
const BAY_EAST_SHORE: [(f64, f64); 9] = [
    (36.060, 120.300),
    (36.080, 120.310),
    (36.100, 120.318),
    (36.130, 120.340),
    (36.160, 120.355),
    (36.200, 120.360),
    (36.240, 120.330),
    (36.280, 120.310),
    (36.340, 120.300),
];

/// Keeps a car park this far (about 200 m) from the modelled shore, which is coarse.
const SHORE_MARGIN_DEG: f64 = 0.002;

/// Linear interpolation along a polyline sorted by its first coordinate.
fn along(line: &[(f64, f64)], x: f64) -> f64 {
    let first = line[0];
    let last = line[line.len() - 1];
    if x <= first.0 {
        return first.1;
    }
    if x >= last.0 {
        return last.1;
    }
    line.windows(2)
        .find(|w| x <= w[1].0)
        .map(|w| {
            let t = (x - w[0].0) / (w[1].0 - w[0].0);
            w[0].1 + t * (w[1].1 - w[0].1)
        })
        .unwrap_or(last.1)
}

/// Whether a point is on land in the demo's coarse model of Qingdao: the eastern
/// peninsula north of the sea shore and east of the bay, or the urban core of
/// Huangdao west of the bay.
fn on_land(lat: f64, lon: f64) -> bool {
    if lon < 120.27 {
        (35.955..=36.030).contains(&lat) && (120.100..=120.225).contains(&lon)
    } else {
        lat > along(&SOUTH_SHORE, lon) + SHORE_MARGIN_DEG
            && lon > along(&BAY_EAST_SHORE, lat) + SHORE_MARGIN_DEG
            && lat < 36.36
            && lon < 120.53
    }
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

fn sample_location(rng: &mut Rng, district: &District) -> (f64, f64) {
    let spot = &district.hotspots[rng.weighted(district.hotspots.iter().map(|h| h.weight))];
    // One in ten car parks sits away from the hotspots, so the map has no empty gaps
    // between centres.
    let spread = if rng.chance(0.1) { 3.0 } else { 1.0 };
    for _ in 0..32 {
        let sigma_lat = spot.sigma_km * spread / 111.0;
        let sigma_lon = sigma_lat / spot.lat.to_radians().cos();
        let lat = spot.lat + rng.normal() * sigma_lat;
        let lon = spot.lon + rng.normal() * sigma_lon;
        if district.contains(lat, lon) && on_land(lat, lon) {
            return (round6(lat), round6(lon));
        }
    }
    (spot.lat, spot.lon)
}

/// A micro-degree is about 0.1 m; more digits would only suggest false precision.
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
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
        }),
        covered,
        max_height_cm,
        report_interval_seconds: 30,
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
        (CarParkKind::Garage | CarParkKind::Unspecified, false) => {
            0.12 + 0.72 * plateau(h, 8.5, 18.0) + 0.12 * bump(h, 20.0, 1.5)
        }
        (CarParkKind::Garage | CarParkKind::Unspecified, true) => 0.12 + 0.58 * bump(h, 15.0, 3.5),
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
fn shanghai_clock(now: SystemTime) -> (f64, bool) {
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
/// A round is split into this many sends, spreading load evenly over the interval.
const TICKS_PER_ROUND: u32 = 10;
/// Most reports in one `PublishRequest`.
const MAX_BATCH: usize = 100;
/// Reports sent but not yet acknowledged beyond which a tick is skipped: the server is
/// behind, and piling on would only grow memory.
const MAX_PENDING: usize = 20_000;
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the first connection is retried: `serve --demo` starts the server and the
/// operators together.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// Rejections logged individually per operator before only every thousandth is, so a
/// systematic problem does not flood the log.
const REJECTIONS_LOGGED: u64 = 20;

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
struct SimPark {
    id: String,
    kind: CarParkKind,
    categories: Vec<SimCategory>,
    /// On-street zones only: one flag per standard bay, true when occupied, so every
    /// bay report describes a real change of a real bay.
    bays: Vec<bool>,
    /// How much busier than its kind's day shape this car park runs.
    bias: f64,
    snapshot_phase: u64,
    rounds: u64,
    next_sequence: u64,
}

impl SimPark {
    fn new(car_park: &pb::CarPark, rng: &mut Rng, shape_at: impl Fn(CarParkKind) -> f64) -> Self {
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

    fn bays_occupied(&self) -> i32 {
        self.bays.iter().filter(|b| **b).count() as i32
    }

    fn target(&self, i: usize, shape: f64, rng: &mut Rng) -> i32 {
        let cat = self.categories[i];
        let fraction = (shape * self.bias * cat.demand() + 0.03 * rng.normal()).clamp(0.0, 1.0);
        (fraction * f64::from(cat.capacity)).round() as i32
    }

    fn sequence(&mut self) -> u64 {
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

    /// This round's reports: the first and every tenth are snapshots, on-street zones
    /// send their bay flips, everything else entries and exits.
    fn step(
        &mut self,
        shape: f64,
        observed_at: prost_types::Timestamp,
        rng: &mut Rng,
    ) -> Vec<pb::OccupancyReport> {
        let snapshot_round =
            self.next_sequence == 1 || self.rounds % SNAPSHOT_EVERY == self.snapshot_phase;
        self.rounds += 1;
        let sensors = if self.bays.is_empty() {
            None
        } else {
            self.standard_index()
        };
        let mut bodies = Vec::new();
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
            let (entered, left) = self.move_category(i, target, rng);
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
            // Plates are left out: made-up plates would open parking sessions that no
            // exit ever closes.
            bodies.push(Body::Delta(pb::DeltaReport {
                entries,
                exits,
                plate: String::new(),
            }));
        }
        if snapshot_round || bodies.is_empty() {
            // A snapshot after the moves carries them all, and keeps an idle car park
            // from going stale.
            bodies = vec![self.snapshot()];
        }
        bodies
            .into_iter()
            .map(|body| pb::OccupancyReport {
                car_park_id: self.id.clone(),
                sequence: self.sequence(),
                observed_at: Some(observed_at),
                body: Some(body),
            })
            .collect()
    }
}

/// Bay ids `b001`, `b002`, ... as printed on kerbside bay markings.
fn bay_id(index: usize) -> String {
    format!("b{:03}", index + 1)
}

/// Adds the operator's API key to every call of a client.
#[derive(Clone)]
struct Bearer(AsciiMetadataValue);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    applied: u64,
    duplicate: u64,
    rejected: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Self) {
        self.applied += other.applied;
        self.duplicate += other.duplicate;
        self.rejected += other.rejected;
    }
}

/// One simulated operator: its car parks, their simulated state and its stream.
struct Operator {
    id: String,
    registry: RegistryClient<Authed>,
    ingest: IngestClient<Authed>,
    car_parks: Vec<pb::CarPark>,
    sim: Vec<SimPark>,
    cursor: usize,
    /// Reports sent and not yet acknowledged, in send order; acks arrive in the same
    /// order, and after a reconnect these are sent again.
    pending: VecDeque<pb::OccupancyReport>,
    acked_on_stream: u64,
    /// Whether the first round went out: it reports on every car park at once, so a
    /// newcomer's first query finds live numbers instead of a city of NO_DATA.
    started: bool,
    interval: Duration,
    rng: Rng,
    tally: Tally,
}

impl Operator {
    /// Upserts every car park; `Ok(false)` if shutdown came first.
    async fn register(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<bool, (String, tonic::Status)> {
        for car_park in &self.car_parks {
            let request = pb::UpsertCarParkRequest {
                car_park: Some(car_park.clone()),
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(false),
                result = self.registry.upsert_car_park(request) => {
                    result.map_err(|status| (car_park.id.clone(), status))?;
                }
            }
        }
        info!(operator = %self.id, car_parks = self.car_parks.len(), "demo car parks registered");
        Ok(true)
    }

    async fn run(mut self, shutdown: CancellationToken) -> Result<Tally, DemoError> {
        match self.register(&shutdown).await {
            Ok(true) => {}
            Ok(false) => return Ok(self.tally),
            Err((car_park, status)) => {
                return Err(DemoError::Register {
                    car_park,
                    code: status.code(),
                    message: status.message().to_owned(),
                });
            }
        }
        let mut backoff = INITIAL_BACKOFF;
        let mut registered = true;
        loop {
            let failure = if registered {
                match self.stream(&shutdown).await {
                    Ok(()) => break,
                    Err(status) => {
                        // A server that restarted may have forgotten the city.
                        registered = false;
                        if self.acked_on_stream > 0 {
                            backoff = INITIAL_BACKOFF;
                        }
                        status
                    }
                }
            } else {
                match self.register(&shutdown).await {
                    Ok(true) => {
                        registered = true;
                        continue;
                    }
                    Ok(false) => break,
                    Err((_, status)) => status,
                }
            };
            if shutdown.is_cancelled() {
                break;
            }
            warn!(
                operator = %self.id,
                code = ?failure.code(),
                message = failure.message(),
                retry_in = ?backoff,
                pending = self.pending.len(),
                "demo operator lost the server"
            );
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let Tally {
            applied,
            duplicate,
            rejected,
        } = self.tally;
        info!(operator = %self.id, applied, duplicate, rejected, "demo operator stopped");
        Ok(self.tally)
    }

    /// One Publish stream, until shutdown (`Ok`) or failure (`Err`).
    async fn stream(&mut self, shutdown: &CancellationToken) -> Result<(), tonic::Status> {
        self.acked_on_stream = 0;
        let (tx, rx) = mpsc::unbounded_channel();
        // Resend what the last stream left unacknowledged; what the server had already
        // applied comes back DUPLICATE.
        let unacked: Vec<_> = self.pending.iter().cloned().collect();
        for chunk in unacked.chunks(MAX_BATCH) {
            let _ = tx.send(pb::PublishRequest {
                reports: chunk.to_vec(),
            });
        }
        let mut ingest = self.ingest.clone();
        // The call is polled alongside the ticker so reports flow even if the server
        // waits for the first request before answering with headers.
        let call = ingest.publish(UnboundedReceiverStream::new(rx));
        tokio::pin!(call);
        let mut acks: Option<Streaming<pb::PublishResponse>> = None;
        let mut ticker = tokio::time::interval(self.interval / TICKS_PER_ROUND);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    drop(tx);
                    self.drain(acks).await;
                    return Ok(());
                }
                opened = &mut call, if acks.is_none() => {
                    acks = Some(opened?.into_inner());
                }
                message = next_message(&mut acks) => match message? {
                    Some(response) => self.on_acks(response.acks),
                    None => return Err(tonic::Status::unavailable("publish stream closed by the server")),
                },
                _ = ticker.tick() => {
                    if self.pending.len() >= MAX_PENDING {
                        debug!(operator = %self.id, pending = self.pending.len(), "demo server behind; skipping a tick");
                        continue;
                    }
                    for batch in self.tick() {
                        self.pending.extend(batch.reports.iter().cloned());
                        if tx.send(batch).is_err() {
                            return Err(tonic::Status::unavailable("publish stream closed"));
                        }
                    }
                }
            }
        }
    }

    /// Reads the acks of reports already sent, so the final tally is right and the
    /// server sees the stream end cleanly.
    async fn drain(&mut self, acks: Option<Streaming<pb::PublishResponse>>) {
        let Some(mut acks) = acks else { return };
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(Some(response)) = acks.message().await {
                self.on_acks(response.acks);
            }
        })
        .await;
    }

    /// Reports for the next slice of car parks, in batches.
    fn tick(&mut self) -> Vec<pb::PublishRequest> {
        let n = self.sim.len();
        if n == 0 {
            return Vec::new();
        }
        let now = SystemTime::now();
        let (hour, weekend) = shanghai_clock(now);
        let observed_at = prost_types::Timestamp::from(now);
        let take = if self.started {
            n.div_ceil(TICKS_PER_ROUND as usize)
        } else {
            self.started = true;
            n
        };
        let mut reports = Vec::new();
        for _ in 0..take {
            let park = &mut self.sim[self.cursor];
            let shape = occupancy_fraction(park.kind, hour, weekend);
            reports.extend(park.step(shape, observed_at, &mut self.rng));
            self.cursor += 1;
            if self.cursor == n {
                self.cursor = 0;
                let Tally {
                    applied,
                    duplicate,
                    rejected,
                } = self.tally;
                debug!(operator = %self.id, applied, duplicate, rejected, pending = self.pending.len(), "demo round complete");
                break;
            }
        }
        reports
            .chunks(MAX_BATCH)
            .map(|chunk| pb::PublishRequest {
                reports: chunk.to_vec(),
            })
            .collect()
    }

    fn on_acks(&mut self, acks: Vec<pb::ReportAck>) {
        for ack in acks {
            self.acked_on_stream += 1;
            self.pending.pop_front();
            match ack.result() {
                pb::ReportResult::Applied => self.tally.applied += 1,
                pb::ReportResult::Duplicate => {
                    self.tally.duplicate += 1;
                    self.catch_up_sequence(&ack);
                }
                pb::ReportResult::Rejected | pb::ReportResult::Unspecified => {
                    self.on_rejected(&ack)
                }
            }
        }
    }

    /// A server that kept its state across a demo restart knows newer sequences than a
    /// fresh simulation; continuing from there lets the new reports apply.
    fn catch_up_sequence(&mut self, ack: &pb::ReportAck) {
        let Some(last) = ack.availability.as_ref().map(|a| a.last_sequence) else {
            return;
        };
        if let Some(park) = self.sim.iter_mut().find(|p| p.id == ack.car_park_id)
            && park.next_sequence <= last
        {
            park.next_sequence = last + 1;
        }
    }

    fn on_rejected(&mut self, ack: &pb::ReportAck) {
        self.tally.rejected += 1;
        let code = ack.reject_code();
        if self.tally.rejected <= REJECTIONS_LOGGED || self.tally.rejected.is_multiple_of(1_000) {
            warn!(
                operator = %self.id,
                car_park = %ack.car_park_id,
                sequence = ack.sequence,
                code = ?code,
                field = %ack.field,
                reason = %ack.reason,
                rejected = self.tally.rejected,
                "demo report rejected"
            );
        }
        if code == pb::RejectCode::NotFound {
            // Someone deleted it; reporting on, or registering it again, would fight them.
            // Its reports still in flight stay pending: their acks are on the way.
            let id = ack.car_park_id.as_str();
            let before = self.sim.len();
            self.sim.retain(|p| p.id != id);
            self.car_parks.retain(|c| c.id != id);
            if self.sim.len() < before {
                if self.cursor >= self.sim.len() {
                    self.cursor = 0;
                }
                info!(operator = %self.id, car_park = %id, "demo car park gone; no longer simulated");
            }
        }
    }
}

async fn next_message(
    acks: &mut Option<Streaming<pb::PublishResponse>>,
) -> Result<Option<pb::PublishResponse>, tonic::Status> {
    match acks {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}

/// Connects, retrying for a while; `None` if shutdown came first.
async fn connect(
    endpoint: &str,
    shutdown: &CancellationToken,
) -> Result<Option<Channel>, DemoError> {
    let target = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|source| DemoError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        // Detects a dead server on an idle stream, so reconnecting starts promptly.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    loop {
        match target.connect().await {
            Ok(channel) => return Ok(Some(channel)),
            Err(error) if tokio::time::Instant::now() < deadline => {
                debug!(%error, endpoint, "demo server not reachable yet");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            Err(source) => {
                return Err(DemoError::Connect {
                    endpoint: endpoint.to_owned(),
                    source,
                });
            }
        }
    }
}

/// Registers the city through `Registry.UpsertCarPark`, then streams occupancy through
/// `Ingest.Publish`, one stream per operator, until `shutdown` is cancelled.
///
/// Every car park gets a report about once per `interval`: mostly entries and exits
/// moving it towards its day-shaped occupancy, a snapshot every tenth round, and bay
/// sensor flips for on-street zones. Lost streams are retried with backoff (1 s
/// doubling to 30 s) and unacknowledged reports resent.
pub async fn run_operators(
    endpoint: String,
    city: Vec<pb::CarPark>,
    operators: Vec<DemoOperator>,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<(), DemoError> {
    let mut keys = HashMap::with_capacity(operators.len());
    for operator in &operators {
        let value =
            AsciiMetadataValue::try_from(format!("Bearer {}", operator.api_key)).map_err(|_| {
                DemoError::InvalidApiKey {
                    operator: operator.id.clone(),
                }
            })?;
        keys.insert(operator.id.as_str(), Bearer(value));
    }
    let mut fleets: Vec<(String, Vec<pb::CarPark>)> = Vec::new();
    for car_park in city {
        if !keys.contains_key(car_park.operator_id.as_str()) {
            return Err(DemoError::UnknownOperator {
                car_park: car_park.id,
                operator: car_park.operator_id,
            });
        }
        match fleets
            .iter_mut()
            .find(|(id, _)| *id == car_park.operator_id)
        {
            Some((_, parks)) => parks.push(car_park),
            None => fleets.push((car_park.operator_id.clone(), vec![car_park])),
        }
    }

    let Some(channel) = connect(&endpoint, &shutdown).await? else {
        return Ok(());
    };
    // Stops the other operators when one fails to register, without touching the
    // caller's token.
    let stop = shutdown.child_token();
    let now = SystemTime::now();
    let (hour, weekend) = shanghai_clock(now);
    let seed = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut tasks = JoinSet::new();
    for (n, (id, car_parks)) in fleets.into_iter().enumerate() {
        let bearer = keys[id.as_str()].clone();
        let mut rng = Rng::new(seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let sim = car_parks
            .iter()
            .map(|c| SimPark::new(c, &mut rng, |kind| occupancy_fraction(kind, hour, weekend)))
            .collect();
        let operator = Operator {
            id,
            registry: RegistryClient::with_interceptor(channel.clone(), bearer.clone()),
            ingest: IngestClient::with_interceptor(channel.clone(), bearer),
            car_parks,
            sim,
            cursor: 0,
            pending: VecDeque::new(),
            acked_on_stream: 0,
            started: false,
            interval,
            rng,
            tally: Tally::default(),
        };
        tasks.spawn(operator.run(stop.clone()));
    }

    let mut total = Tally::default();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(tally)) => total += tally,
            Ok(Err(error)) => {
                stop.cancel();
                first_error.get_or_insert(error);
            }
            Err(join_error) if join_error.is_panic() => {
                std::panic::resume_unwind(join_error.into_panic())
            }
            Err(join_error) => warn!(error = %join_error, "demo operator task ended unexpectedly"),
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    let Tally {
        applied,
        duplicate,
        rejected,
    } = total;
    info!(applied, duplicate, rejected, "demo operators stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

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
    fn hotspots_are_on_land_in_their_district() {
        for district in &DISTRICTS {
            for h in district.hotspots {
                assert!(
                    district.contains(h.lat, h.lon),
                    "{} {} {}",
                    district.name,
                    h.lat,
                    h.lon
                );
                assert!(
                    on_land(h.lat, h.lon),
                    "{} {} {}",
                    district.name,
                    h.lat,
                    h.lon
                );
            }
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
        for car_park in city.iter().take(300) {
            let mut park = SimPark::new(car_park, &mut rng, |kind| {
                occupancy_fraction(kind, 12.0, false)
            });
            let mut expected = 1;
            let mut free: HashMap<i32, i32> = HashMap::new();
            for round in 0..30 {
                let shape = occupancy_fraction(park.kind, f64::from(round) * 0.8, false);
                let reports = park.step(shape, timestamp, &mut rng);
                assert!(!reports.is_empty());
                if round == 0 {
                    assert!(matches!(reports[0].body, Some(Body::Snapshot(_))));
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
            }
        }
    }
}
