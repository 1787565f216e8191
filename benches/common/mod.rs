//! Synthetic cities shared by the benchmarks.

#![allow(dead_code)] // each benchmark uses its own part

pub mod grpc;

use citypark::{
    domain::{
        Capacity, CarPark, CarParkId, CarParkKind, LatLng, Live, OpeningHours, OperatorId,
        RegionId, Report, ReportBody, SpaceCategory, Tariff, TimeZoneName, Timestamp,
    },
    rng::Rng,
};

/// Degrees of latitude and longitude a city of `n` car parks spans around 36.07 N
/// 120.38 E: its area grows with n, so the density (and so the work of a query) stays
/// that of Qingdao's 2,350 car parks.
pub fn span(n: usize) -> f64 {
    0.25 * (n as f64 / 2_350.0).sqrt()
}

/// Car parks spread over a box whose area grows with n, so density stays city-like.
pub fn city(n: usize, rng: &mut Rng) -> Vec<CarPark> {
    let span = span(n);
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
                modified_at: jiff::Timestamp::UNIX_EPOCH,
                report_interval: CarPark::DEFAULT_REPORT_INTERVAL,
                reservation_policy: None,
            }
        })
        .collect()
}

/// A live state as if the car park had just reported `free` standard spaces, so it is
/// OPEN (and stays so for three report intervals).
pub fn reported(car_park: &CarPark, free: u32, now: Timestamp) -> Live {
    let mut live = Live::new(car_park.capacity);
    let body = ReportBody::snapshot([(
        SpaceCategory::Standard,
        i64::from(free.min(car_park.capacity.of(SpaceCategory::Standard))),
    )])
    .expect("a valid snapshot");
    let report = Report::new(car_park.id.clone(), 1, now, body).expect("a valid report");
    live.apply(car_park, &report, now)
        .expect("the report applies");
    live
}

/// The median of a run's figures (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
