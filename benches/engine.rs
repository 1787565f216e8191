//! Engine benchmark: memory per car park and FindNearby cost at city and national scale.
//!
//! `cargo bench --bench engine` loads 2,350 and then 1,000,000 synthetic car parks
//! around Qingdao, reports resident memory per car park and the mean time of a
//! nearest-available query (limit 10, radius 2 km) from random points. It is a
//! measurement, not a test: nothing here asserts a speed.

mod common;

use std::{hint::black_box, time::Instant};

use citypark::{
    domain::{CarParkState, LatLng, NearbyQuery, Radius, SpaceCategory, Timestamp},
    engine::Engine,
    rng::Rng,
};
use common::city;

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
    let span = common::span(n);
    let before = rss_bytes();
    let engine = Engine::new(1024);
    let start = Instant::now();
    engine
        .load(parks.into_iter().map(|cp| (CarParkState::new(cp), 1)), now)
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
            arrival: None,
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
