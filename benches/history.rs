//! History benchmarks (`benches/history.sh` runs them; nothing here asserts a speed).
//!
//! `CITYPARK_BENCH_MODE=drain` (in this process): `CITYPARK_BENCH_SESSIONS` finished
//! sessions (default 1,000,000) of 10,000 drivers are written to the live store (the
//! embedded store, or the Redis at `CITYPARK_BENCH_REDIS`), then the hand-off moves
//! them all to the PostgreSQL history at `CITYPARK_BENCH_HISTORY`: sessions per
//! second. Then a server on that history answers `ListMySessions` (first pages and
//! pages deep in a driver's list) next to `Ping`: p50 and p99 over sequential calls,
//! and calls per second from 64 tasks against Ping's (E).
//!
//! `CITYPARK_BENCH_MODE=gates` (against the server at `CITYPARK_BENCH_SERVER`, process
//! `CITYPARK_BENCH_PID`, metrics at `CITYPARK_BENCH_METRICS`, Redis at
//! `CITYPARK_BENCH_REDIS` if any): car parks are registered, then cars enter and leave
//! through `Ingest.Publish` with unlinked plates, `CITYPARK_BENCH_SESSIONS` sessions,
//! twice; each time once the hand-off has moved them and their tombstones are gone,
//! the server's resident memory and Redis's `used_memory` are read: the second run
//! should leave them where the first did. With `CITYPARK_BENCH_SMAPS_DIR` set, each
//! reading also saves the server's `/proc/<pid>/smaps` there and, from its pagemap
//! (as root), how many 4 KiB pages of each 64 KiB slice of its largest anonymous
//! mapping (the allocator's arena) are resident: whole slices are pages the allocator
//! holds, sparse ones pages freed but not yet given back.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use citypark::{
    app::{self, Backend},
    domain::{
        Capacity, CarPark, CarParkId, CarParkKind, DriverId, LatLng, OpeningHours, OperatorId,
        ParkingSession, PaymentMethod, Plate, PlateColor, PlateRead, RegionId, SessionId,
        SpaceCategory, Tariff, TimeZoneName, Timestamp,
    },
    history::{Location, Migrate, SqlHistory},
    pb::{
        self, availability_client::AvailabilityClient, ingest_client::IngestClient,
        registry_client::RegistryClient, sessions_client::SessionsClient,
    },
    service::{HistorySettings, ManualClock, Service},
    store::{Change, Parts, Store, Write, redis::RedisOptions},
    tokens::DriverTokens,
};
use common::grpc::{TASKS, authed, metric, ping};
use tonic::transport::Channel;

const DRIVERS: u64 = 10_000;
const CAR_PARKS: u64 = 200;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Ok(mode) = std::env::var("CITYPARK_BENCH_MODE") else {
        eprintln!("benches/history needs its script: use benches/history.sh");
        return;
    };
    let sessions: u64 = env("CITYPARK_BENCH_SESSIONS", "1000000")
        .parse()
        .expect("sessions");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match mode.as_str() {
        "drain" => runtime.block_on(drain(sessions)),
        "gates" => runtime.block_on(gates(sessions)),
        other => panic!("unknown CITYPARK_BENCH_MODE {other}"),
    }
}

fn car_park(n: u64) -> CarPark {
    CarPark {
        id: CarParkId::parse(&format!("h{n:04}")).unwrap(),
        region: RegionId::parse("qingdao").unwrap(),
        operator: OperatorId::parse("bench").unwrap(),
        name: format!("Bench garage {n}"),
        address: String::new(),
        location: LatLng::new(36.0 + n as f64 / 1e4, 120.3).unwrap(),
        kind: CarParkKind::Garage,
        capacity: Capacity::new([(SpaceCategory::Standard, 1_000)]).unwrap(),
        time_zone: TimeZoneName::parse("Asia/Shanghai").unwrap(),
        opening_hours: OpeningHours::always(),
        closed: false,
        tariff: Tariff::new("CNY", 600, 5_000, 15).unwrap(),
        covered: true,
        max_height_cm: None,
        modified_at: jiff::Timestamp::UNIX_EPOCH,
        report_interval: Duration::from_secs(60),
        reservation_policy: None,
    }
}

/// Session `i`: a two-hour stay of driver `i mod DRIVERS`'s car, paid, one a second
/// from `start`.
fn session(i: u64, parks: &[CarPark], start: Timestamp) -> ParkingSession {
    let park = &parks[(i % CAR_PARKS) as usize];
    let entry = Timestamp::from_second(start.as_second() + i as i64).unwrap();
    let read = PlateRead {
        plate: Plate::parse(&format!("鲁B{:05}", i % DRIVERS)).unwrap(),
        color: PlateColor::Blue,
        lane: "in".into(),
        at: entry,
    };
    let mut s = ParkingSession::enter(
        SessionId::of_report(&park.id, i + 2),
        park,
        read,
        None,
        false,
    );
    let driver = DriverId::parse(&format!("d{:05}", i % DRIVERS)).unwrap();
    s.exit(
        Timestamp::from_second(entry.as_second() + 7_200).unwrap(),
        Some((driver, PaymentMethod::Wallet)),
    )
    .unwrap();
    s.paid(&format!("charge:{}", s.id)).unwrap();
    s
}

async fn drain(n: u64) {
    let history_url = env(
        "CITYPARK_BENCH_HISTORY",
        "postgres://postgres@127.0.0.1:5432/test",
    );
    let location = Location::Postgres(history_url);
    let history = Arc::new(SqlHistory::open(&location, Migrate::Auto).await.unwrap());
    let start: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let backend = match std::env::var("CITYPARK_BENCH_REDIS") {
        Ok(url) => {
            let mut options = RedisOptions::new(&url);
            options.prefix = format!("bench{}", std::process::id());
            Backend::redis(options, 4096, clock.clone()).await.unwrap()
        }
        Err(_) => Backend::embedded(4096),
    };
    let store_name = backend.store.name();
    let backend = backend.with_history(history.clone());
    let parks: Vec<CarPark> = (0..CAR_PARKS).map(car_park).collect();

    // The live store holds n finished sessions.
    let loading = Instant::now();
    const CHUNK: u64 = 5_000;
    for first in (0..n).step_by(CHUNK as usize) {
        let writes: Vec<Write<ParkingSession>> = (first..(first + CHUNK).min(n))
            .map(|i| {
                let s = session(i, &parks, start);
                Write {
                    region: s.region.clone(),
                    id: s.id.to_string(),
                    expected: 0,
                    floor: 0,
                    change: Change::put(s, Parts::ALL),
                }
            })
            .collect();
        for result in backend
            .store
            .commit(writes, "bench", clock_now(&clock))
            .await
        {
            result.expect("a session written");
        }
    }
    println!(
        "{store_name}: {n} finished sessions written to the live store in {:.1} s",
        loading.elapsed().as_secs_f64()
    );

    // Past the hot window, the hand-off moves them all.
    clock.advance(Duration::from_secs(n + 7_200 + 25 * 3600));
    let service = Service::new(
        backend.engine.clone(),
        backend.store.clone(),
        clock.clone(),
        citypark::service::Limits::default(),
    )
    .with_history(
        history.clone(),
        HistorySettings {
            tombstone_grace: Duration::ZERO,
            // Unpaced: what history and the store can take.
            rate: None,
            ..HistorySettings::default()
        },
    );
    let drained = Instant::now();
    let now = clock_now(&clock);
    loop {
        service.hand_off(&history, now).await.expect("hand-off");
        if backend.engine.sessions_finished_before(now, 1).is_empty() {
            break;
        }
    }
    let seconds = drained.elapsed().as_secs_f64();
    println!(
        "{store_name}: hand-off of {n} sessions to PostgreSQL in {seconds:.1} s: {:.0} sessions/s",
        n as f64 / seconds
    );
    service.wait_tasks().await;
    backend.store.close().await;

    list(history, n).await;
}

fn clock_now(clock: &ManualClock) -> Timestamp {
    use citypark::service::Clock;
    clock.now()
}

/// ListMySessions over a history of `n` sessions (none live), against Ping.
async fn list(history: Arc<SqlHistory>, n: u64) {
    const SECRET: &str = "a bench secret of at least thirty-two bytes";
    let mut drivers = DriverTokens::default();
    drivers.add_secret(SECRET.as_bytes(), None, None);
    let settings = app::Settings {
        driver_tokens: drivers,
        ..app::Settings::default()
    };
    let backend = Backend::embedded(4096).with_history(history);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app::run(grpc, None, None, backend, settings, async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |d: u64| {
        let driver = DriverId::parse(&format!("d{d:05}")).unwrap();
        DriverTokens::issue(SECRET.as_bytes(), &driver, unix, 3600, None, None)
    };
    let per_driver = n / DRIVERS;
    println!(
        "ListMySessions over {n} sessions in history ({per_driver} per driver), page size 20:"
    );
    // Sequential latencies: Ping, a first page, and the fourth page (three tokens deep).
    let mut ping_ms = Vec::new();
    let mut first_ms = Vec::new();
    let mut deep_ms = Vec::new();
    let mut availability = AvailabilityClient::new(channel.clone());
    let mut sessions = SessionsClient::new(channel.clone());
    for i in 0..2_000u64 {
        let started = Instant::now();
        availability.ping(pb::PingRequest::default()).await.unwrap();
        ping_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let d = (i * 7_919) % DRIVERS;
        let credential = token(d);
        let mut page_token = String::new();
        for page in 0..4 {
            let started = Instant::now();
            let reply = sessions
                .list_my_sessions(authed(
                    pb::ListMySessionsRequest {
                        page_size: 20,
                        page_token: page_token.clone(),
                    },
                    &credential,
                ))
                .await
                .unwrap()
                .into_inner();
            let ms = started.elapsed().as_secs_f64() * 1e3;
            assert_eq!(reply.sessions.len(), 20.min(per_driver as usize));
            match page {
                0 => first_ms.push(ms),
                3 => deep_ms.push(ms),
                _ => {}
            }
            page_token = reply.next_page_token;
            if i % 4 != 0 || page_token.is_empty() {
                break;
            }
        }
    }
    let pct = |mut v: Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    };
    println!(
        "  Ping        p50 {:.2} ms  p99 {:.2} ms",
        pct(ping_ms.clone(), 0.5),
        pct(ping_ms, 0.99)
    );
    println!(
        "  first page  p50 {:.2} ms  p99 {:.2} ms",
        pct(first_ms.clone(), 0.5),
        pct(first_ms, 0.99)
    );
    println!(
        "  4th page    p50 {:.2} ms  p99 {:.2} ms",
        pct(deep_ms.clone(), 0.5),
        pct(deep_ms, 0.99)
    );
    // Throughput from 64 tasks, against Ping's (E), three rounds, medians.
    let mut ratios = Vec::new();
    for _ in 0..3 {
        let e = ping(channel.clone(), 3.0).await;
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(3);
        let tasks: Vec<_> = (0..TASKS as u64)
            .map(|t| {
                let mut client = SessionsClient::new(channel.clone());
                let done = done.clone();
                let credential = token(t * 131 % DRIVERS);
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let request = pb::ListMySessionsRequest {
                            page_size: 20,
                            page_token: String::new(),
                        };
                        client
                            .list_my_sessions(authed(request, &credential))
                            .await
                            .unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let started = Instant::now();
        for t in tasks {
            t.await.unwrap();
        }
        let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        println!(
            "  round: Ping (E) {e:.0} calls/s, ListMySessions {rate:.0} calls/s, ratio {:.3}",
            rate / e
        );
        ratios.push(rate / e);
    }
    ratios.sort_by(f64::total_cmp);
    println!("  median ratio ListMySessions/Ping {:.3}", ratios[1]);
    let _ = stop.send(());
    let _ = server.await;
}

/// The server's resident memory: in all, and the part that is files mapped in (its
/// code, paged in by the paths it ran), which is not state.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server runs");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    if let Ok(dir) = std::env::var("CITYPARK_BENCH_SMAPS_DIR") {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        std::fs::write(format!("{dir}/smaps-{n}"), &smaps).unwrap();
        // Resident 4 KiB pages per 64 KiB slice of the largest anonymous mapping.
        if let Some(range) = smaps
            .lines()
            .filter(|l| l.split_whitespace().count() == 5)
            .filter_map(|l| {
                let (a, b) = l.split_whitespace().next()?.split_once('-')?;
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            })
            .max_by_key(|(a, b)| b - a)
        {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
            let pages = (range.1 - range.0) / 4096;
            f.seek(SeekFrom::Start(range.0 / 4096 * 8)).unwrap();
            let mut buf = vec![0u8; (pages * 8) as usize];
            f.read_exact(&mut buf).unwrap();
            let mut per_slice = vec![0u32; (pages / 16) as usize];
            for (i, chunk) in buf.chunks(8).enumerate() {
                let v = u64::from_le_bytes(chunk.try_into().unwrap());
                if v >> 63 & 1 == 1 {
                    per_slice[i / 16] += 1;
                }
            }
            let mut hist = [0u32; 17];
            for n in &per_slice {
                hist[*n as usize] += 1;
            }
            let mut per_segment = Vec::new();
            for (i, seg) in per_slice.chunks(512).enumerate() {
                let r: u32 = seg.iter().sum();
                if r > 0 {
                    per_segment.push((i, r * 4));
                }
            }
            std::fs::write(
                format!("{dir}/slices-{n}"),
                format!("hist (resident pages of 16 per slice: count) {hist:?}\nper 32 MiB segment (index, KiB) {per_segment:?}\n"),
            )
            .unwrap();
        }
    }
    (field("VmRSS:"), field("RssFile:"))
}

async fn redis_used(url: &Option<String>) -> Option<u64> {
    let url = url.as_ref()?;
    let client = redis::Client::open(url.as_str()).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}

async fn gates(n: u64) {
    let server = env("CITYPARK_BENCH_SERVER", "http://127.0.0.1:50051");
    let key = env("CITYPARK_BENCH_KEY", "bench-key");
    let metrics = env("CITYPARK_BENCH_METRICS", "http://127.0.0.1:9464/metrics");
    let pid: u32 = env("CITYPARK_BENCH_PID", "0").parse().expect("pid");
    let redis_url = std::env::var("CITYPARK_BENCH_REDIS").ok();
    let channel = tonic::transport::Endpoint::from_shared(server)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut registry = RegistryClient::new(channel.clone());
    for i in 0..CAR_PARKS {
        let park = pb::CarPark {
            id: format!("h{i:04}"),
            region: "qingdao".into(),
            name: format!("Bench garage {i}"),
            location: Some(pb::LatLng {
                latitude: 36.0 + i as f64 / 1e4,
                longitude: 120.3,
            }),
            kind: pb::CarParkKind::Garage.into(),
            capacity: vec![pb::CategoryCapacity {
                category: pb::SpaceCategory::Standard.into(),
                spaces: 100_000,
            }],
            operator_id: "bench".into(),
            time_zone: "Asia/Shanghai".into(),
            report_interval_seconds: 3600,
            ..Default::default()
        };
        registry
            .upsert_car_park(authed(
                pb::UpsertCarParkRequest {
                    car_park: Some(park),
                },
                &key,
            ))
            .await
            .expect("registered");
    }
    let mut sequences = vec![1u64; CAR_PARKS as usize];
    let settled = |label: &'static str, total: u64| {
        let metrics = metrics.clone();
        async move {
            // Every session closed and handed off, and its tombstone compacted.
            let started = Instant::now();
            loop {
                let moved = metric(
                    &metrics,
                    "citypark_history_handed_off_total{kind=\"session\"}",
                )
                .await
                .unwrap_or(0.0);
                let compacted = metric(
                    &metrics,
                    "citypark_tombstones_compacted_total{kind=\"parking_session\"}",
                )
                .await
                .unwrap_or(0.0);
                if moved as u64 >= total && compacted as u64 >= total {
                    println!(
                        "  {label}: {total} sessions handed off and their tombstones compacted ({:.0} s after the last exit)",
                        started.elapsed().as_secs_f64()
                    );
                    return;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    // Two equal runs: after the first, the allocator and Redis hold what the city's
    // live state needed at its peak; a second run as long leaves them where they were
    // if nothing is kept per session (STYLE: memory flat after a run twice as long).
    let cold = (rss(pid), redis_used(&redis_url).await);
    let rate = publish(&channel, &key, &mut sequences, 0, n).await;
    println!("  run 1: {n} sessions through Publish at {rate:.0} reports/s");
    let peak = (rss(pid), redis_used(&redis_url).await);
    settled("run 1", n).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let first = (rss(pid), redis_used(&redis_url).await);
    let rate = publish(&channel, &key, &mut sequences, n, 2 * n).await;
    println!("  run 2: {n} sessions through Publish at {rate:.0} reports/s");
    settled("run 2", 2 * n).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = (rss(pid), redis_used(&redis_url).await);
    let mb = |b: u64| b as f64 / 1_048_576.0;
    let delta = |a: u64, b: u64| (b as f64 - a as f64) / a as f64 * 100.0;
    let ((cold_rss, cold_file), (peak_rss, peak_file)) = (cold.0, peak.0);
    let ((first_rss, first_file), (second_rss, second_file)) = (first.0, second.0);
    println!(
        "  instance RSS: cold {:.1} MB, right after run 1's exits {:.1} MB, after run 1's hand-off {:.1} MB, after run 2's {:.1} MB ({:+.1}% over run 2, {:+.1} B per session of it)",
        mb(cold_rss),
        mb(peak_rss),
        mb(first_rss),
        mb(second_rss),
        delta(first_rss, second_rss),
        (second_rss as f64 - first_rss as f64) / n as f64
    );
    println!(
        "  of which files mapped in (RssFile: code): {:.1}, {:.1}, {:.1}, {:.1} MB; the rest: {:.1}, {:.1}, {:.1}, {:.1} MB",
        mb(cold_file),
        mb(peak_file),
        mb(first_file),
        mb(second_file),
        mb(cold_rss - cold_file),
        mb(peak_rss - peak_file),
        mb(first_rss - first_file),
        mb(second_rss - second_file)
    );
    if let (Some(c), Some(p), Some(f), Some(s)) = (cold.1, peak.1, first.1, second.1) {
        println!(
            "  Redis used_memory: cold {:.1} MB, right after run 1's exits {:.1} MB, after run 1's hand-off {:.1} MB, after run 2's {:.1} MB ({:+.1}% over run 2, {:+.1} B per session of it; {:+.1}% against cold)",
            mb(c),
            mb(p),
            mb(f),
            mb(s),
            delta(f, s),
            (s as f64 - f as f64) / n as f64,
            delta(c, s)
        );
    }
}

/// Sessions `from..to` through Publish: each an entry and an exit of its own plate at
/// car park `i mod CAR_PARKS`, 500 reports a message, 8 messages in flight; the
/// reports applied per second.
async fn publish(channel: &Channel, key: &str, sequences: &mut [u64], from: u64, to: u64) -> f64 {
    const PER_MESSAGE: u64 = 250;
    let mut messages = Vec::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let observed = prost_types::Timestamp {
        seconds: now.as_secs() as i64,
        nanos: 0,
    };
    for first in (from..to).step_by(PER_MESSAGE as usize) {
        let mut reports = Vec::new();
        for i in first..(first + PER_MESSAGE).min(to) {
            let park = (i % CAR_PARKS) as usize;
            let plate = format!("鲁C{:07}", i % 10_000_000);
            for entry in [true, false] {
                sequences[park] += 1;
                let one = vec![pb::CategoryCount {
                    category: pb::SpaceCategory::Standard.into(),
                    count: 1,
                }];
                let (entries, exits) = if entry { (one, vec![]) } else { (vec![], one) };
                reports.push(pb::OccupancyReport {
                    car_park_id: format!("h{park:04}"),
                    sequence: sequences[park],
                    observed_at: Some(observed),
                    body: Some(pb::occupancy_report::Body::Delta(pb::DeltaReport {
                        entries,
                        exits,
                        plate: plate.clone(),
                        plate_color: pb::PlateColor::Blue.into(),
                        lane: String::new(),
                    })),
                    restart_sequence: false,
                });
            }
        }
        messages.push(pb::PublishRequest { reports });
    }
    let total: usize = messages.iter().map(|m| m.reports.len()).sum();
    let started = Instant::now();
    let mut ingest = IngestClient::new(channel.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let sender = tokio::spawn(async move {
        for m in messages {
            if tx.send(m).await.is_err() {
                return;
            }
        }
    });
    let mut acks = ingest
        .publish(authed(tokio_stream::wrappers::ReceiverStream::new(rx), key))
        .await
        .expect("publish")
        .into_inner();
    let mut acked = 0;
    while acked < total {
        let reply = acks.message().await.expect("acks").expect("an ack");
        acked += reply.acks.len();
    }
    sender.await.unwrap();
    total as f64 / started.elapsed().as_secs_f64()
}
