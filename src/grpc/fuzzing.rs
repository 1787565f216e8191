//! What the request fuzz targets (`fuzz/`) run and check: a method's request bytes
//! through the server's own gRPC stack, in process, on a fresh small city each time.
//!
//! The stack is the one `app::run` serves: the generated tonic services (their codec,
//! the message-size limit) calling the real handlers and service, behind
//! [`AdmissionLayer`] (callers verified once; no rate limits, as by default) and
//! [`MetricsLayer`], which answers the codec's errors with the client's codes. Only
//! the socket (connection limits, TLS) and the gRPC-Web and CORS layers, which a
//! native gRPC request passes through untouched, are left out. So an answer here is
//! the one a client would read, and [`Harness::check`] holds it to the API's promise:
//! no panic, no status a client's request cannot earn (INTERNAL, UNKNOWN, ...), and
//! every INVALID_ARGUMENT, and every report rejected as invalid in a Publish ack,
//! names a field of the request by its path (`car_park.capacity[1].spaces`).
//! [`Harness::fuzz`] makes one call per input; [`Harness::fuzz_calls`] several on one
//! city, each checked.
//!
//! It lives in the library, not in `fuzz/`, so that it is built and linted with every
//! change and `tests/it/fuzz_seeds.rs` replays the committed seeds through it on the
//! stable toolchain.

use std::{
    collections::HashMap,
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http_body::Body as _;
use prost::Message as _;
use prost_types::{
    DescriptorProto, FileDescriptorSet,
    field_descriptor_proto::{Label, Type},
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, codegen::Bytes, service::Routes};
use tower::{Layer, Service as _};

use super::{
    AdmissionLayer, Api, MetricsLayer, RateLimits, admission::AdmissionService,
    layer::MetricsService,
};
use crate::{
    auth::ApiKeys,
    clock::ManualClock,
    domain::{DriverId, OperatorId, Timestamp},
    engine::Engine,
    pb,
    service::{Limits, Service},
    store::{AnyStore, embedded::EmbeddedStore},
    tokens::DriverTokens,
};

/// The proto package of every citypark service.
const PACKAGE: &str = "citypark.v1";

/// Most calls one input of [`Harness::fuzz_calls`] makes.
pub const MAX_CALLS: usize = 8;

/// The request-size limit `app::run` sets by default (`--max-message-bytes`).
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// What the server answers, in `layer.rs`, for bytes that break before any field of
/// the request could be read: the one INVALID_ARGUMENT that cannot name a field.
/// Bytes that break inside a field are answered `<field>: cannot be read (...)`.
const NOT_A_MESSAGE: &str = "the request is not a valid protobuf message of this method";

/// The codes a client's request may earn. INTERNAL and UNKNOWN are the server's
/// faults; UNAUTHENTICATED and UNAVAILABLE cannot happen to the harness's callers,
/// which hold valid credentials, on a store that is always up.
const CLIENT_CODES: [Code; 7] = [
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::FailedPrecondition,
    Code::ResourceExhausted,
];

const OPERATOR: (&str, &str) = ("op-a", "fuzz-operator-key");
const DRIVER_SECRET: &[u8] = b"citypark-fuzz-driver-secret-32-bytes";
/// The driver who hosts the fixture's offer, and the one who holds its reservation
/// and booking.
const HOST: &str = "d1";
const DRIVER: &str = "d2";

/// Who calls a method: the caller the method needs to get past authentication to
/// its conversions, owning what the fixture made for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Anonymous,
    Operator,
    Host,
    Driver,
}

/// One citypark gRPC method.
#[derive(Debug, Clone)]
pub struct Method {
    /// `/citypark.v1.Registry/UpsertCarPark`.
    pub path: String,
    /// The request message's full name, `.citypark.v1.UpsertCarParkRequest`.
    pub input: String,
    server_streaming: bool,
    caller: Caller,
}

/// What the fixture city holds, so seeds can name it: every call runs on a fresh copy.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The time of the harness's clock.
    pub now: Timestamp,
    /// A garage that takes reservations, with one reported snapshot.
    pub car_park: String,
    /// An on-street zone whose bays report.
    pub zone: String,
    pub region: String,
    /// The driver's reservation at `car_park`.
    pub reservation: String,
    /// The host's offer, and the driver's booking of it.
    pub offer: String,
    pub booking: String,
}

/// An answer as a client reads it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The call's status: OK, or the error (from the headers of a trailers-only
    /// answer, or from the trailers).
    pub status: Status,
    /// The answered messages' protobuf bytes (a watch's stream is not read).
    pub messages: Vec<Bytes>,
}

/// The service stack of one fresh city.
struct City {
    stack: MetricsService<AdmissionService<Routes>>,
    service: Service,
    shutdown: CancellationToken,
}

/// Runs requests in process, each on a fresh copy of a small city, and checks the
/// answers. Build one per process: it holds a runtime.
pub struct Harness {
    runtime: tokio::runtime::Runtime,
    methods: Vec<Method>,
    messages: HashMap<String, DescriptorProto>,
    keys: Arc<ApiKeys>,
    drivers: Arc<DriverTokens>,
    host_token: String,
    driver_token: String,
    fixture: Fixture,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// A harness with the fixture city built once, to learn its ids.
    pub fn new() -> Self {
        let set = FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET)
            .expect("the build writes a valid descriptor set");
        let mut messages = HashMap::new();
        let mut methods = Vec::new();
        for file in &set.file {
            let prefix = format!(".{}", file.package());
            collect_messages(&prefix, &file.message_type, &mut messages);
            if file.package() != PACKAGE {
                continue;
            }
            for service in &file.service {
                for method in &service.method {
                    methods.push(Method {
                        path: format!("/{PACKAGE}.{}/{}", service.name(), method.name()),
                        input: method.input_type().to_owned(),
                        server_streaming: method.server_streaming(),
                        caller: caller(service.name(), method.name()),
                    });
                }
            }
        }
        let mut keys = ApiKeys::default();
        keys.insert_plain(OperatorId::parse(OPERATOR.0).expect("valid"), OPERATOR.1);
        let mut drivers = DriverTokens::default();
        drivers.add_secret(DRIVER_SECRET, None, None);
        // Tokens expire by the real clock: ten years covers any fuzzing run.
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let token = |driver: &str| {
            let id = DriverId::parse(driver).expect("valid");
            DriverTokens::issue(DRIVER_SECRET, &id, unix, 10 * 365 * 86_400, None, None)
        };
        let mut harness = Self {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            methods,
            messages,
            keys: Arc::new(keys),
            drivers: Arc::new(drivers),
            host_token: token(HOST),
            driver_token: token(DRIVER),
            fixture: Fixture {
                now: "2026-11-30T02:00:00Z".parse().expect("a time"),
                car_park: "g1".into(),
                zone: "z1".into(),
                region: "qingdao".into(),
                reservation: String::new(),
                offer: "o1".into(),
                booking: String::new(),
            },
        };
        let (reservation, booking) = harness.runtime.block_on(async {
            let mut city = harness.empty_city().await;
            let ids = harness.fixture_ids(&mut city).await;
            city.close().await;
            ids
        });
        harness.fixture.reservation = reservation;
        harness.fixture.booking = booking;
        harness
    }

    /// What every call's city holds.
    pub fn fixture(&self) -> &Fixture {
        &self.fixture
    }

    /// The methods of `service` ("Registry", "SharedParking", ...), in the proto's order.
    pub fn methods(&self, service: &str) -> Vec<&Method> {
        let prefix = format!("/{PACKAGE}.{service}/");
        self.methods
            .iter()
            .filter(|m| m.path.starts_with(&prefix))
            .collect()
    }

    /// The fuzz input that sends `message` to the method at `path`: the method's index
    /// in its service, then the message.
    pub fn input(&self, path: &str, message: &[u8]) -> Option<Vec<u8>> {
        let service = path
            .strip_prefix(&format!("/{PACKAGE}."))?
            .split('/')
            .next()?;
        let index = self.methods(service).iter().position(|m| m.path == path)?;
        let mut input = vec![u8::try_from(index).ok()?];
        input.extend_from_slice(message);
        Some(input)
    }

    /// Runs fuzz input `data` against `service`: its first byte picks the method (its
    /// index in the proto, modulo the number of methods), the rest is the request
    /// message. An error says what broke the API's promise.
    pub fn fuzz(&self, service: &str, data: &[u8]) -> Result<(), String> {
        let methods = self.methods(service);
        if methods.is_empty() {
            return Err(format!("{PACKAGE} has no service {service:?}"));
        }
        let Some((&pick, message)) = data.split_first() else {
            return Ok(());
        };
        let method = methods[usize::from(pick) % methods.len()];
        let answer = self.call(method, message);
        self.check(method, &answer)
            .map_err(|why| format!("{}: {why}", method.path))
    }

    /// Runs fuzz input `data` as several calls on one fresh city, so that a request
    /// meets what earlier ones made (a car park with an extreme tariff, then a priced
    /// query over it). Each call is a method's index among every method (one byte,
    /// modulo their number), its message's length (two bytes, little-endian; cut to
    /// what is left) and the message; at most [`MAX_CALLS`] calls.
    pub fn fuzz_calls(&self, data: &[u8]) -> Result<(), String> {
        self.runtime.block_on(async {
            let mut city = self.city().await;
            let mut rest = data;
            let mut outcome = Ok(());
            for _ in 0..MAX_CALLS {
                let [pick, lo, hi, tail @ ..] = rest else {
                    break;
                };
                let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
                let (message, tail) = tail.split_at(len);
                rest = tail;
                let method = &self.methods[usize::from(*pick) % self.methods.len()];
                let answer = self.send(&mut city, method, message).await;
                if let Err(why) = self.check(method, &answer) {
                    outcome = Err(format!("{}: {why}", method.path));
                    break;
                }
            }
            city.close().await;
            outcome
        })
    }

    /// The fuzz input for [`Self::fuzz_calls`] that makes `calls` (method path,
    /// message) in order.
    pub fn calls_input(&self, calls: &[(&str, Vec<u8>)]) -> Option<Vec<u8>> {
        let mut input = Vec::new();
        for (path, message) in calls {
            let index = self.methods.iter().position(|m| m.path == *path)?;
            input.push(u8::try_from(index).ok()?);
            input.extend_from_slice(&u16::try_from(message.len()).ok()?.to_le_bytes());
            input.extend_from_slice(message);
        }
        Some(input)
    }

    /// Sends `message` (protobuf bytes, framed here) to `method` on a fresh fixture city.
    pub fn call(&self, method: &Method, message: &[u8]) -> Answer {
        self.runtime.block_on(async {
            let mut city = self.city().await;
            let answer = self.send(&mut city, method, message).await;
            city.close().await;
            answer
        })
    }

    /// Whether `answer` keeps the API's promise for `method` (see the module docs).
    pub fn check(&self, method: &Method, answer: &Answer) -> Result<(), String> {
        let status = &answer.status;
        if !CLIENT_CODES.contains(&status.code()) {
            return Err(format!("answered {status:?}"));
        }
        if status.code() == Code::InvalidArgument && status.message() != NOT_A_MESSAGE {
            let field = status.message().split_once(": ").map_or("", |(f, _)| f);
            if !self.names_field(&method.input, field) {
                return Err(format!(
                    "INVALID_ARGUMENT names no field of {}: {:?}",
                    method.input,
                    status.message()
                ));
            }
        }
        if method.path.ends_with("/Publish") {
            for message in &answer.messages {
                let response = pb::PublishResponse::decode(message.clone())
                    .map_err(|e| format!("an answer that is no PublishResponse: {e}"))?;
                for ack in &response.acks {
                    self.check_ack(ack)?;
                }
            }
        }
        Ok(())
    }

    /// A report rejected in a Publish ack as invalid names its field relative to the
    /// report; no report is rejected for the server's own fault.
    fn check_ack(&self, ack: &pb::ReportAck) -> Result<(), String> {
        if ack.result() != pb::ReportResult::Rejected {
            return Ok(());
        }
        match ack.reject_code() {
            pb::RejectCode::InvalidArgument => {
                let report = format!(".{PACKAGE}.OccupancyReport");
                if !self.names_field(&report, &ack.field) {
                    return Err(format!(
                        "a rejected report names no field of it: {:?} ({:?})",
                        ack.field, ack.reason
                    ));
                }
            }
            pb::RejectCode::Unspecified => {
                return Err(format!("a report rejected without a code: {ack:?}"));
            }
            _ if ack.reason.starts_with("internal error") => {
                return Err(format!("a report rejected for an internal error: {ack:?}"));
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether `path` (`car_park.capacity[1].spaces`) names a field of message
    /// `message` (a full name), each `[i]` a repeated one; the last part may name a
    /// oneof (`body`).
    fn names_field(&self, message: &str, path: &str) -> bool {
        let Some(mut current) = self.messages.get(message) else {
            return false;
        };
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (name, indexed) = match part.split_once('[') {
                Some((name, index)) => {
                    let index = index.strip_suffix(']').unwrap_or("");
                    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                        return false;
                    }
                    (name, true)
                }
                None => (part, false),
            };
            let last = parts.peek().is_none();
            let Some(field) = current.field.iter().find(|f| f.name() == name) else {
                return last && !indexed && current.oneof_decl.iter().any(|o| o.name() == name);
            };
            if indexed && field.label() != Label::Repeated {
                return false;
            }
            if last {
                return true;
            }
            if field.r#type() != Type::Message {
                return false;
            }
            match self.messages.get(field.type_name()) {
                Some(next) => current = next,
                None => return false,
            }
        }
        false
    }

    /// The services on an empty embedded store.
    async fn empty_city(&self) -> City {
        let engine = Arc::new(Engine::new(64));
        let store = Arc::new(AnyStore::Embedded(EmbeddedStore::new(engine.clone())));
        let clock = Arc::new(ManualClock::new(self.fixture.now));
        let service = Service::new(engine, store, clock, Limits::default());
        let shutdown = CancellationToken::new();
        let api = Api::new(
            service.clone(),
            self.keys.clone(),
            self.drivers.clone(),
            shutdown.clone(),
        );
        // As app::run serves it by default: callers verified once, no rate limits.
        let admission = AdmissionLayer::new(
            self.keys.clone(),
            self.drivers.clone(),
            RateLimits::unlimited(),
        );
        let routes = super::routes(api, MAX_MESSAGE_BYTES).prepare();
        City {
            stack: MetricsLayer::new().layer(admission.layer(routes)),
            service,
            shutdown,
        }
    }

    /// A fresh city holding the fixture.
    async fn city(&self) -> City {
        let mut city = self.empty_city().await;
        self.fixture_ids(&mut city).await;
        city
    }

    /// Makes the fixture in `city` through the API; the ids of its reservation and
    /// booking.
    async fn fixture_ids(&self, city: &mut City) -> (String, String) {
        let f = &self.fixture;
        let at = |minutes: i64| {
            let t = f.now.as_second() + minutes * 60;
            Some(prost_types::Timestamp {
                seconds: t,
                nanos: 0,
            })
        };
        let garage = pb::CarPark {
            reservation_policy: Some(pb::ReservationPolicy {
                quota: vec![pb::CategoryCapacity {
                    category: pb::SpaceCategory::Standard.into(),
                    spaces: 10,
                }],
                ..Default::default()
            }),
            ..fixture_car_park(&f.car_park, &f.region, pb::CarParkKind::Garage)
        };
        let zone = fixture_car_park(&f.zone, &f.region, pb::CarParkKind::OnStreet);
        for car_park in [garage, zone] {
            let request = pb::UpsertCarParkRequest {
                car_park: Some(car_park),
            };
            self.fixture_call(city, "Registry/UpsertCarPark", &request)
                .await;
        }
        let report = pb::ReportRequest {
            report: Some(pb::OccupancyReport {
                car_park_id: f.car_park.clone(),
                sequence: 1,
                observed_at: at(0),
                restart_sequence: false,
                body: Some(pb::occupancy_report::Body::Snapshot(pb::SnapshotReport {
                    free: vec![pb::CategoryCount {
                        category: pb::SpaceCategory::Standard.into(),
                        count: 42,
                    }],
                })),
            }),
        };
        self.fixture_call(city, "Ingest/Report", &report).await;
        let offer = pb::OfferSpaceRequest {
            offer: Some(pb::SharedOffer {
                id: f.offer.clone(),
                region: f.region.clone(),
                location: Some(pb::LatLng {
                    latitude: 36.0675,
                    longitude: 120.3835,
                }),
                address: "Compound 3, Xianggang Rd".into(),
                spaces: 2,
                time_zone: "Asia/Shanghai".into(),
                schedule: (1..=7)
                    .map(|weekday| pb::WeeklyPeriod {
                        weekday,
                        start_minute: 0,
                        end_minute: 1440,
                    })
                    .collect(),
                hourly_rate_minor: 400,
                cap_per_booking_minor: 2_000,
                ..Default::default()
            }),
        };
        self.fixture_call(city, "SharedParking/OfferSpace", &offer)
            .await;
        let reservation = pb::CreateReservationRequest {
            car_park_id: f.car_park.clone(),
            category: pb::SpaceCategory::Standard.into(),
            start_time: at(240),
            end_time: at(300),
            plate: "鲁B12345".into(),
            idempotency_key: "k1".into(),
        };
        let created = self
            .fixture_call(city, "Reservations/CreateReservation", &reservation)
            .await;
        let booking = pb::BookOfferRequest {
            offer_id: f.offer.clone(),
            start_time: at(240),
            end_time: at(300),
            plate: "鲁B12345".into(),
            idempotency_key: "k2".into(),
        };
        let booked = self
            .fixture_call(city, "SharedParking/BookOffer", &booking)
            .await;
        let reservation = pb::CreateReservationResponse::decode(created)
            .ok()
            .and_then(|r| r.reservation)
            .map(|r| r.id);
        let booking = pb::BookOfferResponse::decode(booked)
            .ok()
            .and_then(|b| b.booking)
            .map(|b| b.id);
        (
            reservation.expect("the fixture's reservation"),
            booking.expect("the fixture's booking"),
        )
    }

    /// One call of the fixture, which must succeed; its answer's message.
    async fn fixture_call(
        &self,
        city: &mut City,
        method: &str,
        request: &impl prost::Message,
    ) -> Bytes {
        let path = format!("/{PACKAGE}.{method}");
        let method = self
            .methods
            .iter()
            .find(|m| m.path == path)
            .expect("a method of the proto");
        let answer = self.send(city, method, &request.encode_to_vec()).await;
        assert_eq!(answer.status.code(), Code::Ok, "fixture {path}: {answer:?}");
        answer.messages.into_iter().next().unwrap_or_default()
    }

    /// One call through the city's stack, as a client over HTTP/2 would make it.
    async fn send(&self, city: &mut City, method: &Method, message: &[u8]) -> Answer {
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(method.path.as_str())
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        let credential = match method.caller {
            Caller::Anonymous => None,
            Caller::Operator => Some(OPERATOR.1),
            Caller::Host => Some(self.host_token.as_str()),
            Caller::Driver => Some(self.driver_token.as_str()),
        };
        if let Some(credential) = credential {
            request = request.header("authorization", format!("Bearer {credential}"));
        }
        let mut framed = Vec::with_capacity(message.len() + 5);
        framed.push(0);
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(message);
        let request = request
            .body(OneFrame(Some(Bytes::from(framed))))
            .expect("a valid request");
        let stack = &mut city.stack;
        if let Err(never) = std::future::poll_fn(|cx| {
            tower::Service::<http::Request<OneFrame>>::poll_ready(stack, cx)
        })
        .await
        {
            match never {}
        }
        let response = match stack.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        if let Some(status) = Status::from_header_map(&parts.headers) {
            return Answer {
                status,
                messages: Vec::new(),
            };
        }
        if method.server_streaming && !method.path.ends_with("/Publish") {
            // A watch that started: its stream runs until the client leaves.
            return Answer {
                status: Status::ok(""),
                messages: Vec::new(),
            };
        }
        let mut body = std::pin::pin!(body);
        let mut data = Vec::new();
        let mut status = None;
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(error) => {
                    status = Some(Status::unknown(format!("the answer broke off: {error}")));
                    break;
                }
            };
            match frame.into_data() {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(frame) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        status = Status::from_header_map(trailers);
                    }
                }
            }
        }
        Answer {
            status: status.unwrap_or_else(|| Status::unknown("the answer ended without a status")),
            messages: unframe(&data),
        }
    }
}

impl City {
    /// Ends the city's streams and waits for every task it started.
    async fn close(self) {
        self.shutdown.cancel();
        self.service.wait_tasks().await;
    }
}

/// The caller a method needs to reach its conversions on the fixture's records.
fn caller(service: &str, method: &str) -> Caller {
    match (service, method) {
        ("Registry" | "Ingest", _) => Caller::Operator,
        ("Availability", _) => Caller::Anonymous,
        ("Sessions", "ListSessions" | "GetSettlement") => Caller::Operator,
        ("SharedParking", "OfferSpace" | "UpdateOffer" | "WithdrawOffer" | "ListMyOffers") => {
            Caller::Host
        }
        _ => Caller::Driver,
    }
}

/// Every message type in `messages` and nested in them, by full name.
fn collect_messages(
    prefix: &str,
    messages: &[DescriptorProto],
    into: &mut HashMap<String, DescriptorProto>,
) {
    for message in messages {
        let name = format!("{prefix}.{}", message.name());
        collect_messages(&name, &message.nested_type, into);
        into.insert(name, message.clone());
    }
}

/// A valid car park of the fixture, operator A's, near Qingdao's station.
fn fixture_car_park(id: &str, region: &str, kind: pb::CarParkKind) -> pb::CarPark {
    pb::CarPark {
        id: id.to_owned(),
        region: region.to_owned(),
        name: format!("Fixture {id}"),
        address: "1 Test Road".into(),
        location: Some(pb::LatLng {
            latitude: 36.067,
            longitude: 120.383,
        }),
        kind: kind.into(),
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
            ..Default::default()
        }),
        report_interval_seconds: 60,
        ..Default::default()
    }
}

/// The messages of a gRPC body: each a compression flag, a 4-byte length, the bytes.
fn unframe(mut data: &[u8]) -> Vec<Bytes> {
    let mut messages = Vec::new();
    while data.len() >= 5 {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        let Some(message) = data.get(5..5 + len) else {
            break;
        };
        messages.push(Bytes::copy_from_slice(message));
        data = &data[5 + len..];
    }
    messages
}

/// A request body of one gRPC frame.
struct OneFrame(Option<Bytes>);

impl http_body::Body for OneFrame {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(
            self.get_mut()
                .0
                .take()
                .map(|b| Ok(http_body::Frame::data(b))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}
