//! Status with the passing of time (hand clock): NO_DATA, OPEN, STALE, CLOSED, and the sweeper.

use crate::support::*;
use citypark::pb::{self, CarParkStatus};

#[tokio::test]
async fn status_goes_from_no_data_to_open_to_stale_and_back() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    let silent = availability_of(&server, "g1").await;
    assert_eq!(silent.status(), CarParkStatus::NoData);
    assert_eq!((silent.observed_at, silent.data_age_seconds), (None, None));
    assert_eq!(silent.last_sequence, 0);
    assert_eq!(
        free_standard(&silent),
        100,
        "free = capacity when nothing is known"
    );

    report_ok(&server, snapshot("g1", 1, 42, server.now())).await;
    assert_eq!(
        availability_of(&server, "g1").await.status(),
        CarParkStatus::Open
    );

    // Three report intervals of 60 s: still fresh at 180 s, stale after.
    server.advance(180);
    let fresh = availability_of(&server, "g1").await;
    assert_eq!(
        (fresh.status(), fresh.data_age_seconds),
        (CarParkStatus::Open, Some(180))
    );
    server.advance(1);
    let stale = availability_of(&server, "g1").await;
    assert_eq!(
        (stale.status(), stale.data_age_seconds),
        (CarParkStatus::Stale, Some(181))
    );
    assert_eq!(free_standard(&stale), 42, "the old numbers are kept");

    report_ok(&server, snapshot("g1", 2, 41, server.now())).await;
    let again = availability_of(&server, "g1").await;
    assert_eq!(
        (again.status(), again.data_age_seconds),
        (CarParkStatus::Open, Some(0))
    );
}

#[tokio::test]
async fn the_staleness_window_follows_the_report_interval() {
    let server = TestServer::start().await;
    let slow = pb::CarPark {
        report_interval_seconds: 600,
        ..garage("slow", 36.067, 120.383)
    };
    register(&server, slow).await;
    report_ok(&server, snapshot("slow", 1, 42, server.now())).await;
    server.advance(1800);
    assert_eq!(
        availability_of(&server, "slow").await.status(),
        CarParkStatus::Open
    );
    server.advance(1);
    assert_eq!(
        availability_of(&server, "slow").await.status(),
        CarParkStatus::Stale
    );
}

#[tokio::test]
async fn stale_car_parks_are_left_out_of_find_nearby_unless_included() {
    let server = TestServer::start().await;
    register(&server, garage_north("old", 100.0)).await;
    register(&server, garage_north("new", 200.0)).await;
    report_ok(&server, snapshot("old", 1, 10, server.now())).await;
    server.advance(600);
    report_ok(&server, snapshot("new", 1, 20, after(server.now(), -5))).await;

    assert_eq!(ids_of(&find(&server, near_here()).await), ["new"]);
    let all = find(
        &server,
        pb::FindNearbyRequest {
            include_stale: true,
            ..near_here()
        },
    )
    .await;
    assert_eq!(ids_of(&all), ["old", "new"]);
    let old = &all[0];
    assert_eq!(
        (old.status(), old.data_age_seconds),
        (CarParkStatus::Stale, Some(600))
    );
    assert_eq!(all[0].available, 10);
    let new = &all[1];
    assert_eq!(
        (new.status(), new.data_age_seconds),
        (CarParkStatus::Open, Some(5))
    );
}

#[tokio::test]
async fn a_car_park_is_closed_outside_its_opening_hours() {
    // Monday 10:00 in Shanghai; open 08:00 to 12:00 on Mondays only.
    let server = TestServer::start().await;
    let mornings = pb::CarPark {
        opening_hours: vec![pb::OpeningPeriod {
            day: pb::Weekday::Monday.into(),
            open_minute: 8 * 60,
            close_minute: 12 * 60,
        }],
        ..garage("g1", 36.067, 120.383)
    };
    register(&server, mornings).await;
    report_ok(&server, snapshot("g1", 1, 42, server.now())).await;
    assert_eq!(
        availability_of(&server, "g1").await.status(),
        CarParkStatus::Open
    );

    server.advance(2 * 3600 - 60);
    report_ok(&server, snapshot("g1", 2, 40, server.now())).await;
    assert_eq!(
        availability_of(&server, "g1").await.status(),
        CarParkStatus::Open,
        "11:59"
    );
    server.advance(60);
    assert_eq!(
        availability_of(&server, "g1").await.status(),
        CarParkStatus::Closed,
        "12:00"
    );
    // Closed wins over stale, and stays closed all week until next Monday 08:00.
    server.advance(6 * 86_400 + 19 * 3600);
    assert_eq!(
        availability_of(&server, "g1").await.status(),
        CarParkStatus::Closed,
        "Monday 07:00"
    );
    server.advance(3600);
    assert_eq!(
        availability_of(&server, "g1").await.status(),
        CarParkStatus::Stale,
        "Monday 08:00, open but with week-old numbers"
    );
}

#[tokio::test]
async fn a_watcher_is_told_of_status_changes_that_come_with_time() {
    let server = TestServer::start().await;
    let mornings = pb::CarPark {
        opening_hours: vec![pb::OpeningPeriod {
            day: pb::Weekday::Monday.into(),
            open_minute: 8 * 60,
            close_minute: 12 * 60,
        }],
        ..garage("g1", 36.067, 120.383)
    };
    register(&server, mornings).await;
    report_ok(&server, snapshot("g1", 1, 42, server.now())).await;
    let mut watch = watch_ids(&server, &["g1"]).await.unwrap();
    let snapshot = read_snapshot(&mut watch).await;
    assert_eq!(snapshot[0].status(), CarParkStatus::Open);

    // Nothing but time passes: the sweeper (every 50 ms) notices.
    server.advance(181);
    let stale = next_update(&mut watch).await;
    assert_eq!(
        (stale.car_park_id.as_str(), stale.status()),
        ("g1", CarParkStatus::Stale)
    );
    assert_eq!((free_standard(&stale), stale.last_sequence), (42, 1));

    server.advance(2 * 3600);
    let closed = next_update(&mut watch).await;
    assert_eq!(closed.status(), CarParkStatus::Closed);
}
