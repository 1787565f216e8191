//! WatchAvailability: snapshot then changes, by ids and by area, order, and slow watchers.

use std::time::Duration;

use crate::support::*;
use citypark::{
    app::Backend,
    pb::{self, CarParkStatus, watch_availability_response::Event},
};
use tonic::Code;

#[tokio::test]
async fn a_watch_by_ids_sends_a_snapshot_then_changes_to_those_ids_only() {
    let server = TestServer::start().await;
    for id in ["g1", "g2", "g3"] {
        register(&server, garage(id, 36.067, 120.383)).await;
    }
    report_ok(&server, snapshot("g2", 4, 42, server.now())).await;
    let mut watch = watch_ids(&server, &["g2", "g1", "g2"]).await.unwrap();
    let snapshot_states = read_snapshot(&mut watch).await;
    let ids: Vec<_> = snapshot_states
        .iter()
        .map(|a| (a.car_park_id.as_str(), a.status()))
        .collect();
    assert_eq!(
        ids,
        [("g1", CarParkStatus::NoData), ("g2", CarParkStatus::Open)],
        "in id order, each once"
    );
    assert_eq!(free_standard(&snapshot_states[1]), 42);

    report_ok(&server, snapshot("g3", 1, 1, server.now())).await;
    report_ok(&server, snapshot("g1", 1, 11, server.now())).await;
    let update = next_update(&mut watch).await;
    assert_eq!(
        (update.car_park_id.as_str(), free_standard(&update)),
        ("g1", 11),
        "g3 is not watched"
    );
    assert_eq!(update.status(), CarParkStatus::Open);
}

#[tokio::test]
async fn a_watch_by_area_follows_car_parks_registered_later_inside_it() {
    let server = TestServer::start().await;
    register(&server, garage("inside", 36.05, 120.35)).await;
    register(&server, garage("outside", 36.20, 120.35)).await;
    let mut watch = watch_area(&server, (36.0, 120.3), (36.1, 120.4))
        .await
        .unwrap();
    let first: Vec<_> = read_snapshot(&mut watch)
        .await
        .into_iter()
        .map(|a| a.car_park_id)
        .collect();
    assert_eq!(first, ["inside"]);

    register(&server, garage("far-away", 37.0, 121.0)).await;
    register(&server, garage("newcomer", 36.09, 120.39)).await;
    let newcomer = next_update(&mut watch).await;
    assert_eq!(
        (newcomer.car_park_id.as_str(), newcomer.status()),
        ("newcomer", CarParkStatus::NoData)
    );

    report_ok(&server, snapshot("outside", 1, 3, server.now())).await;
    report_ok(&server, snapshot("newcomer", 1, 5, server.now())).await;
    let reported = next_update(&mut watch).await;
    assert_eq!(
        (reported.car_park_id.as_str(), free_standard(&reported)),
        ("newcomer", 5)
    );
}

#[tokio::test]
async fn deleting_a_watched_car_park_sends_removed() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.05, 120.35)).await;
    register(&server, garage("g2", 36.05, 120.35)).await;
    let mut by_id = watch_ids(&server, &["g1"]).await.unwrap();
    let mut by_area = watch_area(&server, (36.0, 120.3), (36.1, 120.4))
        .await
        .unwrap();
    assert_eq!(read_snapshot(&mut by_id).await.len(), 1);
    assert_eq!(read_snapshot(&mut by_area).await.len(), 2);

    server
        .registry()
        .await
        .delete_car_park(authed(
            pb::DeleteCarParkRequest { id: "g1".into() },
            OPERATOR_A.1,
        ))
        .await
        .unwrap();
    for watch in [&mut by_id, &mut by_area] {
        match next_event(watch).await {
            Event::Removed(removed) => assert_eq!(removed.car_park_id, "g1"),
            other => panic!("expected removed, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_watch_of_unknown_or_invalid_ids_is_refused() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    expect_code(watch_ids(&server, &["g1", "nope"]).await, Code::NotFound);
    expect_invalid(watch_ids(&server, &["g1", "a b"]).await, "ids.ids[1]");
    expect_invalid(watch_ids(&server, &[]).await, "ids.ids");
    let too_many: Vec<String> = (0..1001).map(|i| format!("g{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    expect_invalid(watch_ids(&server, &too_many).await, "ids.ids");
    expect_invalid(
        server
            .availability()
            .await
            .watch_availability(pb::WatchAvailabilityRequest { selector: None })
            .await,
        "selector",
    );
    expect_invalid(
        watch_area(&server, (36.1, 120.3), (36.0, 120.4)).await,
        "area.north_east.latitude",
    );
    expect_invalid(
        watch_area(&server, (36.0, 120.4), (36.1, 120.3)).await,
        "area.north_east.longitude",
    );
    expect_invalid(
        watch_area(&server, (f64::NAN, 120.3), (36.1, 120.4)).await,
        "area.south_west.latitude",
    );
}

#[tokio::test]
async fn a_watch_of_too_large_an_area_is_refused() {
    let server = TestServer::start_with(|s| s.limits.max_watch_car_parks = 2).await;
    for id in ["g1", "g2", "g3"] {
        register(&server, garage(id, 36.05, 120.35)).await;
    }
    expect_code(
        watch_area(&server, (36.0, 120.3), (36.1, 120.4)).await,
        Code::ResourceExhausted,
    );
}

#[tokio::test]
async fn a_watcher_sees_every_change_in_order() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    let mut watch = watch_ids(&server, &["g1"]).await.unwrap();
    read_snapshot(&mut watch).await;

    let now = server.now();
    let mut publisher = Publisher::open(&server, OPERATOR_A.1).await.unwrap();
    for batch in 0..4 {
        let reports = (1..=50)
            .map(|i| {
                let sequence = batch * 50 + i;
                snapshot("g1", sequence, (sequence % 100) as i32, now)
            })
            .collect();
        publisher.exchange(reports).await;
    }
    let mut sequences = Vec::new();
    while sequences.last() != Some(&200) {
        let update = next_update(&mut watch).await;
        assert_eq!(free_standard(&update), (update.last_sequence % 100) as i32);
        sequences.push(update.last_sequence);
    }
    assert_eq!(sequences, (1..=200).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_stalled_watcher_does_not_block_ingest_and_is_resynced() {
    // A change feed of 64 and a per-watcher buffer of 8, so a watcher that stops
    // reading falls behind after a few hundred changes.
    let server = TestServer::start_on(Backend::embedded(64), |s| s.limits.watch_buffer = 8).await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    // Small HTTP/2 windows on the watcher's own connection: otherwise the client
    // would quietly buffer megabytes of events for it and it would never fall behind.
    let channel = server
        .endpoint()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .unwrap();
    let mut watch = watch(
        pb::availability_client::AvailabilityClient::new(channel),
        pb::watch_availability_request::Selector::Ids(pb::CarParkIds {
            ids: vec!["g1".into()],
        }),
    )
    .await
    .unwrap();
    read_snapshot(&mut watch).await;

    let now = server.now();
    let total = 5_000;
    let mut publisher = Publisher::open(&server, OPERATOR_A.1).await.unwrap();
    let ingest = async {
        for batch in 0..total / 500 {
            let reports = (1..=500)
                .map(|i| snapshot("g1", batch * 500 + i, (i % 100) as i32, now))
                .collect();
            let acks = publisher.exchange(reports).await;
            assert!(acks.iter().all(|a| a.result() == pb::ReportResult::Applied));
        }
    };
    tokio::time::timeout(Duration::from_secs(30), ingest)
        .await
        .expect("ingest went on while the watcher stalled");

    // The watcher reads again. It fell behind, so somewhere in what it reads there is a
    // resync and a fresh snapshot; whatever it reads, the state it sees never goes
    // back in time, and it ends at the latest state.
    let (mut seen, mut resyncs) = (0, 0);
    let mut watched = async |until: u64| {
        while seen < until {
            match next_event(&mut watch).await {
                Event::Update(a) => {
                    assert!(
                        a.last_sequence > seen,
                        "went back from {seen} to {}",
                        a.last_sequence
                    );
                    seen = a.last_sequence;
                }
                Event::Resync(resync) => {
                    assert!(resync.missed > 0);
                    resyncs += 1;
                    let fresh = read_snapshot(&mut watch).await;
                    assert_eq!(fresh.len(), 1);
                    let newest = fresh[0].last_sequence;
                    assert!(
                        newest >= seen,
                        "the snapshot went back from {seen} to {newest}"
                    );
                    seen = newest;
                }
                other => panic!("expected updates and resyncs, got {other:?}"),
            }
        }
        assert_eq!(seen, until);
    };
    watched(total).await;

    // After the fresh snapshot come new changes only, not stale ones it already covers.
    report_ok(&server, snapshot("g1", total + 1, 7, server.now())).await;
    watched(total + 1).await;
    assert!(resyncs > 0, "the watcher fell behind");
}

#[tokio::test]
async fn a_car_park_moving_out_of_a_watched_area_is_removed_from_it_and_back_in_is_updated() {
    let server = TestServer::start().await;
    register(&server, garage("mover", 36.05, 120.35)).await;
    let mut watch = watch_area(&server, (36.0, 120.3), (36.1, 120.4))
        .await
        .unwrap();
    assert_eq!(read_snapshot(&mut watch).await.len(), 1);

    register(&server, garage("mover", 36.30, 120.35)).await;
    match next_event(&mut watch).await {
        Event::Removed(gone) => assert_eq!(gone.car_park_id, "mover"),
        other => panic!("expected removed, got {other:?}"),
    }
    // Moving about outside the area is none of this watcher's business.
    register(&server, garage("mover", 36.40, 120.35)).await;
    register(&server, garage("mover", 36.06, 120.36)).await;
    let back = next_update(&mut watch).await;
    assert_eq!(back.car_park_id, "mover");
}

#[tokio::test]
async fn watch_streams_are_capped_per_client_and_in_all() {
    let server = TestServer::start_with(|s| {
        s.limits.max_watchers = 5;
        s.limits.max_watchers_per_client = 3;
    })
    .await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    let selector = || {
        pb::watch_availability_request::Selector::Ids(pb::CarParkIds {
            ids: vec!["g1".into()],
        })
    };
    // Anonymous watchers from one address, over one connection.
    let channel = server.channel().await;
    let mut anonymous = Vec::new();
    for _ in 0..3 {
        anonymous.push(
            watch(
                pb::availability_client::AvailabilityClient::new(channel.clone()),
                selector(),
            )
            .await
            .unwrap(),
        );
    }
    let refused = watch(
        pb::availability_client::AvailabilityClient::new(channel.clone()),
        selector(),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("--max-watchers-per-client"),
        "{}",
        refused.message()
    );
    // A driver proves who they are: a budget of their own, until the server's cap.
    let as_driver = || {
        let mut client = pb::availability_client::AvailabilityClient::new(channel.clone());
        async move {
            client
                .watch_availability(authed(
                    pb::WatchAvailabilityRequest {
                        selector: Some(selector()),
                    },
                    &driver_token("dora"),
                ))
                .await
                .map(|r| r.into_inner())
        }
    };
    let mut dora = vec![as_driver().await.unwrap(), as_driver().await.unwrap()];
    let full = as_driver().await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert!(
        full.message().contains("(--max-watchers)"),
        "{}",
        full.message()
    );
    // A stream closed gives its place back.
    drop(dora.pop());
    let again = eventually("a closed watch frees its place", || async {
        as_driver().await.ok()
    })
    .await;
    drop((again, dora, anonymous));
}

#[tokio::test]
async fn one_connection_holds_at_most_its_share_of_concurrent_calls() {
    let server = TestServer::start_with(|s| s.max_streams_per_connection = 4).await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    let channel = server.channel().await;
    let open = || {
        watch(
            pb::availability_client::AvailabilityClient::new(channel.clone()),
            pb::watch_availability_request::Selector::Ids(pb::CarParkIds {
                ids: vec!["g1".into()],
            }),
        )
    };
    let mut watches = Vec::new();
    for _ in 0..4 {
        watches.push(open().await.unwrap());
    }
    // A fifth call on the same connection waits for a place, and gets one when a
    // stream closes.
    let mut fifth = Box::pin(open());
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut fifth)
            .await
            .is_err(),
        "a fifth stream was opened on a connection allowed four"
    );
    drop(watches.pop());
    tokio::time::timeout(Duration::from_secs(5), fifth)
        .await
        .expect("a closed stream frees a place")
        .unwrap();
}
