//! Test harness: a real server on 127.0.0.1:0, real generated clients, a hand clock.

use std::{sync::Arc, time::Duration};

use citypark::{
    app::{self, Backend, Settings},
    auth::ApiKeys,
    domain::{OperatorId, Timestamp},
    pb::{
        self, availability_client::AvailabilityClient, ingest_client::IngestClient,
        registry_client::RegistryClient,
    },
    service::ManualClock,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

/// Operators every test server knows: (id, key).
pub const OPERATOR_A: (&str, &str) = ("op-a", "key-a");
pub const OPERATOR_B: (&str, &str) = ("op-b", "key-b");

/// Where the test clock starts: a Monday, 10:00 in Shanghai.
pub fn start_time() -> Timestamp {
    "2026-11-30T02:00:00Z".parse().unwrap()
}

/// A running server; dropping it stops the server.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
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
        let clock = Arc::new(ManualClock::new(start_time()));
        let mut keys = ApiKeys::default();
        for (id, key) in [OPERATOR_A, OPERATOR_B] {
            keys.insert_plain(OperatorId::parse(id).unwrap(), key);
        }
        let mut settings = Settings {
            api_keys: keys,
            clock: clock.clone(),
            shutdown_grace: Duration::from_secs(2),
            status_sweep: Duration::from_millis(50),
            ..Settings::default()
        };
        tweak(&mut settings);
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, metrics_addr) = (grpc.local_addr().unwrap(), metrics.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app::run(
            grpc,
            Some(metrics),
            backend.clone(),
            settings,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            metrics_addr,
            clock,
            backend,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn registry(&self) -> RegistryClient<Channel> {
        RegistryClient::new(self.channel().await)
    }

    pub async fn ingest(&self) -> IngestClient<Channel> {
        IngestClient::new(self.channel().await)
    }

    pub async fn availability(&self) -> AvailabilityClient<Channel> {
        AvailabilityClient::new(self.channel().await)
    }

    /// The text of /metrics.
    pub async fn metrics_text(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
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
    let mut registry = server.registry().await;
    registry
        .upsert_car_park(authed(
            pb::UpsertCarParkRequest {
                car_park: Some(car_park),
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .car_park
        .unwrap()
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
        body: Some(pb::occupancy_report::Body::Snapshot(pb::SnapshotReport {
            free: vec![pb::CategoryCount {
                category: pb::SpaceCategory::Standard.into(),
                count: free_standard,
            }],
        })),
    }
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
        body: Some(pb::occupancy_report::Body::Delta(pb::DeltaReport {
            entries: standard(entries),
            exits: standard(exits),
            plate: String::new(),
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
