//! What the gRPC benchmarks share: an authorised request, the Ping baseline (E) and a
//! value read off the server's /metrics.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use citypark::pb::{self, availability_client::AvailabilityClient};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

/// What a gRPC benchmark is told by its script: the server, an operator key, rounds,
/// seconds per run and the server's /metrics.
pub struct Run {
    pub server: String,
    pub key: String,
    pub rounds: usize,
    pub seconds: f64,
    pub metrics: Option<String>,
}

/// The run `benches/<name>.sh` describes through `CITYPARK_BENCH_*`; `None` (after
/// saying so) when started without a server, as `cargo bench` does.
pub fn run_from_env(name: &str, default_key: &str, default_rounds: &str) -> Option<Run> {
    if std::env::args().any(|a| a == "--list") {
        return None;
    }
    let env = |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.to_owned());
    let Ok(server) = std::env::var("CITYPARK_BENCH_SERVER") else {
        eprintln!("benches/{name} needs a running server: use benches/{name}.sh");
        return None;
    };
    Some(Run {
        server,
        key: env("CITYPARK_BENCH_KEY", default_key),
        rounds: env("CITYPARK_BENCH_ROUNDS", default_rounds)
            .parse()
            .expect("rounds"),
        seconds: env("CITYPARK_BENCH_SECONDS", "3").parse().expect("seconds"),
        metrics: std::env::var("CITYPARK_BENCH_METRICS").ok(),
    })
}

/// Runs the client on one thread (the server keeps the other core), connected.
pub fn drive<F: std::future::Future<Output = ()>>(server: &str, body: impl FnOnce(Channel) -> F) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(server.to_owned())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        body(channel).await
    });
}

/// Concurrent tasks that drive a measurement.
pub const TASKS: usize = 64;

/// `message` with `authorization: Bearer <credential>`.
pub fn authed<T>(message: T, credential: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = MetadataValue::try_from(format!("Bearer {credential}")).expect("ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Ping calls per second over `seconds`, from many concurrent tasks: E.
pub async fn ping(channel: Channel, seconds: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let mut client = AvailabilityClient::new(channel.clone());
            let done = done.clone();
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    client.ping(pb::PingRequest::default()).await.expect("ping");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    for t in tasks {
        t.await.expect("ping task");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Registers `count` garages of 500 standard spaces as the operator of `key`, with ids
/// `<prefix>-<i>`, in a line north from 36.0 N at `longitude`; returns their ids.
pub async fn register_garages(
    channel: Channel,
    key: &str,
    prefix: &str,
    count: usize,
    longitude: f64,
) -> Vec<String> {
    let mut registry = pb::registry_client::RegistryClient::new(channel);
    let mut ids = Vec::new();
    for i in 0..count {
        let id = format!("{prefix}-{i:05}");
        let car_park = pb::CarPark {
            id: id.clone(),
            region: "qingdao".into(),
            name: format!("Bench car park {i}"),
            location: Some(pb::LatLng {
                latitude: 36.0 + (i as f64) * 1e-4,
                longitude,
            }),
            kind: pb::CarParkKind::Garage.into(),
            capacity: vec![pb::CategoryCapacity {
                category: pb::SpaceCategory::Standard.into(),
                spaces: 500,
            }],
            time_zone: "Asia/Shanghai".into(),
            ..Default::default()
        };
        let request = pb::UpsertCarParkRequest {
            car_park: Some(car_park),
        };
        registry
            .upsert_car_park(authed(request, key))
            .await
            .expect("bench car park registers");
        ids.push(id);
    }
    ids
}

/// The value of the first /metrics line at `url` starting with `prefix`.
pub async fn metric(url: &str, prefix: &str) -> Option<f64> {
    let url = url.strip_prefix("http://")?;
    let (host, path) = url
        .split_once('/')
        .map_or((url, "metrics".to_owned()), |(h, p)| (h, p.to_owned()));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
    s.write_all(format!("GET /{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
}
