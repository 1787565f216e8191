//! Shared parking through the gRPC API: offers, search, bookings, an owner's changes
//! that strand bookings, masked plates, no-shows, a finished booking read from
//! history, and no double booking under a
//! 200-way race on the embedded store, on two instances over one Redis, and on a
//! Redis Cluster.

use std::collections::HashMap;

use citypark::pb;
use tonic::Code;

use crate::{
    redis_support::{RedisCluster, RedisServer, key_prefix},
    support::*,
};

/// Every day of the week, all day.
fn always() -> Vec<pb::WeeklyPeriod> {
    (1..=7)
        .map(|weekday| pb::WeeklyPeriod {
            weekday,
            start_minute: 0,
            end_minute: 1440,
        })
        .collect()
}

fn shared_offer(id: &str, spaces: i32, north_m: f64) -> pb::SharedOffer {
    let (latitude, longitude) = offset(north_m, 0.0);
    pb::SharedOffer {
        id: id.into(),
        region: "qingdao".into(),
        location: Some(pb::LatLng {
            latitude,
            longitude,
        }),
        address: "Compound 3, Xianggang Rd".into(),
        spaces,
        time_zone: "Asia/Shanghai".into(),
        schedule: always(),
        hourly_rate_minor: 400,
        cap_per_booking_minor: 2_000,
        ..Default::default()
    }
}

async fn offer(
    server: &TestServer,
    host: &str,
    o: pb::SharedOffer,
) -> Result<pb::SharedOffer, tonic::Status> {
    server
        .shared()
        .await
        .offer_space(authed(
            pb::OfferSpaceRequest { offer: Some(o) },
            &driver_token(host),
        ))
        .await
        .map(|r| r.into_inner().offer.unwrap())
}

fn book_request(
    offer: &str,
    from: i64,
    to: i64,
    plate: &str,
    key: &str,
    now: citypark::domain::Timestamp,
) -> pb::BookOfferRequest {
    pb::BookOfferRequest {
        offer_id: offer.into(),
        start_time: Some(pb_time(after(now, from))),
        end_time: Some(pb_time(after(now, to))),
        plate: plate.into(),
        idempotency_key: key.into(),
    }
}

async fn book(
    server: &TestServer,
    driver: &str,
    r: pb::BookOfferRequest,
) -> Result<pb::SharedBooking, tonic::Status> {
    server
        .shared()
        .await
        .book_offer(authed(r, &driver_token(driver)))
        .await
        .map(|r| r.into_inner().booking.unwrap())
}

async fn get(server: &TestServer, who: &str, id: &str) -> Result<pb::SharedBooking, tonic::Status> {
    server
        .shared()
        .await
        .get_booking(authed(
            pb::GetBookingRequest { id: id.into() },
            &driver_token(who),
        ))
        .await
        .map(|r| r.into_inner().booking.unwrap())
}

fn state(b: &pb::SharedBooking) -> pb::BookingState {
    pb::BookingState::try_from(b.state).unwrap()
}

/// A city for offers to live in: the region's first car park.
async fn city(server: &TestServer) {
    register(server, garage_north("g0", 10.0)).await;
}

#[tokio::test]
async fn a_host_offers_a_driver_finds_books_and_parks_and_the_host_sees_a_masked_plate() {
    let server = TestServer::start().await;
    city(&server).await;
    let now = server.now();
    let o = offer(&server, "hana", shared_offer("home-1", 1, 300.0))
        .await
        .unwrap();
    assert_eq!(o.host_id, "hana");
    assert_eq!(o.state, pb::OfferState::Active as i32);
    // A made id when none is given.
    let made = offer(&server, "hana", shared_offer("", 1, 400.0))
        .await
        .unwrap();
    assert!(
        made.id.starts_with('o') && made.id.len() == 17,
        "{}",
        made.id
    );
    // Someone else's id is taken.
    let err = offer(&server, "ivan", shared_offer("home-1", 1, 300.0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let found = server
        .shared()
        .await
        .search_offers(authed(
            pb::SearchOffersRequest {
                location: Some(here()),
                radius_m: 1_000.0,
                start_time: Some(pb_time(after(now, 3600))),
                end_time: Some(pb_time(after(now, 7200))),
                ..Default::default()
            },
            &driver_token("dana"),
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    let ids: Vec<&str> = found
        .iter()
        .map(|r| r.offer.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(ids, ["home-1", made.id.as_str()], "nearest first");
    assert_eq!(found[0].price_minor, 400);
    assert!(
        (found[0].distance_m - 300.0).abs() < 2.0,
        "{}",
        found[0].distance_m
    );

    let b = book(
        &server,
        "dana",
        book_request("home-1", 3600, 7200, "鲁B 12345", "k1", now),
    )
    .await
    .unwrap();
    assert_eq!(state(&b), pb::BookingState::Booked);
    assert_eq!(b.plate, "鲁B12345");
    assert_eq!(b.price_minor, 400);
    // The host sees it with the plate masked; nobody else sees it at all.
    assert_eq!(get(&server, "hana", &b.id).await.unwrap().plate, "*****45");
    assert_eq!(
        get(&server, "ivan", &b.id).await.unwrap_err().code(),
        Code::NotFound
    );
    // The window is taken: a search for it finds only the other offer.
    let again = book(
        &server,
        "erik",
        book_request("home-1", 5400, 9000, "鲁B22222", "k", now),
    )
    .await
    .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(
        again.message().contains("fully booked"),
        "{}",
        again.message()
    );
    // Touching its end is fine; a retry is the same booking.
    book(
        &server,
        "erik",
        book_request("home-1", 7200, 9000, "鲁B22222", "k2", now),
    )
    .await
    .unwrap();
    let retry = book(
        &server,
        "dana",
        book_request("home-1", 3600, 7200, "鲁B12345", "k1", now),
    )
    .await
    .unwrap();
    assert_eq!(retry.id, b.id);
    // Windows off the quarter hour are refused naming the field.
    let err = book(
        &server,
        "erik",
        book_request("home-1", 3700, 7200, "鲁B22222", "k3", now),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("start_time"), "{}", err.message());

    // The driver's app checks in and out.
    server.advance(3600);
    let mut shared = server.shared().await;
    let token = driver_token("dana");
    let b = shared
        .check_in(authed(
            pb::CheckInBookingRequest { id: b.id.clone() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .booking
        .unwrap();
    assert_eq!(state(&b), pb::BookingState::CheckedIn);
    let b = shared
        .check_out(authed(
            pb::CheckOutBookingRequest { id: b.id.clone() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .booking
        .unwrap();
    assert_eq!(state(&b), pb::BookingState::Completed);
    let mine = shared
        .list_my_bookings(authed(
            pb::ListMyBookingsRequest::default(),
            &driver_token("hana"),
        ))
        .await
        .unwrap()
        .into_inner()
        .bookings;
    assert_eq!(mine.len(), 2, "the host lists its offer's bookings");
    assert!(mine.iter().all(|b| b.plate.starts_with("*****")));
}

#[tokio::test]
async fn an_owner_s_change_that_strands_bookings_is_refused_or_cancels_them() {
    let server = TestServer::start().await;
    city(&server).await;
    let now = server.now();
    offer(&server, "hana", shared_offer("pool", 2, 300.0))
        .await
        .unwrap();
    let a = book(
        &server,
        "a",
        book_request("pool", 3600, 7200, "鲁B11111", "k", now),
    )
    .await
    .unwrap();
    let b = book(
        &server,
        "b",
        book_request("pool", 5400, 9000, "鲁B22222", "k", now),
    )
    .await
    .unwrap();
    let mut shared = server.shared().await;
    let host = driver_token("hana");
    let fewer = pb::SharedOffer {
        spaces: 1,
        ..shared_offer("pool", 1, 300.0)
    };
    let err = shared
        .update_offer(authed(
            pb::UpdateOfferRequest {
                offer: Some(fewer.clone()),
                ..Default::default()
            },
            &host,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains(&b.id) && !err.message().contains(&a.id),
        "{}",
        err.message()
    );
    // Another host cannot touch it.
    let err = shared
        .update_offer(authed(
            pb::UpdateOfferRequest {
                offer: Some(fewer.clone()),
                ..Default::default()
            },
            &driver_token("ivan"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let done = shared
        .update_offer(authed(
            pb::UpdateOfferRequest {
                offer: Some(fewer),
                cancel_bookings: true,
                reason: "one space is being repaired".into(),
            },
            &host,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.cancelled_booking_ids, std::slice::from_ref(&b.id));
    assert_eq!(done.offer.unwrap().spaces, 1);
    let seen = get(&server, "b", &b.id).await.unwrap();
    assert_eq!(state(&seen), pb::BookingState::Cancelled);
    assert_eq!(seen.cancelled_by, pb::CancelledBy::Host as i32);
    assert_eq!(seen.reason, "one space is being repaired");
    // Its window is free again for one more (the pool has one space now).
    book(
        &server,
        "c",
        book_request("pool", 7200, 9000, "鲁B33333", "k", now),
    )
    .await
    .unwrap();
    // Withdrawn with cancel_bookings: every booked one is cancelled.
    let gone = shared
        .withdraw_offer(authed(
            pb::WithdrawOfferRequest {
                id: "pool".into(),
                cancel_bookings: true,
                reason: "moving".into(),
            },
            &host,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.cancelled_booking_ids.len(), 2);
    assert_eq!(gone.offer.unwrap().state, pb::OfferState::Withdrawn as i32);
    let err = book(
        &server,
        "d",
        book_request("pool", 10800, 12600, "鲁B44444", "k", now),
    )
    .await
    .unwrap_err();
    assert!(err.message().contains("withdrawn"), "{}", err.message());
}

#[tokio::test]
async fn a_booking_not_checked_in_is_a_no_show_and_frees_its_window() {
    let server = TestServer::start().await;
    city(&server).await;
    let now = server.now();
    offer(&server, "hana", shared_offer("home", 1, 300.0))
        .await
        .unwrap();
    let b = book(
        &server,
        "a",
        book_request("home", 900, 4500, "鲁B11111", "k", now),
    )
    .await
    .unwrap();
    server.advance(900 + 15 * 60 + 1);
    let expired = eventually("the sweeper makes it a no-show", || async {
        let b = get(&server, "a", &b.id).await.ok()?;
        (state(&b) == pb::BookingState::NoShow).then_some(b)
    })
    .await;
    assert_eq!(expired.id, b.id);
    // The rest of its window can be booked again.
    book(
        &server,
        "c",
        book_request("home", 2700, 4500, "鲁B33333", "k", now),
    )
    .await
    .unwrap();
}

/// 200 drivers at once for overlapping windows of an offer with `spaces`, over the
/// servers in turn; returns the outcomes.
async fn race(servers: &[&TestServer], offer_id: &str, racers: usize) -> HashMap<String, usize> {
    let now = servers[0].now();
    let mut clients = Vec::new();
    for s in servers {
        clients.push(s.shared().await);
    }
    let tasks: Vec<_> = (0..racers)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            // Every window covers 2h-3h; they differ around it.
            let from = 3600 + (i as i64 % 4) * 900;
            let request = book_request(
                offer_id,
                from,
                3 * 3600 + (i as i64 % 3) * 900,
                &format!("R{i:05}"),
                "race",
                now,
            );
            let token = driver_token(&format!("driver-{i}"));
            tokio::spawn(async move { client.book_offer(authed(request, &token)).await })
        })
        .collect();
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        let key = match t.await.unwrap() {
            Ok(_) => "booked".to_owned(),
            Err(s)
                if s.code() == Code::FailedPrecondition && s.message().contains("fully booked") =>
            {
                "fully booked".to_owned()
            }
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    outcomes
}

async fn assert_race(servers: &[&TestServer]) {
    city(servers[0]).await;
    offer(servers[0], "hana", shared_offer("single", 1, 300.0))
        .await
        .unwrap();
    offer(servers[0], "hana", shared_offer("pool-5", 5, 400.0))
        .await
        .unwrap();
    for s in servers {
        eventually("the offers reached every instance", || async {
            let mine = s
                .shared()
                .await
                .list_my_offers(authed(
                    pb::ListMyOffersRequest::default(),
                    &driver_token("hana"),
                ))
                .await
                .ok()?
                .into_inner()
                .offers;
            (mine.len() == 2).then_some(())
        })
        .await;
    }
    for (offer_id, spaces) in [("single", 1), ("pool-5", 5)] {
        let outcomes = race(servers, offer_id, 200).await;
        let expected: HashMap<String, usize> = [
            ("booked".to_owned(), spaces),
            ("fully booked".to_owned(), 200 - spaces),
        ]
        .into();
        assert_eq!(
            outcomes, expected,
            "{offer_id}: exactly its spaces, and contention is never an error"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_drivers_race_for_one_space_and_a_pool_of_five_on_the_embedded_store() {
    let server = TestServer::start().await;
    assert_race(&[&server]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_drivers_race_over_two_instances_on_one_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (prefix, clock) = (
        key_prefix(),
        std::sync::Arc::new(citypark::service::ManualClock::new(start_time())),
    );
    let a = TestServer::start_redis_with(&redis.url(), &prefix, clock.clone(), |_| {}).await;
    let b = TestServer::start_redis_with(&redis.url(), &prefix, clock.clone(), |_| {}).await;
    assert_race(&[&a, &b]).await;
    // A new instance loads the offers and bookings.
    let c = TestServer::start_redis_with(&redis.url(), &prefix, clock, |_| {}).await;
    let hosted = c
        .shared()
        .await
        .list_my_bookings(authed(
            pb::ListMyBookingsRequest::default(),
            &driver_token("hana"),
        ))
        .await
        .unwrap()
        .into_inner()
        .bookings;
    assert_eq!(hosted.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_drivers_race_over_two_instances_on_a_redis_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let (prefix, clock) = (
        key_prefix(),
        std::sync::Arc::new(citypark::service::ManualClock::new(start_time())),
    );
    let a = TestServer::start_redis_with(&cluster.url(), &prefix, clock.clone(), |_| {}).await;
    let b = TestServer::start_redis_with(&cluster.url(), &prefix, clock, |_| {}).await;
    assert_race(&[&a, &b]).await;
}

#[tokio::test]
async fn find_nearby_ranks_free_shared_spaces_with_car_parks_when_asked() {
    let server = TestServer::start().await;
    city(&server).await;
    let now = server.now();
    report_ok(&server, snapshot("g0", 1, 40, now)).await;
    register(&server, garage_north("g5", 500.0)).await;
    report_ok(&server, snapshot("g5", 1, 40, now)).await;
    offer(&server, "hana", shared_offer("s3", 1, 300.0))
        .await
        .unwrap();
    offer(&server, "hana", shared_offer("s4", 1, 400.0))
        .await
        .unwrap();
    // s4 is taken for part of the stay.
    book(
        &server,
        "a",
        book_request("s4", 4500, 5400, "鲁B11111", "k", now),
    )
    .await
    .unwrap();
    let query = |include_shared: bool, kinds: Vec<i32>, stay: bool| pb::FindNearbyRequest {
        location: Some(here()),
        radius_m: 1_000.0,
        kinds,
        include_shared,
        // Off the quarter hours: the quarters it touches are what must be free.
        stay: stay.then(|| pb::StayWindow {
            start: Some(pb_time(after(now, 3600 + 60))),
            end: Some(pb_time(after(now, 7200 - 60))),
        }),
        ..Default::default()
    };
    let ids = |r: &[pb::NearbyCarPark]| -> Vec<String> {
        r.iter()
            .map(|n| {
                if n.car_park_id.is_empty() {
                    format!("offer:{}", n.offer_id)
                } else {
                    n.car_park_id.clone()
                }
            })
            .collect()
    };
    let mut availability = server.availability().await;
    let with = availability
        .find_nearby(query(true, vec![], true))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(ids(&with), ["g0", "offer:s3", "g5"]);
    let s3 = &with[1];
    assert_eq!(s3.kind, pb::CarParkKind::SharedPrivate as i32);
    assert_eq!((s3.available, s3.capacity), (1, 1));
    assert_eq!(s3.price_minor, Some(400), "one hour at 4.00");
    let without = availability
        .find_nearby(query(false, vec![], true))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(ids(&without), ["g0", "g5"]);
    let garages = availability
        .find_nearby(query(true, vec![pb::CarParkKind::Garage as i32], true))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(ids(&garages), ["g0", "g5"]);
    let err = availability
        .find_nearby(query(true, vec![], false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("stay"), "{}", err.message());
}

/// A finished booking leaves live state past the hot window and is read from history:
/// by its driver and its host (GetBooking), and once in the driver's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_booking_moves_to_history_and_is_read_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let location = citypark::history::Location::Sqlite(dir.path().join("history.sqlite3"));
    let history = citypark::history::SqlHistory::open(&location, citypark::history::Migrate::Auto)
        .await
        .unwrap();
    let backend = citypark::app::Backend::embedded(4096).with_history(std::sync::Arc::new(history));
    let hot = std::time::Duration::from_secs(60);
    let server = TestServer::start_on(backend, |s| {
        s.history = citypark::service::HistorySettings {
            hot_window: hot,
            every: std::time::Duration::from_millis(20),
            tombstone_grace: std::time::Duration::ZERO,
            ..Default::default()
        }
    })
    .await;
    city(&server).await;
    let now = server.now();
    offer(&server, "hana", shared_offer("home", 2, 300.0))
        .await
        .unwrap();
    let done = book(
        &server,
        "a",
        book_request("home", 900, 4500, "鲁B11111", "k1", now),
    )
    .await
    .unwrap();
    let open = book(
        &server,
        "a",
        book_request("home", 86_400, 90_000, "鲁B11111", "k2", now),
    )
    .await
    .unwrap();
    // The first is a no-show 15 minutes into its window, finished at the window's end;
    // past that and the hot window it moves.
    server.advance(900 + 15 * 60 + 1);
    eventually("the sweeper makes it a no-show", || async {
        let b = get(&server, "a", &done.id).await.ok()?;
        (state(&b) == pb::BookingState::NoShow).then_some(())
    })
    .await;
    server.advance(4500 - (900 + 15 * 60 + 1) + hot.as_secs() + 1);
    let id = citypark::domain::BookingId::parse(&done.id).unwrap();
    eventually("the finished booking left live state", || async {
        server.backend.engine.booking(&id).is_none().then_some(())
    })
    .await;
    assert!(
        server
            .backend
            .engine
            .booking(&citypark::domain::BookingId::parse(&open.id).unwrap())
            .is_some(),
        "the booking still ahead stays live"
    );
    for who in ["a", "hana"] {
        let b = get(&server, who, &done.id).await.unwrap();
        assert_eq!(state(&b), pb::BookingState::NoShow, "read by {who}");
    }
    assert_eq!(
        get(&server, "b", &done.id).await.unwrap_err().code(),
        Code::NotFound,
        "nobody else's to read"
    );
    let listed = server
        .shared()
        .await
        .list_my_bookings(authed(
            pb::ListMyBookingsRequest {
                page_size: 1,
                ..Default::default()
            },
            &driver_token("a"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.bookings.len(), 1);
    assert!(!listed.next_page_token.is_empty());
    let rest = server
        .shared()
        .await
        .list_my_bookings(authed(
            pb::ListMyBookingsRequest {
                page_size: 1,
                page_token: listed.next_page_token,
                ..Default::default()
            },
            &driver_token("a"),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut seen: Vec<String> = listed
        .bookings
        .into_iter()
        .chain(rest.bookings)
        .map(|b| b.id)
        .collect();
    seen.sort();
    let mut both = vec![done.id.clone(), open.id.clone()];
    both.sort();
    assert_eq!(seen, both, "live and history as one list, each once");
    assert!(rest.next_page_token.is_empty());
}
