//! Paying through an external gateway, exactly once: a gateway server in the test
//! (plain HTTP on a free loopback port) that checks every request's HMAC signature,
//! fails first attempts, takes a charge but answers too late, declines, and answers
//! pending then calls back twice; two citypark instances on one Redis and on a Redis
//! Cluster charge through it. The gateway's own record shows one charge per session.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::post,
};
use citypark::{
    gateway::{Gateway, GatewayConfig, IDEMPOTENCY_HEADER, SIGNATURE_HEADER, sign, verify},
    pb,
    service::{Clock, ManualClock},
};
use tonic::Code;

use crate::{
    redis_support::{RedisCluster, RedisServer, key_prefix},
    support::*,
};

const SECRET: &[u8] = b"a-gateway-secret-of-at-least-32-bytes";
/// How long citypark waits for the gateway in these tests.
const TIMEOUT: Duration = Duration::from_millis(300);

/// How the test gateway treats the charges of a plate, by the plate's last digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// 503, then takes the charge but answers after citypark gave up, then (asked
    /// again with the same key) answers with the charge it took.
    FailThenLate,
    /// 402 with a reason.
    Decline,
    /// Pending, then the callback, sent twice (to both instances).
    PendingThenCallbackTwice,
    /// Pending; the test sends the callback itself.
    Pending,
}

#[derive(Default)]
struct Ledger {
    /// Per idempotency key: requests received and charges made (receipts issued).
    requests: HashMap<String, u32>,
    charges: HashMap<String, u32>,
    /// The amount of each charge's request.
    amounts: HashMap<String, i64>,
    bad_signatures: u32,
    key_mismatches: u32,
}

#[derive(Clone)]
struct TestGateway {
    ledger: Arc<Mutex<Ledger>>,
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    /// Where callbacks go (both instances' HTTP ports).
    callbacks: Arc<Mutex<Vec<std::net::SocketAddr>>>,
}

async fn charge(
    State(gw): State<TestGateway>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let key = headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let (attempt, script) = {
        let mut ledger = gw.ledger.lock().unwrap();
        if !verify(SECRET, &body, signature) {
            ledger.bad_signatures += 1;
            return (StatusCode::UNAUTHORIZED, Json(serde_json::json!({}))).into_response();
        }
        if request["session_id"] != key.as_str() {
            ledger.key_mismatches += 1;
        }
        let n = ledger.requests.entry(key.clone()).or_default();
        *n += 1;
        (*n, gw.scripts.lock().unwrap()[&key])
    };
    let receipt = format!("gw-{key}");
    let take = |gw: &TestGateway| {
        let mut ledger = gw.ledger.lock().unwrap();
        // A key charged already is answered with its charge, not charged again.
        if !ledger.charges.contains_key(&key) {
            ledger.charges.insert(key.clone(), 1);
            ledger
                .amounts
                .insert(key.clone(), request["amount_minor"].as_i64().unwrap());
        }
    };
    let succeeded = Json(serde_json::json!({"status": "succeeded", "receipt_id": receipt}));
    match (script, attempt) {
        (Script::FailThenLate, 1) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({}))).into_response()
        }
        (Script::FailThenLate, 2) => {
            take(&gw);
            tokio::time::sleep(TIMEOUT * 3).await;
            succeeded.into_response()
        }
        (Script::FailThenLate, _) => {
            take(&gw);
            succeeded.into_response()
        }
        (Script::Decline, _) => (
            StatusCode::PAYMENT_REQUIRED,
            Json(serde_json::json!({"status": "declined", "reason": "card blocked"})),
        )
            .into_response(),
        (Script::PendingThenCallbackTwice, _) => {
            take(&gw);
            let callback = serde_json::json!({
                "session_id": key, "status": "succeeded", "receipt_id": receipt,
            })
            .to_string();
            let targets = gw.callbacks.lock().unwrap().clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                for addr in targets.iter() {
                    let status =
                        post_callback(*addr, &callback, &sign(SECRET, callback.as_bytes())).await;
                    assert_eq!(status, 200, "a callback, first or repeated, is taken");
                }
            });
            Json(serde_json::json!({"status": "pending"})).into_response()
        }
        (Script::Pending, _) => Json(serde_json::json!({"status": "pending"})).into_response(),
    }
}

/// POSTs a callback body to a citypark HTTP port; the HTTP status.
async fn post_callback(addr: std::net::SocketAddr, body: &str, signature: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /payments/v1/callback HTTP/1.1\r\nHost: citypark\r\nContent-Type: application/json\r\n{SIGNATURE_HEADER}: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Starts the test gateway on a free port; its address.
async fn start_gateway(gw: TestGateway) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/charges", post(charge)).with_state(gw);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn gateway_client(addr: std::net::SocketAddr) -> Arc<Gateway> {
    let config = GatewayConfig {
        url: format!("http://{addr}/charges").parse().unwrap(),
        secret: SECRET.into(),
        timeout: TIMEOUT,
    };
    Arc::new(Gateway::new(config).unwrap())
}

/// The plate of driver `i`, and its script by the plate's last digit.
fn plate(i: usize) -> String {
    format!("鲁C6{i:04}")
}

fn script(i: usize) -> Script {
    match i % 4 {
        0 | 1 => Script::FailThenLate,
        2 => Script::PendingThenCallbackTwice,
        _ => Script::Decline,
    }
}

async fn link_gateway(server: &TestServer, driver: &str, plate: &str) {
    server
        .sessions()
        .await
        .link_plate(authed(
            pb::LinkPlateRequest {
                plate: plate.into(),
                plate_color: pb::PlateColor::Green.into(),
                payment_method: pb::PaymentMethod::Gateway.into(),
            },
            &driver_token(driver),
        ))
        .await
        .unwrap();
}

async fn get_session(server: &TestServer, id: &str) -> pb::ParkingSession {
    server
        .sessions()
        .await
        .get_session(authed(
            pb::GetSessionRequest { id: id.into() },
            OPERATOR_A.1,
        ))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
}

/// Two instances on `url` charge 16 sessions through the test gateway; checks the
/// gateway's record and the sessions on both instances.
async fn gateway_on_two_instances(url: &str) {
    let drivers = 16;
    let (prefix, clock) = (key_prefix(), Arc::new(ManualClock::new(start_time())));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    // Scripts are keyed by session id, known once the entries are acked; callbacks go
    // to the instances' HTTP ports, known once they run.
    let scripts = Arc::new(Mutex::new(HashMap::new()));
    let callbacks = Arc::new(Mutex::new(Vec::new()));
    let gateway_addr = start_gateway(TestGateway {
        ledger: ledger.clone(),
        scripts: scripts.clone(),
        callbacks: callbacks.clone(),
    })
    .await;
    let gateway = gateway_client(gateway_addr);
    let start = |gateway: Arc<Gateway>| {
        TestServer::start_redis_with(url, &prefix, clock.clone(), move |s| {
            s.payments.gateway = Some(gateway);
            s.payments.retry_base = Duration::from_millis(100);
        })
    };
    let a = start(gateway.clone()).await;
    let b = start(gateway).await;
    callbacks.lock().unwrap().extend([a.http_addr, b.http_addr]);
    for id in ["p1", "p2"] {
        register(&a, garage(id, 36.06, 120.38)).await;
        report_ok(&a, snapshot(id, 1, 100, clock.now())).await;
    }
    for server in [&a, &b] {
        for id in ["p1", "p2"] {
            eventually("the car park reached the instance", || async {
                car_park_of(server, id).await.ok()
            })
            .await;
        }
    }
    for i in 0..drivers {
        let server = if i % 2 == 0 { &a } else { &b };
        link_gateway(server, &format!("g{i}"), &plate(i)).await;
    }
    let mut sequences: HashMap<&str, u64> = HashMap::new();
    let mut ids = Vec::new();
    for i in 0..drivers {
        let car_park = ["p1", "p2"][i % 2];
        let seq = sequences.entry(car_park).or_insert(1);
        *seq += 1;
        let ack = report_ok(
            &a,
            gate_report(car_park, *seq, true, &plate(i), clock.now()),
        )
        .await;
        ids.push(ack.session_id);
    }
    scripts.lock().unwrap().extend(
        ids.iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), script(i))),
    );
    clock.advance(Duration::from_secs(2 * 3600));
    for i in 0..drivers {
        let car_park = ["p1", "p2"][i % 2];
        let seq = sequences.entry(car_park).or_insert(1);
        *seq += 1;
        let server = if i % 2 == 0 { &b } else { &a };
        report_ok(
            server,
            gate_report(car_park, *seq, false, &plate(i), clock.now()),
        )
        .await;
    }
    // Retries wait on the servers' clock: move it on while waiting.
    for (i, id) in ids.iter().enumerate() {
        for server in [&a, &b] {
            let done = eventually(&format!("session {id} settled"), || async {
                clock.advance(Duration::from_secs(1));
                let s = get_session(server, id).await;
                let status = s.payment.as_ref().unwrap().status;
                let settled = status == i32::from(pb::PaymentStatus::Succeeded)
                    || status == i32::from(pb::PaymentStatus::Failed);
                settled.then_some(s)
            })
            .await;
            let p = done.payment.as_ref().unwrap();
            match script(i) {
                Script::Decline => {
                    assert_eq!(done.state, i32::from(pb::SessionState::ClosedUnpaid));
                    assert_eq!(p.failure, "card blocked");
                }
                _ => {
                    assert_eq!(
                        done.state,
                        i32::from(pb::SessionState::ClosedPaid),
                        "{done:?}"
                    );
                    assert_eq!(p.receipt_id, format!("gw-{id}"));
                }
            }
            assert_eq!(p.method, i32::from(pb::PaymentMethod::Gateway));
        }
    }
    let ledger = ledger.lock().unwrap();
    assert_eq!(ledger.bad_signatures, 0, "every request was signed");
    assert_eq!(
        ledger.key_mismatches, 0,
        "the idempotency key is the session id"
    );
    for (i, id) in ids.iter().enumerate() {
        let (requests, charges) = (ledger.requests[id], ledger.charges.get(id).copied());
        match script(i) {
            Script::Decline => assert_eq!(charges, None, "{id}"),
            Script::FailThenLate => {
                assert_eq!(charges, Some(1), "{id}: charged once");
                assert!(
                    requests >= 3,
                    "{id}: failed, timed out, asked again: {requests}"
                );
            }
            Script::PendingThenCallbackTwice => assert_eq!(charges, Some(1), "{id}"),
            Script::Pending => unreachable!("not scripted here"),
        }
        if charges.is_some() {
            assert_eq!(ledger.amounts[id], 1000, "two hours at 5.00");
        }
    }
}

/// A delta report of one car in or out with `plate`, read green.
fn gate_report(
    id: &str,
    sequence: u64,
    entry: bool,
    plate: &str,
    at: citypark::domain::Timestamp,
) -> pb::OccupancyReport {
    let mut report = plate_delta(id, sequence, entry, plate, at);
    if let Some(pb::occupancy_report::Body::Delta(d)) = &mut report.body {
        d.plate_color = pb::PlateColor::Green.into();
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_instances_each_session_is_charged_through_the_gateway_exactly_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    gateway_on_two_instances(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_instances_on_a_cluster_each_session_is_charged_through_the_gateway_exactly_once()
{
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    gateway_on_two_instances(&cluster.url()).await;
}

#[tokio::test]
async fn a_day_s_settlement_counts_the_charges_still_pending_at_the_gateway() {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let scripts = Arc::new(Mutex::new(HashMap::new()));
    let gateway = gateway_client(
        start_gateway(TestGateway {
            ledger: ledger.clone(),
            scripts: scripts.clone(),
            callbacks: Arc::default(),
        })
        .await,
    );
    let server = TestServer::start_with(|s| s.payments.gateway = Some(gateway)).await;
    register(&server, garage("p1", 36.06, 120.38)).await;
    report_ok(&server, snapshot("p1", 1, 100, server.now())).await;
    // Three drivers pay through the gateway; a fourth plate is nobody's (the barrier).
    for i in 0..3 {
        link_gateway(&server, &format!("g{i}"), &plate(i)).await;
    }
    let mut ids = Vec::new();
    for i in 0..4 {
        let ack = report_ok(
            &server,
            gate_report("p1", 2 + i as u64, true, &plate(i), server.now()),
        )
        .await;
        ids.push(ack.session_id);
    }
    scripts
        .lock()
        .unwrap()
        .extend(ids.iter().map(|id| (id.clone(), Script::Pending)));
    server.advance(3 * 3600);
    for i in 0..4 {
        report_ok(
            &server,
            gate_report("p1", 6 + i as u64, false, &plate(i), server.now()),
        )
        .await;
    }
    eventually("the gateway to be asked for the three charges", || async {
        (ledger.lock().unwrap().requests.len() == 3).then_some(())
    })
    .await;

    // The fees of the day: every session closed, paid or not.
    let fees = |sessions: &[pb::ParkingSession]| sessions.iter().map(|s| s.fee_minor).sum::<i64>();
    let sessions = crate::sessions::list_sessions(&server, OPERATOR_A.1, Default::default()).await;
    assert_eq!(sessions.len(), 4);
    let day_fees = fees(&sessions);
    let one = sessions[0].fee_minor;
    assert!(one > 0);
    let day = "2026-11-30";
    let pending = crate::sessions::settlement(&server, day).await;
    assert_eq!(
        (pending.sessions_paid, pending.sessions_unpaid),
        (0, 4),
        "{pending:?}"
    );
    assert_eq!(
        (
            pending.revenue_minor,
            pending.pending_minor,
            pending.barrier_minor,
            pending.arrears_minor
        ),
        (0, 3 * one, one, 0),
        "the gateway's charges are pending, apart from the barrier's fee"
    );
    let sums = |s: &pb::GetSettlementResponse| {
        s.revenue_minor + s.arrears_minor + s.barrier_minor + s.pending_minor
    };
    assert_eq!(
        sums(&pending),
        day_fees,
        "the sums add up to the day's fees"
    );

    // The gateway answers: two succeeded, one declined.
    for (i, id) in ids.iter().take(3).enumerate() {
        let status = if i < 2 { "succeeded" } else { "declined" };
        let body = serde_json::json!({
            "session_id": id, "status": status, "receipt_id": format!("r{i}"),
            "reason": "card blocked",
        })
        .to_string();
        assert_eq!(
            post_callback(server.http_addr, &body, &sign(SECRET, body.as_bytes())).await,
            200
        );
    }
    let settled = eventually("the callbacks to settle the charges", || async {
        let s = crate::sessions::settlement(&server, day).await;
        (s.pending_minor == 0).then_some(s)
    })
    .await;
    assert_eq!(
        (
            settled.revenue_minor,
            settled.arrears_minor,
            settled.barrier_minor
        ),
        (2 * one, one, one),
        "{settled:?}"
    );
    assert_eq!(sums(&settled), day_fees);
}

#[tokio::test]
async fn callbacks_must_be_signed_and_name_a_gateway_session() {
    let gw = TestGateway {
        ledger: Arc::default(),
        scripts: Arc::default(),
        callbacks: Arc::default(),
    };
    let gateway = gateway_client(start_gateway(gw).await);
    let server = TestServer::start_with(|s| s.payments.gateway = Some(gateway)).await;
    let body = r#"{"session_id":"g1~2","status":"succeeded","receipt_id":"r"}"#;
    assert_eq!(
        post_callback(server.http_addr, body, "sha256=00").await,
        401
    );
    let signed = sign(SECRET, body.as_bytes());
    assert_eq!(post_callback(server.http_addr, body, &signed).await, 404);
    let bad = r#"{"session_id":"not an id","status":"succeeded"}"#;
    assert_eq!(
        post_callback(server.http_addr, bad, &sign(SECRET, bad.as_bytes())).await,
        400
    );
    // A body over 64 KiB is not read on, however it is signed.
    let huge = format!(
        r#"{{"session_id":"g1~2","pad":"{}"}}"#,
        "x".repeat(64 * 1024)
    );
    assert_eq!(
        post_callback(server.http_addr, &huge, &sign(SECRET, huge.as_bytes())).await,
        413
    );
    // Without a gateway, plates link only with WALLET.
    let plain = TestServer::start().await;
    let refused = plain
        .sessions()
        .await
        .link_plate(authed(
            pb::LinkPlateRequest {
                plate: "鲁C60000".into(),
                payment_method: pb::PaymentMethod::Gateway.into(),
                ..Default::default()
            },
            &driver_token("ann"),
        ))
        .await;
    expect_code(refused, Code::FailedPrecondition);
    assert_eq!(post_callback(plain.http_addr, body, &signed).await, 404);
}
