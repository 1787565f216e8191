//! A crash of the real binary mid-load (issue 21): `citypark serve` on its durable
//! embedded store is killed with SIGKILL while clients report occupancy, reserve and
//! cancel, book and cancel shared spaces and pay for parking from their wallets; a new
//! process on the same data directory must hold every acknowledged write, and of the
//! writes the kill cut, only whole groups.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use citypark::{
    domain::{
        BookingId, CarParkId, DriverId, OfferId, ReservationId, SessionId, Timestamp, Wallet,
    },
    pb::{
        self, availability_client::AvailabilityClient, ingest_client::IngestClient,
        registry_client::RegistryClient, reservations_client::ReservationsClient,
        sessions_client::SessionsClient, shared_parking_client::SharedParkingClient,
    },
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code, Response, Status,
    transport::{Channel, Endpoint},
};

use crate::{
    sessions::gate,
    support::{
        Binary, DRIVER_SECRET, after, authed, driver_token, eventually_within, free_standard,
        garage_north, logged_addr, offset, pb_time, reservable_garage, reservation_request,
        snapshot,
    },
};

/// The operator's API key; the binary is given its SHA-256.
const KEY: &str = "crash-test-operator-key";
/// Feeds whose reports go one unary call at a time, and the two that share a Publish
/// stream.
const UNARY_FEEDS: [&str; 2] = ["feed-1", "feed-2"];
const STREAM_FEEDS: [&str; 2] = ["feed-3", "feed-4"];
/// Car parks taking reservations, each with this quota of standard spaces.
const RESERVABLE: [&str; 3] = ["res-1", "res-2", "res-3"];
const QUOTA: i32 = 60;
/// Reservation windows are two quarter hours starting at one of this many quarter
/// hours: the calendar checked after the restart spans them all.
const RESERVATION_STARTS: i64 = 32;
const RESERVING_DRIVERS: usize = 6;
/// Shared offers of one host, each with this many spaces, booked in this many
/// disjoint one-hour windows.
const HOST: &str = "hana";
const OFFERS: [&str; 3] = ["sh-1", "sh-2", "sh-3"];
const OFFER_SPACES: i32 = 10;
const BOOKING_WINDOWS: i64 = 6;
const BOOKING_DRIVERS: usize = 6;
/// Drivers who top up, drive in and out of a garage of their own and are charged.
const PAYING_DRIVERS: usize = 4;
/// Cycles (top-up, entry, exit) a paying driver makes at most: two ledger entries a
/// cycle and one top-up after the restart stay within the 50 entries GetWallet shows,
/// so every entry of the wallet can be checked.
const CYCLES: u64 = 24;
/// Each top-up, and each session's fee: one started hour at the paying garages' rate
/// (the garage's tariff with no free minutes).
const FEE: i64 = 500;
/// Seconds in a quarter hour, the slot of reservations and bookings.
const QUARTER: i64 = 900;
/// How long the load runs before the kill (less if the paying drivers are three
/// quarters of the way first), and the writes every workload must have had
/// acknowledged by then, so that the kill comes mid-load on a slow machine too.
const LOAD: Duration = Duration::from_millis(1500);
const LEAST_ACKED: usize = 10;

/// The free count a feed reports with `sequence`: a function of the sequence, so that a
/// state holding one report's sequence and another's count shows.
fn free_at(sequence: u64) -> i32 {
    (sequence * 37 % 101) as i32
}

/// The next quarter hour after `t`.
fn quarter_after(t: Timestamp) -> Timestamp {
    let q = QUARTER * 1000;
    Timestamp::from_millisecond((t.as_millisecond() / q + 1) * q).unwrap()
}

/// The seconds of a time in a message.
fn seconds(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().expect("a time").seconds
}

/// The workloads, indexing [`Crash`]'s counts.
#[derive(Debug, Clone, Copy)]
enum Work {
    Ingest,
    Reserve,
    Book,
    Pay,
}

/// What the clients share: whether the kill has come, and per workload the writes
/// acknowledged and the calls the kill cut while on the wire.
#[derive(Default)]
struct Crash {
    killed: AtomicBool,
    acked: [AtomicUsize; 4],
    cut: [AtomicUsize; 4],
}

/// How one call of a client ended.
enum Answer<T> {
    /// Answered: the server answers a write only once it is committed.
    Acked(T),
    /// Refused for a reason of the domain (a full window); the client goes on.
    Refused(Status),
    /// Ended by the kill, or not made because it had come (`sent` false); the client
    /// stops.
    Cut { sent: bool },
}

impl Crash {
    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Makes one write call. An error before the kill fails the test, unless its code
    /// is among `refusals`; any error after it is the kill's.
    async fn call<T>(
        &self,
        work: Work,
        what: &str,
        refusals: &[Code],
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Answer<T> {
        if self.killed() {
            return Answer::Cut { sent: false };
        }
        match call.await {
            Ok(answer) => {
                self.acked[work as usize].fetch_add(1, Ordering::SeqCst);
                Answer::Acked(answer.into_inner())
            }
            Err(_) if self.killed() => {
                self.cut[work as usize].fetch_add(1, Ordering::SeqCst);
                Answer::Cut { sent: true }
            }
            Err(status) if refusals.contains(&status.code()) => Answer::Refused(status),
            Err(status) => panic!("{what} failed before the kill: {status:?}"),
        }
    }

    fn counts(&self, of: &[AtomicUsize; 4]) -> [usize; 4] {
        of.each_ref().map(|n| n.load(Ordering::SeqCst))
    }
}

/// The flags of both servers: one data directory, and no rate limit or cap on a
/// driver's reservations to refuse the load for reasons of their own.
fn flags(data_dir: &Path, secret: &Path) -> Vec<String> {
    use sha2::Digest;
    let keys = format!("op-a:{}", hex::encode(sha2::Sha256::digest(KEY)));
    [
        "--data-dir",
        &data_dir.display().to_string(),
        "--api-keys",
        &keys,
        "--driver-jwt-secret-file",
        &secret.display().to_string(),
        "--rate-operator",
        "0",
        "--rate-driver",
        "0",
        "--rate-anonymous",
        "0",
        "--max-active-reservations-per-driver",
        "1000",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Starts `citypark serve` with `flags`: the process, and the URL of its gRPC port.
fn serve(flags: &[String]) -> (Binary, String) {
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let binary = Binary::serve(&args);
    let lines = binary.lines_until("listening", Duration::from_secs(30));
    let addr = logged_addr(lines.last().unwrap(), "grpc");
    (binary, format!("http://{addr}"))
}

/// A connection of its own to `url`; no call waits on it for more than 10 s.
async fn connect(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// A garage whose every started hour is charged (no free minutes), at [`FEE`].
fn paying_garage(id: &str, north_m: f64) -> pb::CarPark {
    let mut garage = garage_north(id, north_m);
    let tariff = garage.tariff.as_mut().unwrap();
    tariff.free_minutes = 0;
    assert_eq!(tariff.hourly_rate_minor, FEE);
    garage
}

/// An offer of [`OFFER_SPACES`] spaces at any hour of the week.
fn shared_offer(id: &str, north_m: f64) -> pb::SharedOffer {
    let (latitude, longitude) = offset(north_m, 0.0);
    pb::SharedOffer {
        id: id.into(),
        region: "qingdao".into(),
        location: Some(pb::LatLng {
            latitude,
            longitude,
        }),
        address: "Compound 9, Donghai Rd".into(),
        spaces: OFFER_SPACES,
        time_zone: "Asia/Shanghai".into(),
        schedule: (1..=7)
            .map(|weekday| pb::WeeklyPeriod {
                weekday,
                start_minute: 0,
                end_minute: 1440,
            })
            .collect(),
        hourly_rate_minor: 400,
        ..Default::default()
    }
}

/// Paying driver `n`: its id, its garage's and its plate.
fn payer(n: usize) -> (String, String, String) {
    (
        format!("pd-{n}"),
        format!("pay-{n}"),
        format!("鲁B{}", 20000 + n),
    )
}

/// The times of the workloads' windows and gate reads.
#[derive(Clone, Copy)]
struct Times {
    /// The first quarter hour reservation windows start at.
    reservations: Timestamp,
    /// The start of the first one-hour booking window.
    bookings: Timestamp,
    /// Gate reads are observed from here on, in the past: a paying driver's cycles
    /// are 5 minutes apart, each stay 2 minutes.
    gates: Timestamp,
}

/// The city the load runs in, made before it starts.
async fn set_up(url: &str, times: Times) {
    let channel = connect(url).await;
    let mut registry = RegistryClient::new(channel.clone());
    let mut car_parks: Vec<pb::CarPark> = UNARY_FEEDS
        .iter()
        .chain(&STREAM_FEEDS)
        .enumerate()
        .map(|(i, id)| garage_north(id, 100.0 * (i as f64 + 1.0)))
        .collect();
    car_parks.extend(RESERVABLE.map(|id| reservable_garage(id, QUOTA)));
    car_parks
        .extend((0..PAYING_DRIVERS).map(|n| paying_garage(&payer(n).1, -100.0 * (n as f64 + 1.0))));
    for car_park in car_parks {
        registry
            .upsert_car_park(authed(
                pb::UpsertCarParkRequest {
                    car_park: Some(car_park),
                },
                KEY,
            ))
            .await
            .unwrap();
    }
    let mut ingest = IngestClient::new(channel.clone());
    let mut first_reports: Vec<_> = UNARY_FEEDS
        .iter()
        .chain(&STREAM_FEEDS)
        .map(|id| snapshot(id, 1, free_at(1), Timestamp::now()))
        .collect();
    first_reports.extend((0..PAYING_DRIVERS).map(|n| snapshot(&payer(n).1, 1, 100, times.gates)));
    for report in first_reports {
        let ack = ingest
            .report(authed(
                pb::ReportRequest {
                    report: Some(report),
                },
                KEY,
            ))
            .await
            .unwrap()
            .into_inner()
            .ack
            .unwrap();
        assert_eq!(ack.result(), pb::ReportResult::Applied, "{ack:?}");
    }
    let mut shared = SharedParkingClient::new(channel.clone());
    for (i, id) in OFFERS.iter().enumerate() {
        shared
            .offer_space(authed(
                pb::OfferSpaceRequest {
                    offer: Some(shared_offer(id, 50.0 * (i as f64 + 1.0))),
                },
                &driver_token(HOST),
            ))
            .await
            .unwrap();
    }
    let mut sessions = SessionsClient::new(channel);
    for n in 0..PAYING_DRIVERS {
        let (driver, _, plate) = payer(n);
        sessions
            .link_plate(authed(
                pb::LinkPlateRequest {
                    plate,
                    plate_color: pb::PlateColor::Blue.into(),
                    payment_method: pb::PaymentMethod::Wallet.into(),
                },
                &driver_token(&driver),
            ))
            .await
            .unwrap();
    }
}

/// One feed's sequences: the last acknowledged, and the last sent (a report without an
/// answer may or may not have been applied).
#[derive(Debug)]
struct Feed {
    id: String,
    acked: u64,
    sent: u64,
}

impl Feed {
    fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            acked: 1,
            sent: 1,
        }
    }
}

/// An applied report's ack shows the count of its own sequence.
fn check_ack(ack: &pb::ReportAck) {
    assert_eq!(ack.result(), pb::ReportResult::Applied, "{ack:?}");
    assert_eq!(
        free_standard(ack.availability.as_ref().unwrap()),
        free_at(ack.sequence),
        "{ack:?}"
    );
}

/// Reports on feed `id` one call at a time until the kill.
async fn report_one_by_one(crash: Arc<Crash>, url: String, id: &'static str) -> Feed {
    let mut ingest = IngestClient::new(connect(&url).await);
    let mut feed = Feed::new(id);
    loop {
        let sequence = feed.sent + 1;
        let report = snapshot(id, sequence, free_at(sequence), Timestamp::now());
        let request = authed(
            pb::ReportRequest {
                report: Some(report),
            },
            KEY,
        );
        feed.sent = sequence;
        match crash
            .call(Work::Ingest, "a report", &[], ingest.report(request))
            .await
        {
            Answer::Acked(reply) => {
                let ack = reply.ack.unwrap();
                check_ack(&ack);
                feed.acked = ack.sequence;
            }
            Answer::Refused(_) => unreachable!("no refusal is expected"),
            Answer::Cut { sent } => {
                if !sent {
                    feed.sent -= 1;
                }
                return feed;
            }
        }
    }
}

/// Reports on the stream feeds over one Publish stream, a batch of two reports each at
/// a time, until the kill.
async fn publish(crash: Arc<Crash>, url: String) -> Vec<Feed> {
    let mut ingest = IngestClient::new(connect(&url).await);
    let (batches, rx) = mpsc::channel(4);
    let mut answers = ingest
        .publish(authed(ReceiverStream::new(rx), KEY))
        .await
        .expect("a Publish stream opens")
        .into_inner();
    let mut feeds = STREAM_FEEDS.map(Feed::new);
    loop {
        if crash.killed() {
            return feeds.into();
        }
        let next = feeds[0].sent;
        let reports = [next + 1, next + 2]
            .into_iter()
            .flat_map(|s| STREAM_FEEDS.map(|id| snapshot(id, s, free_at(s), Timestamp::now())))
            .collect();
        if batches.send(pb::PublishRequest { reports }).await.is_err() {
            assert!(crash.killed(), "the Publish stream ended before the kill");
            return feeds.into();
        }
        for feed in &mut feeds {
            feed.sent = next + 2;
        }
        match answers.message().await {
            Ok(Some(answer)) => {
                assert_eq!(answer.acks.len(), 4, "{answer:?}");
                for ack in &answer.acks {
                    check_ack(ack);
                    let feed = feeds.iter_mut().find(|f| f.id == ack.car_park_id).unwrap();
                    feed.acked = ack.sequence;
                }
                crash.acked[Work::Ingest as usize].fetch_add(4, Ordering::SeqCst);
            }
            _ if crash.killed() => {
                crash.cut[Work::Ingest as usize].fetch_add(1, Ordering::SeqCst);
                return feeds.into();
            }
            other => panic!("the Publish stream failed before the kill: {other:?}"),
        }
    }
}

/// What a record must be after the restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Made, not cancelled.
    Made,
    /// Cancelled (acknowledged).
    Cancelled,
    /// Made; its cancel was cut, so either.
    MadeOrCancelled,
}

/// One driver's reservations or bookings: those acknowledged, and the one whose
/// create the kill cut, which may or may not exist.
#[derive(Debug, Default)]
struct Ledger {
    driver: String,
    acked: BTreeMap<String, Expect>,
    cut: Option<String>,
}

impl Ledger {
    /// Records the answer to a cancel of `id`; whether the client goes on.
    fn cancelled<T>(&mut self, id: &str, answer: Answer<T>) -> bool {
        match answer {
            Answer::Acked(_) => {
                self.acked.insert(id.to_owned(), Expect::Cancelled);
                true
            }
            Answer::Cut { sent } => {
                if sent {
                    self.acked.insert(id.to_owned(), Expect::MadeOrCancelled);
                }
                false
            }
            Answer::Refused(status) => panic!("cancelling {id}: {status:?}"),
        }
    }
}

/// Driver `n` creates reservations round the reservable car parks, and cancels every
/// third at once, until the kill. A full slot is refused and skipped.
async fn reserve(crash: Arc<Crash>, url: String, n: usize, times: Times) -> Ledger {
    let mut reservations = ReservationsClient::new(connect(&url).await);
    let mut ledger = Ledger {
        driver: format!("rd-{n}"),
        ..Default::default()
    };
    let driver = DriverId::parse(&ledger.driver).unwrap();
    let token = driver_token(&ledger.driver);
    let plate = format!("鲁C{}", 30000 + n);
    for k in 0.. {
        let car_park = RESERVABLE[(k + n) % RESERVABLE.len()];
        let first = ((5 * k + 3 * n) as i64) % RESERVATION_STARTS;
        let start = after(times.reservations, QUARTER * first);
        let key = format!("r{k}");
        let id = ReservationId::for_key(&CarParkId::parse(car_park).unwrap(), &driver, &key);
        let request = reservation_request(car_park, start, after(start, 2 * QUARTER), &plate, &key);
        let create = reservations.create_reservation(authed(request, &token));
        let refusals = [Code::FailedPrecondition];
        match crash
            .call(Work::Reserve, "a reservation", &refusals, create)
            .await
        {
            Answer::Acked(reply) => {
                assert_eq!(reply.reservation.unwrap().id, id.as_str());
                ledger.acked.insert(id.to_string(), Expect::Made);
            }
            // Only on a machine fast enough to fill QUOTA in a slot before the kill.
            Answer::Refused(status) => {
                assert!(status.message().contains("fully booked"), "{status:?}");
                continue;
            }
            Answer::Cut { sent } => {
                ledger.cut = sent.then(|| id.to_string());
                return ledger;
            }
        }
        if k % 3 == 0 {
            let request = pb::CancelReservationRequest {
                id: id.to_string(),
                reason: "plans changed".into(),
            };
            let cancel = reservations.cancel_reservation(authed(request, &token));
            let answer = crash.call(Work::Reserve, "a cancel", &[], cancel).await;
            if !ledger.cancelled(id.as_str(), answer) {
                return ledger;
            }
        }
    }
    unreachable!()
}

/// The start of booking window `w`.
fn window(times: Times, w: i64) -> Timestamp {
    after(times.bookings, 3600 * w)
}

/// Driver `n` books windows of the offers round robin, and cancels three bookings in
/// four at once (so that spaces keep coming free), until the kill. A full window is
/// refused and skipped.
async fn book(crash: Arc<Crash>, url: String, n: usize, times: Times) -> Ledger {
    let mut shared = SharedParkingClient::new(connect(&url).await);
    let mut ledger = Ledger {
        driver: format!("bd-{n}"),
        ..Default::default()
    };
    let driver = DriverId::parse(&ledger.driver).unwrap();
    let token = driver_token(&ledger.driver);
    let plate = format!("鲁D{}", 40000 + n);
    for k in 0.. {
        let offer = OFFERS[(k + n) % OFFERS.len()];
        let start = window(times, ((5 * k + n) as i64) % BOOKING_WINDOWS);
        let key = format!("b{k}");
        let id = BookingId::for_key(&OfferId::parse(offer).unwrap(), &driver, &key);
        let request = pb::BookOfferRequest {
            offer_id: offer.into(),
            start_time: Some(pb_time(start)),
            end_time: Some(pb_time(after(start, 3600))),
            plate: plate.clone(),
            idempotency_key: key,
        };
        let booking = shared.book_offer(authed(request, &token));
        let refusals = [Code::FailedPrecondition];
        match crash
            .call(Work::Book, "a booking", &refusals, booking)
            .await
        {
            Answer::Acked(reply) => {
                assert_eq!(reply.booking.unwrap().id, id.as_str());
                ledger.acked.insert(id.to_string(), Expect::Made);
            }
            Answer::Refused(status) => {
                assert!(status.message().contains("fully booked"), "{status:?}");
                continue;
            }
            Answer::Cut { sent } => {
                ledger.cut = sent.then(|| id.to_string());
                return ledger;
            }
        }
        if k % 4 != 0 {
            let request = pb::CancelBookingRequest {
                id: id.to_string(),
                reason: "plans changed".into(),
            };
            let cancel = shared.cancel_booking(authed(request, &token));
            let answer = crash.call(Work::Book, "a cancel", &[], cancel).await;
            if !ledger.cancelled(id.as_str(), answer) {
                return ledger;
            }
        }
    }
    unreachable!()
}

/// A paying driver's writes: the top-up keys sent (`t1`..) and the entries of those
/// acknowledged, and its garage's gate reports (entry `2k`, exit `2k + 1`).
#[derive(Debug, Default)]
struct Payments {
    driver: String,
    garage: String,
    keys_sent: u64,
    top_ups: Vec<String>,
    acked: u64,
    sent: u64,
}

/// Paying driver `n` tops up [`FEE`], drives into its garage and out again, [`CYCLES`]
/// times or until the kill; the server's payment sweep charges each stay.
async fn pay(crash: Arc<Crash>, url: String, n: usize, times: Times) -> Payments {
    let channel = connect(&url).await;
    let (mut sessions, mut ingest) = (
        SessionsClient::new(channel.clone()),
        IngestClient::new(channel),
    );
    let (driver, garage, plate) = payer(n);
    let token = driver_token(&driver);
    let mut log = Payments {
        driver,
        garage: garage.clone(),
        acked: 1,
        sent: 1,
        ..Default::default()
    };
    let car_park = CarParkId::parse(&garage).unwrap();
    for k in 1..=CYCLES {
        let request = pb::TopUpRequest {
            amount_minor: FEE,
            idempotency_key: format!("t{k}"),
        };
        let top_up = sessions.top_up(authed(request, &token));
        log.keys_sent = k;
        match crash.call(Work::Pay, "a top-up", &[], top_up).await {
            Answer::Acked(reply) => log.top_ups.push(reply.entry.unwrap().id),
            Answer::Refused(_) => unreachable!("no refusal is expected"),
            Answer::Cut { sent } => {
                log.keys_sent -= u64::from(!sent);
                return log;
            }
        }
        let entered = after(times.gates, 300 * k as i64);
        for (sequence, entry, at) in [
            (2 * k, true, entered),
            (2 * k + 1, false, after(entered, 120)),
        ] {
            let report = gate(&garage, sequence, entry, &plate, at);
            let request = authed(
                pb::ReportRequest {
                    report: Some(report),
                },
                KEY,
            );
            log.sent = sequence;
            match crash
                .call(Work::Pay, "a gate report", &[], ingest.report(request))
                .await
            {
                Answer::Acked(reply) => {
                    let ack = reply.ack.unwrap();
                    assert_eq!(ack.result(), pb::ReportResult::Applied, "{ack:?}");
                    let session = SessionId::of_report(&car_park, 2 * k);
                    assert_eq!(ack.session_id, session.as_str(), "{ack:?}");
                    log.acked = sequence;
                }
                Answer::Refused(_) => unreachable!("no refusal is expected"),
                Answer::Cut { sent } => {
                    log.sent -= u64::from(!sent);
                    return log;
                }
            }
        }
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_keeps_every_acknowledged_write_and_no_half_group() {
    let data_dir = tempfile::tempdir().unwrap();
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("driver-secret");
    std::fs::write(&secret, DRIVER_SECRET).unwrap();
    let flags = flags(data_dir.path(), &secret);
    let (first, url) = serve(&flags);
    // The binary runs on this machine's clock: every window is ahead of it, every gate
    // read behind it.
    let now = Timestamp::now();
    let times = Times {
        reservations: quarter_after(after(now, 2 * 3600)),
        bookings: quarter_after(after(now, 12 * 3600)),
        gates: after(now, -3 * 3600),
    };
    set_up(&url, times).await;

    let crash = Arc::new(Crash::default());
    let feeds: Vec<JoinHandle<Vec<Feed>>> = UNARY_FEEDS
        .map(|id| {
            let (crash, url) = (crash.clone(), url.clone());
            tokio::spawn(async move { vec![report_one_by_one(crash, url, id).await] })
        })
        .into_iter()
        .chain([tokio::spawn(publish(crash.clone(), url.clone()))])
        .collect();
    let reservers: Vec<JoinHandle<Ledger>> = (0..RESERVING_DRIVERS)
        .map(|n| tokio::spawn(reserve(crash.clone(), url.clone(), n, times)))
        .collect();
    let bookers: Vec<JoinHandle<Ledger>> = (0..BOOKING_DRIVERS)
        .map(|n| tokio::spawn(book(crash.clone(), url.clone(), n, times)))
        .collect();
    let payers: Vec<JoinHandle<Payments>> = (0..PAYING_DRIVERS)
        .map(|n| tokio::spawn(pay(crash.clone(), url.clone(), n, times)))
        .collect();

    // The kill comes once every workload has written, and the load has run a while or
    // the paying drivers (who stop after CYCLES) are three quarters of the way: mid-load
    // on a slow machine and on a fast one.
    let started = Instant::now();
    let paid_most = PAYING_DRIVERS * CYCLES as usize * 3 * 3 / 4;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let acked = crash.counts(&crash.acked);
        let long_enough = started.elapsed() >= LOAD || acked[Work::Pay as usize] >= paid_most;
        if long_enough && acked.iter().all(|n| *n >= LEAST_ACKED) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "too little load in 20 s: acknowledged (ingest, reserve, book, pay) {acked:?}"
        );
    }
    crash.killed.store(true, Ordering::SeqCst);
    // SIGKILL, and waits for the process to be gone.
    drop(first);
    let load = started.elapsed();

    let mut feed_logs = Vec::new();
    for handle in feeds {
        feed_logs.extend(handle.await.unwrap());
    }
    let mut reservations = Vec::new();
    for handle in reservers {
        reservations.push(handle.await.unwrap());
    }
    let mut bookings = Vec::new();
    for handle in bookers {
        bookings.push(handle.await.unwrap());
    }
    let mut payments = Vec::new();
    for handle in payers {
        payments.push(handle.await.unwrap());
    }
    let (acked, cut) = (crash.counts(&crash.acked), crash.counts(&crash.cut));
    eprintln!(
        "killed after {load:?}: acknowledged (ingest, reserve, book, pay) {acked:?}, \
         cut on the wire {cut:?}"
    );
    assert!(
        cut.iter().sum::<usize>() > 0,
        "the kill cut no call: it did not come mid-load"
    );

    let restarted = Instant::now();
    let (_second, url) = serve(&flags);
    eprintln!("restarted in {:?}", restarted.elapsed());
    let channel = connect(&url).await;
    check_feeds(&channel, &feed_logs).await;
    check_reservations(&channel, &reservations, times).await;
    check_bookings(&channel, &bookings, times).await;
    let torn = check_payments(&channel, &payments).await;
    goes_on(&channel, &feed_logs[0], &payments[0], times).await;
    // Checked last, so that a torn gate report still lets every other check run.
    assert!(
        torn.is_empty(),
        "gate reports half applied: the car park's count and sequence have the report, \
         its session does not (or the other way round):\n{}",
        torn.join("\n")
    );
}

/// Every feed holds its last acknowledged report or a later one it was sent, with
/// that report's count.
async fn check_feeds(channel: &Channel, feeds: &[Feed]) {
    let ids: Vec<String> = feeds.iter().map(|f| f.id.clone()).collect();
    let found = AvailabilityClient::new(channel.clone())
        .get_availability(pb::GetAvailabilityRequest {
            car_park_ids: ids.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        found.not_found_ids.is_empty(),
        "car parks gone after the restart: {:?}",
        found.not_found_ids
    );
    for feed in feeds {
        let live = found
            .availabilities
            .iter()
            .find(|a| a.car_park_id == feed.id)
            .unwrap();
        let last = live.last_sequence;
        assert!(
            feed.acked <= last && last <= feed.sent,
            "{}: the restarted server's last report is {last}; acknowledged were up to {}, \
             sent up to {}",
            feed.id,
            feed.acked,
            feed.sent
        );
        assert_eq!(
            free_standard(live),
            free_at(last),
            "{}: the free count is not that of report {last}, its last sequence",
            feed.id
        );
    }
}

/// Every page of a list call.
async fn all_pages<T, F, Fut>(mut page: F) -> Vec<T>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = (Vec<T>, String)>,
{
    let (mut all, mut token) = (Vec::new(), String::new());
    loop {
        let (items, next) = page(token).await;
        all.extend(items);
        if next.is_empty() {
            return all;
        }
        token = next;
    }
}

/// Checks one driver's records as found after the restart (`found`: id → whether it
/// is cancelled): every acknowledged one as it was left, and besides them at most the
/// one whose create the kill cut.
fn check_ledger(what: &str, ledger: &Ledger, found: &BTreeMap<String, bool>) {
    for (id, expect) in &ledger.acked {
        let cancelled = *found.get(id).unwrap_or_else(|| {
            panic!(
                "{what} {id} of {} was acknowledged but is gone",
                ledger.driver
            )
        });
        let fine = match expect {
            Expect::Made => !cancelled,
            Expect::Cancelled => cancelled,
            Expect::MadeOrCancelled => true,
        };
        assert!(
            fine,
            "{what} {id} of {}: expected {expect:?}, found cancelled={cancelled}",
            ledger.driver
        );
    }
    for (id, cancelled) in found {
        if ledger.acked.contains_key(id) {
            continue;
        }
        assert_eq!(
            ledger.cut.as_ref(),
            Some(id),
            "{what} {id} of {} exists but was never acknowledged nor cut",
            ledger.driver
        );
        assert!(!cancelled, "{what} {id} was never cancelled");
    }
}

/// Every acknowledged reservation and cancel is there; and per car park, what its
/// calendar says is taken in each slot (the slot counts, written in one group with each
/// reservation and cancel) is what the reservations there add up to.
///
/// The `held` count of an availability would not show a torn group: it is worked out
/// from the reservations themselves when asked.
async fn check_reservations(channel: &Channel, ledgers: &[Ledger], times: Times) {
    let mut client = ReservationsClient::new(channel.clone());
    let all = all_pages(|page_token| {
        let mut client = client.clone();
        async move {
            let page = client
                .list_reservations(authed(
                    pb::ListReservationsRequest {
                        page_size: 500,
                        page_token,
                        ..Default::default()
                    },
                    KEY,
                ))
                .await
                .unwrap()
                .into_inner();
            (page.reservations, page.next_page_token)
        }
    })
    .await;
    for ledger in ledgers {
        let found: BTreeMap<String, bool> = all
            .iter()
            .filter(|r| r.driver_id == ledger.driver)
            .map(|r| (r.id.clone(), r.state() == pb::ReservationState::Cancelled))
            .collect();
        check_ledger("reservation", ledger, &found);
    }
    let from = times.reservations;
    let to = after(from, QUARTER * (RESERVATION_STARTS + 1));
    for car_park in RESERVABLE {
        let slots = client
            .get_reservation_calendar(authed(
                pb::GetReservationCalendarRequest {
                    car_park_id: car_park.into(),
                    category: pb::SpaceCategory::Standard.into(),
                    start_time: Some(pb_time(from)),
                    end_time: Some(pb_time(to)),
                },
                KEY,
            ))
            .await
            .unwrap()
            .into_inner()
            .slots;
        assert_eq!(slots.len() as i64, RESERVATION_STARTS + 1);
        for slot in slots {
            let (start, end) = (seconds(&slot.start), seconds(&slot.end));
            let holding = all
                .iter()
                .filter(|r| {
                    r.car_park_id == car_park
                        && matches!(
                            r.state(),
                            pb::ReservationState::Reserved | pb::ReservationState::CheckedIn
                        )
                        && seconds(&r.start_time) < end
                        && start < seconds(&r.end_time)
                })
                .count() as i32;
            let taken = QUOTA - slot.remaining;
            assert_eq!(
                taken,
                holding,
                "{car_park}, slot at {}: the slot counts say {taken} taken, the reservations \
                 there are {holding}: a reservation or cancel without its slot counts, or \
                 the other way round",
                Timestamp::from_second(start).unwrap()
            );
        }
    }
}

/// Every acknowledged booking and cancel is there; and per offer and window, exactly
/// as many more can be booked as its spaces leave beside the bookings there (the
/// offer's slot counts are written in one group with each booking and cancel).
async fn check_bookings(channel: &Channel, ledgers: &[Ledger], times: Times) {
    let mut client = SharedParkingClient::new(channel.clone());
    let all = all_pages(|page_token| {
        let mut client = client.clone();
        async move {
            let page = client
                .list_my_bookings(authed(
                    pb::ListMyBookingsRequest {
                        page_size: 500,
                        page_token,
                        ..Default::default()
                    },
                    &driver_token(HOST),
                ))
                .await
                .unwrap()
                .into_inner();
            (page.bookings, page.next_page_token)
        }
    })
    .await;
    for ledger in ledgers {
        let found: BTreeMap<String, bool> = all
            .iter()
            .filter(|b| b.driver_id == ledger.driver)
            .map(|b| (b.id.clone(), b.state() == pb::BookingState::Cancelled))
            .collect();
        check_ledger("booking", ledger, &found);
    }
    // Filling every window up is a write each: it also shows the server goes on.
    let token = driver_token("filler");
    for offer in OFFERS {
        for w in 0..BOOKING_WINDOWS {
            let start = window(times, w);
            let booked = all
                .iter()
                .filter(|b| {
                    b.offer_id == offer
                        && b.state() == pb::BookingState::Booked
                        && seconds(&b.start_time) == start.as_second()
                })
                .count() as i32;
            let mut more = 0;
            loop {
                let request = pb::BookOfferRequest {
                    offer_id: offer.into(),
                    start_time: Some(pb_time(start)),
                    end_time: Some(pb_time(after(start, 3600))),
                    plate: "鲁E50000".into(),
                    idempotency_key: format!("fill-{offer}-{w}-{more}"),
                };
                match client.book_offer(authed(request, &token)).await {
                    Ok(_) => more += 1,
                    Err(status) if status.message().contains("fully booked") => break,
                    Err(status) => panic!("filling {offer} at {start}: {status:?}"),
                }
                assert!(more <= OFFER_SPACES, "{offer} at {start}: overbooked");
            }
            assert_eq!(
                booked + more,
                OFFER_SPACES,
                "{offer} at {start}: {booked} bookings there, and {more} more could be \
                 made: a booking or cancel without its slot counts, or the other way round"
            );
        }
    }
}

/// Per paying driver: its garage holds its last acknowledged gate report or the one
/// after, its closed sessions are each charged once, and the wallet's balance is what
/// its entries add up to; these fail the test at once. What it returns are the gate
/// reports found applied without their sessions or the other way round (an entry's
/// session missing, an exit's still open), each an atomic group torn.
async fn check_payments(channel: &Channel, logs: &[Payments]) -> Vec<String> {
    let mut torn = Vec::new();
    let mut sessions = SessionsClient::new(channel.clone());
    for log in logs {
        let token = driver_token(&log.driver);
        let live = AvailabilityClient::new(channel.clone())
            .get_availability(pb::GetAvailabilityRequest {
                car_park_ids: vec![log.garage.clone()],
            })
            .await
            .unwrap()
            .into_inner()
            .availabilities
            .pop()
            .unwrap_or_else(|| panic!("{} is gone after the restart", log.garage));
        let last = live.last_sequence;
        assert!(
            log.acked <= last && last <= log.sent,
            "{}: the restarted server's last gate report is {last}; acknowledged were up \
             to {}, sent up to {}",
            log.garage,
            log.acked,
            log.sent
        );
        // Entries are even, exits odd: after an entry its car is in.
        let open = last >= 2 && last % 2 == 0;
        assert_eq!(
            free_standard(&live),
            100 - i32::from(open),
            "{}: the free count disagrees with its last report {last}",
            log.garage
        );
        let car_park = CarParkId::parse(&log.garage).unwrap();
        let expected: BTreeSet<String> = (2..=last)
            .step_by(2)
            .map(|e| SessionId::of_report(&car_park, e).to_string())
            .collect();
        let open_id = open.then(|| SessionId::of_report(&car_park, last).to_string());
        let list = || {
            let (sessions, token) = (sessions.clone(), token.clone());
            all_pages(move |page_token| {
                let (mut sessions, token) = (sessions.clone(), token.clone());
                async move {
                    let page = sessions
                        .list_my_sessions(authed(
                            pb::ListMySessionsRequest {
                                page_size: 500,
                                page_token,
                            },
                            &token,
                        ))
                        .await
                        .unwrap()
                        .into_inner();
                    (page.sessions, page.next_page_token)
                }
            })
        };
        let found = list().await;
        let ids: BTreeSet<String> = found.iter().map(|s| s.id.clone()).collect();
        if ids != expected {
            torn.push(format!(
                "{}: its last gate report is {last}, yet the sessions its entries opened \
                 {:?} are missing and {:?} are there without their entry",
                log.garage,
                expected.difference(&ids).collect::<Vec<_>>(),
                ids.difference(&expected).collect::<Vec<_>>()
            ));
        }
        for s in &found {
            if (s.state() == pb::SessionState::Open) != (Some(&s.id) == open_id.as_ref()) {
                torn.push(format!(
                    "{}: its last gate report is {last}, and session {} is {:?}",
                    log.garage,
                    s.id,
                    s.state()
                ));
            }
        }
        // The payment sweep charges at start what the kill left uncharged: every
        // session that is closed is paid, once, from the wallet.
        let found = eventually_within(
            Duration::from_secs(15),
            &format!("every closed session of {} is paid", log.driver),
            || async {
                let found = list().await;
                found
                    .iter()
                    .all(|s| {
                        let state = s.state();
                        state == pb::SessionState::Open || state == pb::SessionState::ClosedPaid
                    })
                    .then_some(found)
            },
        )
        .await;
        let mut charges = BTreeSet::new();
        for s in found.iter().filter(|s| s.state() != pb::SessionState::Open) {
            let payment = s.payment.as_ref().unwrap();
            assert_eq!(
                (s.fee_minor, payment.receipt_id.clone()),
                (FEE, format!("charge:{}", s.id)),
                "{s:?}"
            );
            charges.insert(payment.receipt_id.clone());
        }

        let wallet = sessions
            .get_wallet(authed(pb::GetWalletRequest {}, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(wallet.entries.len() < 50, "every entry is shown");
        let driver = DriverId::parse(&log.driver).unwrap();
        let keys: BTreeSet<String> = (1..=log.keys_sent)
            .map(|k| Wallet::top_up_id(&driver, &format!("t{k}")))
            .collect();
        let (mut top_ups, mut charged, mut sum) = (BTreeSet::new(), BTreeSet::new(), 0);
        for entry in &wallet.entries {
            assert_eq!(entry.amount_minor, FEE, "{entry:?}");
            let new = match entry.kind.as_str() {
                "top_up" => {
                    sum += entry.amount_minor;
                    top_ups.insert(entry.id.clone())
                }
                "charge" => {
                    sum -= entry.amount_minor;
                    charged.insert(entry.id.clone())
                }
                other => panic!("a {other} entry: {entry:?}"),
            };
            assert!(new, "entry {} twice", entry.id);
        }
        assert!(
            top_ups.is_subset(&keys),
            "{}: top-ups never sent: {:?}",
            log.driver,
            top_ups.difference(&keys)
        );
        for id in &log.top_ups {
            assert!(
                top_ups.contains(id),
                "{}: top-up {id} was acknowledged but is gone",
                log.driver
            );
        }
        assert_eq!(
            charged, charges,
            "{}: the charges differ from the paid sessions",
            log.driver
        );
        assert_eq!(
            wallet.balance_minor, sum,
            "{}: the balance is not what the entries add up to",
            log.driver
        );
        assert_eq!(wallet.arrears_minor, 0);
    }
    torn
}

/// The restarted server takes new writes of each kind.
async fn goes_on(channel: &Channel, feed: &Feed, payments: &Payments, times: Times) {
    let found = AvailabilityClient::new(channel.clone())
        .get_availability(pb::GetAvailabilityRequest {
            car_park_ids: vec![feed.id.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    let next = found.availabilities[0].last_sequence + 1;
    let ack = IngestClient::new(channel.clone())
        .report(authed(
            pb::ReportRequest {
                report: Some(snapshot(&feed.id, next, free_at(next), Timestamp::now())),
            },
            KEY,
        ))
        .await
        .unwrap()
        .into_inner()
        .ack
        .unwrap();
    check_ack(&ack);

    let request = reservation_request(
        RESERVABLE[0],
        times.reservations,
        after(times.reservations, 2 * QUARTER),
        "鲁C39999",
        "after-the-crash",
    );
    ReservationsClient::new(channel.clone())
        .create_reservation(authed(request, &driver_token("rd-after")))
        .await
        .expect("a reservation after the restart");

    let mut sessions = SessionsClient::new(channel.clone());
    let token = driver_token(&payments.driver);
    let before = sessions
        .get_wallet(authed(pb::GetWalletRequest {}, &token))
        .await
        .unwrap()
        .into_inner()
        .balance_minor;
    let topped = sessions
        .top_up(authed(
            pb::TopUpRequest {
                amount_minor: 100,
                idempotency_key: "after-the-crash".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topped.balance_minor, before + 100);
}
