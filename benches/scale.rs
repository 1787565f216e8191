//! FindNearby through the whole gRPC stack at city and national scale.
//!
//! `cargo bench --bench scale` serves, in this process, an engine loaded with 2,350
//! and then 1,000,000 synthetic car parks (every one reported, so every one counts),
//! and drives each with h2load (Debian's `nghttp2-client`): Ping and FindNearby,
//! interleaved, several rounds; it prints the medians and FindNearby / Ping. Nothing
//! here asserts a speed.

mod common;

use std::{process::Command, sync::Arc, time::Duration};

use citypark::{
    app::{self, Backend, Settings},
    domain::{CarPark, CarParkState, Timestamp},
    engine::Engine,
    rng::Rng,
};

const ROUNDS: usize = 5;
const REQUESTS: &str = "50000";

/// One gRPC frame: flag byte 0 (uncompressed), 4-byte big-endian length, protobuf.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// FindNearby{location: {36.066, 120.383}}, encoded by hand to stay independent of prost.
fn nearby_request() -> Vec<u8> {
    let mut latlng = vec![0x09];
    latlng.extend_from_slice(&36.066f64.to_le_bytes());
    latlng.push(0x11);
    latlng.extend_from_slice(&120.383f64.to_le_bytes());
    let mut message = vec![0x0a, latlng.len() as u8];
    message.extend_from_slice(&latlng);
    frame(&message)
}

/// Requests per second of one h2load run.
fn h2load(port: u16, method: &str, body: &std::path::Path) -> f64 {
    let out = Command::new("h2load")
        .args(["-n", REQUESTS, "-c", "4", "-m", "32", "-t", "1"])
        .args([
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-d",
        ])
        .arg(body)
        .arg(format!(
            "http://127.0.0.1:{port}/citypark.v1.Availability/{method}"
        ))
        .output()
        .expect("h2load runs (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .expect("h2load finished");
    line.split_whitespace()
        .nth(3)
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .expect("req/s")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if Command::new("h2load").arg("--version").output().is_err() {
        eprintln!("benches/scale needs h2load: apt-get install -y nghttp2-client");
        return;
    }
    let dir = std::env::temp_dir().join(format!("citypark-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (ping, nearby) = (dir.join("ping.bin"), dir.join("nearby.bin"));
    std::fs::write(&ping, frame(&[])).expect("write");
    std::fs::write(&nearby, nearby_request()).expect("write");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!("| car parks | Ping (E) req/s | FindNearby req/s | FindNearby / E |");
    println!("|----------:|---------------:|-----------------:|---------------:|");
    for n in [2_350, 1_000_000] {
        let now = Timestamp::now();
        let mut rng = Rng::new(n as u64);
        let engine = Arc::new(Engine::new(4096));
        let city = common::city(n, &mut rng).into_iter().map(|cp| CarPark {
            // A day between reports: the city stays OPEN for the whole run.
            modified_at: jiff::Timestamp::UNIX_EPOCH,
            report_interval: Duration::from_secs(86_400),
            reservation_policy: None,
            ..cp
        });
        engine
            .load(
                city.map(|cp| {
                    let live = common::reported(&cp, 120, now);
                    let car_park = Arc::new(cp);
                    (CarParkState { car_park, live }, 1)
                }),
                now,
            )
            .expect("load");
        let backend = Backend::on_engine(engine);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(app::run(
            listener,
            None,
            None,
            backend,
            Settings::default(),
            async {
                let _ = stopped.await;
            },
        ));
        std::thread::sleep(Duration::from_millis(200));
        h2load(port, "Ping", &ping);
        let (mut pings, mut finds, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let p = h2load(port, "Ping", &ping);
            let f = h2load(port, "FindNearby", &nearby);
            pings.push(p);
            finds.push(f);
            ratios.push(f / p);
        }
        println!(
            "| {n:>9} | {:>14.0} | {:>16.0} | {:>14.2} |",
            common::median(pings),
            common::median(finds),
            common::median(ratios)
        );
        let _ = stop.send(());
        runtime
            .block_on(server)
            .expect("server task")
            .expect("server");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
