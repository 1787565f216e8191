//! Cold start at national scale: a new instance joins a Redis that already holds
//! 1,000,000 car parks (or opens a data directory whose durable store holds them),
//! loads them into its engine and reports SERVING.
//!
//! `cargo bench --bench cold_start` starts its own redis-server (no persistence) on a
//! free loopback port, fills it with N synthetic car parks (`COLD_START_N`, or a
//! numeric argument; default 1,000,000) in the store's current format, then starts a
//! fresh instance `COLD_START_ROUNDS` times (default 3) and reports, for each, how long
//! `Backend::redis` took (connect, snapshot load of every region, followers started),
//! how long until grpc.health.v1 says SERVING, and the instance's resident memory.
//! `COLD_START_REGIONS` (default 1) spreads the car parks over that many regions.
//!
//! `COLD_START_STORE=durable` (or the argument `durable`) measures the durable embedded
//! store, serve's default, instead: a child process fills a new data directory under
//! the temporary directory (`TMPDIR`) with the same N car parks through the store
//! (`Store::commit`, 10,000 car parks a call, each a new record as the registry writes
//! one) and closes it; then each round is a fresh process that times `Backend::durable`
//! on that directory (lock, check and read `live.sqlite3` whole, one bulk R-tree build)
//! and the rest as above. It also reports the file's size. The directory is removed at
//! the end.
//!
//! Each step runs in a process of its own (this binary, re-executed): the loader
//! (`--load-only URL`, `--fill-durable DIR`) holds the generated city, and each
//! measured instance (`--measure-only URL`, `--open-durable DIR`) starts fresh, so its
//! peak resident memory (VmHWM) is the server's alone. The measured process uses
//! mimalloc, as the `citypark` binary does (mimalloc's own variables apply, e.g.
//! `MIMALLOC_ALLOW_THP=0`).
//! With `RUST_LOG` set (e.g. `citypark=debug`) the measured instance logs to stderr.
//! Nothing here asserts a speed.

mod common;

use std::{
    io::Write as _,
    net::TcpListener as StdListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use citypark::{
    app::{self, Backend, Settings},
    config::LogFormat,
    domain::{CarPark, CarParkState, RegionId, Timestamp},
    pb::{self, availability_client::AvailabilityClient},
    rng::Rng,
    service::SystemClock,
    store::{
        Aggregate, Change, Committed, Parts, Store, Write,
        carpark::{LIVE, REGISTRATION},
        durable::FILE,
        redis::RedisOptions,
    },
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

// As in the `citypark` binary, so the resident memory measured is the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Key prefix, as the server's default.
const PREFIX: &str = "cp";
/// Car parks per pipeline of the bulk load (about 6 MB of values each).
const BATCH: usize = 10_000;
/// Fields per HSET / pairs per MSET inside a pipeline.
const FIELDS: usize = 1_000;
/// What a measured instance prints its figures behind, one `key value` a line.
const MARK: &str = "@@ ";

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
}

/// The regions the car parks are spread over: `qingdao`, then `region-1`, ….
fn regions(count: usize) -> Vec<RegionId> {
    (0..count.max(1))
        .map(|r| {
            let name = if r == 0 {
                "qingdao".to_string()
            } else {
                format!("region-{r}")
            };
            RegionId::parse(&name).expect("a valid region id")
        })
        .collect()
}

/// VmRSS and VmHWM of this process, in bytes.
#[derive(Debug, Clone, Copy)]
struct Mem {
    rss: u64,
    hwm: u64,
}

impl Mem {
    fn now() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        Self {
            rss: field("VmRSS:"),
            hwm: field("VmHWM:"),
        }
    }
}

/// The machine's 1-minute load average: the machine is shared, so every row says how
/// busy it was.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// CPU seconds this process has used: (user, system).
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command name (in parentheses), utime and stime are the 12th and 13th
    // fields, in clock ticks (100 a second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |t| t / 100.0)
    };
    (ticks(11), ticks(12))
}

/// CPU seconds the Redis server process has used (INFO cpu: user + system).
async fn redis_cpu_seconds(url: &str) -> f64 {
    let info = async {
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("INFO")
            .arg("cpu")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    let Some(info) = info.await else {
        return f64::NAN;
    };
    info.lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split_once(':')?.1.trim().parse::<f64>().ok())
        .sum()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A redis-server child on a free loopback port, no persistence; killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    fn start() -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("citypark-cold-start-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for _ in 0..5 {
            let port = StdListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let log = std::fs::File::create(dir.join("redis.log")).expect("log file");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("redis-server starts");
            let mut child = child;
            let url = format!("redis://127.0.0.1:{port}/0");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break; // the port was taken meanwhile: another one
                }
                let answer = redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
                if answer.is_ok() {
                    return Some(Self { child, port, dir });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "redis-server did not start; see {}",
            dir.join("redis.log").display()
        );
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `used_memory` from INFO memory, in bytes.
    fn used_memory(&self) -> u64 {
        let mut conn = redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis connection");
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query(&mut conn)
            .expect("INFO memory");
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `n` car parks of the synthetic city over `regions`, each just reported.
fn generate(n: usize, regions: &[RegionId], now: Timestamp) -> Vec<CarParkState> {
    let mut rng = Rng::new(n as u64);
    common::city(n, &mut rng)
        .into_iter()
        .enumerate()
        .map(|(i, cp)| {
            let car_park = CarPark {
                region: regions[i % regions.len()].clone(),
                // A day between reports: the city stays OPEN for the whole run.
                modified_at: jiff::Timestamp::UNIX_EPOCH,
                report_interval: Duration::from_secs(86_400),
                reservation_policy: None,
                ..cp
            };
            let live = common::reported(&car_park, 120, now);
            CarParkState {
                car_park: Arc::new(car_park),
                live,
            }
        })
        .collect()
}

/// `--load-only URL`: fills Redis with `n` car parks as the store writes them, and
/// prints how long generating and loading took.
fn load_only(url: &str, n: usize, region_count: usize) {
    let now = Timestamp::now();
    let regions = regions(region_count);
    let start = Instant::now();
    let city = generate(n, &regions, now);
    let generated = start.elapsed();

    let mut conn = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("redis connection");
    let start = Instant::now();
    let (mut bytes, mut pipelines) = (0usize, 0usize);
    for batch in city.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for region in &regions {
            let base = format!("{PREFIX}:{{{region}}}");
            let mine: Vec<&CarParkState> = batch
                .iter()
                .filter(|s| &s.car_park.region == region)
                .collect();
            for fields in mine.chunks(FIELDS) {
                let (mut parks, mut live, mut versions) =
                    (redis::cmd("HSET"), redis::cmd("HSET"), redis::cmd("HSET"));
                parks.arg(format!("{base}:parks"));
                live.arg(format!("{base}:live"));
                versions.arg(format!("{base}:versions"));
                for state in fields {
                    let id = state.car_park.id.as_str();
                    let (p, l) = (state.encode_part(REGISTRATION), state.encode_part(LIVE));
                    bytes += id.len() * 3 + p.len() + l.len() + 1;
                    parks.arg(id).arg(p);
                    live.arg(id).arg(l);
                    versions.arg(id).arg(1);
                }
                pipe.add_command(parks).ignore();
                pipe.add_command(live).ignore();
                pipe.add_command(versions).ignore();
            }
        }
        for claims in batch.chunks(FIELDS) {
            let mut mset = redis::cmd("MSET");
            for state in claims {
                mset.arg(format!("{PREFIX}:id:{}", state.car_park.id))
                    .arg(state.car_park.region.as_str());
            }
            pipe.add_command(mset).ignore();
        }
        pipe.query::<()>(&mut conn).expect("bulk load pipeline");
        pipelines += 1;
    }
    let mut pipe = redis::pipe();
    for region in &regions {
        pipe.cmd("SET")
            .arg(format!("{PREFIX}:{{{region}}}:n"))
            .arg(0)
            .ignore();
        pipe.cmd("SADD")
            .arg(format!("{PREFIX}:regions"))
            .arg(region.as_str())
            .ignore();
    }
    pipe.query::<()>(&mut conn).expect("regions");
    let loaded = start.elapsed();
    println!("{MARK}generate_s {}", generated.as_secs_f64());
    println!("{MARK}load_s {}", loaded.as_secs_f64());
    println!("{MARK}load_mb {}", mb(bytes as u64));
    println!("{MARK}pipelines {}", pipelines + 1);
}

/// `--fill-durable DIR`: a durable store in the new data directory `dir` filled with `n`
/// car parks through `Store::commit`, as the registry writes them (each a new record:
/// expected version 0, every part), then closed; prints how long generating and
/// filling took.
fn fill_durable(dir: &Path, n: usize, region_count: usize) {
    let now = Timestamp::now();
    let regions = regions(region_count);
    let start = Instant::now();
    let city = generate(n, &regions, now);
    let generated = start.elapsed();

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (filled, closed) = runtime.block_on(async {
        let start = Instant::now();
        let (backend, opened) =
            Backend::durable(dir, 4096, Arc::new(SystemClock)).expect("Backend::durable");
        assert!(
            opened.records.iter().all(|(_, count)| *count == 0),
            "{} is not empty: {:?}",
            dir.display(),
            opened.records
        );
        for batch in city.chunks(BATCH) {
            let writes = batch
                .iter()
                .map(|state| Write {
                    region: state.car_park.region.clone(),
                    id: state.car_park.id.to_string(),
                    expected: 0,
                    floor: 0,
                    change: Change::put(state.clone(), Parts::ALL),
                })
                .collect();
            for committed in backend.store.commit(writes, "registry", now).await {
                assert!(
                    matches!(committed, Ok(Committed::Written { .. })),
                    "a car park was not written: {committed:?}"
                );
            }
        }
        let filled = start.elapsed();
        // Writes what is queued, checkpoints the WAL into the file and lets the
        // directory go, as a server's shutdown does.
        backend.store.close().await;
        (filled, start.elapsed())
    });
    println!("{MARK}generate_s {}", generated.as_secs_f64());
    println!("{MARK}load_s {}", filled.as_secs_f64());
    println!("{MARK}close_s {}", (closed - filled).as_secs_f64());
    println!("{MARK}commits {}", n.div_ceil(BATCH));
}

/// The size of the live-state file in `dir` (with `suffix`, e.g. "-wal"); 0 if absent.
fn file_bytes(dir: &Path, suffix: &str) -> u64 {
    std::fs::metadata(dir.join(format!("{FILE}{suffix}"))).map_or(0, |m| m.len())
}

/// Where a measured instance's live state is.
#[derive(Clone, Copy)]
enum Target<'a> {
    Redis(&'a str),
    Durable(&'a Path),
}

/// `--measure-only URL` (Redis) or `--open-durable DIR`: a fresh instance on that
/// store, timed to SERVING.
fn measure_only(target: Target<'_>, n: usize) {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        citypark::telemetry::init(LogFormat::Pretty, &filter).expect("RUST_LOG");
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let load = load_average();
    let before = Mem::now();
    let out = runtime.block_on(async {
        let redis_cpu = match target {
            Target::Redis(url) => redis_cpu_seconds(url).await,
            Target::Durable(_) => 0.0,
        };
        let cpu = cpu_seconds();
        let start = Instant::now();
        let backend = match target {
            Target::Redis(url) => {
                let mut options = RedisOptions::new(url);
                options.prefix = PREFIX.into();
                Backend::redis(options, 4096, Arc::new(SystemClock))
                    .await
                    .expect("Backend::redis")
            }
            Target::Durable(dir) => {
                // Blocking, as in `citypark serve` before it binds: nothing else runs
                // on this runtime yet.
                let (backend, opened) =
                    Backend::durable(dir, 4096, Arc::new(SystemClock)).expect("Backend::durable");
                let records: usize = opened.records.iter().map(|(_, count)| count).sum();
                println!("{MARK}records {records}");
                println!("{MARK}took_s {}", opened.took.as_secs_f64());
                for (kind, count) in &opened.records {
                    println!("{MARK}records_{kind} {count}");
                }
                backend
            }
        };
        let open = start.elapsed();
        let cpu = (cpu_seconds().0 - cpu.0, cpu_seconds().1 - cpu.1);
        let redis_cpu = match target {
            Target::Redis(url) => redis_cpu_seconds(url).await - redis_cpu,
            Target::Durable(_) => 0.0,
        };
        let opened = Mem::now();
        let held = backend.engine.len();
        assert_eq!(held, n, "the engine holds every car park");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app::run(
            listener,
            None,
            None,
            backend,
            Settings::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let serving = loop {
            let status = async {
                let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
                    .ok()?
                    .connect()
                    .await
                    .ok()?;
                let mut health = HealthClient::new(channel);
                let answer = health
                    .check(HealthCheckRequest {
                        service: pb::availability_server::SERVICE_NAME.into(),
                    })
                    .await
                    .ok()?;
                Some(answer.into_inner().status)
            };
            if status.await == Some(ServingStatus::Serving as i32) {
                break start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "not SERVING after 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };

        let mut availability = AvailabilityClient::connect(endpoint)
            .await
            .expect("connect");
        let nearby = availability
            .find_nearby(pb::FindNearbyRequest {
                location: Some(pb::LatLng {
                    latitude: 36.066,
                    longitude: 120.383,
                }),
                ..Default::default()
            })
            .await
            .expect("FindNearby")
            .into_inner();
        assert!(!nearby.results.is_empty(), "FindNearby finds car parks");
        let after = Mem::now();
        let _ = stop.send(());
        server.await.expect("server task").expect("server");
        let figures = (open, serving, cpu, redis_cpu);
        (figures, opened, after, nearby.results.len(), held)
    });
    let ((open, serving, cpu, redis_cpu), opened, after, results, held) = out;
    let end = Mem::now();
    println!("{MARK}load_avg {load}");
    println!("{MARK}held {held}");
    println!("{MARK}open_s {}", open.as_secs_f64());
    println!("{MARK}serving_s {}", serving.as_secs_f64());
    println!("{MARK}open_user_s {}", cpu.0);
    println!("{MARK}open_sys_s {}", cpu.1);
    println!("{MARK}open_redis_cpu_s {redis_cpu}");
    println!("{MARK}rss_before_mb {}", mb(before.rss));
    println!("{MARK}rss_open_mb {}", mb(opened.rss));
    println!("{MARK}rss_after_mb {}", mb(after.rss));
    println!("{MARK}hwm_mb {}", mb(end.hwm.max(after.hwm)));
    println!("{MARK}nearby_results {results}");
}

/// Runs this binary with `args` and returns its `key value` figures.
fn child(args: &[&str], env: &[(&str, String)]) -> Vec<(String, f64)> {
    let exe = std::env::current_exe().expect("current exe");
    let mut command = Command::new(exe);
    command.args(args).stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("re-run this bench");
    assert!(out.status.success(), "{args:?} failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(MARK))
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn get(figures: &[(String, f64)], key: &str) -> f64 {
    figures
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no {key} in {figures:?}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let n = args
        .iter()
        .skip(1)
        .find_map(|a| a.replace('_', "").parse().ok())
        .or_else(|| env_usize("COLD_START_N"))
        .unwrap_or(1_000_000);
    let region_count = env_usize("COLD_START_REGIONS").unwrap_or(1).max(1);
    let rounds = env_usize("COLD_START_ROUNDS").unwrap_or(3).max(1);
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("--load-only"), Some(url)) => return load_only(url, n, region_count),
        (Some("--measure-only"), Some(url)) => return measure_only(Target::Redis(url), n),
        (Some("--fill-durable"), Some(dir)) => {
            return fill_durable(Path::new(dir), n, region_count);
        }
        (Some("--open-durable"), Some(dir)) => {
            return measure_only(Target::Durable(Path::new(dir)), n);
        }
        _ => {}
    }
    let durable = args.iter().skip(1).any(|a| a == "durable")
        || std::env::var("COLD_START_STORE").is_ok_and(|s| s == "durable");
    if durable {
        return durable_cold_start(n, region_count, rounds);
    }

    let Some(redis) = RedisServer::start() else {
        eprintln!("benches/cold_start needs redis-server: apt-get install -y redis-server");
        return;
    };
    let url = redis.url();
    let env = [
        ("COLD_START_N", n.to_string()),
        ("COLD_START_REGIONS", region_count.to_string()),
    ];
    eprintln!("cold_start: loading {n} car parks over {region_count} region(s) into {url}");
    let loaded = child(&["--load-only", &url], &env);
    let used = redis.used_memory();
    eprintln!(
        "cold_start: generated in {:.1} s, loaded in {:.1} s ({:.0} MB of values, {} pipelines); Redis used_memory {:.0} MB",
        get(&loaded, "generate_s"),
        get(&loaded, "load_s"),
        get(&loaded, "load_mb"),
        get(&loaded, "pipelines"),
        mb(used)
    );

    let table = Table {
        n,
        region_count,
        fill: "Redis bulk load",
        open: "open (snapshot load)",
        store: "Redis used_memory",
        fill_s: get(&loaded, "load_s"),
    };
    table.rounds(rounds, &["--measure-only", &url], &env, || mb(used), |m| {
        format!(
            "during open, CPU {:.1} s user + {:.1} s system here, {:.1} s in Redis; RSS before {:.0} MB, after open {:.0} MB; FindNearby returned {}",
            get(m, "open_user_s"),
            get(m, "open_sys_s"),
            get(m, "open_redis_cpu_s"),
            get(m, "rss_before_mb"),
            get(m, "rss_open_mb"),
            get(m, "nearby_results")
        )
    });
}

/// A cold start's results table: the city, the columns that name the store, and how
/// long it took to fill.
struct Table {
    n: usize,
    region_count: usize,
    fill: &'static str,
    open: &'static str,
    store: &'static str,
    fill_s: f64,
}

impl Table {
    /// Runs `rounds` fresh instances (this binary with `args`), one row each, then the
    /// medians; `store_mb` is the store's size, `detail` a round's line on stderr.
    fn rounds(
        &self,
        rounds: usize,
        args: &[&str],
        env: &[(&str, String)],
        store_mb: impl Fn() -> f64,
        detail: impl Fn(&[(String, f64)]) -> String,
    ) {
        let Self {
            n,
            region_count,
            fill,
            open,
            store,
            fill_s,
        } = self;
        println!(
            "| run | car parks | regions | {fill} | {open} | to SERVING | RSS after | peak RSS (VmHWM) | {store} | load avg |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let (mut opens, mut servings, mut rss, mut hwm) = (vec![], vec![], vec![], vec![]);
        for round in 1..=rounds {
            let m = child(args, env);
            assert_eq!(get(&m, "held") as usize, *n);
            opens.push(get(&m, "open_s"));
            servings.push(get(&m, "serving_s"));
            rss.push(get(&m, "rss_after_mb"));
            hwm.push(get(&m, "hwm_mb"));
            println!(
                "| {round} | {n} | {region_count} | {fill_s:.1} s | {:.2} s | {:.2} s | {:.0} MB | {:.0} MB | {:.0} MB | {:.1} |",
                get(&m, "open_s"),
                get(&m, "serving_s"),
                get(&m, "rss_after_mb"),
                get(&m, "hwm_mb"),
                store_mb(),
                get(&m, "load_avg"),
            );
            eprintln!("cold_start: round {round}: {}", detail(&m));
            let _ = std::io::stdout().flush();
        }
        println!(
            "| **median** | {n} | {region_count} | {fill_s:.1} s | {:.2} s | {:.2} s | {:.0} MB | {:.0} MB | {:.0} MB | |",
            common::median(opens),
            common::median(servings),
            common::median(rss),
            common::median(hwm),
            store_mb()
        );
    }
}

/// A new data directory under the temporary directory, removed on drop.
struct DataDir(PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The durable store's cold start: fills a data directory in one child process, then
/// opens it in a fresh one per round.
fn durable_cold_start(n: usize, region_count: usize, rounds: usize) {
    let dir = DataDir(std::env::temp_dir().join(format!(
        "citypark-cold-start-durable-{}",
        std::process::id()
    )));
    let _ = std::fs::remove_dir_all(&dir.0);
    let path = dir
        .0
        .to_str()
        .expect("a UTF-8 temporary directory")
        .to_owned();
    let env = [
        ("COLD_START_N", n.to_string()),
        ("COLD_START_REGIONS", region_count.to_string()),
    ];
    eprintln!("cold_start: filling {path} with {n} car parks over {region_count} region(s)");
    let filled = child(&["--fill-durable", &path], &env);
    let (bytes, wal) = (file_bytes(&dir.0, ""), file_bytes(&dir.0, "-wal"));
    eprintln!(
        "cold_start: generated in {:.1} s, committed in {:.1} s ({} commits), closed in {:.1} s; {FILE} {:.0} MB ({bytes} bytes), its WAL {wal} bytes",
        get(&filled, "generate_s"),
        get(&filled, "load_s"),
        get(&filled, "commits"),
        get(&filled, "close_s"),
        mb(bytes),
    );

    let table = Table {
        n,
        region_count,
        fill: "durable fill",
        open: "open (load)",
        store: FILE,
        fill_s: get(&filled, "load_s"),
    };
    let size = || mb(file_bytes(&dir.0, ""));
    table.rounds(rounds, &["--open-durable", &path], &env, size, |m| {
        format!(
            "{} records loaded ({} car parks), Opened.took {:.2} s; during open, CPU {:.1} s user + {:.1} s system; RSS before {:.0} MB, after open {:.0} MB; FindNearby returned {}",
            get(m, "records"),
            get(m, "records_car_park"),
            get(m, "took_s"),
            get(m, "open_user_s"),
            get(m, "open_sys_s"),
            get(m, "rss_before_mb"),
            get(m, "rss_open_mb"),
            get(m, "nearby_results")
        )
    });
}
