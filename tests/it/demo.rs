//! The demo: its operators register and report through the real API (its drivers'
//! plates open and close sessions paid from their wallets), and stopping it ends every
//! task it started.

use std::{sync::Arc, time::Duration};

use citypark::{
    app::Backend,
    demo::{Demo, DemoHandle},
    pb,
    service::{ManualClock, SystemClock},
};
use tokio::{net::TcpListener, runtime::Runtime, time::Instant};

use crate::support::*;

/// Registering the city through a debug build takes seconds; an upper bound, never a
/// synchronisation.
const REGISTERING: Duration = Duration::from_secs(60);

/// A runtime for the demo alone: its count of alive tasks is then exactly the demo's
/// (its operators, and the connection tasks of their gRPC channel), untouched by the
/// server's and the test clients' tasks.
fn demo_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("demo")
        .enable_all()
        .build()
        .expect("a runtime for the demo")
}

/// The tasks still alive on `runtime` once they are all gone or `PATIENCE` is up.
/// `stop` joins every task the demo spawned itself; tonic's connection tasks end just
/// after, once they see the channel dropped.
async fn remaining_tasks(runtime: &Runtime) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let alive = runtime.metrics().num_alive_tasks();
        if alive == 0 || Instant::now() >= deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether any car park on the first page of ListCarParks has an applied report.
async fn any_reported(server: &TestServer) -> bool {
    let ids: Vec<String> = server
        .registry()
        .await
        .list_car_parks(pb::ListCarParksRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .car_parks
        .into_iter()
        .map(|c| c.id)
        .collect();
    !ids.is_empty()
        && lookup(server, &ids)
            .await
            .availabilities
            .iter()
            .any(|a| a.last_sequence > 0)
}

/// A server with the demo's keys, on the real clock (the operators stamp reports with
/// the real time, which a hand clock would find out of line), and the demo running on
/// a runtime of its own, whose tasks the tests count.
async fn serve_demo() -> (TestServer, Runtime, DemoHandle) {
    let demo = Demo::new(2026, Duration::from_secs(1));
    let server = TestServer::start_with(|settings| {
        demo.add_keys(&mut settings.api_keys);
        // As `serve --demo` does: the demo's hosts sign their tokens with its secret.
        settings
            .driver_tokens
            .add_secret(citypark::tokens::DEMO_SECRET.as_bytes(), None, None);
        settings.clock = Arc::new(SystemClock);
    })
    .await;
    let runtime = demo_runtime();
    let handle = {
        let _inside = runtime.enter();
        demo.start(format!("http://{}", server.addr))
    };
    (server, runtime, handle)
}

#[tokio::test]
async fn demo_reports_then_stops_every_task() {
    let (server, runtime, demo) = serve_demo().await;

    let deadline = Instant::now() + REGISTERING;
    while !any_reported(&server).await {
        assert!(
            Instant::now() < deadline,
            "no demo car park reported within {REGISTERING:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Seven operators streaming or registering, and the task that joins them.
    let running = runtime.metrics().num_alive_tasks();
    assert!(running >= 8, "{running} demo tasks alive");

    tokio::time::timeout(PATIENCE, demo.stop())
        .await
        .expect("the demo stops within PATIENCE");
    // `stop` returned, so the operators and their joiner (8 tasks) have ended; only
    // the channel's buffer worker and connection, and the request-body tasks of the
    // last calls (hyper pipes each HTTP/2 request body in a task of its own, and the
    // operators also make unary calls for reservations), may still be on their way
    // out, how many depending on how busy the machine is. A `stop` that only cancelled
    // would leave the operators and their joiner here, and more.
    let just_stopped = runtime.metrics().num_alive_tasks();
    assert!(
        just_stopped < 8,
        "{just_stopped} demo tasks alive after stop"
    );
    assert_eq!(remaining_tasks(&runtime).await, 0, "demo tasks left behind");
    runtime.shutdown_background();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn demo_stops_while_still_connecting() {
    // A port nobody listens on: the operators would retry connecting for 10 s.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let runtime = demo_runtime();
    let demo = {
        let _inside = runtime.enter();
        Demo::new(1, Duration::from_secs(1)).start(format!("http://{addr}"))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        runtime.metrics().num_alive_tasks() >= 1,
        "the demo is retrying"
    );

    tokio::time::timeout(Duration::from_secs(2), demo.stop())
        .await
        .expect("the demo stops long before it would give up connecting");
    assert_eq!(remaining_tasks(&runtime).await, 0, "demo tasks left behind");
    runtime.shutdown_background();
}

#[tokio::test]
async fn demo_operators_bring_reserved_cars_in_by_plate() {
    let (server, runtime, demo) = serve_demo().await;
    let garage = citypark::demo::generate_city(2026)
        .into_iter()
        .find(|c| c.reservation_policy.is_some())
        .expect("the demo has reservable garages");
    eventually("the garage is registered", || async {
        car_park_of(&server, &garage.id).await.ok()
    })
    .await;
    // One plate whose driver comes and one whose driver does not, by the demo's rule.
    let plate = |comes: bool| {
        (0..)
            .map(|i| format!("D{i:05}"))
            .find(|p| citypark::demo::driver_comes(p) == comes)
            .unwrap()
    };
    // The server runs on the real clock here (the demo stamps real times).
    let now = citypark::domain::Timestamp::now();
    let mut made = Vec::new();
    for (k, comes) in [true, false].into_iter().enumerate() {
        let request = reservation_request(
            &garage.id,
            now,
            after(now, 3600),
            &plate(comes),
            &format!("k{k}"),
        );
        made.push(reserve(&server, &format!("d{k}"), request).await.unwrap());
    }
    let state = |id: String, who: &'static str| {
        let server = &server;
        async move {
            let r = server
                .reservations()
                .await
                .get_reservation(authed(pb::GetReservationRequest { id }, &driver_token(who)))
                .await
                .unwrap()
                .into_inner()
                .reservation
                .unwrap();
            pb::ReservationState::try_from(r.state).unwrap()
        }
    };
    eventually(
        "the coming car is checked in by its entry report",
        || async {
            (state(made[0].id.clone(), "d0").await == pb::ReservationState::CheckedIn).then_some(())
        },
    )
    .await;
    assert_eq!(
        state(made[1].id.clone(), "d1").await,
        pb::ReservationState::Reserved,
        "the other driver never came"
    );
    tokio::time::timeout(PATIENCE, demo.stop())
        .await
        .expect("the demo stops within PATIENCE");
    runtime.shutdown_background();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn demo_hosts_offer_shared_spaces_that_find_nearby_shows() {
    let (server, runtime, demo) = serve_demo().await;
    let host = {
        let id = citypark::domain::DriverId::parse("demo-host-001").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        citypark::tokens::DriverTokens::issue(
            citypark::tokens::DEMO_SECRET.as_bytes(),
            &id,
            now,
            3600,
            None,
            None,
        )
    };
    // A resident's or a compound's offer: evenings and nights every day.
    let offer = eventually("demo-host-001's nightly offer is made", || async {
        let offers = server
            .shared()
            .await
            .list_my_offers(authed(pb::ListMyOffersRequest::default(), &host))
            .await
            .ok()?
            .into_inner()
            .offers;
        offers.into_iter().find(|o| o.schedule.len() == 7)
    })
    .await;
    // Tomorrow 20:00 to 21:00 in Qingdao.
    let tomorrow = citypark::domain::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::get("Asia/Shanghai").unwrap())
        .date()
        .tomorrow()
        .unwrap();
    let at = |hour| {
        tomorrow
            .at(hour, 0, 0, 0)
            .to_zoned(jiff::tz::TimeZone::get("Asia/Shanghai").unwrap())
            .unwrap()
            .timestamp()
    };
    let results = server
        .availability()
        .await
        .find_nearby(pb::FindNearbyRequest {
            location: offer.location,
            radius_m: 50.0,
            include_shared: true,
            stay: Some(pb::StayWindow {
                start: Some(pb_time(at(20))),
                end: Some(pb_time(at(21))),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(
        results.iter().any(|r| r.offer_id == offer.id),
        "{} not among {results:?}",
        offer.id
    );
    tokio::time::timeout(PATIENCE, demo.stop())
        .await
        .expect("the demo stops within PATIENCE");
    runtime.shutdown_background();
    server.stop().await.unwrap();
}

/// A demo token for `driver`, as the demo's drivers sign theirs.
fn demo_token(driver: &str) -> String {
    let id = citypark::domain::DriverId::parse(driver).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    citypark::tokens::DriverTokens::issue(
        citypark::tokens::DEMO_SECRET.as_bytes(),
        &id,
        now,
        3600,
        None,
        None,
    )
}

/// The sessions at every demo operator's car parks in `state` (every state for
/// UNSPECIFIED), as the operators list them.
async fn demo_sessions(server: &TestServer, state: pb::SessionState) -> Vec<pb::ParkingSession> {
    let mut all = Vec::new();
    for operator in citypark::demo::demo_operators() {
        let mut page_token = String::new();
        loop {
            let request = pb::ListSessionsRequest {
                state: state.into(),
                page_size: 500,
                page_token,
                ..Default::default()
            };
            let page = server
                .sessions()
                .await
                .list_sessions(authed(request, &operator.api_key))
                .await
                .unwrap()
                .into_inner();
            all.extend(page.sessions);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
    }
    all
}

#[tokio::test]
async fn demo_drivers_park_by_plate_and_pay_from_their_wallets() {
    // The server and the demo on one hand clock, from Monday 10:00 in Qingdao: the
    // test makes the parked cars stay two hours without waiting for them.
    let clock = Arc::new(ManualClock::new(start_time()));
    let demo = Demo::new(2026, Duration::from_secs(1)).with_clock(clock.clone());
    let drivers: Vec<String> = demo.drivers().iter().map(|d| d.id.clone()).collect();
    let server = TestServer::start_with_clock(Backend::embedded(4096), clock.clone(), |settings| {
        demo.add_keys(&mut settings.api_keys);
        settings
            .driver_tokens
            .add_secret(citypark::tokens::DEMO_SECRET.as_bytes(), None, None);
    })
    .await;
    let runtime = demo_runtime();
    let handle = {
        let _inside = runtime.enter();
        demo.start(format!("http://{}", server.addr))
    };

    // The drivers' cars among those parked: sessions charged to them.
    eventually_within(REGISTERING, "demo drivers' cars are parked", || async {
        let open = demo_sessions(&server, pb::SessionState::Open).await;
        let theirs = open.iter().filter(|s| !s.driver_id.is_empty()).count();
        (theirs >= 12).then_some(())
    })
    .await;
    clock.advance(Duration::from_secs(2 * 3600));
    // Each car that leaves now has stayed beyond the free minutes: unlinked plates owe
    // at the barrier, linked ones are charged to their wallets.
    let closed = eventually_within(REGISTERING, "sessions closed with fees", || async {
        let all = demo_sessions(&server, pb::SessionState::Unspecified).await;
        let with_fee = |state: pb::SessionState| {
            all.iter()
                .any(|s| s.state == i32::from(state) && s.fee_minor > 0 && s.currency == "CNY")
        };
        (with_fee(pb::SessionState::ClosedPaid) && with_fee(pb::SessionState::ClosedUnpaid))
            .then_some(all)
    })
    .await;
    let paid = closed
        .iter()
        .find(|s| s.state == i32::from(pb::SessionState::ClosedPaid))
        .unwrap();
    assert!(drivers.contains(&paid.driver_id), "{paid:?}");
    assert!(paid.plate.starts_with("鲁B"), "a Qingdao plate");
    let wallet = eventually("a demo driver's wallet shows a charge", || async {
        for driver in &drivers {
            let w = server
                .sessions()
                .await
                .get_wallet(authed(pb::GetWalletRequest {}, &demo_token(driver)))
                .await
                .ok()?
                .into_inner();
            if w.entries.iter().any(|e| e.kind == "charge") {
                return Some(w);
            }
        }
        None
    })
    .await;
    // Topped up once today, charged since.
    let top_ups: Vec<_> = wallet
        .entries
        .iter()
        .filter(|e| e.kind == "top_up")
        .collect();
    assert_eq!(top_ups.len(), 1, "{wallet:?}");
    let charged: i64 = wallet
        .entries
        .iter()
        .filter(|e| e.kind == "charge")
        .map(|e| e.amount_minor)
        .sum();
    assert_eq!(wallet.balance_minor, top_ups[0].amount_minor - charged);
    // And the day settles: 2026-11-30 in Qingdao.
    let mut revenue = 0;
    for operator in citypark::demo::demo_operators() {
        let request = pb::GetSettlementRequest {
            operator: operator.id.clone(),
            day: "2026-11-30".into(),
        };
        let day = server
            .sessions()
            .await
            .get_settlement(authed(request, &operator.api_key))
            .await
            .unwrap()
            .into_inner();
        revenue += day.revenue_minor;
    }
    assert!(revenue > 0, "the drivers' fees are the operators' revenue");

    tokio::time::timeout(PATIENCE, handle.stop())
        .await
        .expect("the demo stops within PATIENCE");
    assert_eq!(remaining_tasks(&runtime).await, 0, "demo tasks left behind");
    runtime.shutdown_background();
    server.stop().await.unwrap();
}
