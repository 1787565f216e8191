//! Ingest benchmark: occupancy reports per second over `Ingest.Publish` against the
//! `Ping` echo baseline, driven by the same tonic client in the same run.
//!
//! It needs a running server; `benches/ingest.sh` starts one per store (memory,
//! durable, Redis) and runs this. Environment: `CITYPARK_BENCH_SERVER` (gRPC URL),
//! `CITYPARK_BENCH_KEY` (an operator API key the server knows), `CITYPARK_BENCH_METRICS`
//! (metrics URL, optional: reports per Redis round trip), `CITYPARK_BENCH_ROUNDS`,
//! `CITYPARK_BENCH_SECONDS`, and `CITYPARK_BENCH_PLATES=1` to send gate reports instead:
//! each an entry or an exit of one car with its plate, so every report opens or closes
//! a parking session (the plates are not linked: sessions close at the barrier).
//! Nothing here asserts a speed.

mod common;

use common::grpc::{authed, metric, ping};

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use citypark::pb::{self, ingest_client::IngestClient};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::transport::Channel;

const CAR_PARKS: usize = 2_000;
const STREAMS: usize = 8;
const BATCH: usize = 10;
const WINDOW: usize = 8;

fn category(category: pb::SpaceCategory, n: i32) -> pb::CategoryCount {
    pb::CategoryCount {
        category: category.into(),
        count: n,
    }
}

/// A car park's gate in the plates mode: the car inside (its number), and the next
/// car's number.
#[derive(Debug, Clone, Copy, Default)]
struct Gate {
    inside: Option<u32>,
    next: u32,
}

impl Gate {
    /// The next report's delta: the car inside leaves, or a new one enters.
    fn next_delta(&mut self, car_park: usize) -> pb::DeltaReport {
        let (car, entry) = match self.inside.take() {
            Some(car) => (car, false),
            None => {
                self.next += 1;
                self.inside = Some(self.next);
                (self.next, true)
            }
        };
        let one = vec![category(pb::SpaceCategory::Standard, 1)];
        let (entries, exits) = if entry { (one, vec![]) } else { (vec![], one) };
        pb::DeltaReport {
            entries,
            exits,
            plate: format!("鲁B{car_park:04}{:03}", car % 1000),
            plate_color: pb::PlateColor::Blue.into(),
            lane: String::new(),
        }
    }
}

/// Applied reports per second over `seconds`: STREAMS streams, each on its own share
/// of the car parks, BATCH reports a message, WINDOW messages in flight. With `gates`,
/// each report is a car entering or leaving with its plate.
async fn publish(
    channel: Channel,
    key: &str,
    ids: &[String],
    sequences: &mut [u64],
    gates: Option<&mut [Gate]>,
    seconds: f64,
) -> f64 {
    let plates = gates.is_some();
    let mut no_gates = vec![Gate::default(); ids.len()];
    let gates = gates.unwrap_or(&mut no_gates);
    let applied = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for s in 0..STREAMS {
        let mine: Vec<(String, u64, Gate, usize)> = ids
            .iter()
            .zip(sequences.iter())
            .zip(gates.iter())
            .enumerate()
            .skip(s)
            .step_by(STREAMS)
            .map(|(i, ((id, seq), gate))| (id.clone(), *seq, *gate, i))
            .collect();
        let mut client = IngestClient::new(channel.clone());
        let key = key.to_owned();
        let applied = applied.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = mine;
            let (tx, rx) = tokio::sync::mpsc::channel(WINDOW);
            let mut acks = client
                .publish(authed(ReceiverStream::new(rx), &key))
                .await
                .expect("publish")
                .into_inner();
            let mut cursor = 0;
            let mut next = |mine: &mut Vec<(String, u64, Gate, usize)>| {
                let now = prost_types::Timestamp::from(SystemTime::now());
                let reports = (0..BATCH)
                    .map(|_| {
                        let len = mine.len();
                        let (id, seq, gate, i) = &mut mine[cursor % len];
                        cursor += 1;
                        *seq += 1;
                        let delta = if plates {
                            gate.next_delta(*i)
                        } else {
                            pb::DeltaReport {
                                entries: vec![category(pb::SpaceCategory::Standard, 1)],
                                exits: vec![category(pb::SpaceCategory::Standard, 1)],
                                ..Default::default()
                            }
                        };
                        pb::OccupancyReport {
                            car_park_id: id.clone(),
                            sequence: *seq,
                            observed_at: Some(now),
                            body: Some(pb::occupancy_report::Body::Delta(delta)),
                            restart_sequence: false,
                        }
                    })
                    .collect();
                pb::PublishRequest { reports }
            };
            for _ in 0..WINDOW {
                tx.send(next(&mut mine)).await.expect("stream open");
            }
            while let Some(response) = acks.next().await {
                let response = response.expect("acks");
                let ok = response
                    .acks
                    .iter()
                    .filter(|a| a.result == pb::ReportResult::Applied as i32)
                    .count();
                applied.fetch_add(ok as u64, Ordering::Relaxed);
                if Instant::now() >= deadline {
                    break;
                }
                tx.send(next(&mut mine)).await.expect("stream open");
            }
            drop(tx);
            while acks.next().await.is_some() {}
            mine
        }));
    }
    let start = Instant::now();
    let mut finished = Vec::new();
    for t in tasks {
        finished.push(t.await.expect("publish task"));
    }
    let rate = applied.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    // Carry the sequences and the cars inside over to the next round.
    for mine in finished {
        for (_, seq, gate, i) in mine {
            sequences[i] = seq;
            gates[i] = gate;
        }
    }
    rate
}

/// (reports written, ingest round trips) from the server's metrics.
async fn redis_counters(url: &str) -> Option<(f64, f64)> {
    Some((
        metric(url, "citypark_redis_reports_written_total ").await?,
        metric(url, "citypark_redis_round_trips_total{op=\"ingest\"}").await?,
    ))
}

fn main() {
    let Some(common::grpc::Run {
        server,
        key,
        rounds,
        seconds,
        metrics,
    }) = common::grpc::run_from_env("ingest", "bench-key", "5")
    else {
        return;
    };
    common::grpc::drive(&server, |channel| async move {
        let run = format!(
            "{:x}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
        let prefix = format!("bench-{run}");
        let ids =
            common::grpc::register_garages(channel.clone(), &key, &prefix, CAR_PARKS, 120.3).await;
        let mut sequences = vec![0u64; ids.len()];
        let plates = std::env::var("CITYPARK_BENCH_PLATES").is_ok_and(|v| v == "1");
        let mut gates = vec![Gate::default(); ids.len()];
        let what = if plates {
            "Publish with plates (gate reports)"
        } else {
            "Publish"
        };
        let before = match &metrics {
            Some(m) => redis_counters(m).await,
            None => None,
        };
        let (mut pings, mut reports, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            let p = ping(channel.clone(), seconds).await;
            let gates = plates.then_some(gates.as_mut_slice());
            let r = publish(channel.clone(), &key, &ids, &mut sequences, gates, seconds).await;
            println!(
                "round {round}: Ping {p:.0} req/s, {what} {r:.0} reports/s, ratio {:.2}",
                r / p
            );
            pings.push(p);
            reports.push(r);
            ratios.push(r / p);
        }
        println!(
            "median: Ping (E) {:.0} req/s, {what} {:.0} reports/s, ratio {:.2}",
            common::median(pings),
            common::median(reports),
            common::median(ratios)
        );
        if let (Some(m), Some((w0, t0))) = (&metrics, before)
            && let Some((w1, t1)) = redis_counters(m).await
            && t1 > t0
        {
            println!(
                "redis: {:.1} reports per round trip ({:.0} reports in {:.0} round trips)",
                (w1 - w0) / (t1 - t0),
                w1 - w0,
                t1 - t0
            );
        }
    });
}
