//! API keys and ownership: who may write, who may read, and whose car parks.

use crate::support::*;
use citypark::pb::{self, RejectCode, ReportResult};
use tonic::{Code, Request, metadata::MetadataValue};

/// A request with the given raw `authorization` header, or none.
fn with_header<T>(message: T, header: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = header {
        request
            .metadata_mut()
            .insert("authorization", MetadataValue::try_from(value).unwrap());
    }
    request
}

#[tokio::test]
async fn writes_without_a_valid_key_are_unauthenticated_and_change_nothing() {
    let server = TestServer::start().await;
    let original = register(&server, garage("g1", 36.067, 120.383)).await;
    report_ok(&server, snapshot("g1", 1, 42, server.now())).await;
    let live = availability_of(&server, "g1").await;

    let headers = [
        None,
        Some("Bearer not-a-key"),
        Some("Basic key-a"),
        Some("key-a"),
        Some("Bearer"),
        Some(""),
    ];
    let mut registry = server.registry().await;
    let mut ingest = server.ingest().await;
    for header in headers {
        let renamed = pb::CarPark {
            name: "Hijacked".into(),
            ..garage("g1", 36.067, 120.383)
        };
        let upsert = pb::UpsertCarParkRequest {
            car_park: Some(renamed),
        };
        let new = pb::UpsertCarParkRequest {
            car_park: Some(garage("g2", 36.067, 120.383)),
        };
        let delete = pb::DeleteCarParkRequest { id: "g1".into() };
        let report = pb::ReportRequest {
            report: Some(snapshot("g1", 2, 1, server.now())),
        };
        let batch = pb::PublishRequest {
            reports: vec![snapshot("g1", 3, 1, server.now())],
        };
        let publish = with_header(tokio_stream::iter([batch]), header);
        for (what, result) in [
            (
                "upsert",
                registry
                    .upsert_car_park(with_header(upsert, header))
                    .await
                    .map(drop),
            ),
            (
                "create",
                registry
                    .upsert_car_park(with_header(new, header))
                    .await
                    .map(drop),
            ),
            (
                "delete",
                registry
                    .delete_car_park(with_header(delete, header))
                    .await
                    .map(drop),
            ),
            (
                "report",
                ingest.report(with_header(report, header)).await.map(drop),
            ),
            ("publish", ingest.publish(publish).await.map(drop)),
        ] {
            let status = result.expect_err(what);
            assert_eq!(status.code(), Code::Unauthenticated, "{what} {header:?}");
        }
    }
    assert_eq!(car_park_of(&server, "g1").await.unwrap(), original);
    assert_eq!(all_ids(&server).await, ["g1"]);
    assert_eq!(availability_of(&server, "g1").await, live);
}

#[tokio::test]
async fn queries_need_no_key() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    report_ok(&server, snapshot("g1", 1, 42, server.now())).await;
    let mut registry = server.registry().await;
    registry
        .get_car_park(pb::GetCarParkRequest { id: "g1".into() })
        .await
        .unwrap();
    registry
        .list_car_parks(pb::ListCarParksRequest::default())
        .await
        .unwrap();
    let mut availability = server.availability().await;
    availability.find_nearby(near_here()).await.unwrap();
    availability
        .get_availability(pb::GetAvailabilityRequest {
            car_park_ids: vec!["g1".into()],
        })
        .await
        .unwrap();
    availability.ping(pb::PingRequest::default()).await.unwrap();
    let mut watch = watch_ids(&server, &["g1"]).await.unwrap();
    assert_eq!(read_snapshot(&mut watch).await.len(), 1);
}

#[tokio::test]
async fn an_operator_cannot_change_another_operators_car_park() {
    let server = TestServer::start().await;
    let original = register(&server, garage("g1", 36.067, 120.383)).await;
    report_ok(&server, snapshot("g1", 1, 42, server.now())).await;
    let live = availability_of(&server, "g1").await;
    let mut registry = server.registry().await;

    let takeover = pb::CarPark {
        name: "Taken over".into(),
        ..garage("g1", 36.067, 120.383)
    };
    expect_code(
        registry
            .upsert_car_park(authed(
                pb::UpsertCarParkRequest {
                    car_park: Some(takeover),
                },
                OPERATOR_B.1,
            ))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        registry
            .delete_car_park(authed(
                pb::DeleteCarParkRequest { id: "g1".into() },
                OPERATOR_B.1,
            ))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        report_as(&server, snapshot("g1", 2, 1, server.now()), OPERATOR_B.1).await,
        Code::PermissionDenied,
    );
    let mut publisher = Publisher::open(&server, OPERATOR_B.1).await.unwrap();
    let acks = publisher
        .exchange(vec![snapshot("g1", 3, 1, server.now())])
        .await;
    assert_eq!(
        (acks[0].result(), acks[0].reject_code()),
        (ReportResult::Rejected, RejectCode::PermissionDenied)
    );

    assert_eq!(car_park_of(&server, "g1").await.unwrap(), original);
    assert_eq!(availability_of(&server, "g1").await, live);
}

#[tokio::test]
async fn an_upsert_naming_another_operator_is_denied() {
    let server = TestServer::start().await;
    let mut registry = server.registry().await;
    let mut upsert_as_a = async |operator_id: &str| {
        let car_park = pb::CarPark {
            operator_id: operator_id.into(),
            ..garage("g1", 36.067, 120.383)
        };
        registry
            .upsert_car_park(authed(
                pb::UpsertCarParkRequest {
                    car_park: Some(car_park),
                },
                OPERATOR_A.1,
            ))
            .await
            .map(|r| r.into_inner())
    };
    expect_code(upsert_as_a(OPERATOR_B.0).await, Code::PermissionDenied);
    expect_code(car_park_of(&server, "g1").await, Code::NotFound);
    let own = upsert_as_a(OPERATOR_A.0).await.unwrap();
    assert!(own.created);
    assert_eq!(own.car_park.unwrap().operator_id, OPERATOR_A.0);
}
