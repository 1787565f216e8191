//! Latency under load: FindNearby's p50 and p99 at 70% of its peak throughput.
//!
//! `cargo bench --bench latency` starts the release `citypark serve --demo` as a child
//! process, measures FindNearby's peak (closed loop, 64 calls in flight), then offers
//! 70% of that peak open-loop, at evenly spaced send times, and measures each call from
//! its scheduled send time (so a stalled server cannot hide its queue: no coordinated
//! omission). One tonic client thread; the server has the other core. DESIGN.md asks
//! p99 ≤ 5× p50 there. Nothing here asserts a speed.

mod common;

use std::{
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use citypark::pb::{self, availability_client::AvailabilityClient};
use tonic::transport::Channel;

const GRPC: &str = "127.0.0.1:50301";
const METRICS: &str = "127.0.0.1:9801";
const ROUNDS: usize = 3;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn request() -> pb::FindNearbyRequest {
    pb::FindNearbyRequest {
        location: Some(pb::LatLng {
            latitude: 36.066,
            longitude: 120.383,
        }),
        ..Default::default()
    }
}

/// Calls per second with `inflight` calls always outstanding, over `seconds`.
async fn peak(channel: &Channel, inflight: usize, seconds: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..inflight)
        .map(|_| {
            let mut client = AvailabilityClient::new(channel.clone());
            let done = done.clone();
            tokio::spawn(async move {
                while Instant::now() < until {
                    client.find_nearby(request()).await.expect("find nearby");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Latencies (µs) of calls sent at `rate` per second for `seconds`, each measured from
/// its scheduled send time.
async fn open_loop(channel: &Channel, rate: f64, seconds: f64) -> Vec<u64> {
    let count = (rate * seconds) as usize;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(10);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..count {
        let due = start + gap * i as u32;
        tokio::time::sleep_until(due).await;
        let mut client = AvailabilityClient::new(channel.clone());
        let tx = tx.clone();
        tokio::spawn(async move {
            client.find_nearby(request()).await.expect("find nearby");
            let _ = tx.send(due.elapsed().as_micros() as u64);
        });
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(count);
    while let Some(l) = rx.recv().await {
        latencies.push(l);
    }
    latencies.sort_unstable();
    latencies
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // The server's history, a SQLite file, in a directory of this run's own.
    let data_dir = std::env::temp_dir().join(format!("citypark-latency-{}", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_citypark"))
        .args(["serve", "--data-dir"])
        .arg(&data_dir)
        .args([
            "--demo",
            "--grpc-addr",
            GRPC,
            "--metrics-addr",
            METRICS,
            "--http-addr",
            "127.0.0.1:0",
            "--log",
            "warn",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the citypark binary starts");
    let _server = Server(child);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{GRPC}")).expect("url");
        let channel = loop {
            if let Ok(channel) = endpoint.connect().await {
                break channel;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Let the demo register and report its city.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let mut rows = Vec::new();
        for round in 1..=ROUNDS {
            let peak = peak(&channel, 64, 4.0).await;
            let rate = 0.7 * peak;
            let latencies = open_loop(&channel, rate, 8.0).await;
            let (p50, p99) = (quantile(&latencies, 0.5), quantile(&latencies, 0.99));
            println!(
                "round {round}: peak {peak:.0} req/s; at {rate:.0} req/s: p50 {p50} µs, p90 {} µs, p99 {p99} µs, p99.9 {} µs, max {} µs; p99/p50 {:.1}",
                quantile(&latencies, 0.9),
                quantile(&latencies, 0.999),
                latencies[latencies.len() - 1],
                p99 as f64 / p50 as f64
            );
            rows.push((peak, p50 as f64, p99 as f64));
        }
        println!(
            "median: peak {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs, p99/p50 {:.1}",
            common::median(rows.iter().map(|r| r.0).collect()),
            common::median(rows.iter().map(|r| r.1).collect()),
            common::median(rows.iter().map(|r| r.2).collect()),
            common::median(rows.iter().map(|r| r.2 / r.1).collect())
        );
    });
}
