//! The simulated operator companies: gRPC clients that register the city and stream
//! its occupancy through the public API, reconnecting and resending as a real
//! integration must.
//!
//! Each operator runs as a task of one `JoinSet` owned by [`run_operators`], which
//! returns only once every one of them has ended; reconnecting happens inside an
//! operator's task, so nothing here outlives the call.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::Streaming;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::pb;
use crate::pb::ingest_client::IngestClient;
use crate::pb::occupancy_report::Body;
use crate::pb::registry_client::RegistryClient;
use crate::pb::reservations_client::ReservationsClient;
use crate::pb::sessions_client::SessionsClient;
use crate::rng::Rng;

use super::city::DemoOperator;
use super::drivers::DemoDriver;
use super::simulation::{Plates, SimPark, occupancy_fraction, shanghai_clock};

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The endpoint is not a valid URI.
    #[error("invalid demo server endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was refused.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server could not be reached at start, even after retrying.
    #[error("cannot connect to demo server {endpoint}: {source}")]
    Connect {
        /// The endpoint connected to.
        endpoint: String,
        /// The last connection error.
        #[source]
        source: tonic::transport::Error,
    },
    /// An API key cannot be sent as a header value.
    #[error("api key of demo operator {operator} is not a valid header value")]
    InvalidApiKey {
        /// The operator whose key is bad.
        operator: String,
    },
    /// A car park names an operator that was not given.
    #[error("car park {car_park} belongs to operator {operator:?}, which has no demo api key")]
    UnknownOperator {
        /// The car park.
        car_park: String,
        /// Its operator id.
        operator: String,
    },
    /// The server refused to register a car park.
    #[error("registering car park {car_park} failed: {code:?}: {message}")]
    Register {
        /// The car park.
        car_park: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
}

/// A round is split into this many sends, spreading load evenly over the interval.
const TICKS_PER_ROUND: u32 = 10;
/// Most reports in one `PublishRequest`.
const MAX_BATCH: usize = 100;
/// Reports sent but not yet acknowledged beyond which a tick is skipped: the server is
/// behind, and piling on would only grow memory.
const MAX_PENDING: usize = 20_000;
/// Whether the demo's driver of a reserved car with `plate` comes: four plates in five
/// (by a hash of the plate, so the same plate always does the same).
pub fn driver_comes(plate: &str) -> bool {
    plate
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 5
        != 0
}

/// How often an operator looks for cars with reservations at its gates.
const GATE_EVERY: Duration = Duration::from_secs(5);
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the first connection is retried: `serve --demo` starts the server and the
/// operators together.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// Rejections logged individually per operator before only every thousandth is, so a
/// systematic problem does not flood the log.
const REJECTIONS_LOGGED: u64 = 20;

/// Adds the operator's API key to every call of a client.
#[derive(Clone)]
struct Bearer(AsciiMetadataValue);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    applied: u64,
    duplicate: u64,
    rejected: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Self) {
        self.applied += other.applied;
        self.duplicate += other.duplicate;
        self.rejected += other.rejected;
    }
}

/// One simulated operator: its car parks, their simulated state and its stream.
struct Operator {
    id: String,
    registry: RegistryClient<Authed>,
    ingest: IngestClient<Authed>,
    reservations: ReservationsClient<Authed>,
    sessions: SessionsClient<Authed>,
    /// Reservations whose car this operator already reported at the gate.
    at_gate: HashSet<String>,
    car_parks: Vec<pb::CarPark>,
    sim: Vec<SimPark>,
    /// The plates its gates read: the demo drivers' it sees, and made-up ones.
    plates: Plates,
    cursor: usize,
    /// Reports sent and not yet acknowledged, in send order; acks arrive in the same
    /// order, and after a reconnect these are sent again.
    pending: VecDeque<pb::OccupancyReport>,
    /// How many reports at the front of `pending` are being sent again after a
    /// reconnect: a DUPLICATE ack of one of them likely means its first sending was
    /// applied.
    resending: usize,
    /// Plate reads acknowledged DUPLICATE on their first sending: someone else numbered
    /// the car park ahead (`citypark report` on a demo car park), so they were not
    /// applied. They go out again under new sequences, so that the sessions they open
    /// or close still are.
    reads_again: Vec<pb::OccupancyReport>,
    acked_on_stream: u64,
    /// Whether the first round went out: it reports on every car park at once, so a
    /// newcomer's first query finds live numbers instead of a city of NO_DATA.
    started: bool,
    interval: Duration,
    /// The time reports are observed at: the server's clock.
    clock: Arc<dyn Clock>,
    rng: Rng,
    tally: Tally,
}

impl Operator {
    /// Upserts every car park; `Ok(false)` if shutdown came first.
    async fn register(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<bool, (String, tonic::Status)> {
        for car_park in &self.car_parks {
            let request = pb::UpsertCarParkRequest {
                car_park: Some(car_park.clone()),
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(false),
                result = self.registry.upsert_car_park(request) => {
                    result.map_err(|status| (car_park.id.clone(), status))?;
                }
            }
        }
        info!(operator = %self.id, car_parks = self.car_parks.len(), "demo car parks registered");
        Ok(true)
    }

    /// Takes over the cars an earlier run of the demo left parked (after a restart on
    /// a store that kept their sessions open): each open session at this operator's
    /// car parks becomes a plated car of its simulation, which drives it out in time.
    /// A reserved car's session is left to its reservation, whose end brings its exit.
    /// Best effort: a failed listing leaves them.
    async fn take_over_parked_cars(&mut self, shutdown: &CancellationToken) {
        let mut page_token = String::new();
        let mut taken = 0;
        loop {
            let request = pb::ListSessionsRequest {
                state: pb::SessionState::Open.into(),
                page_size: 500,
                page_token,
                ..Default::default()
            };
            let page = tokio::select! {
                () = shutdown.cancelled() => return,
                page = self.sessions.list_sessions(request) => page,
            };
            let page = match page {
                Ok(page) => page.into_inner(),
                Err(status) => {
                    debug!(operator = %self.id, code = ?status.code(), "open sessions not listed; none taken over");
                    return;
                }
            };
            for s in page.sessions {
                if !s.reservation_id.is_empty() || s.plate.is_empty() {
                    continue;
                }
                let color = s.plate_color();
                if let Some(park) = self.sim.iter_mut().find(|p| p.id == s.car_park_id)
                    && park.adopt(s.plate.clone(), color)
                {
                    self.plates.parked(&s.plate);
                    taken += 1;
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        if taken > 0 {
            info!(operator = %self.id, cars = taken, "demo cars left parked by an earlier run taken over");
        }
    }

    async fn run(mut self, shutdown: CancellationToken) -> Result<Tally, DemoError> {
        match self.register(&shutdown).await {
            Ok(true) => self.take_over_parked_cars(&shutdown).await,
            Ok(false) => return Ok(self.tally),
            Err((car_park, status)) => {
                return Err(DemoError::Register {
                    car_park,
                    code: status.code(),
                    message: status.message().to_owned(),
                });
            }
        }
        let mut backoff = INITIAL_BACKOFF;
        let mut registered = true;
        loop {
            let failure = if registered {
                match self.stream(&shutdown).await {
                    Ok(()) => break,
                    Err(status) => {
                        // A server that restarted may have forgotten the city.
                        registered = false;
                        if self.acked_on_stream > 0 {
                            backoff = INITIAL_BACKOFF;
                        }
                        status
                    }
                }
            } else {
                match self.register(&shutdown).await {
                    Ok(true) => {
                        registered = true;
                        continue;
                    }
                    Ok(false) => break,
                    Err((_, status)) => status,
                }
            };
            if shutdown.is_cancelled() {
                break;
            }
            warn!(
                operator = %self.id,
                code = ?failure.code(),
                message = failure.message(),
                retry_in = ?backoff,
                pending = self.pending.len(),
                "demo operator lost the server"
            );
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let Tally {
            applied,
            duplicate,
            rejected,
        } = self.tally;
        info!(operator = %self.id, applied, duplicate, rejected, "demo operator stopped");
        Ok(self.tally)
    }

    /// One Publish stream, until shutdown (`Ok`) or failure (`Err`).
    async fn stream(&mut self, shutdown: &CancellationToken) -> Result<(), tonic::Status> {
        self.acked_on_stream = 0;
        let (tx, rx) = mpsc::unbounded_channel();
        // Resend what the last stream left unacknowledged; what the server had already
        // applied comes back DUPLICATE.
        self.resending = self.pending.len();
        self.pending.extend(self.reads_again.drain(..));
        let unacked: Vec<_> = self.pending.iter().cloned().collect();
        for chunk in unacked.chunks(MAX_BATCH) {
            let _ = tx.send(pb::PublishRequest {
                reports: chunk.to_vec(),
            });
        }
        let mut ingest = self.ingest.clone();
        // The call is polled alongside the ticker so reports flow even if the server
        // waits for the first request before answering with headers.
        let call = ingest.publish(UnboundedReceiverStream::new(rx));
        tokio::pin!(call);
        let mut acks: Option<Streaming<pb::PublishResponse>> = None;
        let mut ticker = tokio::time::interval(self.interval / TICKS_PER_ROUND);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gate = tokio::time::interval(GATE_EVERY);
        gate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    drop(tx);
                    self.drain(acks).await;
                    return Ok(());
                }
                opened = &mut call, if acks.is_none() => {
                    acks = Some(opened?.into_inner());
                }
                message = next_message(&mut acks) => match message? {
                    Some(response) => {
                        self.on_acks(response.acks);
                        let again = std::mem::take(&mut self.reads_again);
                        for chunk in again.chunks(MAX_BATCH) {
                            self.pending.extend(chunk.iter().cloned());
                            let batch = pb::PublishRequest { reports: chunk.to_vec() };
                            if tx.send(batch).is_err() {
                                return Err(tonic::Status::unavailable("publish stream closed"));
                            }
                        }
                    }
                    None => return Err(tonic::Status::unavailable("publish stream closed by the server")),
                },
                _ = gate.tick() => {
                    let reports = self.gate_reports().await;
                    for chunk in reports.chunks(MAX_BATCH) {
                        self.pending.extend(chunk.iter().cloned());
                        let batch = pb::PublishRequest { reports: chunk.to_vec() };
                        if tx.send(batch).is_err() {
                            return Err(tonic::Status::unavailable("publish stream closed"));
                        }
                    }
                }
                _ = ticker.tick() => {
                    if self.pending.len() >= MAX_PENDING {
                        debug!(operator = %self.id, pending = self.pending.len(), "demo server behind; skipping a tick");
                        continue;
                    }
                    for batch in self.tick() {
                        self.pending.extend(batch.reports.iter().cloned());
                        if tx.send(batch).is_err() {
                            return Err(tonic::Status::unavailable("publish stream closed"));
                        }
                    }
                }
            }
        }
    }

    /// Reads the acks of reports already sent, so the final tally is right and the
    /// server sees the stream end cleanly.
    async fn drain(&mut self, acks: Option<Streaming<pb::PublishResponse>>) {
        let Some(mut acks) = acks else { return };
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(Some(response)) = acks.message().await {
                self.on_acks(response.acks);
            }
        })
        .await;
    }

    /// Cars with reservations at this operator's gates: a reservation whose window has
    /// begun gets its car's entry, with the plate (four in five; the fifth driver does
    /// not come and becomes a no-show), and a checked-in one whose window has ended its
    /// exit. Best effort: a failed listing waits for the next pass.
    async fn gate_reports(&mut self) -> Vec<pb::OccupancyReport> {
        let request = pb::ListReservationsRequest {
            page_size: 500,
            ..Default::default()
        };
        let Ok(listed) = self.reservations.list_reservations(request).await else {
            return Vec::new();
        };
        let now = SystemTime::from(self.clock.now());
        let observed_at = prost_types::Timestamp::from(now);
        let now = observed_at.seconds;
        let mut reports = Vec::new();
        for r in listed.into_inner().reservations {
            let seconds = |t: Option<prost_types::Timestamp>| t.map_or(i64::MAX, |t| t.seconds);
            let (start, end, due) = (
                seconds(r.start_time),
                seconds(r.end_time),
                seconds(r.no_show_at),
            );
            let entry = match r.state() {
                pb::ReservationState::Reserved if start <= now && now < due => true,
                pb::ReservationState::CheckedIn if end <= now => false,
                _ => continue,
            };
            let key = format!("{}:{entry}", r.id);
            if self.at_gate.contains(&key) || (entry && !driver_comes(&r.plate)) {
                continue;
            }
            let Some(park) = self.sim.iter_mut().find(|p| p.id == r.car_park_id) else {
                continue;
            };
            if let Some(report) = park.gate(r.category, &r.plate, entry, observed_at) {
                self.at_gate.insert(key);
                reports.push(report);
            }
        }
        reports
    }

    /// Reports for the next slice of car parks, in batches.
    fn tick(&mut self) -> Vec<pb::PublishRequest> {
        let n = self.sim.len();
        if n == 0 {
            return Vec::new();
        }
        let now = SystemTime::from(self.clock.now());
        let (hour, weekend) = shanghai_clock(now);
        let observed_at = prost_types::Timestamp::from(now);
        let take = if self.started {
            n.div_ceil(TICKS_PER_ROUND as usize)
        } else {
            self.started = true;
            n
        };
        let mut reports = Vec::new();
        for _ in 0..take {
            let park = &mut self.sim[self.cursor];
            let shape = occupancy_fraction(park.kind, hour, weekend);
            reports.extend(park.step(shape, observed_at, &mut self.rng, &mut self.plates));
            self.cursor += 1;
            if self.cursor == n {
                self.cursor = 0;
                let Tally {
                    applied,
                    duplicate,
                    rejected,
                } = self.tally;
                debug!(operator = %self.id, applied, duplicate, rejected, pending = self.pending.len(), "demo round complete");
                break;
            }
        }
        reports
            .chunks(MAX_BATCH)
            .map(|chunk| pb::PublishRequest {
                reports: chunk.to_vec(),
            })
            .collect()
    }

    fn on_acks(&mut self, acks: Vec<pb::ReportAck>) {
        for ack in acks {
            self.acked_on_stream += 1;
            let sent = self.pending.pop_front();
            let first_sending = self.resending == 0;
            self.resending = self.resending.saturating_sub(1);
            match ack.result() {
                pb::ReportResult::Applied => self.tally.applied += 1,
                pb::ReportResult::Duplicate => {
                    self.tally.duplicate += 1;
                    self.catch_up_sequence(&ack);
                    if first_sending && let Some(report) = sent {
                        self.read_again(report);
                    }
                }
                pb::ReportResult::Rejected | pb::ReportResult::Unspecified => {
                    self.on_rejected(&ack)
                }
            }
        }
    }

    /// Queues `report` to be sent again under its car park's next sequence if it
    /// carries a plate (observed when it was: the car passed the gate then).
    fn read_again(&mut self, mut report: pb::OccupancyReport) {
        let plated = matches!(&report.body, Some(Body::Delta(d)) if !d.plate.is_empty());
        if !plated {
            // Counts alone: the next snapshot corrects them.
            return;
        }
        if let Some(park) = self.sim.iter_mut().find(|p| p.id == report.car_park_id) {
            report.sequence = park.sequence();
            debug!(operator = %self.id, car_park = %report.car_park_id, sequence = report.sequence, "a plate read numbered behind the car park sent again");
            self.reads_again.push(report);
        }
    }

    /// A server that kept its state across a demo restart knows newer sequences than a
    /// fresh simulation; continuing from there lets the new reports apply.
    fn catch_up_sequence(&mut self, ack: &pb::ReportAck) {
        let Some(last) = ack.availability.as_ref().map(|a| a.last_sequence) else {
            return;
        };
        if let Some(park) = self.sim.iter_mut().find(|p| p.id == ack.car_park_id)
            && park.next_sequence <= last
        {
            park.next_sequence = last + 1;
        }
    }

    fn on_rejected(&mut self, ack: &pb::ReportAck) {
        self.tally.rejected += 1;
        let code = ack.reject_code();
        if self.tally.rejected <= REJECTIONS_LOGGED || self.tally.rejected.is_multiple_of(1_000) {
            warn!(
                operator = %self.id,
                car_park = %ack.car_park_id,
                sequence = ack.sequence,
                code = ?code,
                field = %ack.field,
                reason = %ack.reason,
                rejected = self.tally.rejected,
                "demo report rejected"
            );
        }
        if code == pb::RejectCode::NotFound {
            // Someone deleted it; reporting on, or registering it again, would fight them.
            // Its reports still in flight stay pending: their acks are on the way.
            let id = ack.car_park_id.as_str();
            let before = self.sim.len();
            self.sim.retain(|p| p.id != id);
            self.car_parks.retain(|c| c.id != id);
            if self.sim.len() < before {
                if self.cursor >= self.sim.len() {
                    self.cursor = 0;
                }
                info!(operator = %self.id, car_park = %id, "demo car park gone; no longer simulated");
            }
        }
    }
}

async fn next_message(
    acks: &mut Option<Streaming<pb::PublishResponse>>,
) -> Result<Option<pb::PublishResponse>, tonic::Status> {
    match acks {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}

/// Connects, retrying for a while; `None` if shutdown came first.
async fn connect(
    endpoint: &str,
    shutdown: &CancellationToken,
) -> Result<Option<Channel>, DemoError> {
    let target = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|source| DemoError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        // Detects a dead server on an idle stream, so reconnecting starts promptly.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    loop {
        match target.connect().await {
            Ok(channel) => return Ok(Some(channel)),
            Err(error) if tokio::time::Instant::now() < deadline => {
                debug!(%error, endpoint, "demo server not reachable yet");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            Err(source) => {
                return Err(DemoError::Connect {
                    endpoint: endpoint.to_owned(),
                    source,
                });
            }
        }
    }
}

/// A seed for the shared offers that follows the city (the same city, the same
/// offers), from its car parks' ids.
fn seed_of_city(city: &[pb::CarPark]) -> u64 {
    city.iter().fold(city.len() as u64, |h, c| {
        c.id.bytes()
            .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3))
    })
}

/// What the demo plays: its city, operators and drivers, how often each car park
/// reports, and the clock reports are observed by.
pub(super) struct Plan {
    pub(super) city: Vec<pb::CarPark>,
    pub(super) operators: Vec<DemoOperator>,
    pub(super) drivers: Vec<DemoDriver>,
    pub(super) interval: Duration,
    pub(super) clock: Arc<dyn Clock>,
}

/// Registers the city through `Registry.UpsertCarPark`, then streams occupancy through
/// `Ingest.Publish`, one stream per operator, until `shutdown` is cancelled; beside
/// them, the hosts offer shared spaces and the drivers link their plates and top up.
///
/// Every car park gets a report about once per `interval`: mostly entries and exits
/// moving it towards its day-shaped occupancy, a snapshot every tenth round, and bay
/// sensor flips for on-street zones; a few cars at garages and lots have their plates
/// read at the gates, the drivers' among them. Lost streams are retried with backoff
/// (1 s doubling to 30 s) and unacknowledged reports resent.
///
/// Returns only once every task it spawned has ended.
pub(super) async fn run_operators(
    endpoint: String,
    plan: Plan,
    shutdown: CancellationToken,
) -> Result<(), DemoError> {
    let Plan {
        city,
        operators,
        drivers,
        interval,
        clock,
    } = plan;
    let mut keys = HashMap::with_capacity(operators.len());
    for operator in &operators {
        let value =
            AsciiMetadataValue::try_from(format!("Bearer {}", operator.api_key)).map_err(|_| {
                DemoError::InvalidApiKey {
                    operator: operator.id.clone(),
                }
            })?;
        keys.insert(operator.id.as_str(), Bearer(value));
    }
    let mut fleets: Vec<(String, Vec<pb::CarPark>)> = Vec::new();
    for car_park in city {
        if !keys.contains_key(car_park.operator_id.as_str()) {
            return Err(DemoError::UnknownOperator {
                car_park: car_park.id,
                operator: car_park.operator_id,
            });
        }
        match fleets
            .iter_mut()
            .find(|(id, _)| *id == car_park.operator_id)
        {
            Some((_, parks)) => parks.push(car_park),
            None => fleets.push((car_park.operator_id.clone(), vec![car_park])),
        }
    }

    let Some(channel) = connect(&endpoint, &shutdown).await? else {
        return Ok(());
    };
    // Stops the other operators when one fails to register, without touching the
    // caller's token.
    let stop = shutdown.child_token();
    let now = SystemTime::from(clock.now());
    let (hour, weekend) = shanghai_clock(now);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut tasks = JoinSet::new();
    let all: Vec<pb::CarPark> = fleets.iter().flat_map(|(_, c)| c.iter().cloned()).collect();
    let offers = super::sharing::generate_offers(&all, seed_of_city(&all));
    let hosts = (channel.clone(), stop.clone());
    tasks.spawn(async move {
        super::sharing::offer_all(hosts.0, offers, hosts.1).await;
        Ok(Tally::default())
    });
    // Each linked plate is seen by one operator's gates, so it is parked in one place
    // at a time without the operators' tasks sharing state.
    let mut seen_by: Vec<Vec<(String, pb::PlateColor)>> = vec![Vec::new(); fleets.len()];
    for (k, plate) in drivers.iter().flat_map(|d| d.plates.iter()).enumerate() {
        seen_by[k % fleets.len().max(1)].push(plate.clone());
    }
    let people = (channel.clone(), clock.clone(), stop.clone());
    tasks.spawn(async move {
        super::drivers::run_drivers(people.0, drivers, people.1, people.2).await;
        Ok(Tally::default())
    });
    for (n, ((id, car_parks), linked)) in fleets.into_iter().zip(seen_by).enumerate() {
        let bearer = keys[id.as_str()].clone();
        let mut rng = Rng::new(seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let sim = car_parks
            .iter()
            .map(|c| SimPark::new(c, &mut rng, |kind| occupancy_fraction(kind, hour, weekend)))
            .collect();
        let operator = Operator {
            id,
            registry: RegistryClient::with_interceptor(channel.clone(), bearer.clone()),
            ingest: IngestClient::with_interceptor(channel.clone(), bearer.clone()),
            reservations: ReservationsClient::with_interceptor(channel.clone(), bearer.clone()),
            sessions: SessionsClient::with_interceptor(channel.clone(), bearer),
            at_gate: HashSet::new(),
            car_parks,
            sim,
            plates: Plates::new(linked),
            cursor: 0,
            pending: VecDeque::new(),
            resending: 0,
            reads_again: Vec::new(),
            acked_on_stream: 0,
            started: false,
            interval,
            clock: clock.clone(),
            rng,
            tally: Tally::default(),
        };
        tasks.spawn(operator.run(stop.clone()));
    }

    let mut total = Tally::default();
    let mut first_error = None;
    let mut panicked = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(tally)) => total += tally,
            Ok(Err(error)) => {
                stop.cancel();
                first_error.get_or_insert(error);
            }
            // The panic is raised again only once the other operators have stopped and
            // been joined: unwinding through the JoinSet would merely abort them.
            Err(join_error) if join_error.is_panic() => {
                stop.cancel();
                panicked.get_or_insert(join_error.into_panic());
            }
            Err(join_error) => warn!(error = %join_error, "demo operator task ended unexpectedly"),
        }
    }
    if let Some(payload) = panicked {
        std::panic::resume_unwind(payload);
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    let Tally {
        applied,
        duplicate,
        rejected,
    } = total;
    info!(applied, duplicate, rejected, "demo operators stopped");
    Ok(())
}
