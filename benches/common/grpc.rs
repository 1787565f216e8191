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
