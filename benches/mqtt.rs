//! MQTT ingest benchmark: reports applied a second from one device connection through
//! a real broker, and the delay from a device's publish to its ack (p50, p99), against
//! the `Ping` echo baseline of the same server from the same client.
//!
//! It needs a running server with `--mqtt-url` and its broker; `benches/mqtt.sh`
//! starts both per store. Environment: as `benches/ingest.rs`, plus
//! `CITYPARK_BENCH_MQTT_PORT` (the broker's port on 127.0.0.1) and
//! `CITYPARK_BENCH_OPERATOR` (the operator id the key belongs to). Nothing here
//! asserts a speed.

mod common;

use common::grpc::ping;

use std::time::{Duration, Instant, SystemTime};

use rumqttc::v5::{
    AsyncClient, Event, MqttOptions,
    mqttbytes::{QoS, v5::Packet},
};
use tokio::sync::mpsc;

const CAR_PARKS: usize = 2_000;
/// Reports published and not yet acked, in the throughput runs: the broker's and the
/// server's queues kept full.
const IN_FLIGHT: usize = 1_000;
/// Reports a second at most in the latency runs, one at a time: the delay is the
/// path's, not a queue's.
const PACED: f64 = 500.0;

/// A device: one broker connection, its acks (car park, sequence, applied) on a channel.
struct Device {
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<(String, u64, bool)>,
}

async fn device(port: u16, operator: &str) -> Device {
    let mut options = MqttOptions::new(
        format!("bench-device-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    // A device that sends each report as it is made, not held by Nagle's algorithm for
    // the broker's TCP ack of the one before.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options
        .set_network_options(network)
        .set_keep_alive(Duration::from_secs(30))
        .set_outgoing_inflight_upper_limit(u16::MAX)
        .set_request_channel_capacity(IN_FLIGHT * 2);
    let (client, mut events) = AsyncClient::new(options, IN_FLIGHT * 2);
    let (tx, acks) = mpsc::unbounded_channel();
    let (up, connected) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut up = Some(up);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(up) = up.take() {
                        let _ = up.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let ack: serde_json::Value =
                        serde_json::from_slice(&p.payload).expect("a JSON ack");
                    let id = ack["carParkId"].as_str().unwrap_or_default().to_owned();
                    let sequence = ack["sequence"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let applied = ack["result"] == "REPORT_RESULT_APPLIED";
                    let _ = tx.send((id, sequence, applied));
                }
                Ok(_) => {}
                Err(error) => panic!("the bench's broker connection failed: {error}"),
            }
        }
    });
    connected.await.expect("connected");
    client
        .subscribe(format!("citypark/v1/acks/{operator}/#"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(300)).await;
    Device { client, acks }
}

fn report(sequence: u64) -> Vec<u8> {
    let now = jiff::Timestamp::now();
    format!(
        r#"{{"sequence":"{sequence}","observedAt":"{now}","delta":{{"entries":[{{"category":"SPACE_CATEGORY_STANDARD","count":1}}],"exits":[{{"category":"SPACE_CATEGORY_STANDARD","count":1}}]}}}}"#
    )
    .into_bytes()
}

impl Device {
    async fn publish(&self, operator: &str, id: &str, sequence: u64) {
        self.client
            .publish(
                format!("citypark/v1/reports/{operator}/{id}"),
                QoS::AtLeastOnce,
                false,
                report(sequence),
            )
            .await
            .expect("publish");
    }

    /// Reports applied a second over `seconds`, IN_FLIGHT at a time.
    async fn throughput(
        &mut self,
        operator: &str,
        ids: &[String],
        sequences: &mut [u64],
        seconds: f64,
    ) -> f64 {
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let start = Instant::now();
        let (mut cursor, mut outstanding, mut applied) = (0usize, 0usize, 0u64);
        loop {
            while outstanding < IN_FLIGHT && Instant::now() < deadline {
                let i = cursor % ids.len();
                cursor += 1;
                sequences[i] += 1;
                self.publish(operator, &ids[i], sequences[i]).await;
                outstanding += 1;
            }
            if outstanding == 0 {
                break;
            }
            let ack = tokio::time::timeout(Duration::from_secs(10), self.acks.recv()).await;
            let Ok(Some((_, _, ok))) = ack else {
                panic!("no ack for 10 s with {outstanding} reports outstanding");
            };
            outstanding -= 1;
            applied += u64::from(ok);
        }
        applied as f64 / start.elapsed().as_secs_f64()
    }

    /// Publish-to-ack delays (ms) over `seconds`: one report at a time, at most PACED a
    /// second, each timed from its publish to its ack.
    async fn latency(
        &mut self,
        operator: &str,
        ids: &[String],
        sequences: &mut [u64],
        seconds: f64,
    ) -> Vec<f64> {
        let every = Duration::from_secs_f64(1.0 / PACED);
        let count = (seconds * PACED) as usize;
        let mut delays = Vec::with_capacity(count);
        for n in 0..count {
            let i = n % ids.len();
            sequences[i] += 1;
            let sent = Instant::now();
            self.publish(operator, &ids[i], sequences[i]).await;
            loop {
                let ack = tokio::time::timeout(Duration::from_secs(10), self.acks.recv()).await;
                let Ok(Some((id, sequence, _))) = ack else {
                    panic!("no ack for 10 s");
                };
                if id == ids[i] && sequence == sequences[i] {
                    break;
                }
            }
            let delay = sent.elapsed();
            delays.push(delay.as_secs_f64() * 1e3);
            tokio::time::sleep(every.saturating_sub(delay)).await;
        }
        delays
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let Some(common::grpc::Run {
        server,
        key,
        rounds,
        seconds,
        ..
    }) = common::grpc::run_from_env("mqtt", "bench-key", "5")
    else {
        return;
    };
    let port: u16 = std::env::var("CITYPARK_BENCH_MQTT_PORT")
        .expect("CITYPARK_BENCH_MQTT_PORT")
        .parse()
        .expect("a port");
    let operator = std::env::var("CITYPARK_BENCH_OPERATOR").unwrap_or_else(|_| "bench".into());
    common::grpc::drive(&server, |channel| async move {
        let run = format!(
            "{:x}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
        let prefix = format!("mqtt-{run}");
        let ids =
            common::grpc::register_garages(channel.clone(), &key, &prefix, CAR_PARKS, 120.4).await;
        let mut sequences = vec![0u64; ids.len()];
        let mut device = device(port, &operator).await;
        let (mut pings, mut rates, mut ratios, mut p50s, mut p99s) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            let p = ping(channel.clone(), seconds).await;
            let r = device
                .throughput(&operator, &ids, &mut sequences, seconds)
                .await;
            let mut delays = device
                .latency(&operator, &ids, &mut sequences, seconds)
                .await;
            delays.sort_by(f64::total_cmp);
            let (p50, p99) = (percentile(&delays, 0.5), percentile(&delays, 0.99));
            println!(
                "round {round}: Ping {p:.0} req/s, MQTT {r:.0} reports/s (ratio {:.2}), publish to ack one at a time p50 {p50:.2} ms, p99 {p99:.2} ms",
                r / p
            );
            pings.push(p);
            rates.push(r);
            ratios.push(r / p);
            p50s.push(p50);
            p99s.push(p99);
        }
        println!(
            "median: Ping {:.0} req/s, MQTT {:.0} reports/s from one connection, ratio {:.2}; publish to ack p50 {:.2} ms, p99 {:.2} ms",
            common::median(pings),
            common::median(rates),
            common::median(ratios),
            common::median(p50s),
            common::median(p99s),
        );
    });
}
