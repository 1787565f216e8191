//! The shortest path through the API: register, report, find.

use crate::support::*;
use citypark::pb;

#[tokio::test]
async fn register_report_and_find() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    let ack = report(&server, snapshot("g1", 1, 42, start_time()))
        .await
        .unwrap();
    assert_eq!(ack.result, pb::ReportResult::Applied as i32);
    let mut availability = server.availability().await;
    let found = availability
        .find_nearby(pb::FindNearbyRequest {
            location: Some(here()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.results.len(), 1);
    let first = &found.results[0];
    assert_eq!(first.available, 42);
    assert!(
        (100.0..130.0).contains(&first.distance_m),
        "{}",
        first.distance_m
    );
    server.stop().await.unwrap();
}
