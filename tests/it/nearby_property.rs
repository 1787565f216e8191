//! FindNearby against brute force on random cities: in the engine, and through gRPC.

use std::{sync::Arc, time::Duration};

use citypark::{
    domain::{
        Capacity, CarPark, CarParkId, CarParkKind, CarParkState, LatLng, Live, NearbyQuery,
        OpeningHours, OpeningPeriod, OperatorId, Radius, RegionId, Report, ReportBody,
        SpaceCategory, Stay, Tariff, TimeZoneName, Timestamp,
    },
    engine::{Engine, Replica},
    pb,
};
use proptest::{prelude::*, sample::Index};

use crate::support::*;

/// Metres per degree of latitude on the spherical Earth the engine uses.
const M_PER_DEG: f64 = 111_195.0;

/// One random car park; where it is comes from [`Place`].
#[derive(Debug, Clone)]
struct Spec {
    place: Place,
    kind: CarParkKind,
    standard: u32,
    ev: u32,
    /// Monday opening hours (minutes), or open around the clock.
    hours: Option<(i64, i64)>,
    closed: bool,
    tariff: (i64, i64, i64),
    /// Free standard and EV spaces (as fractions of capacity) and the report's age in
    /// seconds; never reported if `None`.
    report: Option<(f64, f64, i64)>,
}

/// A location: near a cluster centre, or exactly where an earlier car park is.
#[derive(Debug, Clone)]
enum Place {
    Near {
        cluster: Index,
        north_m: f64,
        east_m: f64,
    },
    SameAs(Index),
}

fn kind() -> impl Strategy<Value = CarParkKind> {
    prop_oneof![
        Just(CarParkKind::Garage),
        Just(CarParkKind::SurfaceLot),
        Just(CarParkKind::OnStreet),
        Just(CarParkKind::SharedPrivate),
    ]
}

fn category() -> impl Strategy<Value = SpaceCategory> {
    prop_oneof![
        4 => Just(SpaceCategory::Standard),
        3 => Just(SpaceCategory::EvCharging),
        1 => Just(SpaceCategory::Accessible),
    ]
}

fn place() -> impl Strategy<Value = Place> {
    prop_oneof![
        4 => (any::<Index>(), -3000.0..3000.0, -3000.0..3000.0).prop_map(
            |(cluster, north_m, east_m)| Place::Near { cluster, north_m, east_m }
        ),
        1 => any::<Index>().prop_map(Place::SameAs),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        place(),
        kind(),
        (1u32..200, prop_oneof![Just(0u32), 1u32..20]),
        prop::option::weighted(0.3, (0i64..1440).prop_flat_map(|o| (Just(o), o + 1..=1440))),
        prop::bool::weighted(0.1),
        (
            0i64..2000,
            prop_oneof![Just(0i64), 500i64..20_000],
            0i64..120,
        ),
        prop::option::weighted(0.8, (0.0..=1.0f64, 0.0..=1.0f64, 0i64..260)),
    )
        .prop_map(
            |(place, kind, (standard, ev), hours, closed, tariff, report)| Spec {
                place,
                kind,
                standard,
                ev,
                hours,
                closed,
                tariff,
                report,
            },
        )
}

/// A random query; the centre is near a cluster or exactly on a car park.
#[derive(Debug, Clone)]
struct QuerySpec {
    center: Place,
    radius_m: f64,
    limit: usize,
    category: SpaceCategory,
    min_available: u32,
    kinds: Vec<CarParkKind>,
    open_now: bool,
    stay_minutes: Option<i64>,
    max_price: Option<i64>,
    include_stale: bool,
    include_no_data: bool,
}

fn query_spec() -> impl Strategy<Value = QuerySpec> {
    (
        place(),
        prop_oneof![1 => 1.0..500.0, 3 => 500.0..5000.0, 1 => 5000.0..=50_000.0f64],
        prop_oneof![1usize..5, 5usize..=100],
        category(),
        prop_oneof![3 => Just(1u32), 1 => 1u32..30],
        prop::collection::vec(kind(), 0..3),
        any::<bool>(),
        prop::option::of(1i64..5000),
        prop::option::of(0i64..30_000),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                center,
                radius_m,
                limit,
                category,
                min_available,
                kinds,
                open_now,
                stay_minutes,
                max_price,
                include_stale,
                include_no_data,
            )| QuerySpec {
                center,
                radius_m,
                limit,
                category,
                min_available,
                kinds,
                open_now,
                // A price cap needs a stay.
                max_price: max_price.filter(|_| stay_minutes.is_some()),
                stay_minutes,
                include_stale,
                include_no_data,
            },
        )
}

/// Monday 10:00 in Shanghai.
fn now() -> Timestamp {
    start_time()
}

/// Resolves places to coordinates: clusters first, then each car park in turn (a
/// `SameAs` copies an earlier car park, or a cluster centre for the first one).
fn locate(clusters: &[LatLng], places: &[Place]) -> Vec<LatLng> {
    let mut out: Vec<LatLng> = Vec::with_capacity(places.len());
    for place in places {
        let at = resolve(clusters, &out, place);
        out.push(at);
    }
    out
}

fn resolve(clusters: &[LatLng], earlier: &[LatLng], place: &Place) -> LatLng {
    match place {
        Place::SameAs(i) if !earlier.is_empty() => earlier[i.index(earlier.len())],
        Place::SameAs(i) => clusters[i.index(clusters.len())],
        Place::Near {
            cluster,
            north_m,
            east_m,
        } => {
            let c = clusters[cluster.index(clusters.len())];
            let lat = c.lat() + north_m / M_PER_DEG;
            let lon = c.lon() + east_m / (M_PER_DEG * c.lat().to_radians().cos());
            LatLng::new(lat, lon).unwrap()
        }
    }
}

fn car_park(i: usize, spec: &Spec, at: LatLng) -> CarPark {
    let mut capacity = vec![(SpaceCategory::Standard, i64::from(spec.standard))];
    if spec.ev > 0 {
        capacity.push((SpaceCategory::EvCharging, i64::from(spec.ev)));
    }
    let hours = match spec.hours {
        None => OpeningHours::always(),
        Some((open, close)) => {
            OpeningHours::new(vec![OpeningPeriod::new(1, open, close).unwrap()]).unwrap()
        }
    };
    let (rate, cap, free) = spec.tariff;
    CarPark {
        id: CarParkId::parse(&format!("cp{i:03}")).unwrap(),
        region: RegionId::parse("qingdao").unwrap(),
        operator: OperatorId::parse("op-a").unwrap(),
        name: format!("Car park {i}"),
        address: String::new(),
        location: at,
        kind: spec.kind,
        capacity: Capacity::new(capacity).unwrap(),
        time_zone: TimeZoneName::parse("Asia/Shanghai").unwrap(),
        opening_hours: hours,
        closed: spec.closed,
        tariff: Tariff::new("CNY", rate, cap, free).unwrap(),
        covered: false,
        max_height_cm: None,
        modified_at: jiff::Timestamp::UNIX_EPOCH,
        report_interval: Duration::from_secs(60),
        reservation_policy: None,
    }
}

/// The report a spec asks for, and when the server received it.
fn first_report(cp: &CarPark, spec: &Spec) -> Option<(Report, Timestamp)> {
    let (standard, ev, age) = spec.report?;
    let scale = |f: f64, n: u32| i64::from((f * f64::from(n)).round() as u32);
    let mut free = vec![(SpaceCategory::Standard, scale(standard, spec.standard))];
    if spec.ev > 0 {
        free.push((SpaceCategory::EvCharging, scale(ev, spec.ev)));
    }
    let at = after(now(), -age);
    let body = ReportBody::snapshot(free).unwrap();
    Some((Report::new(cp.id.clone(), 1, at, body).unwrap(), at))
}

fn query(q: &QuerySpec, center: LatLng) -> NearbyQuery {
    let stay = q
        .stay_minutes
        .map(|m| Stay::new(now(), after(now(), m * 60)).unwrap());
    NearbyQuery {
        center,
        radius: Radius::new(q.radius_m, NearbyQuery::MAX_RADIUS_M).unwrap(),
        limit: q.limit,
        category: q.category,
        min_available: q.min_available,
        kinds: q.kinds.clone(),
        open_now: q.open_now,
        stay,
        max_price: q.max_price,
        include_stale: q.include_stale,
        include_no_data: q.include_no_data,
        arrival: None,
    }
    .validated()
    .unwrap()
}

/// Two distances are the same up to floating-point noise.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()) + 1e-6
}

/// Whether a brute-force ranking is unambiguous: distinct places are not within float
/// noise of each other or of the radius (exact ties, from equal places, are fine).
fn unambiguous(candidates: &[(f64, &CarPark)], radius_m: f64) -> bool {
    candidates.iter().all(|(d, _)| !close(*d, radius_m))
        && candidates.windows(2).all(|w| {
            let ((d1, a), (d2, b)) = (w[0], w[1]);
            a.location == b.location || !close(d1, d2)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn engine_find_nearby_equals_brute_force(
        clusters in prop::collection::vec((36.0..36.1f64, 120.3..120.4f64), 1..4),
        specs in prop::collection::vec(spec(), 0..250),
        q in query_spec(),
    ) {
        let clusters: Vec<_> = clusters
            .into_iter()
            .map(|(lat, lon)| LatLng::new(lat, lon).unwrap())
            .collect();
        let places: Vec<_> = specs.iter().map(|s| s.place.clone()).collect();
        let locations = locate(&clusters, &places);
        let engine = Engine::new(16);
        let mut city = Vec::new();
        for (i, (spec, at)) in specs.iter().zip(&locations).enumerate() {
            let cp = car_park(i, spec, *at);
            let mut live = Live::new(cp.capacity);
            if let Some((report, received)) = first_report(&cp, spec) {
                live.apply(&cp, &report, received).unwrap();
            }
            // One insert at a time, as registrations reach the engine.
            let record = CarParkState { car_park: Arc::new(cp.clone()), live: live.clone() };
            Replica::put(&engine, record, 1, now());
            city.push((cp, live));
        }
        let center = resolve(&clusters, &locations, &q.center);
        let query = query(&q, center);

        // Brute force: every car park, haversine distance, the shared filter.
        let mut admitted: Vec<(f64, &CarPark)> = city
            .iter()
            .filter(|(cp, live)| query.admits(cp, live, now()).is_some())
            .map(|(cp, _)| (center.distance_m(cp.location), cp))
            .collect();
        admitted.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        prop_assume!(unambiguous(&admitted, q.radius_m));
        let expected: Vec<_> = admitted
            .iter()
            .filter(|(d, _)| *d <= q.radius_m)
            .take(q.limit)
            .collect();

        let got = engine.nearby(&query, now());
        let got_ids: Vec<_> = got.iter().map(|n| n.car_park.id.as_str()).collect();
        let expected_ids: Vec<_> = expected.iter().map(|(_, cp)| cp.id.as_str()).collect();
        prop_assert_eq!(got_ids, expected_ids);
        for (n, (d, _)) in got.iter().zip(&expected) {
            prop_assert!(close(n.distance_m, *d), "{} vs {}", n.distance_m, d);
            prop_assert_eq!(n.admitted.available, n.availability.categories
                .iter()
                .find(|c| c.category == query.category)
                .map_or(0, |c| c.available));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// The same through the wire: one server per case, so fewer cases.
    #[test]
    fn grpc_find_nearby_equals_brute_force(
        spots in prop::collection::vec(
            (-2500.0..2500.0f64, -2500.0..2500.0f64, 0i32..=100, any::<bool>()),
            1..40,
        ),
        radius_m in 100.0..4000.0f64,
        limit in 1i32..=20,
        min_available in 0i32..60,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (got, places) = runtime.block_on(async {
            let server = TestServer::start().await;
            let mut places = Vec::new();
            let mut publisher = Publisher::open(&server, OPERATOR_A.1).await.unwrap();
            for (i, &(north_m, east_m, free, twin)) in spots.iter().enumerate() {
                let id = format!("cp{i:02}");
                // A twin sits exactly where the previous car park is.
                let (lat, lon) = match places.last() {
                    Some(&(_, lat, lon, _)) if twin => (lat, lon),
                    _ => offset(north_m, east_m),
                };
                register(&server, garage(&id, lat, lon)).await;
                publisher.exchange(vec![snapshot(&id, 1, free, server.now())]).await;
                places.push((id, lat, lon, free));
            }
            let got = find(&server, pb::FindNearbyRequest {
                radius_m,
                limit,
                min_available,
                ..near_here()
            }).await;
            (got, places)
        });

        let center = LatLng::new(here().latitude, here().longitude).unwrap();
        let mut candidates: Vec<(f64, &str, (f64, f64))> = places
            .iter()
            .filter(|p| p.3 >= min_available.max(1))
            .map(|(id, lat, lon, _)| {
                let d = center.distance_m(LatLng::new(*lat, *lon).unwrap());
                (d, id.as_str(), (*lat, *lon))
            })
            .collect();
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        prop_assume!(candidates.iter().all(|(d, _, _)| !close(*d, radius_m)));
        prop_assume!(candidates
            .windows(2)
            .all(|w| w[0].2 == w[1].2 || !close(w[0].0, w[1].0)));
        let expected: Vec<_> = candidates
            .iter()
            .filter(|(d, _, _)| *d <= radius_m)
            .take(limit as usize)
            .collect();
        prop_assert_eq!(
            ids_of(&got),
            expected.iter().map(|(_, id, _)| *id).collect::<Vec<_>>()
        );
        for (n, (d, _, _)) in got.iter().zip(&expected) {
            prop_assert!(close(n.distance_m, *d), "{} vs {}", n.distance_m, d);
        }
    }
}
