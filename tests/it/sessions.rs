//! Parking sessions and sensorless payment through the gRPC API: plates read at the
//! gates open and close sessions, linked plates pay from the wallet exactly once,
//! unlinked ones at the barrier, refusals become arrears flagged at the next entry, the
//! edge cases (a second entry, an exit without entry, clock skew), versioned tariffs,
//! prepaid reservations, settlement, retention; and each session charged once by two
//! instances on one Redis and on a Redis Cluster.

use std::{collections::HashMap, sync::Arc};

use citypark::{
    domain::Timestamp,
    pb,
    service::{Clock, ManualClock},
};
use tonic::Code;

use crate::{
    redis_support::{RedisCluster, RedisServer, key_prefix},
    support::*,
};

/// A delta report of one car in or out with `plate`, read blue at lane "in-1"/"out-1".
pub(crate) fn gate(
    id: &str,
    sequence: u64,
    entry: bool,
    plate: &str,
    at: Timestamp,
) -> pb::OccupancyReport {
    let mut report = plate_delta(id, sequence, entry, plate, at);
    if let Some(pb::occupancy_report::Body::Delta(d)) = &mut report.body {
        d.plate_color = pb::PlateColor::Blue.into();
        d.lane = if entry { "in-1" } else { "out-1" }.into();
    }
    report
}

/// A garage `id` of operator A with 100 standard spaces, all free (sequence 1).
pub(crate) async fn open_garage(server: &TestServer, id: &str) {
    register(server, garage(id, 36.06, 120.38)).await;
    report_ok(server, snapshot(id, 1, 100, server.now())).await;
}

pub(crate) async fn link(server: &TestServer, driver: &str, plate: &str) -> pb::LinkedPlate {
    try_link(server, driver, plate, pb::PaymentMethod::Wallet)
        .await
        .unwrap()
}

async fn try_link(
    server: &TestServer,
    driver: &str,
    plate: &str,
    method: pb::PaymentMethod,
) -> Result<pb::LinkedPlate, tonic::Status> {
    let request = pb::LinkPlateRequest {
        plate: plate.into(),
        plate_color: pb::PlateColor::Blue.into(),
        payment_method: method.into(),
    };
    let reply = server
        .sessions()
        .await
        .link_plate(authed(request, &driver_token(driver)))
        .await?;
    Ok(reply.into_inner().plate.unwrap())
}

pub(crate) async fn top_up(
    server: &TestServer,
    driver: &str,
    amount: i64,
    key: &str,
) -> Result<pb::TopUpResponse, tonic::Status> {
    let request = pb::TopUpRequest {
        amount_minor: amount,
        idempotency_key: key.into(),
    };
    let reply = server
        .sessions()
        .await
        .top_up(authed(request, &driver_token(driver)))
        .await?;
    Ok(reply.into_inner())
}

pub(crate) async fn wallet(server: &TestServer, driver: &str) -> pb::GetWalletResponse {
    server
        .sessions()
        .await
        .get_wallet(authed(pb::GetWalletRequest {}, &driver_token(driver)))
        .await
        .unwrap()
        .into_inner()
}

pub(crate) async fn session(
    server: &TestServer,
    credential: &str,
    id: &str,
) -> Result<pb::ParkingSession, tonic::Status> {
    let request = pb::GetSessionRequest { id: id.into() };
    let reply = server
        .sessions()
        .await
        .get_session(authed(request, credential))
        .await?;
    Ok(reply.into_inner().session.unwrap())
}

/// Waits until session `id` is in `state` (as operator A sees it) and returns it.
pub(crate) async fn session_in(
    server: &TestServer,
    id: &str,
    state: pb::SessionState,
) -> pb::ParkingSession {
    eventually(&format!("session {id} is {state:?}"), || async {
        let s = session(server, OPERATOR_A.1, id).await.ok()?;
        (s.state == i32::from(state)).then_some(s)
    })
    .await
}

/// What the wallet's entries add up to: the balance, if the books balance.
pub(crate) fn books(wallet: &pb::GetWalletResponse) -> i64 {
    wallet
        .entries
        .iter()
        .map(|e| match e.kind.as_str() {
            "charge" => -e.amount_minor,
            _ => e.amount_minor,
        })
        .sum()
}

pub(crate) fn payment(s: &pb::ParkingSession) -> &pb::Payment {
    s.payment.as_ref().unwrap()
}

#[tokio::test]
async fn a_linked_plate_drives_in_and_out_and_pays_from_its_wallet_once() {
    let server = TestServer::start().await;
    open_garage(&server, "g1").await;
    let linked = link(&server, "ann", "鲁B·12345").await;
    assert_eq!(linked.plate, "鲁B12345");
    assert_eq!(linked.payment_method, i32::from(pb::PaymentMethod::Wallet));

    // A top-up lands once per key; the same key with another amount is refused.
    let first = top_up(&server, "ann", 2000, "pay-1").await.unwrap();
    assert_eq!(first.balance_minor, 2000);
    let again = top_up(&server, "ann", 2000, "pay-1").await.unwrap();
    assert_eq!(
        (again.balance_minor, again.entry.unwrap().id),
        (2000, first.entry.unwrap().id)
    );
    expect_code(
        top_up(&server, "ann", 3000, "pay-1").await,
        Code::FailedPrecondition,
    );

    let entered = server.now();
    let ack = report_ok(&server, gate("g1", 2, true, "鲁B 12345", entered)).await;
    assert_eq!((ack.session_id.as_str(), ack.arrears), ("g1~2", false));
    assert_eq!(free_standard(ack.availability.as_ref().unwrap()), 99);
    let open = session(&server, &driver_token("ann"), "g1~2")
        .await
        .unwrap();
    assert_eq!(open.state, i32::from(pb::SessionState::Open));
    assert_eq!(
        (open.plate.as_str(), open.lane.as_str()),
        ("鲁B12345", "in-1")
    );
    assert_eq!(open.plate_color, i32::from(pb::PlateColor::Blue));
    assert_eq!(open.tariff_version, 1);
    assert_eq!(open.driver_id, "ann");
    // Nobody else sees it: not another driver, not another operator.
    expect_code(
        session(&server, &driver_token("bob"), "g1~2").await,
        Code::NotFound,
    );
    expect_code(session(&server, OPERATOR_B.1, "g1~2").await, Code::NotFound);

    // 2 h 10 min: three started hours at 5.00.
    server.advance(2 * 3600 + 600);
    let ack = report_ok(&server, gate("g1", 3, false, "鲁B12345", server.now())).await;
    assert_eq!(ack.session_id, "g1~2");
    let paid = session_in(&server, "g1~2", pb::SessionState::ClosedPaid).await;
    assert_eq!((paid.fee_minor, paid.currency.as_str()), (1500, "CNY"));
    let p = payment(&paid);
    assert_eq!(p.method, i32::from(pb::PaymentMethod::Wallet));
    assert_eq!(p.status, i32::from(pb::PaymentStatus::Succeeded));
    assert_eq!((p.attempts, p.receipt_id.as_str()), (1, "charge:g1~2"));
    assert_eq!(paid.exit_time, Some(pb_time(server.now())));

    let w = wallet(&server, "ann").await;
    assert_eq!(
        (w.balance_minor, w.currency.as_str(), w.arrears_minor),
        (500, "CNY", 0)
    );
    assert_eq!(w.entries.len(), 2);
    assert_eq!(w.entries[0].kind, "charge");
    assert_eq!(w.entries[0].to_account, "revenue:op-a");
    assert_eq!(books(&w), w.balance_minor);

    let mine = server
        .sessions()
        .await
        .list_my_sessions(authed(
            pb::ListMySessionsRequest::default(),
            &driver_token("ann"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.sessions.len(), 1);
    let theirs = list_sessions(&server, OPERATOR_A.1, pb::ListSessionsRequest::default()).await;
    assert_eq!(theirs.len(), 1);
    assert!(
        list_sessions(&server, OPERATOR_B.1, Default::default())
            .await
            .is_empty()
    );

    let text = server.metrics_text().await;
    assert!(series(&text, r#"citypark_sessions_total{result="opened"}"#) >= 1.0);
    assert!(
        series(
            &text,
            r#"citypark_payments_total{method="wallet",result="succeeded"}"#
        ) >= 1.0
    );
    assert!(!text.contains("12345"), "no plate in the metrics");
}

pub(crate) async fn list_sessions(
    server: &TestServer,
    key: &str,
    request: pb::ListSessionsRequest,
) -> Vec<pb::ParkingSession> {
    server
        .sessions()
        .await
        .list_sessions(authed(request, key))
        .await
        .unwrap()
        .into_inner()
        .sessions
}

pub(crate) async fn settlement(server: &TestServer, day: &str) -> pb::GetSettlementResponse {
    let request = pb::GetSettlementRequest {
        operator: OPERATOR_A.0.into(),
        day: day.into(),
    };
    server
        .sessions()
        .await
        .get_settlement(authed(request, OPERATOR_A.1))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn an_unlinked_plate_pays_at_the_barrier_and_the_day_settles() {
    let server = TestServer::start().await;
    open_garage(&server, "g1").await;
    link(&server, "ann", "鲁B11111").await;
    top_up(&server, "ann", 10_000, "k").await.unwrap();
    report_ok(&server, gate("g1", 2, true, "京A12345", server.now())).await;
    report_ok(&server, gate("g1", 3, true, "鲁B11111", server.now())).await;
    server.advance(3600);
    report_ok(&server, gate("g1", 4, false, "京A12345", server.now())).await;
    report_ok(&server, gate("g1", 5, false, "鲁B11111", server.now())).await;
    let unpaid = session_in(&server, "g1~2", pb::SessionState::ClosedUnpaid).await;
    assert_eq!(unpaid.fee_minor, 500);
    assert_eq!(
        payment(&unpaid).method,
        i32::from(pb::PaymentMethod::Barrier)
    );
    assert_eq!(
        payment(&unpaid).status,
        i32::from(pb::PaymentStatus::NotNeeded)
    );
    // The operator sees the whole plate of a session at its car park.
    assert_eq!(unpaid.plate, "京A12345");
    session_in(&server, "g1~3", pb::SessionState::ClosedPaid).await;

    let filtered = list_sessions(
        &server,
        OPERATOR_A.1,
        pb::ListSessionsRequest {
            car_park_id: "g1".into(),
            state: pb::SessionState::ClosedUnpaid.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(filtered.len(), 1);
    // Another operator's car park is not the caller's to list.
    let refused = server
        .sessions()
        .await
        .list_sessions(authed(
            pb::ListSessionsRequest {
                car_park_id: "g1".into(),
                ..Default::default()
            },
            OPERATOR_B.1,
        ))
        .await;
    expect_code(refused, Code::NotFound);

    // 2026-11-30 11:00 in Shanghai: the local day of both exits.
    let day = settlement(&server, "2026-11-30").await;
    assert_eq!(day.currency, "CNY");
    assert_eq!((day.sessions_paid, day.sessions_unpaid), (1, 1));
    assert_eq!(
        (day.revenue_minor, day.barrier_minor, day.arrears_minor),
        (500, 500, 0)
    );
    let other = settlement(&server, "2026-11-29").await;
    assert_eq!((other.sessions_paid, other.revenue_minor), (0, 0));
    // Settling another operator's day, or a day that is no date, is refused.
    let mut sessions = server.sessions().await;
    let request = pb::GetSettlementRequest {
        operator: OPERATOR_B.0.into(),
        day: "2026-11-30".into(),
    };
    expect_code(
        sessions.get_settlement(authed(request, OPERATOR_A.1)).await,
        Code::PermissionDenied,
    );
    let request = pb::GetSettlementRequest {
        operator: String::new(),
        day: "30/11/2026".into(),
    };
    expect_invalid(
        sessions.get_settlement(authed(request, OPERATOR_A.1)).await,
        "day",
    );
}

#[tokio::test]
async fn a_refused_charge_becomes_arrears_flagged_at_the_next_entry() {
    let server = TestServer::start().await;
    open_garage(&server, "g1").await;
    link(&server, "ann", "鲁B12345").await;
    report_ok(&server, gate("g1", 2, true, "鲁B12345", server.now())).await;
    server.advance(3600);
    report_ok(&server, gate("g1", 3, false, "鲁B12345", server.now())).await;
    let owed = eventually("the charge is refused", || async {
        let s = session(&server, OPERATOR_A.1, "g1~2").await.ok()?;
        (payment(&s).status == i32::from(pb::PaymentStatus::Failed)).then_some(s)
    })
    .await;
    assert_eq!(owed.state, i32::from(pb::SessionState::ClosedUnpaid));
    assert!(
        payment(&owed).failure.contains("does not cover"),
        "{owed:?}"
    );
    let w = wallet(&server, "ann").await;
    assert_eq!((w.balance_minor, w.arrears_minor), (0, 500));
    assert!(w.entries.is_empty(), "a refused charge posts nothing");

    let ack = report_ok(&server, gate("g1", 4, true, "鲁B12345", server.now())).await;
    assert!(ack.arrears);
    assert_eq!(
        (ack.arrears_minor, ack.arrears_currency.as_str()),
        (500, "CNY")
    );
    let flagged = session(&server, OPERATOR_A.1, "g1~4").await.unwrap();
    assert!(flagged.arrears_at_entry);
    let day = settlement(&server, "2026-11-30").await;
    assert_eq!((day.sessions_unpaid, day.arrears_minor), (1, 500));
    let text = eventually("the arrears gauge", || async {
        let text = server.metrics_text().await;
        (series(&text, "citypark_sessions_in_arrears") >= 1.0).then_some(text)
    })
    .await;
    assert!(series(&text, r#"citypark_arrears_minor{currency="CNY"}"#) >= 500.0);
}

#[tokio::test]
async fn a_second_entry_voids_the_first_and_odd_exits_are_flagged_not_charged() {
    let server = TestServer::start().await;
    open_garage(&server, "g1").await;
    link(&server, "ann", "鲁B12345").await;
    top_up(&server, "ann", 10_000, "k").await.unwrap();
    let t0 = server.now();
    report_ok(&server, gate("g1", 2, true, "鲁B12345", t0)).await;
    server.advance(600);
    let ack = report_ok(&server, gate("g1", 3, true, "鲁B12345", server.now())).await;
    assert_eq!(ack.session_id, "g1~3");
    let voided = session_in(&server, "g1~2", pb::SessionState::Voided).await;
    assert!(voided.void_reason.contains("entered again"), "{voided:?}");
    assert_eq!(voided.fee_minor, 0);

    // An exit that matches no session: a stay of unknown length, not charged.
    let ack = report_ok(&server, gate("g1", 4, false, "京A99999", server.now())).await;
    assert_eq!(ack.session_id, "g1~4");
    let unknown = session(&server, OPERATOR_A.1, "g1~4").await.unwrap();
    assert_eq!(unknown.state, i32::from(pb::SessionState::Voided));
    assert!(unknown.entry_time.is_none());
    assert!(unknown.void_reason.contains("no entry"), "{unknown:?}");

    // The exit device's clock is a minute behind the entry's: a stay of no length.
    let skewed = after(server.now(), -60);
    report_ok(&server, gate("g1", 5, false, "鲁B12345", skewed)).await;
    let s = session(&server, OPERATOR_A.1, "g1~3").await.unwrap();
    assert_eq!(s.state, i32::from(pb::SessionState::ClosedFree));
    assert!(s.clock_skew);

    // Within the free minutes: nothing to pay.
    report_ok(&server, gate("g1", 6, true, "鲁B12345", server.now())).await;
    server.advance(10 * 60);
    report_ok(&server, gate("g1", 7, false, "鲁B12345", server.now())).await;
    let free = session(&server, OPERATOR_A.1, "g1~6").await.unwrap();
    assert_eq!(
        (free.state, free.fee_minor),
        (i32::from(pb::SessionState::ClosedFree), 0)
    );
    let w = wallet(&server, "ann").await;
    assert_eq!(w.balance_minor, 10_000, "nothing was charged");
    let text = server.metrics_text().await;
    assert!(
        series(
            &text,
            r#"citypark_sessions_total{result="voided_previous"}"#
        ) >= 1.0
    );
    assert!(
        series(
            &text,
            r#"citypark_sessions_total{result="exit_without_entry"}"#
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_session_is_priced_by_the_tariff_in_force_at_its_entry() {
    let server = TestServer::start().await;
    open_garage(&server, "g1").await;
    report_ok(&server, gate("g1", 2, true, "京A12345", server.now())).await;
    // The operator raises the price while the car is in.
    let mut dearer = garage("g1", 36.06, 120.38);
    dearer.tariff.as_mut().unwrap().hourly_rate_minor = 800;
    let updated = register(&server, dearer).await;
    assert_eq!(updated.tariff.unwrap().version, 2);
    server.advance(3600);
    report_ok(&server, gate("g1", 3, false, "京A12345", server.now())).await;
    let old = session(&server, OPERATOR_A.1, "g1~2").await.unwrap();
    assert_eq!((old.fee_minor, old.tariff_version), (500, 1));
    report_ok(&server, gate("g1", 4, true, "京A12345", server.now())).await;
    server.advance(3600);
    report_ok(&server, gate("g1", 5, false, "京A12345", server.now())).await;
    let new = session(&server, OPERATOR_A.1, "g1~4").await.unwrap();
    assert_eq!((new.fee_minor, new.tariff_version), (800, 2));
}

#[tokio::test]
async fn a_reserved_window_is_prepaid_and_only_the_overstay_is_charged() {
    let server = TestServer::start().await;
    register(&server, reservable_garage("r1", 5)).await;
    report_ok(&server, snapshot("r1", 1, 100, server.now())).await;
    link(&server, "ann", "鲁B12345").await;
    top_up(&server, "ann", 10_000, "k").await.unwrap();
    let now = server.now();
    let request = reservation_request(
        "r1",
        after(now, 600),
        after(now, 600 + 3600),
        "鲁B12345",
        "k",
    );
    let reservation = reserve(&server, "ann", request).await.unwrap();
    server.advance(600);
    let ack = report_ok(&server, gate("r1", 2, true, "鲁B12345", server.now())).await;
    // Two hours in, one of them prepaid by the reservation.
    server.advance(2 * 3600);
    report_ok(&server, gate("r1", 3, false, "鲁B12345", server.now())).await;
    let paid = session_in(&server, &ack.session_id, pb::SessionState::ClosedPaid).await;
    assert_eq!(paid.reservation_id, reservation.id);
    let hourly = reservable_garage("r1", 5).tariff.unwrap().hourly_rate_minor;
    assert_eq!(paid.fee_minor, hourly, "one hour of overstay");
}

#[tokio::test]
async fn plates_link_to_one_driver_at_most_five_each_and_unlinking_stops_matching_at_once() {
    let server = TestServer::start().await;
    open_garage(&server, "g1").await;
    for i in 0..5 {
        link(&server, "ann", &format!("鲁B1000{i}")).await;
    }
    expect_code(
        try_link(&server, "ann", "鲁B20000", pb::PaymentMethod::Wallet).await,
        Code::FailedPrecondition,
    );
    // Relinking one's own plate is allowed; another driver's is not.
    link(&server, "ann", "鲁B10000").await;
    expect_code(
        try_link(&server, "bob", "鲁B10000", pb::PaymentMethod::Wallet).await,
        Code::FailedPrecondition,
    );
    expect_code(
        try_link(&server, "bob", "鲁B30000", pb::PaymentMethod::Gateway).await,
        Code::FailedPrecondition,
    );
    expect_invalid(
        try_link(&server, "bob", "!", pb::PaymentMethod::Wallet).await,
        "plate",
    );
    let as_operator = server
        .sessions()
        .await
        .link_plate(authed(
            pb::LinkPlateRequest {
                plate: "鲁B30000".into(),
                ..Default::default()
            },
            OPERATOR_A.1,
        ))
        .await;
    expect_code(as_operator, Code::PermissionDenied);

    let unlink = |driver: &'static str, plate: &'static str| {
        let server = &server;
        async move {
            server
                .sessions()
                .await
                .unlink_plate(authed(
                    pb::UnlinkPlateRequest {
                        plate: plate.into(),
                    },
                    &driver_token(driver),
                ))
                .await
        }
    };
    expect_code(unlink("bob", "鲁B10000").await, Code::NotFound);
    unlink("ann", "鲁B10000").await.unwrap();
    let plates = server
        .sessions()
        .await
        .list_my_plates(authed(pb::ListMyPlatesRequest {}, &driver_token("ann")))
        .await
        .unwrap()
        .into_inner()
        .plates;
    assert_eq!(plates.len(), 4);
    assert!(plates.iter().all(|p| p.plate != "鲁B10000"));
    // The unlinked plate is no longer ann's: it pays at the barrier.
    report_ok(&server, gate("g1", 2, true, "鲁B10000", server.now())).await;
    server.advance(3600);
    report_ok(&server, gate("g1", 3, false, "鲁B10000", server.now())).await;
    let s = session(&server, OPERATOR_A.1, "g1~2").await.unwrap();
    assert_eq!(payment(&s).method, i32::from(pb::PaymentMethod::Barrier));
    assert!(s.driver_id.is_empty());
    // Now bob may link it.
    link(&server, "bob", "鲁B10000").await;
}

#[tokio::test]
async fn closed_sessions_forget_their_plates_after_the_retention_period() {
    let server = TestServer::start_with(|s| {
        s.payments.session_retention = std::time::Duration::from_secs(7 * 24 * 3600);
    })
    .await;
    open_garage(&server, "g1").await;
    report_ok(&server, gate("g1", 2, true, "京A12345", server.now())).await;
    server.advance(3600);
    report_ok(&server, gate("g1", 3, false, "京A12345", server.now())).await;
    report_ok(&server, gate("g1", 4, true, "京A77777", server.now())).await;
    server.advance(6 * 24 * 3600);
    let kept = session(&server, OPERATOR_A.1, "g1~2").await.unwrap();
    assert_eq!(kept.plate, "京A12345");
    server.advance(24 * 3600 + 1);
    eventually("the plate is forgotten", || async {
        let s = session(&server, OPERATOR_A.1, "g1~2").await.ok()?;
        s.plate.is_empty().then_some(())
    })
    .await;
    // An open session keeps its plate: it is still needed to close it.
    let open = session(&server, OPERATOR_A.1, "g1~4").await.unwrap();
    assert_eq!(open.plate, "京A77777");
}

/// Two instances on `url` with one clock: 24 linked plates enter and leave through
/// alternating instances, both instances sweep the charges; returns the instances and
/// the session ids.
async fn charge_on_two_instances(url: &str) -> (TestServer, TestServer, Vec<String>) {
    let (prefix, clock) = (key_prefix(), Arc::new(ManualClock::new(start_time())));
    let a = TestServer::start_redis_with(url, &prefix, clock.clone(), |_| {}).await;
    let b = TestServer::start_redis_with(url, &prefix, clock.clone(), |_| {}).await;
    let car_parks = ["x1", "x2", "x3"];
    for id in car_parks {
        open_garage(&a, id).await;
    }
    for server in [&a, &b] {
        for id in car_parks {
            eventually("the car park reached the instance", || async {
                car_park_of(server, id).await.ok()
            })
            .await;
        }
    }
    let drivers = 24;
    for i in 0..drivers {
        let server = if i % 2 == 0 { &a } else { &b };
        link(server, &format!("d{i}"), &format!("鲁B5{i:04}")).await;
        top_up(server, &format!("d{i}"), 10_000, "k").await.unwrap();
    }
    let mut sequences: HashMap<&str, u64> = HashMap::new();
    let mut ids = Vec::new();
    for i in 0..drivers {
        let (car_park, plate) = (car_parks[i % 3], format!("鲁B5{i:04}"));
        let seq = sequences.entry(car_park).or_insert(1);
        *seq += 1;
        let ack = report_ok(&a, gate(car_park, *seq, true, &plate, clock.now())).await;
        ids.push(ack.session_id);
    }
    clock.advance(std::time::Duration::from_secs(3 * 3600));
    for i in 0..drivers {
        let (car_park, plate) = (car_parks[i % 3], format!("鲁B5{i:04}"));
        let seq = sequences.entry(car_park).or_insert(1);
        *seq += 1;
        // Exits through the other instance than the entries.
        let ack = report_ok(&b, gate(car_park, *seq, false, &plate, clock.now())).await;
        assert_eq!(
            ack.session_id, ids[i],
            "the exit closed the entry's session"
        );
    }
    for server in [&a, &b] {
        for id in &ids {
            session_in(server, id, pb::SessionState::ClosedPaid).await;
        }
    }
    (a, b, ids)
}

/// Each driver was charged once: one charge entry, 1500 less in the wallet, the books
/// balanced, on both instances.
async fn assert_charged_once(servers: &[&TestServer], drivers: usize) {
    for server in servers {
        for i in 0..drivers {
            let w = wallet(server, &format!("d{i}")).await;
            let charges = w.entries.iter().filter(|e| e.kind == "charge").count();
            assert_eq!(charges, 1, "d{i}: {w:?}");
            assert_eq!(w.balance_minor, 10_000 - 1500, "d{i}");
            assert_eq!(books(&w), w.balance_minor, "d{i}: the books balance");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_instances_each_session_is_charged_to_its_wallet_exactly_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b, ids) = charge_on_two_instances(&redis.url()).await;
    assert_eq!(ids.len(), 24);
    assert_charged_once(&[&a, &b], 24).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_instances_on_a_cluster_each_session_is_charged_to_its_wallet_exactly_once() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let (a, b, _) = charge_on_two_instances(&cluster.url()).await;
    assert_charged_once(&[&a, &b], 24).await;
}

#[tokio::test]
async fn an_overdraft_lets_a_charge_take_the_wallet_below_zero_and_no_further() {
    let server = TestServer::start_with(|s| s.payments.overdraft_minor = 700).await;
    open_garage(&server, "g1").await;
    link(&server, "ann", "鲁B12345").await;
    // An hour (5.00) fits the overdraft of 7.00; the next hour would not.
    for (entry, exit) in [(2, 3), (4, 5)] {
        report_ok(&server, gate("g1", entry, true, "鲁B12345", server.now())).await;
        server.advance(3600);
        report_ok(&server, gate("g1", exit, false, "鲁B12345", server.now())).await;
    }
    session_in(&server, "g1~2", pb::SessionState::ClosedPaid).await;
    let refused = eventually("the second charge is refused", || async {
        let s = session(&server, OPERATOR_A.1, "g1~4").await.ok()?;
        (payment(&s).status == i32::from(pb::PaymentStatus::Failed)).then_some(s)
    })
    .await;
    assert!(payment(&refused).failure.contains("does not cover"));
    let w = wallet(&server, "ann").await;
    assert_eq!(
        (w.balance_minor, w.overdraft_minor, w.arrears_minor),
        (-500, 700, 500)
    );
    assert_eq!(books(&w), w.balance_minor);
}
