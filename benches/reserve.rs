//! Reservation benchmark: successful `CreateReservation` calls per second against the
//! `Ping` echo baseline, driven by the same tonic client in the same run; Redis round
//! trips per successful reservation; and the race (1,000 drivers at once for a car
//! park with quota 20): its wall time and p50/p99 latency.
//!
//! It needs a running server started with `--demo` (it signs driver tokens with the
//! demo secret); `benches/reserve.sh` starts one per store and runs this. Environment:
//! `CITYPARK_BENCH_SERVER`, `CITYPARK_BENCH_KEY` (an operator API key the server
//! knows), `CITYPARK_BENCH_METRICS` (optional: Redis round trips),
//! `CITYPARK_BENCH_ROUNDS`, `CITYPARK_BENCH_SECONDS`. Nothing here asserts a speed.

mod common;

use common::grpc::{TASKS, authed, metric, ping};

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use citypark::{
    domain::DriverId,
    pb::{self, registry_client::RegistryClient, reservations_client::ReservationsClient},
    tokens::{DEMO_SECRET, DriverTokens},
};
use tonic::transport::Channel;

/// Car parks the creates spread over, each with a quota of 50.
const CAR_PARKS: usize = 200;
const RACERS: usize = 1_000;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(driver: &str) -> String {
    let id = DriverId::parse(driver).expect("driver id");
    DriverTokens::issue(DEMO_SECRET.as_bytes(), &id, unix_now(), 3_600, None, None)
}

fn garage(id: &str, i: usize, quota: i32) -> pb::CarPark {
    pb::CarPark {
        id: id.to_owned(),
        region: "qingdao".into(),
        name: format!("Bench garage {i}"),
        location: Some(pb::LatLng {
            latitude: 36.0 + (i as f64) * 1e-4,
            longitude: 120.3,
        }),
        kind: pb::CarParkKind::Garage.into(),
        capacity: vec![pb::CategoryCapacity {
            category: pb::SpaceCategory::Standard.into(),
            spaces: 500,
        }],
        time_zone: "Asia/Shanghai".into(),
        reservation_policy: Some(pb::ReservationPolicy {
            quota: vec![pb::CategoryCapacity {
                category: pb::SpaceCategory::Standard.into(),
                spaces: quota,
            }],
            max_days_ahead: 30,
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn register(channel: Channel, key: &str, ids: &[(String, i32)]) {
    let mut registry = RegistryClient::new(channel);
    for (i, (id, quota)) in ids.iter().enumerate() {
        registry
            .upsert_car_park(authed(
                pb::UpsertCarParkRequest {
                    car_park: Some(garage(id, i, *quota)),
                },
                key,
            ))
            .await
            .expect("bench car park registers");
    }
}

/// Successful creates per second over `seconds`: every call a new driver, a
/// 15-minute window in the next 30 days, at one of the car parks.
async fn create(
    channel: Channel,
    car_parks: &[String],
    tokens: &Arc<Vec<String>>,
    next: &Arc<AtomicU64>,
    seconds: f64,
) -> (f64, u64) {
    let made = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let base = SystemTime::now() + Duration::from_secs(3_600);
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let mut client = ReservationsClient::new(channel.clone());
        let made = made.clone();
        let car_parks = car_parks.to_vec();
        let tokens = tokens.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut refused = 0u64;
            while Instant::now() < deadline {
                // Each call a driver of its own (a driver may hold 3 at most).
                let n = next.fetch_add(1, Ordering::Relaxed);
                let slot = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) % (29 * 96);
                let from = base + Duration::from_secs(slot * 900);
                let request = pb::CreateReservationRequest {
                    car_park_id: car_parks[(n as usize) % car_parks.len()].clone(),
                    category: pb::SpaceCategory::Standard.into(),
                    start_time: Some(from.into()),
                    end_time: Some((from + Duration::from_secs(900)).into()),
                    plate: format!("B{:06}", n % 1_000_000),
                    idempotency_key: format!("k{n}"),
                };
                let token = &tokens[(n as usize) % tokens.len()];
                match client.create_reservation(authed(request, token)).await {
                    Ok(_) => {
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        if refused == 0 {
                            eprintln!("refused: {:?} {}", status.code(), status.message());
                        }
                        refused += 1
                    }
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.expect("create task");
    }
    (
        made.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        refused,
    )
}

/// The race: RACERS drivers at once for one window at a car park with quota 20.
async fn race(channel: Channel, car_park: &str) {
    let from = SystemTime::now() + Duration::from_secs(7_200);
    let start = Instant::now();
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let mut client = ReservationsClient::new(channel.clone());
            let request = pb::CreateReservationRequest {
                car_park_id: car_park.to_owned(),
                category: pb::SpaceCategory::Standard.into(),
                start_time: Some(from.into()),
                end_time: Some((from + Duration::from_secs(3_600)).into()),
                plate: format!("R{i:05}"),
                idempotency_key: "race".into(),
            };
            let token = token(&format!("racer-{i}"));
            tokio::spawn(async move {
                let t = Instant::now();
                let ok = client
                    .create_reservation(authed(request, &token))
                    .await
                    .is_ok();
                (ok, t.elapsed())
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut reserved = 0;
    for t in tasks {
        let (ok, took) = t.await.expect("racer");
        reserved += usize::from(ok);
        latencies.push(took);
    }
    let wall = start.elapsed();
    latencies.sort();
    let q = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "race: {RACERS} drivers, quota 20: {reserved} reserved, wall {:.0} ms, p50 {:.1} ms, p99 {:.1} ms",
        wall.as_secs_f64() * 1e3,
        q(0.5).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3
    );
}

fn main() {
    let Some(common::grpc::Run {
        server,
        key,
        rounds,
        seconds,
        metrics,
    }) = common::grpc::run_from_env("reserve", "demo-key-qd-parking-group", "3")
    else {
        return;
    };
    common::grpc::drive(&server, |channel| async move {
        let run = format!("{:x}", unix_now());
        let car_parks: Vec<(String, i32)> = (0..CAR_PARKS)
            .map(|i| (format!("rsv-{run}-{i:04}"), 50))
            .chain([(format!("race-{run}"), 20)])
            .collect();
        register(channel.clone(), &key, &car_parks).await;
        let ids: Vec<String> = car_parks[..CAR_PARKS]
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        // A driver holds at most 3: enough drivers that none reaches the limit.
        let tokens: Arc<Vec<String>> = Arc::new(
            (0..100_000)
                .map(|i| token(&format!("bench-{run}-{i}")))
                .collect(),
        );
        let next = Arc::new(AtomicU64::new(0));
        let trips = "citypark_redis_round_trips_total{op=\"reservation\"}";
        let created = "citypark_reservations_total{result=\"created\",reason=\"\"}";
        // A counter not yet exported (nothing created so far) is 0.
        let before = match &metrics {
            Some(m) => Some((
                metric(m, trips).await.unwrap_or(0.0),
                metric(m, created).await.unwrap_or(0.0),
            )),
            None => None,
        };
        let (mut pings, mut rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            let p = ping(channel.clone(), seconds).await;
            let (r, refused) = create(channel.clone(), &ids, &tokens, &next, seconds).await;
            println!(
                "round {round}: Ping {p:.0} req/s, CreateReservation {r:.0} reserved/s ({refused} refused), ratio {:.2}",
                r / p
            );
            pings.push(p);
            rates.push(r);
            ratios.push(r / p);
        }
        println!(
            "median: Ping (E) {:.0} req/s, CreateReservation {:.0} reserved/s, ratio {:.2}",
            common::median(pings),
            common::median(rates),
            common::median(ratios)
        );
        if let (Some(m), Some((t0, c0))) = (&metrics, before)
            && let (Some(t1), Some(c1)) = (metric(m, trips).await, metric(m, created).await)
            && c1 > c0
        {
            println!(
                "redis: {:.2} round trips per reservation ({:.0} round trips, {:.0} reservations)",
                (t1 - t0) / (c1 - c0),
                t1 - t0,
                c1 - c0
            );
        }
        race(channel.clone(), &car_parks[CAR_PARKS].0).await;
    });
}
