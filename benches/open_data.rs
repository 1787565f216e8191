//! Open data's costs at city and national scale, against FindNearby's.
//!
//! `cargo bench --bench open_data` serves, in this process, an engine loaded with 2,350
//! and then 1,000,000 synthetic car parks (every one reported), and measures one
//! client's sequential calls: Ping (E) and FindNearby over gRPC, and the whole-city
//! GeoJSON snapshot (`/open-data/v1/car-parks.geojson`) over HTTP, read to its last
//! byte; then, on the city of 2,350, the Server-Sent Events fan-out: 1,000 consumers
//! of `/open-data/v1/changes` and one report, timed from the report's call to the
//! moment the last consumer has the change. Rounds are interleaved; it prints medians.
//! Nothing here asserts a speed.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use citypark::{
    app::{self, Backend, Settings},
    auth::ApiKeys,
    domain::{CarPark, CarParkState, OperatorId, Timestamp},
    engine::Engine,
    pb::{self, availability_client::AvailabilityClient, ingest_client::IngestClient},
    rng::Rng,
};
use http_body_util::BodyExt as _;
use tonic::transport::Channel;

const KEY: &str = "bench-key";
const CONSUMERS: usize = 1_000;

/// One GET read to its end on a fresh HTTP/1.1 connection: its body's length.
async fn get(addr: std::net::SocketAddr, path: &str) -> usize {
    let mut sender = connect(addr).await;
    let request = http::Request::get(path)
        .header("host", "bench")
        .body(http_body_util::Empty::<axum::body::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("a response");
    assert_eq!(response.status(), 200);
    response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes()
        .len()
}

async fn connect(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<axum::body::Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(connection);
    sender
}

/// Seconds per call over `calls` sequential calls.
async fn per_call<F: std::future::Future<Output = ()>>(
    calls: usize,
    mut call: impl FnMut() -> F,
) -> f64 {
    let started = Instant::now();
    for _ in 0..calls {
        call().await;
    }
    started.elapsed().as_secs_f64() / calls as f64
}

fn nearby() -> pb::FindNearbyRequest {
    pb::FindNearbyRequest {
        location: Some(pb::LatLng {
            latitude: 36.066,
            longitude: 120.383,
        }),
        radius_m: 2_000.0,
        limit: 10,
        ..Default::default()
    }
}

/// Seconds from a report's call until all `consumers` have the change.
async fn fan_out(
    http: std::net::SocketAddr,
    channel: Channel,
    consumers: usize,
    rounds: usize,
) -> Vec<f64> {
    let received = Arc::new(AtomicUsize::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(tokio::sync::Notify::new());
    for _ in 0..consumers {
        let (received, connected, all) = (received.clone(), connected.clone(), all.clone());
        tokio::spawn(async move {
            let mut sender = connect(http).await;
            let request = http::Request::get("/open-data/v1/changes")
                .header("host", "bench")
                .body(http_body_util::Empty::<axum::body::Bytes>::new())
                .unwrap();
            let mut body = sender
                .send_request(request)
                .await
                .expect("a stream")
                .into_body();
            connected.fetch_add(1, Ordering::SeqCst);
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(bytes) = frame.into_data() else {
                    continue;
                };
                // One event per report: the probe's.
                let events = bytes.windows(10).filter(|w| w == b"cp-0000000").count();
                if events > 0 && received.fetch_add(events, Ordering::SeqCst) + events == consumers
                {
                    all.notify_one();
                }
            }
        });
    }
    while connected.load(Ordering::SeqCst) < consumers {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ingest = IngestClient::new(channel);
    let mut times = Vec::new();
    for round in 0..rounds {
        received.store(0, Ordering::SeqCst);
        let mut request = tonic::Request::new(pb::ReportRequest {
            report: Some(pb::OccupancyReport {
                car_park_id: "cp-0000000".into(),
                sequence: 2 + round as u64,
                observed_at: Some(prost_types::Timestamp {
                    seconds: Timestamp::now().as_second(),
                    nanos: 0,
                }),
                body: Some(pb::occupancy_report::Body::Snapshot(pb::SnapshotReport {
                    free: vec![pb::CategoryCount {
                        category: pb::SpaceCategory::Standard.into(),
                        count: 10 + round as i32,
                    }],
                })),
                ..Default::default()
            }),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
        let notified = all.notified();
        let started = Instant::now();
        ingest.report(request).await.expect("the report is applied");
        tokio::time::timeout(Duration::from_secs(30), notified)
            .await
            .expect("every consumer has the change");
        times.push(started.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    times
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "| car parks | Ping (E) µs | FindNearby µs | GeoJSON snapshot ms | bytes | snapshot / FindNearby | snapshot / E |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (n, rounds) in [(2_350, 9), (1_000_000, 3)] {
        let now = Timestamp::now();
        let mut rng = Rng::new(n as u64);
        let engine = Arc::new(Engine::new(4096));
        let city = common::city(n, &mut rng).into_iter().map(|cp| CarPark {
            modified_at: jiff::Timestamp::UNIX_EPOCH,
            report_interval: std::time::Duration::from_secs(86_400),
            ..cp
        });
        engine
            .load(
                city.map(|cp| {
                    let live = common::reported(&cp, 120, now);
                    (
                        CarParkState {
                            car_park: Arc::new(cp),
                            live,
                        },
                        1,
                    )
                }),
                now,
            )
            .expect("load");
        let (grpc, http) = runtime.block_on(async {
            (
                tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
                tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            )
        });
        let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
        let mut keys = ApiKeys::default();
        keys.insert_plain(OperatorId::parse("bench-operator").unwrap(), KEY);
        let mut settings = Settings {
            api_keys: keys,
            ..Settings::default()
        };
        // Every consumer comes from this one address.
        settings.limits.max_watchers_per_client = settings.limits.max_watchers;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(app::run(
            grpc,
            None,
            Some(http),
            Backend::on_engine(engine),
            settings,
            async {
                let _ = stopped.await;
            },
        ));
        runtime.block_on(async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let channel = Channel::from_shared(format!("http://{grpc_addr}"))
                .unwrap()
                .connect()
                .await
                .expect("connect");
            let client = AvailabilityClient::new(channel.clone());
            let (mut pings, mut finds, mut snaps, mut bytes) = (vec![], vec![], vec![], 0);
            for _ in 0..rounds {
                pings.push(
                    per_call(2_000, || {
                        let mut c = client.clone();
                        async move {
                            c.ping(pb::PingRequest::default()).await.unwrap();
                        }
                    })
                    .await,
                );
                finds.push(
                    per_call(2_000, || {
                        let mut c = client.clone();
                        async move {
                            c.find_nearby(nearby()).await.unwrap();
                        }
                    })
                    .await,
                );
                let started = Instant::now();
                bytes = get(http_addr, "/open-data/v1/car-parks.geojson").await;
                snaps.push(started.elapsed().as_secs_f64());
            }
            let (ping, find, snap) = (
                common::median(pings),
                common::median(finds),
                common::median(snaps),
            );
            println!(
                "| {n} | {:.0} | {:.0} | {:.1} | {bytes} | {:.0} | {:.0} |",
                ping * 1e6,
                find * 1e6,
                snap * 1e3,
                snap / find,
                snap / ping
            );
            if n == 2_350 {
                let times = fan_out(http_addr, channel, CONSUMERS, 7).await;
                let ping_ms = ping * 1e3;
                let fan = common::median(times.clone());
                eprintln!(
                    "SSE fan-out to {CONSUMERS} consumers: median {:.1} ms ({:.0}×E), runs {:?} ms",
                    fan * 1e3,
                    fan * 1e3 / ping_ms,
                    times
                        .iter()
                        .map(|t| (t * 1e4).round() / 10.0)
                        .collect::<Vec<_>>()
                );
            }
        });
        let _ = stop.send(());
        let _ = runtime.block_on(server);
    }
}
