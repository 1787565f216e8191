//! Reservations through the gRPC API: the lifecycle, held spaces in every availability,
//! arrivals by plate, no-shows, identity, and zero overbooking under a thousand-way
//! race on the embedded store, on two instances over one Redis, and on a Redis Cluster.

use std::{collections::HashMap, sync::Arc};

use citypark::{pb, service::ManualClock};
use tonic::Code;

use crate::{
    redis_support::{RedisCluster, RedisServer, key_prefix, pause_writes},
    support::*,
};

async fn get(
    server: &TestServer,
    id: &str,
    credential: &str,
) -> Result<pb::Reservation, tonic::Status> {
    server
        .reservations()
        .await
        .get_reservation(authed(
            pb::GetReservationRequest { id: id.into() },
            credential,
        ))
        .await
        .map(|r| r.into_inner().reservation.unwrap())
}

async fn calendar(
    server: &TestServer,
    id: &str,
    start: citypark::domain::Timestamp,
    end: citypark::domain::Timestamp,
) -> Vec<i32> {
    server
        .reservations()
        .await
        .get_reservation_calendar(pb::GetReservationCalendarRequest {
            car_park_id: id.into(),
            category: pb::SpaceCategory::Standard.into(),
            start_time: Some(pb_time(start)),
            end_time: Some(pb_time(end)),
        })
        .await
        .unwrap()
        .into_inner()
        .slots
        .iter()
        .map(|s| s.remaining)
        .collect()
}

fn held_standard(a: &pb::CarParkAvailability) -> (i32, i32) {
    let c = a
        .categories
        .iter()
        .find(|c| c.category == pb::SpaceCategory::Standard as i32)
        .expect("standard spaces");
    (c.held, c.available)
}

fn state_of(r: &pb::Reservation) -> pb::ReservationState {
    pb::ReservationState::try_from(r.state).unwrap()
}

#[tokio::test]
async fn a_reservation_holds_a_space_until_its_car_arrives_by_plate_and_leaves() {
    let server = TestServer::start().await;
    register(&server, reservable_garage("g1", 2)).await;
    let now = server.now();
    report_ok(&server, snapshot("g1", 1, 40, now)).await;

    let r = reserve(
        &server,
        "alice",
        reservation_request("g1", now, after(now, 3600), "鲁B 12345", "k1"),
    )
    .await
    .unwrap();
    assert_eq!(state_of(&r), pb::ReservationState::Reserved);
    assert_eq!(r.plate, "鲁B12345", "plates are normalised");
    assert_eq!(r.driver_id, "alice");
    assert_eq!(r.price_minor, 500, "one started hour at 5.00 CNY");
    assert!(r.id.starts_with("g1~"), "{}", r.id);
    assert_eq!(
        held_standard(&availability_of(&server, "g1").await),
        (1, 39)
    );

    // Nobody else sees it; its driver and the car park's operator do.
    assert_eq!(
        get(&server, &r.id, &driver_token("bob"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        get(&server, &r.id, OPERATOR_B.1).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(get(&server, &r.id, OPERATOR_A.1).await.unwrap().id, r.id);
    assert_eq!(calendar(&server, "g1", now, after(now, 900)).await, vec![1]);

    // The car arrives: the operator's entry report carries its plate.
    report_ok(&server, plate_delta("g1", 2, true, "鲁B12345", now)).await;
    let checked_in = get(&server, &r.id, &driver_token("alice")).await.unwrap();
    assert_eq!(state_of(&checked_in), pb::ReservationState::CheckedIn);
    assert_eq!(
        held_standard(&availability_of(&server, "g1").await),
        (0, 39),
        "the car is counted, not held"
    );
    // Still in the slots it booked.
    assert_eq!(calendar(&server, "g1", now, after(now, 900)).await, vec![1]);

    server.advance(1800);
    report_ok(
        &server,
        plate_delta("g1", 3, false, "鲁B12345", server.now()),
    )
    .await;
    let done = get(&server, &r.id, &driver_token("alice")).await.unwrap();
    assert_eq!(state_of(&done), pb::ReservationState::Completed);
    assert_eq!(calendar(&server, "g1", now, after(now, 900)).await, vec![2]);
}

#[tokio::test]
async fn full_slots_are_refused_naming_the_slot_and_touching_windows_fit() {
    let server = TestServer::start().await;
    register(&server, reservable_garage("g1", 1)).await;
    let t0 = after(server.now(), 3600);
    reserve(
        &server,
        "a",
        reservation_request("g1", t0, after(t0, 3600), "A1234", "1"),
    )
    .await
    .unwrap();
    let refused = reserve(
        &server,
        "b",
        reservation_request("g1", after(t0, 3000), after(t0, 5400), "B1234", "1"),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("fully booked"),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("03:45:00Z"),
        "names the first full slot: {}",
        refused.message()
    );
    // Touching windows do not overlap: the one ending at t0 and the one from t0 + 1h fit.
    reserve(
        &server,
        "b",
        reservation_request("g1", after(t0, 3600), after(t0, 7200), "B1234", "2"),
    )
    .await
    .unwrap();
    reserve(
        &server,
        "c",
        reservation_request("g1", after(t0, -3600), t0, "C1234", "1"),
    )
    .await
    .unwrap();
    assert_eq!(
        calendar(&server, "g1", after(t0, -900), after(t0, 900)).await,
        vec![0, 0]
    );
}

#[tokio::test]
async fn bad_requests_name_their_field_and_operators_cannot_reserve() {
    let server = TestServer::start().await;
    register(&server, reservable_garage("g1", 5)).await;
    register(&server, garage("plain", 36.07, 120.38)).await;
    let now = server.now();
    let ok = reservation_request("g1", after(now, 600), after(now, 4200), "A12345", "k");
    let cases: Vec<(pb::CreateReservationRequest, Code, &str)> = vec![
        (
            pb::CreateReservationRequest {
                end_time: ok.start_time,
                ..ok.clone()
            },
            Code::InvalidArgument,
            "end_time",
        ),
        (
            pb::CreateReservationRequest {
                end_time: Some(pb_time(after(now, 600 + 5 * 3600))),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "end_time",
        ),
        (
            pb::CreateReservationRequest {
                start_time: Some(pb_time(after(now, -7200))),
                end_time: Some(pb_time(after(now, -3600))),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "end_time",
        ),
        (
            pb::CreateReservationRequest {
                start_time: Some(pb_time(after(now, 8 * 86_400))),
                end_time: Some(pb_time(after(now, 8 * 86_400 + 3600))),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "start_time",
        ),
        (
            pb::CreateReservationRequest {
                plate: "\u{202e}X".into(),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "plate",
        ),
        (
            pb::CreateReservationRequest {
                idempotency_key: String::new(),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "idempotency_key",
        ),
        (
            pb::CreateReservationRequest {
                category: pb::SpaceCategory::EvCharging.into(),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "category",
        ),
        (
            pb::CreateReservationRequest {
                car_park_id: "nope".into(),
                ..ok.clone()
            },
            Code::NotFound,
            "nope",
        ),
        (
            pb::CreateReservationRequest {
                car_park_id: "plain".into(),
                ..ok.clone()
            },
            Code::FailedPrecondition,
            "takes no reservations",
        ),
    ];
    for (request, code, text) in cases {
        let status = reserve(&server, "alice", request).await.unwrap_err();
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(text),
            "{text}: {}",
            status.message()
        );
    }
    let as_operator = server
        .reservations()
        .await
        .create_reservation(authed(ok.clone(), OPERATOR_A.1))
        .await
        .unwrap_err();
    assert_eq!(as_operator.code(), Code::PermissionDenied);
    let forged = server
        .reservations()
        .await
        .create_reservation(authed(
            ok.clone(),
            &driver_token("alice").replace('.', ".x"),
        ))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated);
    let anonymous = server
        .reservations()
        .await
        .create_reservation(ok)
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn retries_return_the_same_reservation_and_drivers_hold_at_most_three() {
    let server = TestServer::start().await;
    register(&server, reservable_garage("g1", 50)).await;
    let now = server.now();
    let window = |h: i64| (after(now, h * 3600), after(now, h * 3600 + 1800));
    let (s, e) = window(1);
    let first = reserve(
        &server,
        "alice",
        reservation_request("g1", s, e, "A1", "same"),
    )
    .await
    .unwrap();
    let again = reserve(
        &server,
        "alice",
        reservation_request("g1", s, e, "A1", "same"),
    )
    .await
    .unwrap();
    assert_eq!(first, again);
    let changed = reserve(
        &server,
        "alice",
        reservation_request("g1", s, after(e, 900), "A1", "same"),
    )
    .await
    .unwrap_err();
    register(&server, reservable_garage("g2", 5)).await;
    let other_car_park = reserve(
        &server,
        "alice",
        reservation_request("g2", s, e, "A1", "same"),
    )
    .await
    .unwrap_err();
    assert_eq!(other_car_park.code(), Code::InvalidArgument);
    assert!(
        other_car_park.message().contains("another car park"),
        "{}",
        other_car_park.message()
    );
    assert_eq!(changed.code(), Code::InvalidArgument);
    assert!(
        changed.message().starts_with("idempotency_key"),
        "{}",
        changed.message()
    );
    for (k, h) in [("2", 2), ("3", 3)] {
        // A second apart, so the list's newest-first order is the order made.
        server.advance(1);
        let (s, e) = window(h);
        reserve(&server, "alice", reservation_request("g1", s, e, "A1", k))
            .await
            .unwrap();
    }
    let (s, e) = window(4);
    let fourth = reserve(&server, "alice", reservation_request("g1", s, e, "A1", "4"))
        .await
        .unwrap_err();
    assert_eq!(fourth.code(), Code::FailedPrecondition);
    assert!(
        fourth.message().contains("at most 3"),
        "{}",
        fourth.message()
    );

    // Cancelling frees one; the list shows them newest first, a page at a time.
    let cancelled = server
        .reservations()
        .await
        .cancel_reservation(authed(
            pb::CancelReservationRequest {
                id: first.id.clone(),
                reason: "plans changed".into(),
            },
            &driver_token("alice"),
        ))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(state_of(&cancelled), pb::ReservationState::Cancelled);
    assert_eq!(cancelled.cancel_reason, "plans changed");
    server.advance(1);
    reserve(&server, "alice", reservation_request("g1", s, e, "A1", "4"))
        .await
        .unwrap();
    let mut client = server.reservations().await;
    let page = |token: String, state: pb::ReservationState| {
        authed(
            pb::ListReservationsRequest {
                state: state.into(),
                page_size: 2,
                page_token: token,
            },
            &driver_token("alice"),
        )
    };
    let first_page = client
        .list_reservations(page(String::new(), pb::ReservationState::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first_page.reservations.len(), 2);
    let second_page = client
        .list_reservations(page(
            first_page.next_page_token.clone(),
            pb::ReservationState::Unspecified,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second_page.reservations.len(), 2);
    assert!(second_page.next_page_token.is_empty());
    assert_eq!(second_page.reservations[1].id, first.id, "oldest last");
    let reserved = client
        .list_reservations(page(String::new(), pb::ReservationState::Cancelled))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reserved.reservations.len(), 1);
    // An operator lists what is booked at its car parks; another operator sees nothing.
    assert!(listed(&server, OPERATOR_B.1).await.is_empty());
    assert_eq!(listed(&server, OPERATOR_A.1).await.len(), 4);
}

#[tokio::test]
async fn a_no_show_is_released_once_and_watchers_see_held_change() {
    let server = TestServer::start().await;
    register(&server, reservable_garage("g1", 1)).await;
    let now = server.now();
    report_ok(&server, snapshot("g1", 1, 10, now)).await;
    let r = reserve(
        &server,
        "alice",
        reservation_request("g1", after(now, 600), after(now, 4200), "A1", "k"),
    )
    .await
    .unwrap();
    assert_eq!(
        held_standard(&availability_of(&server, "g1").await).0,
        0,
        "not holding before its start"
    );
    let mut watch = watch_ids(&server, &["g1"]).await.unwrap();
    read_snapshot(&mut watch).await;
    server.advance(600);
    eventually("the window starts holding a space", || async {
        (held_standard(&availability_of(&server, "g1").await) == (1, 9)).then_some(())
    })
    .await;
    // Watchers are told: an update shows the hold.
    loop {
        let update = next_update(&mut watch).await;
        if held_standard(&update) == (1, 9) {
            break;
        }
    }
    server.advance(15 * 60);
    let expired = eventually("the no-show is released", || async {
        let r = get(&server, &r.id, &driver_token("alice")).await.unwrap();
        (state_of(&r) == pb::ReservationState::NoShow).then_some(r)
    })
    .await;
    assert!(expired.changed_at.is_some());
    assert_eq!(
        held_standard(&availability_of(&server, "g1").await),
        (0, 10)
    );
    // And watchers are told the space is back.
    loop {
        let update = next_update(&mut watch).await;
        if held_standard(&update) == (0, 10) {
            break;
        }
    }
    // Its slots are free again: another driver can book the rest of the window.
    let rest = server.now();
    reserve(
        &server,
        "bob",
        reservation_request("g1", rest, after(rest, 1800), "B1", "k"),
    )
    .await
    .unwrap();
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("citypark_reservations_total{result=\"no_show\""),
        "{metrics}"
    );
}

/// Creates `racers` reservations at once, from as many drivers, for one window at a
/// car park with quota `quota`, over the given servers in turn; returns the outcomes.
async fn race(servers: &[&TestServer], car_park: &str, racers: usize) -> HashMap<String, usize> {
    let now = servers[0].now();
    let (start, end) = (after(now, 3600), after(now, 7200));
    let mut clients = Vec::new();
    for s in servers {
        clients.push(s.reservations().await);
    }
    let tasks: Vec<_> = (0..racers)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let request = reservation_request(car_park, start, end, &format!("R{i:05}"), "race");
            let token = driver_token(&format!("driver-{i}"));
            tokio::spawn(async move { client.create_reservation(authed(request, &token)).await })
        })
        .collect();
    tally(tasks, "fully booked").await
}

/// Creates run at once, counted by outcome: "reserved", `refusal` (a
/// FAILED_PRECONDITION saying so), or any other code and message.
async fn tally(
    tasks: Vec<
        tokio::task::JoinHandle<
            Result<tonic::Response<pb::CreateReservationResponse>, tonic::Status>,
        >,
    >,
    refusal: &str,
) -> HashMap<String, usize> {
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        let key = match t.await.unwrap() {
            Ok(_) => "reserved".to_owned(),
            Err(s) if s.code() == Code::FailedPrecondition && s.message().contains(refusal) => {
                refusal.to_owned()
            }
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    outcomes
}

async fn assert_race(servers: &[&TestServer]) {
    register(servers[0], reservable_garage("race", 20)).await;
    for s in servers {
        eventually("the car park reached every instance", || async {
            car_park_of(s, "race").await.ok().map(|_| ())
        })
        .await;
    }
    let outcomes = race(servers, "race", 1_000).await;
    let expected: HashMap<String, usize> = [
        ("reserved".to_owned(), 20),
        ("fully booked".to_owned(), 980),
    ]
    .into();
    assert_eq!(
        outcomes, expected,
        "exactly the quota, and contention is never an error"
    );
    let now = servers[0].now();
    for s in servers {
        let remaining = eventually("every instance sees the full slots", || async {
            let r = calendar(s, "race", after(now, 3600), after(now, 7200)).await;
            r.iter().all(|n| *n == 0).then_some(r)
        })
        .await;
        assert_eq!(remaining.len(), 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_drivers_race_for_twenty_spaces_on_the_embedded_store() {
    let server = TestServer::start().await;
    assert_race(&[&server]).await;
}

/// One driver creates 24 reservations at once at 8 car parks in two regions, over
/// the given servers in turn: exactly its limit (3) are made, the rest refused with
/// the limit named, and a create refused for a full car park gives its place back.
async fn one_driver_at_many_car_parks_at_once(servers: &[&TestServer]) {
    let ids: Vec<String> = (0..8).map(|i| format!("lim-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let mut park = reservable_garage(id, 5);
        if i % 2 == 1 {
            park.region = "yantai".into();
        }
        register(servers[0], park).await;
    }
    register(servers[0], reservable_garage("lim-full", 1)).await;
    for s in servers {
        for id in ids.iter().chain([&"lim-full".to_owned()]) {
            eventually("the car park reached every instance", || async {
                car_park_of(s, id).await.ok().map(|_| ())
            })
            .await;
        }
    }
    let mut clients = Vec::new();
    for s in servers {
        clients.push(s.reservations().await);
    }
    let now = servers[0].now();
    let token = driver_token("one-driver");
    // A refusal for a full car park takes no place under the limit.
    let full = reservation_request(
        "lim-full",
        after(now, 3600),
        after(now, 7200),
        "鲁B00001",
        "f",
    );
    clients[0]
        .clone()
        .create_reservation(authed(full.clone(), &driver_token("another-driver")))
        .await
        .expect("the one space");
    let refused = clients[0]
        .clone()
        .create_reservation(authed(full, &token))
        .await
        .expect_err("a car park with no quota is full");
    assert!(refused.message().contains("fully booked"), "{refused:?}");
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let request = reservation_request(
                &ids[i % ids.len()],
                after(now, 3600 + 3600 * (i as i64 / 8)),
                after(now, 7200 + 3600 * (i as i64 / 8)),
                "鲁B00001",
                &format!("k{i}"),
            );
            let token = token.clone();
            tokio::spawn(async move { client.create_reservation(authed(request, &token)).await })
        })
        .collect();
    let outcomes = tally(tasks, "at most 3").await;
    let expected: HashMap<String, usize> =
        [("reserved".to_owned(), 3), ("at most 3".to_owned(), 21)].into();
    assert_eq!(
        outcomes, expected,
        "one driver holds at most 3, however it races"
    );
    for s in servers {
        let held = eventually("every instance sees the driver's reservations", || async {
            let mine = listed(s, &token).await;
            (mine.len() == 3).then_some(mine)
        })
        .await;
        assert!(
            held.iter()
                .all(|r| state_of(r) == pb::ReservationState::Reserved)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_driver_racing_at_many_car_parks_holds_at_most_its_limit_on_the_embedded_store() {
    let server = TestServer::start().await;
    one_driver_at_many_car_parks_at_once(&[&server]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_driver_racing_on_the_durable_store_holds_at_most_its_limit_after_a_restart() {
    let (dir, clock) = (tempfile::tempdir().unwrap(), shared_clock());
    let server = TestServer::start_durable_with(dir.path(), clock.clone(), |_| {}).await;
    one_driver_at_many_car_parks_at_once(&[&server]).await;
    server.stop().await.unwrap();
    // Started again on its files, it still counts the driver's three.
    let server = TestServer::start_durable_with(dir.path(), clock, |_| {}).await;
    let now = server.now();
    let request = reservation_request(
        "lim-0",
        after(now, 4 * 3600),
        after(now, 5 * 3600),
        "鲁B00001",
        "k99",
    );
    let refused = server
        .reservations()
        .await
        .create_reservation(authed(request, &driver_token("one-driver")))
        .await
        .expect_err("a fourth after the restart");
    assert!(refused.message().contains("at most 3"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_driver_racing_over_two_instances_holds_at_most_its_limit() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b, _, _) = two_instances(&redis.url()).await;
    one_driver_at_many_car_parks_at_once(&[&a, &b]).await;
}

fn shared_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(start_time()))
}

/// Two instances serving one city on the Redis at `url`, with one clock; and the key
/// prefix, for a third to join them.
async fn two_instances(url: &str) -> (TestServer, TestServer, String, Arc<ManualClock>) {
    let (prefix, clock) = (key_prefix(), shared_clock());
    let a = TestServer::start_redis_with(url, &prefix, clock.clone(), |_| {}).await;
    let b = TestServer::start_redis_with(url, &prefix, clock.clone(), |_| {}).await;
    (a, b, prefix, clock)
}

/// The reservations `credential` (a driver's token or an operator's key) lists on
/// `server`, a first page of up to 500.
async fn listed(server: &TestServer, credential: &str) -> Vec<pb::Reservation> {
    server
        .reservations()
        .await
        .list_reservations(authed(
            pb::ListReservationsRequest {
                page_size: 500,
                ..Default::default()
            },
            credential,
        ))
        .await
        .unwrap()
        .into_inner()
        .reservations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_drivers_race_over_two_instances_on_one_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b, prefix, _) = two_instances(&redis.url()).await;
    assert_race(&[&a, &b]).await;
    // A new instance loads every reservation.
    let c = TestServer::start_redis_with(&redis.url(), &prefix, shared_clock(), |_| {}).await;
    assert_eq!(listed(&c, OPERATOR_A.1).await.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_drivers_race_over_two_instances_on_a_redis_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let (a, b, _, _) = two_instances(&cluster.url()).await;
    assert_race(&[&a, &b]).await;
}

#[tokio::test]
async fn a_retry_through_another_instance_returns_the_same_reservation() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b, prefix, _) = two_instances(&redis.url()).await;
    register(&a, reservable_garage("g1", 3)).await;
    eventually("b holds the car park", || async {
        car_park_of(&b, "g1").await.ok()
    })
    .await;
    let now = a.now();
    let request = reservation_request("g1", after(now, 3600), after(now, 5400), "A1", "once");
    let first = reserve(&a, "alice", request.clone()).await.unwrap();
    // Instance a is gone before the driver saw its answer; the app retries through b,
    // at once (b may not have followed the change yet: the compare-and-set settles it).
    a.stop().await.unwrap();
    let retried = reserve(&b, "alice", request).await.unwrap();
    assert_eq!(retried.id, first.id);
    assert_eq!(
        listed(&b, &driver_token("alice")).await.len(),
        1,
        "never a second one"
    );
    // The instance comes back (a restart: a new process on the same Redis) and serves
    // the reservation as it was.
    let restarted =
        TestServer::start_redis_with(&redis.url(), &prefix, shared_clock(), |_| {}).await;
    let seen = get(&restarted, &first.id, &driver_token("alice"))
        .await
        .unwrap();
    assert_eq!(seen, first);
}

/// Reads the region's change stream (`XRANGE` on the node holding it) and counts, per
/// reservation id, the changes that moved it into NO_SHOW, comparing each reservation
/// entry with the one before it.
async fn no_show_transitions(
    conn: &mut impl redis::aio::ConnectionLike,
    prefix: &str,
) -> HashMap<String, usize> {
    // The key schema of src/store/redis/keys.rs; the stream is far below its cap here.
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{prefix}:{{qingdao}}:changes"))
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    let mut last: HashMap<String, String> = HashMap::new();
    let mut moves: HashMap<String, usize> = HashMap::new();
    for entry in reply.ids {
        let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
        if field("k") != "reservation" || field("op") != "put" {
            continue;
        }
        let stored = field("reservations");
        let r: serde_json::Value = serde_json::from_str(stored.split_once(':').unwrap().1).unwrap();
        let (id, state) = (
            r["id"].as_str().unwrap(),
            r["state"].as_str().unwrap().to_owned(),
        );
        let before = last.insert(id.to_owned(), state.clone());
        if state == "no_show" && before.as_deref() != Some("no_show") {
            *moves.entry(id.to_owned()).or_default() += 1;
        }
    }
    moves
}

/// Two instances on `url` sweep 40 overdue reservations at once; returns how often
/// each moved to NO_SHOW, per the change stream read through `conn`.
async fn expire_on_two_instances(
    url: &str,
    conn: &mut impl redis::aio::ConnectionLike,
) -> HashMap<String, usize> {
    let (a, b, prefix, clock) = two_instances(url).await;
    let car_parks = ["e1", "e2", "e3", "e4"];
    for id in car_parks {
        register(&a, reservable_garage(id, 10)).await;
    }
    let now = a.now();
    let mut made = Vec::new();
    for i in 0..40 {
        let car_park = car_parks[i % car_parks.len()];
        let server = if i % 2 == 0 { &a } else { &b };
        eventually("the car park reached the instance", || async {
            car_park_of(server, car_park).await.ok()
        })
        .await;
        let request = reservation_request(
            car_park,
            after(now, 600),
            after(now, 4200),
            &format!("E{i:03}"),
            "k",
        );
        made.push(
            reserve(server, &format!("driver-{i}"), request)
                .await
                .unwrap()
                .id,
        );
    }
    // Past every no-show time at once: both instances' sweepers find all 40 overdue.
    clock.advance(std::time::Duration::from_secs(600 + 15 * 60 + 1));
    for server in [&a, &b] {
        eventually(
            "every reservation is a no-show on both instances",
            || async {
                for id in &made {
                    let r = get(server, id, OPERATOR_A.1).await.ok()?;
                    if state_of(&r) != pb::ReservationState::NoShow {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
    }
    no_show_transitions(conn, &prefix).await
}

fn each_once(moves: &HashMap<String, usize>) {
    assert_eq!(moves.len(), 40, "{moves:?}");
    assert!(
        moves.values().all(|n| *n == 1),
        "each expired exactly once: {moves:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_instances_each_no_show_expires_exactly_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    each_once(&expire_on_two_instances(&redis.url(), &mut conn).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_instances_on_a_cluster_each_no_show_expires_exactly_once() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let nodes: Vec<String> = cluster
        .ports()
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}/"))
        .collect();
    let mut conn = redis::cluster::ClusterClient::new(nodes)
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    each_once(&expire_on_two_instances(&cluster.url(), &mut conn).await);
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_retried_into_the_same_reservation() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b, _, _) = two_instances(&redis.url()).await;
    register(&a, reservable_garage("g1", 3)).await;
    eventually("b holds the car park", || async {
        car_park_of(&b, "g1").await.ok()
    })
    .await;
    let now = a.now();
    let request = reservation_request("g1", after(now, 3600), after(now, 5400), "A1", "lost");
    // Instance a gives up on the answer; Redis makes the write when the pause ends.
    // The driver's app only sees an error.
    pause_writes(&redis.url(), 3_000).await;
    let lost = reserve(&a, "alice", request.clone()).await.unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable, "{lost:?}");
    assert!(lost.message().contains("may have been made"), "{lost:?}");
    // The app retries through the other instance, with the same key, until it gets an
    // answer: one reservation, never a second.
    let retried = eventually("the retry is answered", || async {
        reserve(&b, "alice", request.clone()).await.ok()
    })
    .await;
    for server in [&a, &b] {
        let mine = eventually("both instances list it", || async {
            let mine = listed(server, &driver_token("alice")).await;
            (!mine.is_empty()).then_some(mine)
        })
        .await;
        assert_eq!(mine.len(), 1, "exactly one reservation: {mine:?}");
        assert_eq!(mine[0].id, retried.id);
    }
}
#[tokio::test]
async fn an_operator_checks_in_and_out_only_at_its_own_car_parks() {
    let server = TestServer::start().await;
    register(&server, reservable_garage("g1", 2)).await;
    let now = server.now();
    let r = reserve(
        &server,
        "alice",
        reservation_request("g1", now, after(now, 3600), "A1", "k"),
    )
    .await
    .unwrap();
    let mut client = server.reservations().await;
    let check_in = |credential: &str| authed(pb::CheckInRequest { id: r.id.clone() }, credential);
    let other = client.check_in(check_in(OPERATOR_B.1)).await.unwrap_err();
    assert_eq!(
        other.code(),
        Code::NotFound,
        "another operator learns nothing"
    );
    let bob = client
        .check_in(check_in(&driver_token("bob")))
        .await
        .unwrap_err();
    assert_eq!(bob.code(), Code::NotFound);
    let done = client
        .check_in(check_in(OPERATOR_A.1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state_of(&done.reservation.unwrap()),
        pb::ReservationState::CheckedIn
    );
    let again = client.check_in(check_in(OPERATOR_A.1)).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(
        again.message().contains("CHECKED_IN"),
        "names the state: {}",
        again.message()
    );
    // The operator may not cancel for the driver; the driver checks out.
    let cancel = client
        .cancel_reservation(authed(
            pb::CancelReservationRequest {
                id: r.id.clone(),
                reason: String::new(),
            },
            OPERATOR_A.1,
        ))
        .await
        .unwrap_err();
    assert_eq!(cancel.code(), Code::PermissionDenied);
    let out = client
        .check_out(authed(
            pb::CheckOutRequest { id: r.id.clone() },
            &driver_token("alice"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state_of(&out.reservation.unwrap()),
        pb::ReservationState::Completed
    );
}
