//! Test harness: a real server on 127.0.0.1:0, real generated clients, a hand clock.

use std::{fmt::Debug, future::Future, sync::Arc, time::Duration};

use citypark::{
    app::{self, Backend, Settings},
    auth::ApiKeys,
    domain::{DriverId, OperatorId, Timestamp},
    pb::{
        self, availability_client::AvailabilityClient, ingest_client::IngestClient,
        registry_client::RegistryClient, reservations_client::ReservationsClient,
        sessions_client::SessionsClient, shared_parking_client::SharedParkingClient,
        watch_availability_response::Event,
    },
    service::{Clock, ManualClock},
    store::redis::RedisOptions,
    tokens::DriverTokens,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code, Request, Status, Streaming,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The longest any test waits for one message; an upper bound, never a synchronisation.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// The longest a change may take to reach another instance, or an instance to recover
/// from an outage (its stream tail retries with a backoff of up to 5 s). An upper bound
/// on a slow, shared machine; every wait polls for its condition and ends as soon as it
/// holds.
pub const SETTLE: Duration = Duration::from_secs(30);

/// How often [`eventually`] polls its condition.
const POLL: Duration = Duration::from_millis(20);

/// Polls `probe` until it returns `Some`, for at most [`SETTLE`].
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(SETTLE, what, probe).await
}

/// Polls `probe` until it returns `Some`, failing the test once `bound` has passed: for
/// conditions that must hold within a promised time, not merely at some point.
pub async fn eventually_within<T, F, Fut>(bound: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + bound;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {bound:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Operators every test server knows: (id, key).
pub const OPERATOR_A: (&str, &str) = ("op-a", "key-a");
pub const OPERATOR_B: (&str, &str) = ("op-b", "key-b");

/// The HS256 secret test servers accept driver tokens signed with.
pub const DRIVER_SECRET: &str = "citypark-test-driver-secret-of-32-bytes+";

/// A valid driver token for `driver` (an hour, by the real clock, which is what JWT
/// expiry is checked against).
pub fn driver_token(driver: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    DriverTokens::issue(
        DRIVER_SECRET.as_bytes(),
        &DriverId::parse(driver).unwrap(),
        now,
        3600,
        None,
        None,
    )
}

/// Where the test clock starts: a Monday, 10:00 in Shanghai.
pub fn start_time() -> Timestamp {
    "2026-11-30T02:00:00Z".parse().unwrap()
}

/// A running server; dropping it stops the server.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    /// The HTTP port (payment callbacks).
    pub http_addr: std::net::SocketAddr,
    pub clock: Arc<ManualClock>,
    pub backend: Backend,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), app::AppError>>>,
}

impl TestServer {
    /// A server on the embedded store with the default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server whose settings `tweak` may change first.
    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::start_on(Backend::embedded(4096), tweak).await
    }

    /// A server on the given backend.
    pub async fn start_on(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::start_with_clock(backend, Arc::new(ManualClock::new(start_time())), tweak).await
    }

    /// A server on Redis at `url` under key `prefix`; servers given the same url and
    /// prefix serve one city. The clock is the server's own (see `share_clock`).
    pub async fn start_redis(url: &str, prefix: &str) -> Self {
        let clock = Arc::new(ManualClock::new(start_time()));
        Self::start_redis_with(url, prefix, clock, |_| {}).await
    }

    /// As `start_redis`, with a given clock and settings.
    pub async fn start_redis_with(
        url: &str,
        prefix: &str,
        clock: Arc<ManualClock>,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        let mut options = RedisOptions::new(url);
        options.prefix = prefix.to_owned();
        options.connect_timeout = Duration::from_secs(5);
        let backend = Backend::redis(options, 4096, clock.clone())
            .await
            .expect("redis backend starts");
        Self::start_with_clock(backend, clock, tweak).await
    }

    /// A server on the durable embedded store in `dir` (its live state loaded from
    /// there), with a given clock and settings.
    pub async fn start_durable_with(
        dir: &std::path::Path,
        clock: Arc<ManualClock>,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        let (backend, _) =
            Backend::durable(dir, 4096, clock.clone()).expect("durable backend starts");
        Self::start_with_clock(backend, clock, tweak).await
    }

    /// A server on the given backend and clock.
    pub async fn start_with_clock(
        backend: Backend,
        clock: Arc<ManualClock>,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        let mut keys = ApiKeys::default();
        for (id, key) in [OPERATOR_A, OPERATOR_B] {
            keys.insert_plain(OperatorId::parse(id).unwrap(), key);
        }
        let mut drivers = DriverTokens::default();
        drivers.add_secret(DRIVER_SECRET.as_bytes(), None, None);
        let mut settings = Settings {
            api_keys: keys,
            driver_tokens: drivers,
            clock: clock.clone(),
            shutdown_grace: Duration::from_secs(2),
            status_sweep: Duration::from_millis(50),
            ..Settings::default()
        };
        tweak(&mut settings);
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, metrics_addr) = (grpc.local_addr().unwrap(), metrics.local_addr().unwrap());
        let http_addr = http.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app::run(
            grpc,
            Some(metrics),
            Some(http),
            backend.clone(),
            settings,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            metrics_addr,
            http_addr,
            clock,
            backend,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A channel to the server: a connection of its own.
    pub async fn channel(&self) -> Channel {
        self.endpoint().connect().await.unwrap()
    }

    /// The endpoint of the server, to build a channel with other settings.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("http://{}", self.addr)).unwrap()
    }

    /// The server's idea of now.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Moves the server's clock forward by `secs` seconds.
    pub fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    pub async fn registry(&self) -> RegistryClient<Channel> {
        RegistryClient::new(self.channel().await)
    }

    pub async fn ingest(&self) -> IngestClient<Channel> {
        IngestClient::new(self.channel().await)
    }

    pub async fn reservations(&self) -> ReservationsClient<Channel> {
        ReservationsClient::new(self.channel().await)
    }

    pub async fn shared(&self) -> SharedParkingClient<Channel> {
        SharedParkingClient::new(self.channel().await)
    }

    pub async fn sessions(&self) -> SessionsClient<Channel> {
        SessionsClient::new(self.channel().await)
    }

    pub async fn availability(&self) -> AvailabilityClient<Channel> {
        AvailabilityClient::new(self.channel().await)
    }

    /// The text of /metrics.
    pub async fn metrics_text(&self) -> String {
        metrics_text_at(self.metrics_addr).await
    }

    /// Stops the server and waits until it has drained.
    pub async fn stop(mut self) -> Result<(), app::AppError> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A Ping on `channel`.
pub async fn ping_on(channel: Channel) -> Result<(), Status> {
    AvailabilityClient::new(channel)
        .ping(pb::PingRequest::default())
        .await
        .map(drop)
}

/// The text of /metrics served at `addr` (the HTTP response, headers included).
pub async fn metrics_text_at(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The real `citypark` binary running `serve`, started as an operator would start it;
/// killed when dropped, so a failing test leaves nothing running.
pub struct Binary {
    child: std::process::Child,
    /// Every line it writes to stderr, as it writes them.
    lines: std::sync::mpsc::Receiver<std::io::Result<String>>,
    /// Its data directory (`CITYPARK_DATA_DIR`; a `--data-dir` among the args wins),
    /// removed after the process is killed (fields drop after `Drop::drop`).
    _data_dir: tempfile::TempDir,
}

impl Binary {
    /// Runs `citypark serve` on loopback ports the OS picks, with `args` added, in a
    /// clean environment (no CITYPARK_* variable of the machine changes the flags).
    pub fn serve(args: &[&str]) -> Self {
        Self::spawn(args, |_| {})
    }

    /// As `serve`, with the open-files limit (soft and hard) set to `limit`, as
    /// systemd's `LimitNOFILE` would.
    pub fn serve_with_open_files(args: &[&str], limit: u64) -> Self {
        use std::os::unix::process::CommandExt;
        Self::spawn(args, |command| {
            // SAFETY: setrlimit is async-signal-safe, as code between fork and exec
            // must be.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
    }

    fn spawn(args: &[&str], prepare: impl FnOnce(&mut std::process::Command)) -> Self {
        use std::{
            io::{BufRead as _, BufReader},
            process::{Command, Stdio},
        };
        let data_dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_citypark"));
        command
            .args(["serve", "--grpc-addr", "127.0.0.1:0"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(args)
            .env_clear()
            .env("CITYPARK_DATA_DIR", data_dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        prepare(&mut command);
        let mut child = command.spawn().expect("the citypark binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        // Reads to the end even when nobody listens any more, so the binary never
        // blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            _data_dir: data_dir,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The lines it has written to stderr since the last read, without waiting.
    pub fn lines_so_far(&self) -> Vec<String> {
        self.lines.try_iter().filter_map(Result::ok).collect()
    }

    /// The lines it writes to stderr from now until one that contains `text`, that one
    /// included; fails the test if none comes within `bound`.
    pub fn lines_until(&self, text: &str, bound: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + bound;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {text:?} line in time; stderr so far: {lines:#?}"))
                .expect("stderr is text");
            let done = line.contains(text);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address logged after `name=` in a log line (`grpc=127.0.0.1:50051`).
pub fn logged_addr(line: &str, name: &str) -> std::net::SocketAddr {
    let start = line
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        + name.len()
        + 1;
    line[start..]
        .split(|c: char| c.is_whitespace() || c == ',')
        .next()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap_or_else(|e| panic!("{name}= in {line:?}: {e}"))
}

/// A request with an operator's key.
pub fn authed<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {key}")).unwrap(),
    );
    request
}

/// A valid garage at `lat, lon` with 100 standard and 10 EV spaces.
pub fn garage(id: &str, lat: f64, lon: f64) -> pb::CarPark {
    pb::CarPark {
        id: id.to_owned(),
        region: "qingdao".into(),
        name: format!("Garage {id}"),
        address: "1 Test Road".into(),
        location: Some(pb::LatLng {
            latitude: lat,
            longitude: lon,
        }),
        kind: pb::CarParkKind::Garage.into(),
        capacity: vec![
            pb::CategoryCapacity {
                category: pb::SpaceCategory::Standard.into(),
                spaces: 100,
            },
            pb::CategoryCapacity {
                category: pb::SpaceCategory::EvCharging.into(),
                spaces: 10,
            },
        ],
        time_zone: "Asia/Shanghai".into(),
        tariff: Some(pb::Tariff {
            currency: "CNY".into(),
            hourly_rate_minor: 500,
            daily_cap_minor: 3000,
            free_minutes: 15,
            version: 1,
        }),
        report_interval_seconds: 60,
        ..Default::default()
    }
}

/// Registers a car park as operator A.
pub async fn register(server: &TestServer, car_park: pb::CarPark) -> pb::CarPark {
    register_as(server, car_park, OPERATOR_A.1).await
}

/// Registers a car park with the given key.
pub async fn register_as(server: &TestServer, car_park: pb::CarPark, key: &str) -> pb::CarPark {
    try_register_as(server, car_park, key).await.unwrap()
}

/// Registers (or replaces) a car park as operator A, returning the call's result.
pub async fn try_register(
    server: &TestServer,
    car_park: pb::CarPark,
) -> Result<pb::CarPark, Status> {
    try_register_as(server, car_park, OPERATOR_A.1).await
}

/// Registers (or replaces) a car park with the given key, returning the call's result.
pub async fn try_register_as(
    server: &TestServer,
    car_park: pb::CarPark,
    key: &str,
) -> Result<pb::CarPark, Status> {
    server
        .registry()
        .await
        .upsert_car_park(authed(
            pb::UpsertCarParkRequest {
                car_park: Some(car_park),
            },
            key,
        ))
        .await
        .map(|r| r.into_inner().car_park.unwrap())
}

/// The protobuf form of a timestamp.
pub fn pb_time(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

/// A snapshot report: free standard spaces.
pub fn snapshot(id: &str, sequence: u64, free_standard: i32, at: Timestamp) -> pb::OccupancyReport {
    pb::OccupancyReport {
        car_park_id: id.to_owned(),
        sequence,
        observed_at: Some(pb_time(at)),
        restart_sequence: false,
        body: Some(pb::occupancy_report::Body::Snapshot(pb::SnapshotReport {
            free: vec![pb::CategoryCount {
                category: pb::SpaceCategory::Standard.into(),
                count: free_standard,
            }],
        })),
    }
}

/// A garage with 100 standard spaces of which `quota` may be reserved (15-minute
/// slots, windows up to 4 hours, 15 minutes' grace, cancellable until the start).
pub fn reservable_garage(id: &str, quota: i32) -> pb::CarPark {
    pb::CarPark {
        reservation_policy: Some(pb::ReservationPolicy {
            quota: capacity(&[(pb::SpaceCategory::Standard, quota)]),
            ..Default::default()
        }),
        ..garage(id, 36.066, 120.383)
    }
}

/// A create request for standard space at `car_park` over [start, end).
pub fn reservation_request(
    car_park: &str,
    start: Timestamp,
    end: Timestamp,
    plate: &str,
    key: &str,
) -> pb::CreateReservationRequest {
    pb::CreateReservationRequest {
        car_park_id: car_park.to_owned(),
        category: pb::SpaceCategory::Standard.into(),
        start_time: Some(pb_time(start)),
        end_time: Some(pb_time(end)),
        plate: plate.to_owned(),
        idempotency_key: key.to_owned(),
    }
}

/// Creates a reservation as `driver`.
pub async fn reserve(
    server: &TestServer,
    driver: &str,
    request: pb::CreateReservationRequest,
) -> Result<pb::Reservation, Status> {
    server
        .reservations()
        .await
        .create_reservation(authed(request, &driver_token(driver)))
        .await
        .map(|r| r.into_inner().reservation.unwrap())
}

/// A delta report of one standard car in or out with its plate.
pub fn plate_delta(
    id: &str,
    sequence: u64,
    entry: bool,
    plate: &str,
    at: Timestamp,
) -> pb::OccupancyReport {
    let mut report = delta(id, sequence, i32::from(entry), i32::from(!entry), at);
    if let Some(pb::occupancy_report::Body::Delta(d)) = &mut report.body {
        d.plate = plate.to_owned();
    }
    report
}

/// A delta report: entries and exits of standard spaces.
pub fn delta(
    id: &str,
    sequence: u64,
    entries: i32,
    exits: i32,
    at: Timestamp,
) -> pb::OccupancyReport {
    let standard = |count| {
        vec![pb::CategoryCount {
            category: pb::SpaceCategory::Standard.into(),
            count,
        }]
    };
    pb::OccupancyReport {
        car_park_id: id.to_owned(),
        sequence,
        observed_at: Some(pb_time(at)),
        restart_sequence: false,
        body: Some(pb::occupancy_report::Body::Delta(pb::DeltaReport {
            entries: standard(entries),
            exits: standard(exits),
            ..Default::default()
        })),
    }
}

/// Sends one report as operator A and returns the ack.
pub async fn report(
    server: &TestServer,
    report: pb::OccupancyReport,
) -> Result<pb::ReportAck, tonic::Status> {
    let mut ingest = server.ingest().await;
    ingest
        .report(authed(
            pb::ReportRequest {
                report: Some(report),
            },
            OPERATOR_A.1,
        ))
        .await
        .map(|r| r.into_inner().ack.unwrap())
}

/// A point near the centre of Qingdao.
pub fn here() -> pb::LatLng {
    pb::LatLng {
        latitude: 36.066,
        longitude: 120.383,
    }
}

/// Free standard spaces in an availability.
pub fn free_standard(a: &pb::CarParkAvailability) -> i32 {
    a.categories
        .iter()
        .find(|c| c.category == pb::SpaceCategory::Standard as i32)
        .map_or(-1, |c| c.free)
}

/// `t` plus `secs` seconds (negative for earlier).
pub fn after(t: Timestamp, secs: i64) -> Timestamp {
    t + jiff::SignedDuration::from_secs(secs)
}

/// A point `north_m` metres north and `east_m` metres east of `here()` (flat-earth
/// offsets: accurate to well under a metre over a few kilometres).
pub fn offset(north_m: f64, east_m: f64) -> (f64, f64) {
    let origin = here();
    let m_per_deg_lat = 111_195.0;
    let m_per_deg_lon = m_per_deg_lat * origin.latitude.to_radians().cos();
    (
        origin.latitude + north_m / m_per_deg_lat,
        origin.longitude + east_m / m_per_deg_lon,
    )
}

/// A garage `north_m` metres north of `here()`.
pub fn garage_north(id: &str, north_m: f64) -> pb::CarPark {
    let (lat, lon) = offset(north_m, 0.0);
    garage(id, lat, lon)
}

/// A capacity list from (category, spaces) pairs.
pub fn capacity(entries: &[(pb::SpaceCategory, i32)]) -> Vec<pb::CategoryCapacity> {
    entries
        .iter()
        .map(|&(category, spaces)| pb::CategoryCapacity {
            category: category.into(),
            spaces,
        })
        .collect()
}

/// A snapshot report with the given free counts per category.
pub fn snapshot_of(
    id: &str,
    sequence: u64,
    free: &[(pb::SpaceCategory, i32)],
    at: Timestamp,
) -> pb::OccupancyReport {
    pb::OccupancyReport {
        body: Some(pb::occupancy_report::Body::Snapshot(pb::SnapshotReport {
            free: free
                .iter()
                .map(|&(category, count)| pb::CategoryCount {
                    category: category.into(),
                    count,
                })
                .collect(),
        })),
        ..snapshot(id, sequence, 0, at)
    }
}

/// A bay sensor report on a standard bay.
pub fn bay(
    id: &str,
    sequence: u64,
    bay_id: &str,
    occupied: bool,
    at: Timestamp,
) -> pb::OccupancyReport {
    pb::OccupancyReport {
        body: Some(pb::occupancy_report::Body::Bay(pb::BayStatusReport {
            bay_id: bay_id.to_owned(),
            category: pb::SpaceCategory::Standard.into(),
            occupied,
        })),
        ..snapshot(id, sequence, 0, at)
    }
}

/// Sends one report with the given key and returns the ack.
pub async fn report_as(
    server: &TestServer,
    report: pb::OccupancyReport,
    key: &str,
) -> Result<pb::ReportAck, Status> {
    let mut ingest = server.ingest().await;
    ingest
        .report(authed(
            pb::ReportRequest {
                report: Some(report),
            },
            key,
        ))
        .await
        .map(|r| r.into_inner().ack.unwrap())
}

/// Sends one report as operator A, which must be applied; returns the ack.
pub async fn report_ok(server: &TestServer, r: pb::OccupancyReport) -> pb::ReportAck {
    let ack = report(server, r).await.unwrap();
    assert_eq!(ack.result(), pb::ReportResult::Applied, "{ack:?}");
    ack
}

/// The live state of one registered car park, through GetAvailability.
pub async fn availability_of(server: &TestServer, id: &str) -> pb::CarParkAvailability {
    let mut availability = server.availability().await;
    let mut found = availability
        .get_availability(pb::GetAvailabilityRequest {
            car_park_ids: vec![id.to_owned()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        found.not_found_ids,
        Vec::<String>::new(),
        "{id} is registered"
    );
    found.availabilities.pop().unwrap()
}

/// A car park as registered, through GetCarPark.
pub async fn car_park_of(server: &TestServer, id: &str) -> Result<pb::CarPark, Status> {
    let mut registry = server.registry().await;
    registry
        .get_car_park(pb::GetCarParkRequest { id: id.to_owned() })
        .await
        .map(|r| r.into_inner().car_park.unwrap())
}

/// Every listed car park's id, a page of `page_size` at a time, and the page sizes.
pub async fn list_in_pages(server: &TestServer, page_size: i32) -> (Vec<String>, Vec<usize>) {
    let mut registry = server.registry().await;
    let (mut ids, mut pages, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = registry
            .list_car_parks(pb::ListCarParksRequest {
                page_size,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(page.car_parks.len());
        ids.extend(page.car_parks.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            return (ids, pages);
        }
        token = page.next_page_token;
    }
}

/// Every registered car park (at most 1000), through ListCarParks.
pub async fn all_car_parks(server: &TestServer) -> Vec<pb::CarPark> {
    let mut registry = server.registry().await;
    let page = registry
        .list_car_parks(pb::ListCarParksRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.next_page_token.is_empty());
    page.car_parks
}

/// Ids of every registered car park, through ListCarParks.
pub async fn all_ids(server: &TestServer) -> Vec<String> {
    all_car_parks(server)
        .await
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// GetAvailability for `ids`, which must succeed.
pub async fn lookup<S: AsRef<str>>(server: &TestServer, ids: &[S]) -> pb::GetAvailabilityResponse {
    server
        .availability()
        .await
        .get_availability(pb::GetAvailabilityRequest {
            car_park_ids: ids.iter().map(|id| id.as_ref().to_owned()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The live state of car parks on `server`, in the order asked; `None` for one it does
/// not know.
pub async fn states(server: &TestServer, ids: &[String]) -> Vec<Option<pb::CarParkAvailability>> {
    let found = lookup(server, ids).await;
    ids.iter()
        .map(|id| {
            found
                .availabilities
                .iter()
                .find(|a| &a.car_park_id == id)
                .cloned()
        })
        .collect()
}

/// (id, sequence, result, reject code, field) of each ack.
pub fn ack_summary(
    acks: &[pb::ReportAck],
) -> Vec<(&str, u64, pb::ReportResult, pb::RejectCode, &str)> {
    acks.iter()
        .map(|a| {
            (
                a.car_park_id.as_str(),
                a.sequence,
                a.result(),
                a.reject_code(),
                a.field.as_str(),
            )
        })
        .collect()
}

/// The health of one service, through grpc.health.v1 Check.
pub async fn health(server: &TestServer, service: &str) -> ServingStatus {
    health_at(server.channel().await, service).await
}

/// The health of one service, through grpc.health.v1 Check on `channel`.
pub async fn health_at(channel: Channel, service: &str) -> ServingStatus {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

/// The value of one exact series (`name{labels}`) in Prometheus text, 0 if absent.
pub fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name_and_labels)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// A FindNearby request around `here()` with everything else at its default.
pub fn near_here() -> pb::FindNearbyRequest {
    pb::FindNearbyRequest {
        location: Some(here()),
        ..Default::default()
    }
}

/// The answer to a FindNearby that must succeed.
pub async fn find(server: &TestServer, request: pb::FindNearbyRequest) -> Vec<pb::NearbyCarPark> {
    let mut availability = server.availability().await;
    availability
        .find_nearby(request)
        .await
        .unwrap()
        .into_inner()
        .results
}

/// The car park ids of a FindNearby answer, in order.
pub fn ids_of(results: &[pb::NearbyCarPark]) -> Vec<&str> {
    results.iter().map(|r| r.car_park_id.as_str()).collect()
}

/// Asserts that `result` failed with `code` and returns the status.
#[track_caller]
pub fn expect_code<T: Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(value) => panic!("expected {code:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            status
        }
    }
}

/// Asserts INVALID_ARGUMENT whose message names `field` first (`field: reason`).
#[track_caller]
pub fn expect_invalid<T: Debug>(result: Result<T, Status>, field: &str) {
    let status = expect_code(result, Code::InvalidArgument);
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "message should name {field:?}: {:?}",
        status.message()
    );
}

/// The next message of a stream; fails the test if none comes within [`PATIENCE`].
pub async fn next<T>(stream: &mut Streaming<T>) -> Result<Option<T>, Status> {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("no message within the time bound")
}

/// Opens a watch on the given car parks.
pub async fn watch_ids(
    server: &TestServer,
    ids: &[&str],
) -> Result<Streaming<pb::WatchAvailabilityResponse>, Status> {
    watch(
        server.availability().await,
        pb::watch_availability_request::Selector::Ids(pb::CarParkIds {
            ids: ids.iter().map(|s| s.to_string()).collect(),
        }),
    )
    .await
}

/// Opens a watch on a box given by its south-west and north-east corners.
pub async fn watch_area(
    server: &TestServer,
    south_west: (f64, f64),
    north_east: (f64, f64),
) -> Result<Streaming<pb::WatchAvailabilityResponse>, Status> {
    let point = |(latitude, longitude)| {
        Some(pb::LatLng {
            latitude,
            longitude,
        })
    };
    watch(
        server.availability().await,
        pb::watch_availability_request::Selector::Area(pb::BoundingBox {
            south_west: point(south_west),
            north_east: point(north_east),
        }),
    )
    .await
}

/// Opens a watch with a given client.
pub async fn watch(
    mut client: AvailabilityClient<Channel>,
    selector: pb::watch_availability_request::Selector,
) -> Result<Streaming<pb::WatchAvailabilityResponse>, Status> {
    client
        .watch_availability(pb::WatchAvailabilityRequest {
            selector: Some(selector),
        })
        .await
        .map(|r| r.into_inner())
}

/// The next event of a watch, which must come.
pub async fn next_event(stream: &mut Streaming<pb::WatchAvailabilityResponse>) -> Event {
    next(stream)
        .await
        .expect("watch stream failed")
        .expect("watch stream ended")
        .event
        .expect("an event")
}

/// The next event of a watch, which must be an update.
pub async fn next_update(
    stream: &mut Streaming<pb::WatchAvailabilityResponse>,
) -> pb::CarParkAvailability {
    match next_event(stream).await {
        Event::Update(a) => a,
        other => panic!("expected an update, got {other:?}"),
    }
}

/// Reads a snapshot: the updates up to `snapshot_complete`, whose count must match.
pub async fn read_snapshot(
    stream: &mut Streaming<pb::WatchAvailabilityResponse>,
) -> Vec<pb::CarParkAvailability> {
    let mut states = Vec::new();
    loop {
        match next_event(stream).await {
            Event::Update(a) => states.push(a),
            Event::SnapshotComplete(done) => {
                assert_eq!(done.car_parks as usize, states.len());
                return states;
            }
            other => panic!("expected a snapshot, got {other:?}"),
        }
    }
}

/// An open Publish stream: batches go in, one answer per batch comes out.
pub struct Publisher {
    batches: mpsc::Sender<pb::PublishRequest>,
    answers: Streaming<pb::PublishResponse>,
}

impl Publisher {
    /// Opens a Publish stream with `key` on a connection of its own.
    pub async fn open(server: &TestServer, key: &str) -> Result<Self, Status> {
        let (batches, rx) = mpsc::channel(16);
        let answers = server
            .ingest()
            .await
            .publish(authed(ReceiverStream::new(rx), key))
            .await?
            .into_inner();
        Ok(Self { batches, answers })
    }

    /// Sends one batch without waiting for its answer.
    pub async fn send(&self, reports: Vec<pb::OccupancyReport>) {
        self.batches
            .send(pb::PublishRequest { reports })
            .await
            .expect("the publish stream is open");
    }

    /// The next answer: its acks, `None` at the end, or the status ending the stream.
    pub async fn answer(&mut self) -> Result<Option<Vec<pb::ReportAck>>, Status> {
        next(&mut self.answers)
            .await
            .map(|r| r.map(|response| response.acks))
    }

    /// Sends one batch and returns its acks, which must come.
    pub async fn exchange(&mut self, reports: Vec<pb::OccupancyReport>) -> Vec<pb::ReportAck> {
        let n = reports.len();
        self.send(reports).await;
        let acks = self
            .answer()
            .await
            .expect("publish stream failed")
            .expect("publish stream ended");
        assert_eq!(acks.len(), n, "one ack per report");
        acks
    }

    /// Sends each report as a message of its own without waiting, then checks that
    /// every one is acked, in order, as applied.
    pub async fn send_ahead_and_apply(&mut self, reports: Vec<pb::OccupancyReport>) {
        let sent: Vec<u64> = reports.iter().map(|r| r.sequence).collect();
        for report in reports {
            self.send(vec![report]).await;
        }
        let mut acks = Vec::new();
        for _ in &sent {
            acks.extend(
                self.answer()
                    .await
                    .expect("publish stream failed")
                    .expect("an answer per message"),
            );
        }
        let acked: Vec<u64> = acks.iter().map(|a| a.sequence).collect();
        assert_eq!(acked, sent, "one ack per report, in order");
        for ack in &acks {
            assert_eq!(ack.result(), pb::ReportResult::Applied, "{ack:?}");
        }
    }
}

/// Redis-backed servers with store options of the test's choosing, and servers that can
/// crash.
impl TestServer {
    /// As `start_redis_with`, with the store's options changed by `tweak` first: e.g. a
    /// tiny `stream_max_len`, which the CLI refuses (its minimum is 1000) but the library
    /// takes.
    pub async fn start_redis_opts(
        url: &str,
        prefix: &str,
        clock: Arc<ManualClock>,
        tweak: impl FnOnce(&mut RedisOptions),
    ) -> Self {
        let mut options = RedisOptions::new(url);
        options.prefix = prefix.to_owned();
        options.connect_timeout = Duration::from_secs(5);
        tweak(&mut options);
        let backend = Backend::redis(options, 4096, clock.clone())
            .await
            .expect("redis backend starts");
        Self::start_with_clock(backend, clock, |_| {}).await
    }

    /// As `start_redis_with`, but the whole server (gRPC connections, Publish and watch
    /// tasks, the store's writer, tails and Redis connections) runs in a Tokio runtime of
    /// its own, so that [`TestServer::kill`] can end all of it at once.
    pub async fn start_redis_killable(url: &str, prefix: &str, clock: Arc<ManualClock>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("killable-server")
            .enable_all()
            .build()
            .expect("a runtime for the server");
        let (url, prefix) = (url.to_owned(), prefix.to_owned());
        let mut server = runtime
            .spawn(async move { Self::start_redis_with(&url, &prefix, clock, |_| {}).await })
            .await
            .expect("the server starts");
        let run = server.task.take().expect("a running server");
        // The runtime lives as long as this task: it ends when the server has stopped
        // (`stop`, drop) or when it is aborted (`kill`); either way the runtime goes too.
        server.task = Some(tokio::spawn(async move {
            let _runtime = OwnedRuntime(Some(runtime));
            run.await.expect("the server task did not panic")
        }));
        server
    }

    /// Ends a server from [`TestServer::start_redis_killable`] as a crash would.
    ///
    /// Chosen over `stop` because `stop` is an orderly shutdown: health goes NOT_SERVING,
    /// every in-flight batch is finished and acknowledged, and Publish streams are told
    /// UNAVAILABLE before the sockets close, so no report is ever applied without its
    /// ack being sent. Aborting the `app::run` task alone is no crash either: the gRPC
    /// server, its connections and the store run in tasks of their own and would keep
    /// serving. Shutting the server's own runtime down drops every one of its tasks at
    /// its next await, without running any shutdown step: connections close mid-stream
    /// and a batch already sent to Redis may be applied there with its acks never sent,
    /// exactly what a killed process leaves behind. (The Redis server is unaffected.)
    /// On a server from any other constructor this only aborts `app::run`.
    pub async fn kill(mut self) {
        // Never sent (dropping it would count as the signal): a crash gives no notice.
        std::mem::forget(self.stop.take());
        let task = self.task.take().expect("a running server");
        task.abort();
        // Returns once the task is gone, i.e. once its runtime has been shut down.
        let _ = task.await;
    }
}

/// A runtime shut down when dropped, without waiting for its tasks (which a plain drop
/// would do, and may not inside another runtime).
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// One HTTP/1.1 GET: the status, the headers (names lower-cased) and the body.
pub async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    http_call(addr, "GET", path, headers, &[]).await
}

/// One HTTP/1.1 request on a connection of its own, as the simplest client sends it:
/// the status, the headers (names in lower case) and the body.
pub async fn http_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: citypark\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // A server may answer before it has read the whole body (one over a limit), and
    // close: what it answered counts, not the rest of the write or a reset after it.
    let wrote = stream.write_all(body).await;
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer).await;
    if answer.is_empty() {
        wrote.unwrap();
        read.unwrap();
    }
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = std::str::from_utf8(&answer[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (name, value) = l.split_once(':').unwrap();
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    (status, headers, answer[split + 4..].to_vec())
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Runs the `citypark` binary with `args` (off the runtime, which may be serving the
/// test's server), in the repository's directory and without the client variables of
/// the environment: its exit code, stdout and stderr.
pub async fn run_status(args: Vec<String>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_citypark"))
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("CITYPARK_SERVER")
            .env_remove("CITYPARK_TOKEN")
            .env_remove("CITYPARK_API_KEY")
            .output()
            .expect("the binary runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}
