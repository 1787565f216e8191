//! Engine benchmark: memory per car park and FindNearby cost at city and national scale.
//!
//! `cargo bench --bench engine` loads 2,350 and then 1,000,000 synthetic car parks
//! around Qingdao, reports resident memory per car park and the mean time of a
//! nearest-available query (limit 10, radius 2 km) from random points. It is a
//! measurement, not a test: nothing here asserts a speed.

use std::{hint::black_box, time::Instant};

use citypark::{
    demo::Rng,
    domain::{
        Capacity, CarPark, CarParkId, CarParkKind, LatLng, Live, NearbyQuery, OpeningHours,
        OperatorId, Radius, RegionId, SpaceCategory, Tariff, TimeZoneName, Timestamp,
    },
    engine::Engine,
};

/// Car parks spread over a box whose area grows with n, so density stays city-like.
fn city(n: usize, rng: &mut Rng) -> Vec<CarPark> {
    let span = 0.25 * (n as f64 / 2_350.0).sqrt();
    let zone = TimeZoneName::parse("Asia/Shanghai").unwrap();
    let region = RegionId::parse("qingdao").unwrap();
    let operator = OperatorId::parse("bench-operator").unwrap();
    (0..n)
        .map(|i| {
            let lat = (36.07 + (rng.unit() - 0.5) * span).clamp(-89.0, 89.0);
            let lon = 120.38 + (rng.unit() - 0.5) * span;
            CarPark {
                id: CarParkId::parse(&format!("cp-{i:07}")).unwrap(),
                region: region.clone(),
                operator: operator.clone(),
                name: format!("Car park {i}"),
                address: format!("{} Example Road", i % 900 + 1),
                location: LatLng::new(lat, lon.clamp(-180.0, 180.0)).unwrap(),
                kind: CarParkKind::Garage,
                capacity: Capacity::new([
                    (SpaceCategory::Standard, 200 + (rng.next_u64() % 300) as i64),
                    (SpaceCategory::EvCharging, (rng.next_u64() % 20) as i64),
                ])
                .unwrap(),
                time_zone: zone.clone(),
                opening_hours: OpeningHours::always(),
                closed: false,
                tariff: Tariff::new("CNY", 500, 3000, 15).unwrap(),
                covered: true,
                max_height_cm: Some(210),
                report_interval: CarPark::DEFAULT_REPORT_INTERVAL,
            }
        })
        .collect()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn measure(n: usize) {
    let mut rng = Rng::new(n as u64);
    let now: Timestamp = "2026-11-30T02:00:00Z".parse().unwrap();
    let parks = city(n, &mut rng);
    let span = 0.25 * (n as f64 / 2_350.0).sqrt();
    let before = rss_bytes();
    let engine = Engine::new(1024);
    let start = Instant::now();
    engine
        .load(
            parks.into_iter().map(|cp| {
                let live = Live::new(cp.capacity);
                (cp, live)
            }),
            now,
        )
        .unwrap();
    let load = start.elapsed();
    let per_car_park = rss_bytes().saturating_sub(before) as f64 / n as f64;

    let queries = 20_000;
    let points: Vec<_> = (0..queries)
        .map(|_| {
            LatLng::new(
                36.07 + (rng.unit() - 0.5) * span,
                120.38 + (rng.unit() - 0.5) * span,
            )
            .unwrap()
        })
        .collect();
    let start = Instant::now();
    let mut results = 0;
    for center in points {
        let query = NearbyQuery {
            center,
            radius: Radius::new(2_000.0, NearbyQuery::MAX_RADIUS_M).unwrap(),
            limit: 10,
            category: SpaceCategory::Standard,
            min_available: 1,
            kinds: vec![],
            open_now: false,
            stay: None,
            max_price: None,
            include_stale: false,
            include_no_data: true,
        };
        results += black_box(engine.nearby(&query, now)).len();
    }
    let per_query = start.elapsed() / queries;
    println!(
        "| {n:>9} | {:>7.1} s | {:>6.0} B | {:>7.1} µs | {:>5.1} |",
        load.as_secs_f64(),
        per_car_park,
        per_query.as_secs_f64() * 1e6,
        results as f64 / f64::from(queries),
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing useful.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("| car parks | load    | memory/car park | FindNearby (engine) | results |");
    println!("|----------:|--------:|----------------:|--------------------:|--------:|");
    for n in [2_350, 1_000_000] {
        measure(n);
    }
}
