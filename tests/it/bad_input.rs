//! Bad requests: each is refused with a clear status naming the field, and changes nothing.

use crate::support::*;
use citypark::pb::{self, SpaceCategory::*};
use tonic::Code;

/// A server with one reported car park, "g1", and what it looks like.
async fn one_car_park() -> (TestServer, pb::CarPark, pb::CarParkAvailability) {
    let server = TestServer::start().await;
    let stored = register(&server, garage("g1", 36.067, 120.383)).await;
    report_ok(&server, snapshot("g1", 1, 42, server.now())).await;
    let live = availability_of(&server, "g1").await;
    (server, stored, live)
}

/// Asserts that the city is still exactly the one of [`one_car_park`].
async fn assert_unchanged(
    server: &TestServer,
    stored: &pb::CarPark,
    live: &pb::CarParkAvailability,
    after: &str,
) {
    assert_eq!(server.backend.engine.len(), 1, "after {after}");
    assert_eq!(all_ids(server).await, ["g1"], "after {after}");
    assert_eq!(
        &car_park_of(server, "g1").await.unwrap(),
        stored,
        "after {after}"
    );
    assert_eq!(&availability_of(server, "g1").await, live, "after {after}");
}

type Edit = fn(&mut pb::CarPark);

fn at(latitude: f64, longitude: f64) -> Option<pb::LatLng> {
    Some(pb::LatLng {
        latitude,
        longitude,
    })
}

/// A stay from and to the given seconds after the start of the test clock.
fn stay(start: i64, end: Option<i64>) -> Option<pb::StayWindow> {
    Some(pb::StayWindow {
        start: Some(pb_time(after(start_time(), start))),
        end: end.map(|e| pb_time(after(start_time(), e))),
    })
}

#[tokio::test]
async fn invalid_car_parks_are_refused_naming_the_field() {
    let (server, stored, live) = one_car_park().await;
    let cases: Vec<(&str, Edit)> = vec![
        ("car_park.location.latitude", |c| {
            c.location = at(f64::NAN, 120.0)
        }),
        ("car_park.location.latitude", |c| {
            c.location = at(f64::INFINITY, 120.0)
        }),
        ("car_park.location.latitude", |c| {
            c.location = at(90.5, 120.0)
        }),
        ("car_park.location.latitude", |c| {
            c.location = at(-91.0, 120.0)
        }),
        ("car_park.location.longitude", |c| {
            c.location = at(36.0, f64::NAN)
        }),
        ("car_park.location.longitude", |c| {
            c.location = at(36.0, f64::NEG_INFINITY)
        }),
        ("car_park.location.longitude", |c| {
            c.location = at(36.0, 180.5)
        }),
        ("car_park.location", |c| c.location = None),
        ("car_park.id", |c| c.id = String::new()),
        ("car_park.id", |c| c.id = "x".repeat(65)),
        ("car_park.id", |c| c.id = "g 1".into()),
        ("car_park.region", |c| c.region = String::new()),
        ("car_park.region", |c| c.region = "Qingdao".into()),
        ("car_park.operator_id", |c| c.operator_id = "op a".into()),
        ("car_park.name", |c| c.name = String::new()),
        ("car_park.name", |c| c.name = "n".repeat(201)),
        ("car_park.address", |c| c.address = "a".repeat(301)),
        ("car_park.kind", |c| c.kind = 0),
        ("car_park.kind", |c| c.kind = 99),
        ("car_park.capacity", |c| c.capacity.clear()),
        ("car_park.capacity", |c| {
            c.capacity = capacity(&[(Standard, 0)])
        }),
        ("car_park.capacity[0].spaces", |c| {
            c.capacity = capacity(&[(Standard, -1)])
        }),
        ("car_park.capacity[0].spaces", |c| {
            c.capacity = capacity(&[(Standard, 100_001)])
        }),
        ("car_park.capacity[1].category", |c| {
            c.capacity = capacity(&[(Standard, 1), (Standard, 2)])
        }),
        ("car_park.capacity[0].category", |c| {
            c.capacity = capacity(&[(Unspecified, 1)])
        }),
        // Free text: no bidi overrides, control characters or blanks.
        ("car_park.name", |c| c.name = "\u{202e}evil".into()),
        ("car_park.name", |c| c.name = "two\nlines".into()),
        ("car_park.name", |c| c.name = "   ".into()),
        ("car_park.address", |c| c.address = "\u{1b}[31mred".into()),
        ("car_park.time_zone", |c| c.time_zone = String::new()),
        ("car_park.time_zone", |c| {
            c.time_zone = "Mars/Olympus".into()
        }),
        ("car_park.opening_hours[0].day", |c| {
            c.opening_hours = vec![pb::OpeningPeriod {
                day: 0,
                open_minute: 0,
                close_minute: 60,
            }]
        }),
        ("car_park.opening_hours[0].close_minute", |c| {
            c.opening_hours = vec![pb::OpeningPeriod {
                day: 1,
                open_minute: 600,
                close_minute: 600,
            }]
        }),
        ("car_park.opening_hours[0].open_minute", |c| {
            c.opening_hours = vec![pb::OpeningPeriod {
                day: 1,
                open_minute: -1,
                close_minute: 600,
            }]
        }),
        ("car_park.tariff.currency", |c| {
            c.tariff.as_mut().unwrap().currency = "cny".into()
        }),
        ("car_park.tariff.hourly_rate_minor", |c| {
            c.tariff.as_mut().unwrap().hourly_rate_minor = -1
        }),
        ("car_park.tariff.free_minutes", |c| {
            c.tariff.as_mut().unwrap().free_minutes = -5
        }),
        ("car_park.report_interval_seconds", |c| {
            c.report_interval_seconds = 9
        }),
        ("car_park.report_interval_seconds", |c| {
            c.report_interval_seconds = -60
        }),
        ("car_park.report_interval_seconds", |c| {
            c.report_interval_seconds = 86_401
        }),
        ("car_park.max_height_cm", |c| c.max_height_cm = -1),
    ];
    let mut registry = server.registry().await;
    for (field, edit) in cases {
        let mut car_park = garage("g1", 36.067, 120.383);
        car_park.capacity = capacity(&[(Standard, 5)]);
        edit(&mut car_park);
        let result = registry
            .upsert_car_park(authed(
                pb::UpsertCarParkRequest {
                    car_park: Some(car_park.clone()),
                },
                OPERATOR_A.1,
            ))
            .await;
        expect_invalid(result, field);
        assert_unchanged(&server, &stored, &live, &format!("{car_park:?}")).await;
    }
    expect_invalid(
        registry
            .upsert_car_park(authed(
                pb::UpsertCarParkRequest { car_park: None },
                OPERATOR_A.1,
            ))
            .await,
        "car_park",
    );
    assert_unchanged(&server, &stored, &live, "no car park").await;

    // The limits themselves are accepted.
    let edge = pb::CarPark {
        location: at(-90.0, 180.0),
        ..garage(&"x".repeat(64), 0.0, 0.0)
    };
    register(&server, edge).await;
}

/// A report on "g1" observed now, edited.
fn bad_report(
    server: &TestServer,
    edit: impl FnOnce(&mut pb::OccupancyReport),
) -> pb::OccupancyReport {
    let mut report = snapshot("g1", 2, 10, server.now());
    edit(&mut report);
    report
}

fn free(counts: &[(pb::SpaceCategory, i32)]) -> Option<pb::occupancy_report::Body> {
    snapshot_of("g1", 1, counts, start_time()).body
}

#[tokio::test]
async fn invalid_reports_are_refused_naming_the_field() {
    use pb::occupancy_report::Body;
    let (server, stored, live) = one_car_park().await;
    let now = server.now();
    let cases: Vec<(&str, pb::OccupancyReport)> = vec![
        (
            "report.car_park_id",
            bad_report(&server, |r| r.car_park_id = String::new()),
        ),
        (
            "report.car_park_id",
            bad_report(&server, |r| r.car_park_id = "g".repeat(65)),
        ),
        ("report.sequence", bad_report(&server, |r| r.sequence = 0)),
        (
            "report.observed_at",
            bad_report(&server, |r| r.observed_at = None),
        ),
        (
            "report.observed_at",
            bad_report(&server, |r| r.observed_at = Some(pb_time(after(now, 301)))),
        ),
        (
            "report.observed_at",
            bad_report(&server, |r| {
                r.observed_at = Some(prost_types::Timestamp {
                    seconds: now.as_second(),
                    nanos: -1,
                })
            }),
        ),
        (
            "report.observed_at",
            bad_report(&server, |r| {
                r.observed_at = Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                })
            }),
        ),
        ("report.body", bad_report(&server, |r| r.body = None)),
        (
            "report.snapshot.free",
            bad_report(&server, |r| r.body = free(&[])),
        ),
        (
            "report.snapshot.free[0].count",
            bad_report(&server, |r| r.body = free(&[(Standard, 101)])),
        ),
        (
            "report.snapshot.free[1].count",
            bad_report(&server, |r| {
                r.body = free(&[(Standard, 1), (EvCharging, 11)])
            }),
        ),
        (
            "report.snapshot.free[0].count",
            bad_report(&server, |r| r.body = free(&[(Standard, -1)])),
        ),
        (
            "report.snapshot.free[0].category",
            bad_report(&server, |r| r.body = free(&[(Unspecified, 1)])),
        ),
        (
            "report.snapshot.free[1].category",
            bad_report(&server, |r| r.body = free(&[(Standard, 1), (Standard, 2)])),
        ),
        (
            "report.delta.entries[0].count",
            bad_report(&server, |r| r.body = delta("g1", 2, -1, 0, now).body),
        ),
        (
            "report.delta.exits[0].count",
            bad_report(&server, |r| r.body = delta("g1", 2, 0, -3, now).body),
        ),
        (
            "report.delta.plate",
            bad_report(&server, |r| {
                r.body = Some(Body::Delta(pb::DeltaReport {
                    plate: "P".repeat(17),
                    ..Default::default()
                }))
            }),
        ),
        (
            "report.bay.bay_id",
            bad_report(&server, |r| r.body = bay("g1", 2, "", true, now).body),
        ),
        (
            "report.bay.category",
            bad_report(&server, |r| {
                r.body = Some(Body::Bay(pb::BayStatusReport {
                    bay_id: "b1".into(),
                    category: Accessible.into(),
                    occupied: true,
                }))
            }),
        ),
    ];
    for (field, bad) in cases {
        let shown = format!("{bad:?}");
        expect_invalid(report(&server, bad).await, field);
        assert_unchanged(&server, &stored, &live, &shown).await;
    }
    let mut ingest = server.ingest().await;
    expect_invalid(
        ingest
            .report(authed(pb::ReportRequest { report: None }, OPERATOR_A.1))
            .await,
        "report",
    );
    expect_code(
        report(&server, snapshot("nope", 2, 1, now)).await,
        Code::NotFound,
    );
    assert_unchanged(&server, &stored, &live, "the last bad report").await;

    // Exactly five minutes ahead is still accepted.
    report_ok(&server, snapshot("g1", 2, 10, after(now, 300))).await;
}

#[tokio::test]
async fn invalid_queries_are_refused_naming_the_field() {
    let (server, stored, live) = one_car_park().await;
    let query = |edit: fn(&mut pb::FindNearbyRequest)| {
        let mut request = near_here();
        edit(&mut request);
        request
    };
    let cases: Vec<(&str, pb::FindNearbyRequest)> = vec![
        ("location", query(|r| r.location = None)),
        (
            "location.latitude",
            query(|r| r.location.as_mut().unwrap().latitude = f64::NAN),
        ),
        (
            "location.latitude",
            query(|r| r.location.as_mut().unwrap().latitude = -90.5),
        ),
        (
            "location.longitude",
            query(|r| r.location.as_mut().unwrap().longitude = f64::INFINITY),
        ),
        (
            "location.longitude",
            query(|r| r.location.as_mut().unwrap().longitude = 181.0),
        ),
        ("radius_m", query(|r| r.radius_m = 50_000.5)),
        ("radius_m", query(|r| r.radius_m = -1.0)),
        ("radius_m", query(|r| r.radius_m = f64::NAN)),
        ("radius_m", query(|r| r.radius_m = f64::INFINITY)),
        ("limit", query(|r| r.limit = 101)),
        ("limit", query(|r| r.limit = -1)),
        ("min_available", query(|r| r.min_available = -1)),
        ("category", query(|r| r.category = 99)),
        ("kinds[1]", query(|r| r.kinds = vec![1, 0])),
        ("stay.end", query(|r| r.stay = stay(0, None))),
        ("stay.end", query(|r| r.stay = stay(0, Some(0)))),
        (
            "stay.end",
            query(|r| r.stay = stay(0, Some(30 * 86_400 + 1))),
        ),
        ("max_price_minor", query(|r| r.max_price_minor = Some(100))),
        (
            "max_price_minor",
            query(|r| {
                r.stay = stay(0, Some(3600));
                r.max_price_minor = Some(-1)
            }),
        ),
    ];
    let mut availability = server.availability().await;
    for (field, request) in cases {
        let shown = format!("{request:?}");
        expect_invalid(availability.find_nearby(request).await, field);
        assert_unchanged(&server, &stored, &live, &shown).await;
    }

    // The limits themselves are accepted.
    let widest = find(
        &server,
        pb::FindNearbyRequest {
            radius_m: 50_000.0,
            limit: 100,
            stay: stay(0, Some(30 * 86_400)),
            ..near_here()
        },
    )
    .await;
    assert_eq!(ids_of(&widest), ["g1"]);
}

#[tokio::test]
async fn get_availability_takes_1_to_1000_valid_ids() {
    let (server, _, live) = one_car_park().await;
    let mut availability = server.availability().await;
    let mut get = async |ids: Vec<String>| {
        availability
            .get_availability(pb::GetAvailabilityRequest { car_park_ids: ids })
            .await
            .map(|r| r.into_inner())
    };
    let mut ids: Vec<String> = (0..999).map(|i| format!("n{i}")).collect();
    ids.insert(500, "g1".into());
    let answer = get(ids.clone()).await.unwrap();
    assert_eq!(answer.availabilities, [live]);
    assert_eq!(answer.not_found_ids.len(), 999);
    assert_eq!(answer.not_found_ids[0], "n0");

    ids.push("n999".into());
    expect_invalid(get(ids).await, "car_park_ids");
    expect_invalid(get(vec![]).await, "car_park_ids");
    expect_invalid(
        get(vec!["g1".into(), "a b".into()]).await,
        "car_park_ids[1]",
    );
    expect_invalid(get(vec!["x".repeat(65)]).await, "car_park_ids[0]");
}

#[tokio::test]
async fn oversize_messages_are_refused_with_resource_exhausted() {
    let (server, stored, live) = one_car_park().await;
    let limit = 1 << 20;
    let mut availability = server.availability().await;
    let echo = availability
        .ping(pb::PingRequest {
            payload: vec![7; limit - 16],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(echo.payload.len(), limit - 16);
    let status = expect_code(
        availability
            .ping(pb::PingRequest {
                payload: vec![7; limit + 1],
            })
            .await,
        Code::ResourceExhausted,
    );
    assert!(
        status.message().contains("--max-message-bytes"),
        "{status:?}"
    );

    let huge = pb::CarPark {
        address: "a".repeat(limit),
        ..garage("g1", 36.067, 120.383)
    };
    expect_code(
        server
            .registry()
            .await
            .upsert_car_park(authed(
                pb::UpsertCarParkRequest {
                    car_park: Some(huge),
                },
                OPERATOR_A.1,
            ))
            .await,
        Code::ResourceExhausted,
    );

    let mut publisher = Publisher::open(&server, OPERATOR_A.1).await.unwrap();
    let plate = "P".repeat(16);
    let reports: Vec<_> = (0..1000)
        .map(|i| pb::OccupancyReport {
            car_park_id: "g".repeat(64),
            body: Some(pb::occupancy_report::Body::Delta(pb::DeltaReport {
                plate: plate.repeat(70),
                ..Default::default()
            })),
            ..snapshot("g1", 2 + i, 1, server.now())
        })
        .collect();
    publisher.send(reports).await;
    // A stream's too: its status comes in the trailers.
    expect_code(publisher.answer().await, Code::ResourceExhausted);
    // Counted by how the stream ended, not as the "ok" its headers said (the
    // recorder is the test process's, shared by every test: a count, not a value).
    assert!(
        requests(&server, "Ingest/Publish", "resource_exhausted").await >= 1,
        "{}",
        server.metrics_text().await
    );
    assert_unchanged(&server, &stored, &live, "oversize messages").await;
}

/// A message in a shape no citypark method takes: field 1 as a number where every
/// request has a string (or a message) there.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongShape {
    #[prost(uint64, tag = "1")]
    id: u64,
}

/// Sends `message` raw to `path`.
async fn raw_unary<M: prost::Message + Default + Send + Sync + 'static>(
    server: &TestServer,
    path: &'static str,
    message: M,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    grpc.unary::<M, pb::GetCarParkResponse, _>(
        tonic::Request::new(message),
        http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .unwrap_err()
}

#[tokio::test]
async fn malformed_and_over_size_messages_are_the_client_s_errors_not_the_server_s() {
    let (server, stored, live) = one_car_park().await;
    let malformed = raw_unary(
        &server,
        "/citypark.v1.Registry/GetCarPark",
        WrongShape { id: 7 },
    )
    .await;
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");
    assert!(
        !malformed.message().contains("Protobuf") && !malformed.message().contains("wire"),
        "no library text: {}",
        malformed.message()
    );
    assert!(
        malformed.message().starts_with("id: "),
        "names the field: {}",
        malformed.message()
    );
    // Over --max-message-bytes (1 MiB by default).
    let huge = pb::GetCarParkRequest {
        id: "x".repeat(2 << 20),
    };
    let over = raw_unary(&server, "/citypark.v1.Registry/GetCarPark", huge).await;
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    assert!(
        over.message().contains("--max-message-bytes"),
        "{}",
        over.message()
    );
    // Counted as what they are: nothing for the paging alert.
    assert!(requests(&server, "Registry/GetCarPark", "invalid_argument").await >= 1);
    assert!(requests(&server, "Registry/GetCarPark", "resource_exhausted").await >= 1);
    assert_eq!(
        requests(&server, "Registry/GetCarPark", "internal").await,
        0,
        "{}",
        server.metrics_text().await
    );
    assert_unchanged(&server, &stored, &live, "malformed requests").await;
}

/// `UpsertCarParkRequest` with a car park whose name is bytes: not UTF-8 here.
#[derive(Clone, PartialEq, prost::Message)]
struct RawUpsert {
    #[prost(message, optional, tag = "1")]
    car_park: Option<RawCarPark>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawCarPark {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(bytes = "vec", tag = "4")]
    name: Vec<u8>,
}

/// `ReportRequest` with a snapshot whose count is a string where an int32 belongs.
#[derive(Clone, PartialEq, prost::Message)]
struct RawReportRequest {
    #[prost(message, optional, tag = "1")]
    report: Option<RawReport>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawReport {
    #[prost(message, optional, tag = "4")]
    snapshot: Option<RawSnapshot>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawSnapshot {
    #[prost(message, repeated, tag = "1")]
    free: Vec<RawCount>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawCount {
    #[prost(string, tag = "2")]
    count: String,
}

/// Seen in the fuzz targets' answers: a message that breaks inside a field (bytes that
/// are not UTF-8 in a string, a string where a number belongs) was refused without
/// naming the field, unlike every other invalid field.
#[tokio::test]
async fn a_message_that_breaks_in_a_field_is_refused_naming_it() {
    let (server, stored, live) = one_car_park().await;
    let upsert = RawUpsert {
        car_park: Some(RawCarPark {
            id: "g2".into(),
            name: vec![b'G', 0xff, 0xfe],
        }),
    };
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<_, pb::UpsertCarParkResponse, _>(
            authed(upsert, OPERATOR_A.1),
            http::uri::PathAndQuery::from_static("/citypark.v1.Registry/UpsertCarPark"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("car_park.name: "),
        "{}",
        status.message()
    );
    // Through a oneof: the member is named, as the proto names it.
    let report = RawReportRequest {
        report: Some(RawReport {
            snapshot: Some(RawSnapshot {
                free: vec![RawCount {
                    count: "forty".into(),
                }],
            }),
        }),
    };
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<_, pb::ReportResponse, _>(
            authed(report, OPERATOR_A.1),
            http::uri::PathAndQuery::from_static("/citypark.v1.Ingest/Report"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("report.snapshot.free.count: "),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains("Protobuf") && !status.message().contains("wire"),
        "no library text: {}",
        status.message()
    );
    assert_unchanged(&server, &stored, &live, "messages broken in a field").await;
}

/// Found by the `calls` fuzz target: an offer's unknown category was refused naming
/// `category`, a field OfferSpaceRequest and UpdateOfferRequest do not have, rather
/// than `offer.category`.
#[tokio::test]
async fn an_offer_s_invalid_category_is_refused_naming_offer_category() {
    let (server, stored, live) = one_car_park().await;
    let offer = pb::SharedOffer {
        id: "o1".into(),
        region: "qingdao".into(),
        location: at(36.066, 120.383),
        address: "Compound 3".into(),
        category: 56,
        spaces: 1,
        time_zone: "Asia/Shanghai".into(),
        schedule: vec![pb::WeeklyPeriod {
            weekday: 1,
            start_minute: 0,
            end_minute: 1440,
        }],
        hourly_rate_minor: 400,
        ..Default::default()
    };
    let host = driver_token("d1");
    let mut shared = server.shared().await;
    let offered = shared
        .offer_space(authed(
            pb::OfferSpaceRequest {
                offer: Some(offer.clone()),
            },
            &host,
        ))
        .await;
    expect_invalid(offered, "offer.category");
    let updated = shared
        .update_offer(authed(
            pb::UpdateOfferRequest {
                offer: Some(offer),
                ..Default::default()
            },
            &host,
        ))
        .await;
    expect_invalid(updated, "offer.category");
    assert_unchanged(&server, &stored, &live, "offers of an unknown category").await;
}

#[tokio::test]
async fn a_huge_bad_value_is_not_sent_back_whole() {
    let (server, stored, live) = one_car_park().await;
    let huge = pb::CarPark {
        time_zone: "Z".repeat(100_000),
        ..garage("g2", 36.067, 120.383)
    };
    let err = try_register(&server, huge).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("car_park.time_zone"),
        "{}",
        err.message()
    );
    assert!(
        err.message().len() < 200 && err.message().contains("100000 characters"),
        "{} bytes: {}",
        err.message().len(),
        &err.message()[..200.min(err.message().len())]
    );
    assert_unchanged(&server, &stored, &live, "a huge time zone").await;
}

/// `citypark_grpc_requests_total` of `method` (its path's end) and `code` so far, in
/// this test process.
async fn requests(server: &TestServer, method: &str, code: &str) -> u64 {
    server
        .metrics_text()
        .await
        .lines()
        .find(|l| {
            l.starts_with("citypark_grpc_requests_total{")
                && l.contains(method)
                && l.contains(&format!("code=\"{code}\""))
        })
        .map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

#[tokio::test]
async fn timestamps_outside_the_protobuf_range_are_refused_naming_the_field() {
    let (server, stored, live) = one_car_park().await;
    let year_0 = prost_types::Timestamp {
        seconds: -62_135_596_801,
        nanos: 0,
    };
    let year_10000 = prost_types::Timestamp {
        seconds: 253_402_300_800,
        nanos: 0,
    };
    for t in [year_0, year_10000] {
        let mut report = snapshot("g1", 2, 1, server.now());
        report.observed_at = Some(t);
        let ack = server
            .ingest()
            .await
            .report(authed(
                pb::ReportRequest {
                    report: Some(report),
                },
                OPERATOR_A.1,
            ))
            .await;
        let message = match ack {
            Err(status) => status.message().to_owned(),
            Ok(r) => {
                let ack = r.into_inner().ack.unwrap();
                assert_eq!(ack.result, pb::ReportResult::Rejected as i32, "{ack:?}");
                format!("{}: {}", ack.field, ack.reason)
            }
        };
        assert!(
            message.contains("observed_at") && message.contains("range"),
            "{message}"
        );
    }
    assert_unchanged(&server, &stored, &live, "out-of-range timestamps").await;
}

#[tokio::test]
async fn a_wild_sequence_is_refused_and_an_operator_can_restart_the_numbering() {
    let (server, _, _) = one_car_park().await;
    let now = server.now();
    let ack = |report: pb::OccupancyReport| {
        let server = &server;
        async move {
            server
                .ingest()
                .await
                .report(authed(
                    pb::ReportRequest {
                        report: Some(report),
                    },
                    OPERATOR_A.1,
                ))
                .await
                .map(|r| r.into_inner().ack.unwrap())
        }
    };
    // 2^64 − 1 would put every later report below it: refused, and so is a jump of
    // more than 2^44 past the last applied sequence (1).
    for sequence in [u64::MAX, 1 + (1 << 44) + 1] {
        let status = ack(snapshot("g1", sequence, 5, now)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with("report.sequence"),
            "{}",
            status.message()
        );
    }
    let status = ack(snapshot("g1", 1 + (1 << 44) + 1, 5, now))
        .await
        .unwrap_err();
    assert!(
        status.message().contains("restart_sequence"),
        "{}",
        status.message()
    );
    // Millisecond timestamps as sequences are fine.
    let ms = now.as_millisecond() as u64;
    let a = ack(snapshot("g1", ms, 5, now)).await.unwrap();
    assert_eq!(a.result, pb::ReportResult::Applied as i32, "{a:?}");
    // A restart must be a snapshot; then numbering continues from it.
    let mut delta = plate_delta("g1", 2, true, "鲁B12345", now);
    delta.restart_sequence = true;
    let status = ack(delta).await.unwrap_err();
    assert!(
        status.message().starts_with("report.restart_sequence"),
        "{}",
        status.message()
    );
    let mut restart = snapshot("g1", 2, 7, now);
    restart.restart_sequence = true;
    let a = ack(restart).await.unwrap();
    assert_eq!(a.result, pb::ReportResult::Applied as i32, "{a:?}");
    assert_eq!(availability_of(&server, "g1").await.last_sequence, 2);
    let a = ack(snapshot("g1", 3, 8, now)).await.unwrap();
    assert_eq!(a.result, pb::ReportResult::Applied as i32, "{a:?}");
    let a = ack(snapshot("g1", 3, 9, now)).await.unwrap();
    assert_eq!(a.result, pb::ReportResult::Duplicate as i32, "{a:?}");
}

#[tokio::test]
async fn a_half_sent_metrics_request_does_not_hold_its_connection() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let mut stream = tokio::net::TcpStream::connect(server.metrics_addr)
        .await
        .unwrap();
    // The headers never end.
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "still open after 10 s");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "closed before its time"
    );
    // And the port still answers whole requests.
    assert!(server.metrics_text().await.contains("citypark_"));
}

/// One gRPC frame: uncompressed, the length, the message.
fn grpc_frame(message: &impl prost::Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut frame = vec![0];
    frame.extend((body.len() as u32).to_be_bytes());
    frame.extend(body);
    frame
}

/// The status a raw HTTP/2 call to `path` gets with `chunks` as its body's DATA
/// frames (each sent once the server has asked for more), from the headers of a
/// trailers-only answer or else from the trailers.
async fn raw_h2_call(server: &TestServer, path: &str, chunks: Vec<Vec<u8>>) -> (i32, String) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let frames = futures_util::stream::iter(chunks.into_iter().map(|c| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(axum::body::Bytes::from(c)))
    }));
    let request = http::Request::post(format!("http://citypark{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::StreamBody::new(frames))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let status = |h: &http::HeaderMap| {
        h.get("grpc-status").map(|v| {
            // Percent-encoded, as the gRPC spec has it: only spaces here.
            let message = h.get("grpc-message").map_or("", |m| m.to_str().unwrap());
            (
                v.to_str().unwrap().parse().unwrap(),
                message.replace("%20", " "),
            )
        })
    };
    if let Some(s) = status(response.headers()) {
        return s;
    }
    let collected = response.into_body().collect().await.unwrap();
    status(collected.trailers().expect("trailers")).expect("grpc-status")
}

/// gRPC's status-code table: a second request message on a unary method is a
/// cardinality violation, UNIMPLEMENTED. tonic alone answered the first and dropped the
/// rest unread (issue 22, item 4).
#[tokio::test]
async fn a_second_request_message_on_a_unary_or_server_streaming_method_is_unimplemented() {
    let (server, stored, _) = one_car_park().await;
    let get = grpc_frame(&pb::GetCarParkRequest { id: "g1".into() });
    let ok = raw_h2_call(
        &server,
        "/citypark.v1.Registry/GetCarPark",
        vec![get.clone()],
    )
    .await;
    assert_eq!(ok.0, 0, "one message is answered: {ok:?}");
    // Two messages in one DATA frame, in two, and the second's prefix split.
    let two = [get.clone(), get.clone()].concat();
    let splits = [
        vec![two.clone()],
        vec![get.clone(), get.clone()],
        vec![two[..get.len() + 2].to_vec(), two[get.len() + 2..].to_vec()],
    ];
    for chunks in splits {
        let (code, message) =
            raw_h2_call(&server, "/citypark.v1.Registry/GetCarPark", chunks).await;
        assert_eq!(code, Code::Unimplemented as i32, "{message}");
        assert!(message.contains("one request message"), "{message}");
    }
    // A write the same: nothing of the first message is applied.
    let mut changed = stored.clone();
    changed.name = "Renamed by a call that should fail".into();
    let upsert = grpc_frame(&pb::UpsertCarParkRequest {
        car_park: Some(changed),
    });
    let (code, _) = raw_h2_call(
        &server,
        "/citypark.v1.Registry/UpsertCarPark",
        vec![upsert.clone(), upsert],
    )
    .await;
    assert_eq!(code, Code::Unimplemented as i32);
    let now = server
        .registry()
        .await
        .get_car_park(pb::GetCarParkRequest { id: "g1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.car_park.unwrap().name, stored.name);
    // A server-streaming method takes one request message too.
    let watch = grpc_frame(&pb::WatchAvailabilityRequest {
        selector: Some(pb::watch_availability_request::Selector::Ids(
            pb::CarParkIds {
                ids: vec!["g1".into()],
            },
        )),
    });
    let (code, _) = raw_h2_call(
        &server,
        "/citypark.v1.Availability/WatchAvailability",
        vec![watch.clone(), watch],
    )
    .await;
    assert_eq!(code, Code::Unimplemented as i32);
    assert!(requests(&server, "Registry/GetCarPark", "unimplemented").await >= 3);
}
