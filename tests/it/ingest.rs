//! Ingest: unary Report (applied, duplicate, clamping, bays) and the Publish stream.

use crate::support::*;
use citypark::pb::{self, RejectCode, ReportResult, SpaceCategory::*};
use tonic::Code;

#[tokio::test]
async fn report_is_applied_and_acked_with_the_new_counts() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    let at = after(server.now(), -30);
    let ack = report(&server, snapshot("g1", 1, 42, at)).await.unwrap();
    assert_eq!(
        (ack.car_park_id.as_str(), ack.sequence, ack.result()),
        ("g1", 1, ReportResult::Applied)
    );
    assert_eq!(ack.reject_code(), RejectCode::Unspecified);
    assert_eq!(ack.clamped, 0);
    let live = ack.availability.unwrap();
    assert_eq!(live.status(), pb::CarParkStatus::Open);
    assert_eq!(free_standard(&live), 42);
    assert_eq!(live.observed_at, Some(pb_time(at)));
    assert_eq!(live.data_age_seconds, Some(30));
    assert_eq!(live.last_sequence, 1);
    assert_eq!(availability_of(&server, "g1").await, live);
}

#[tokio::test]
async fn a_snapshot_leaves_unlisted_categories_alone() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    let now = server.now();
    report_ok(
        &server,
        snapshot_of("g1", 1, &[(EvCharging, 4), (Standard, 50)], now),
    )
    .await;
    report_ok(&server, snapshot("g1", 2, 20, now)).await;
    let live = availability_of(&server, "g1").await;
    let free: Vec<_> = live
        .categories
        .iter()
        .map(|c| (c.category(), c.free))
        .collect();
    assert_eq!(free, [(Standard, 20), (EvCharging, 4)], "in category order");
}

#[tokio::test]
async fn a_report_not_newer_than_the_last_is_a_duplicate_and_changes_nothing() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    let now = server.now();
    report_ok(&server, snapshot("g1", 5, 42, now)).await;
    let before = availability_of(&server, "g1").await;
    for sequence in [5, 4, 1] {
        let ack = report(&server, snapshot("g1", sequence, 10, now))
            .await
            .unwrap();
        assert_eq!(ack.result(), ReportResult::Duplicate);
        assert_eq!(ack.sequence, sequence);
        let shown = ack.availability.unwrap();
        assert_eq!(
            (free_standard(&shown), shown.last_sequence),
            (42, 5),
            "the ack shows the current counts"
        );
    }
    assert_eq!(availability_of(&server, "g1").await, before);
}

#[tokio::test]
async fn deltas_are_clamped_into_capacity_and_counted_as_drift() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    let now = server.now();
    report_ok(&server, snapshot("g1", 1, 5, now)).await;

    let ack = report_ok(&server, delta("g1", 2, 3, 0, now)).await;
    assert_eq!(ack.clamped, 0);
    assert_eq!(free_standard(ack.availability.as_ref().unwrap()), 2);

    let ack = report_ok(&server, delta("g1", 3, 10, 1, now)).await;
    assert_eq!(ack.clamped, 1, "2 - 10 + 1 is below zero");
    let live = ack.availability.unwrap();
    assert_eq!((free_standard(&live), live.drift_count), (0, 1));

    let ack = report_ok(&server, delta("g1", 4, 0, 500, now)).await;
    assert_eq!(ack.clamped, 1, "500 exits overflow the capacity of 100");
    let live = ack.availability.unwrap();
    assert_eq!((free_standard(&live), live.drift_count), (100, 2));

    let ack = report_ok(&server, delta("g1", 5, 4, 2, now)).await;
    assert_eq!(ack.clamped, 0);
    let live = availability_of(&server, "g1").await;
    assert_eq!((free_standard(&live), live.drift_count), (98, 2));
}

#[tokio::test]
async fn bay_reports_toggle_one_space_each() {
    let server = TestServer::start().await;
    let zone = pb::CarPark {
        kind: pb::CarParkKind::OnStreet.into(),
        capacity: capacity(&[(Standard, 5)]),
        ..garage("street", 36.067, 120.383)
    };
    register(&server, zone).await;
    let now = server.now();
    let free_after = async |sequence, bay_id, occupied| {
        let ack = report_ok(&server, bay("street", sequence, bay_id, occupied, now)).await;
        assert_eq!(ack.clamped, 0);
        free_standard(ack.availability.as_ref().unwrap())
    };
    assert_eq!(free_after(1, "b1", true).await, 4);
    assert_eq!(free_after(2, "b1", true).await, 4, "still the same car");
    assert_eq!(free_after(3, "b2", true).await, 3);
    assert_eq!(free_after(4, "b1", false).await, 4);
    assert_eq!(free_after(5, "b1", false).await, 4, "already free");
    assert_eq!(free_after(6, "b3", false).await, 4, "a new bay starts free");
    let live = availability_of(&server, "street").await;
    assert_eq!((free_standard(&live), live.last_sequence), (4, 6));
}

#[tokio::test]
async fn publish_acks_every_report_in_order() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    register(&server, garage("g2", 36.068, 120.384)).await;
    let now = server.now();
    let mut publisher = Publisher::open(&server, OPERATOR_A.1).await.unwrap();
    let acks = publisher
        .exchange(vec![
            snapshot("g1", 1, 40, now),
            snapshot("g2", 1, 30, now),
            delta("g1", 2, 1, 0, now),
            snapshot("g1", 2, 99, now),
        ])
        .await;
    let summary: Vec<_> = acks
        .iter()
        .map(|a| {
            (
                a.car_park_id.as_str(),
                a.sequence,
                a.result(),
                free_standard(a.availability.as_ref().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("g1", 1, ReportResult::Applied, 40),
            ("g2", 1, ReportResult::Applied, 30),
            ("g1", 2, ReportResult::Applied, 39),
            ("g1", 2, ReportResult::Duplicate, 39),
        ]
    );
    let acks = publisher.exchange(vec![delta("g2", 2, 0, 5, now)]).await;
    assert_eq!(free_standard(acks[0].availability.as_ref().unwrap()), 35);
    assert_eq!(free_standard(&availability_of(&server, "g1").await), 39);
}

#[tokio::test]
async fn publish_rejects_a_bad_report_in_its_ack_and_goes_on() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    register_as(&server, garage("b1", 36.068, 120.384), OPERATOR_B.1).await;
    let now = server.now();
    let no_time = pb::OccupancyReport {
        observed_at: None,
        ..snapshot("g1", 5, 1, now)
    };
    let mut publisher = Publisher::open(&server, OPERATOR_A.1).await.unwrap();
    let acks = publisher
        .exchange(vec![
            snapshot("g1", 1, 40, now),
            snapshot("g1", 2, 101, now),
            snapshot("g1", 3, -1, now),
            no_time,
            snapshot("g1", 6, 1, after(now, 301)),
            snapshot("nope", 1, 1, now),
            snapshot("b1", 1, 1, now),
            snapshot("g1", 7, 20, now),
        ])
        .await;
    let summary: Vec<_> = acks
        .iter()
        .map(|a| {
            (
                a.car_park_id.as_str(),
                a.sequence,
                a.result(),
                a.reject_code(),
                a.field.as_str(),
            )
        })
        .collect();
    use RejectCode as R;
    use ReportResult::{Applied, Rejected};
    assert_eq!(
        summary,
        [
            ("g1", 1, Applied, R::Unspecified, ""),
            (
                "g1",
                2,
                Rejected,
                R::InvalidArgument,
                "snapshot.free[0].count"
            ),
            (
                "g1",
                3,
                Rejected,
                R::InvalidArgument,
                "snapshot.free[0].count"
            ),
            ("g1", 5, Rejected, R::InvalidArgument, "observed_at"),
            ("g1", 6, Rejected, R::InvalidArgument, "observed_at"),
            ("nope", 1, Rejected, R::NotFound, ""),
            ("b1", 1, Rejected, R::PermissionDenied, ""),
            ("g1", 7, Applied, R::Unspecified, ""),
        ]
    );
    for rejected in acks.iter().filter(|a| a.result() == Rejected) {
        assert!(!rejected.reason.is_empty(), "{rejected:?}");
        assert_eq!(rejected.availability, None, "{rejected:?}");
    }
    assert!(acks[1].reason.contains("capacity"), "{:?}", acks[1].reason);
    assert!(acks[2].reason.contains("negative"), "{:?}", acks[2].reason);

    // The stream goes on.
    let acks = publisher.exchange(vec![delta("g1", 8, 5, 0, now)]).await;
    assert_eq!(acks[0].result(), Applied);
    let live = availability_of(&server, "g1").await;
    assert_eq!((free_standard(&live), live.last_sequence), (15, 8));
    let theirs = availability_of(&server, "b1").await;
    assert_eq!(theirs.status(), pb::CarParkStatus::NoData);
}

#[tokio::test]
async fn publish_over_1000_reports_in_one_message_ends_the_stream() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    let now = server.now();
    let mut publisher = Publisher::open(&server, OPERATOR_A.1).await.unwrap();
    let full: Vec<_> = (1..=1000).map(|s| snapshot("g1", s, 50, now)).collect();
    let acks = publisher.exchange(full).await;
    assert!(acks.iter().all(|a| a.result() == ReportResult::Applied));

    let over: Vec<_> = (1001..=2001).map(|s| snapshot("g1", s, 1, now)).collect();
    publisher.send(over).await;
    expect_code(publisher.answer().await, Code::ResourceExhausted);
    let live = availability_of(&server, "g1").await;
    assert_eq!(
        (free_standard(&live), live.last_sequence),
        (50, 1000),
        "nothing of the oversize batch was applied"
    );
}

#[tokio::test]
async fn a_duplicate_does_not_make_stale_numbers_look_live() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    report_ok(&server, snapshot("g1", 1, 42, server.now())).await;
    server.advance(181);
    let stale = availability_of(&server, "g1").await;
    assert_eq!(stale.status(), pb::CarParkStatus::Stale);

    // An operator resending its last report after a reconnect has observed nothing new.
    let ack = report(&server, snapshot("g1", 1, 42, server.now()))
        .await
        .unwrap();
    assert_eq!(ack.result(), ReportResult::Duplicate);
    assert_eq!(ack.availability.unwrap().status(), pb::CarParkStatus::Stale);
    assert_eq!(availability_of(&server, "g1").await, stale);
}
