//! Ingest details beyond the store conformance suite (tests/it/store_conformance.rs):
//! partial snapshots and the Publish stream: order, rejections with reasons, limits.

use crate::support::*;
use citypark::pb::{self, RejectCode, ReportResult, SpaceCategory::*};
use tonic::Code;

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
    let summary = ack_summary(&acks);
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
