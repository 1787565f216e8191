//! Shared-parking benchmark, against the `Ping` echo baseline in the same run:
//! `SearchOffers` with the demo's 2,000 offers and again with 100,000 more (the search
//! walks an R-tree, so its cost should barely move), `FindNearby` with
//! `include_shared` against without, and `BookOffer` (each call a new driver).
//!
//! It needs a running `--demo` server (hosts and drivers sign with the demo secret);
//! `benches/shared.sh` starts one per store and runs this. Environment:
//! `CITYPARK_BENCH_SERVER`, `CITYPARK_BENCH_ROUNDS`, `CITYPARK_BENCH_SECONDS`.
//! Nothing here asserts a speed.

mod common;

use common::grpc::{TASKS, authed, ping};

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use citypark::{
    domain::DriverId,
    pb::{
        self, availability_client::AvailabilityClient, shared_parking_client::SharedParkingClient,
    },
    rng::Rng,
    tokens::{DEMO_SECRET, DriverTokens},
};
use tonic::transport::Channel;

/// Offers the bench adds to the demo's 2,000.
const MORE_OFFERS: usize = 100_000;
/// Drivers whose tokens the bench signs (a token per BookOffer call, round-robin).
const DRIVERS: usize = 20_000;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(who: &str) -> String {
    let id = DriverId::parse(who).expect("driver id");
    DriverTokens::issue(
        DEMO_SECRET.as_bytes(),
        &id,
        unix_now(),
        3 * 3_600,
        None,
        None,
    )
}

/// A point in Qingdao's urban districts (the demo city's box).
fn point(rng: &mut Rng) -> pb::LatLng {
    pb::LatLng {
        latitude: 36.05 + rng.unit() * 0.15,
        longitude: 120.33 + rng.unit() * 0.15,
    }
}

/// Tomorrow's quarter hour `q` (UTC day), as a timestamp.
fn quarter(q: u64) -> prost_types::Timestamp {
    let day = unix_now() / 86_400 + 1;
    prost_types::Timestamp {
        seconds: (day * 86_400 + q * 900) as i64,
        nanos: 0,
    }
}

/// Calls made per second (and refused) over `seconds`, from many tasks; call `n` is
/// `call(n)`, which says whether it succeeded.
async fn rate<F: Future<Output = bool> + Send + 'static>(
    seconds: f64,
    call: impl Fn(u64) -> F + Send + Sync + 'static,
) -> (f64, u64) {
    let (ok, refused, next) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let call = Arc::new(call);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (ok, refused, next, call) =
                (ok.clone(), refused.clone(), next.clone(), call.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if call(n).await {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    (
        ok.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        refused.load(Ordering::Relaxed),
    )
}

async fn search(channel: Channel, seconds: f64, driver: Arc<String>) -> f64 {
    rate(seconds, move |n| {
        let (mut client, driver) = (SharedParkingClient::new(channel.clone()), driver.clone());
        async move {
            let mut rng = Rng::new(n);
            let request = pb::SearchOffersRequest {
                location: Some(point(&mut rng)),
                radius_m: 1_000.0,
                // Tomorrow 20:00-21:00 in Qingdao (12:00-13:00 UTC).
                start_time: Some(quarter(48)),
                end_time: Some(quarter(52)),
                ..Default::default()
            };
            client.search_offers(authed(request, &driver)).await.is_ok()
        }
    })
    .await
    .0
}

async fn nearby(channel: Channel, seconds: f64, shared: bool) -> f64 {
    rate(seconds, move |n| {
        let mut client = AvailabilityClient::new(channel.clone());
        async move {
            let mut rng = Rng::new(n);
            let request = pb::FindNearbyRequest {
                location: Some(point(&mut rng)),
                radius_m: 1_000.0,
                include_shared: shared,
                stay: Some(pb::StayWindow {
                    start: Some(quarter(48)),
                    end: Some(quarter(52)),
                }),
                ..Default::default()
            };
            client.find_nearby(request).await.is_ok()
        }
    })
    .await
    .0
}

/// Adds `MORE_OFFERS` offers, open all day every day, one space each.
async fn add_offers(channel: Channel, run: &str) {
    let start = Instant::now();
    let hosts: Arc<Vec<String>> = Arc::new(
        (0..1_000)
            .map(|i| token(&format!("bench-host-{i}")))
            .collect(),
    );
    let run = run.to_owned();
    let made = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (mut client, hosts, run, made, next) = (
                SharedParkingClient::new(channel.clone()),
                hosts.clone(),
                run.clone(),
                made.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if n >= MORE_OFFERS {
                        return;
                    }
                    let mut rng = Rng::new(n as u64 ^ 0xB0FF);
                    let offer = pb::SharedOffer {
                        id: format!("b{run}-{n}"),
                        region: "qingdao".into(),
                        location: Some(point(&mut rng)),
                        address: format!("Bench space {n}"),
                        spaces: 1,
                        time_zone: "Asia/Shanghai".into(),
                        schedule: (1..=7)
                            .map(|weekday| pb::WeeklyPeriod {
                                weekday,
                                start_minute: 0,
                                end_minute: 1440,
                            })
                            .collect(),
                        hourly_rate_minor: 300,
                        ..Default::default()
                    };
                    let request = authed(
                        pb::OfferSpaceRequest { offer: Some(offer) },
                        &hosts[n % hosts.len()],
                    );
                    client.offer_space(request).await.expect("bench offer");
                    made.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("offer task");
    }
    println!(
        "added {} offers in {:.1} s",
        made.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
}

/// Bookings made per second: each call a driver of its own, a random bench offer, an
/// hour at a random quarter hour of tomorrow.
async fn book(
    channel: Channel,
    seconds: f64,
    run: Arc<String>,
    drivers: Arc<Vec<String>>,
    base: u64,
) -> (f64, u64) {
    rate(seconds, move |n| {
        let (mut client, run, drivers) = (
            SharedParkingClient::new(channel.clone()),
            run.clone(),
            drivers.clone(),
        );
        async move {
            let n = n + base;
            let mut rng = Rng::new(n ^ 0xB00C);
            let offer = rng.next_u64() as usize % MORE_OFFERS;
            let q = rng.next_u64() % 92;
            let request = pb::BookOfferRequest {
                offer_id: format!("b{run}-{offer}"),
                start_time: Some(quarter(q)),
                end_time: Some(quarter(q + 4)),
                plate: format!("B{:06}", n % 1_000_000),
                idempotency_key: format!("k{n}"),
            };
            client
                .book_offer(authed(request, &drivers[n as usize % drivers.len()]))
                .await
                .is_ok()
        }
    })
    .await
}

fn main() {
    let Some(common::grpc::Run {
        server,
        rounds,
        seconds,
        ..
    }) = common::grpc::run_from_env("shared", "demo-key-qd-parking-group", "3")
    else {
        return;
    };
    common::grpc::drive(&server, |channel| async move {
        let run = format!("{:x}", unix_now() % 0xFFFFFF);
        let searcher = Arc::new(token("bench-searcher"));
        let drivers: Arc<Vec<String>> = Arc::new(
            (0..DRIVERS)
                .map(|i| token(&format!("bench-driver-{run}-{i}")))
                .collect(),
        );
        let run = Arc::new(run);
        let ratios = |label: &str, rows: &[(f64, f64)]| {
            let r: Vec<f64> = rows.iter().map(|(p, x)| x / p).collect();
            println!("median {label}: {:.2}×E", common::median(r));
        };
        // With the demo's offers only.
        let mut small = Vec::new();
        for round in 1..=rounds {
            let p = ping(channel.clone(), seconds).await;
            let s = search(channel.clone(), seconds, searcher.clone()).await;
            println!(
                "round {round} (2,000 offers): Ping {p:.0}/s, SearchOffers {s:.0}/s, ratio {:.2}",
                s / p
            );
            small.push((p, s));
        }
        ratios("SearchOffers, 2,000 offers", &small);
        add_offers(channel.clone(), &run).await;
        let (mut big, mut with, mut without, mut books) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            let p = ping(channel.clone(), seconds).await;
            let s = search(channel.clone(), seconds, searcher.clone()).await;
            let n0 = nearby(channel.clone(), seconds, false).await;
            let n1 = nearby(channel.clone(), seconds, true).await;
            let (b, refused) = book(
                channel.clone(),
                seconds,
                run.clone(),
                drivers.clone(),
                round as u64 * 10_000_000,
            )
            .await;
            println!(
                "round {round} (102,000 offers): Ping {p:.0}/s, SearchOffers {s:.0}/s ({:.2}), \
                 FindNearby {n0:.0}/s ({:.2}), with include_shared {n1:.0}/s ({:.2}), \
                 BookOffer {b:.0} booked/s ({:.2}; {refused} refused)",
                s / p,
                n0 / p,
                n1 / p,
                b / p
            );
            big.push((p, s));
            without.push((p, n0));
            with.push((p, n1));
            books.push((p, b));
        }
        ratios("SearchOffers, 102,000 offers", &big);
        ratios("FindNearby", &without);
        ratios("FindNearby with include_shared", &with);
        ratios("BookOffer", &books);
    });
}
