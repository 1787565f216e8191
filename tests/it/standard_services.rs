//! What every gRPC server owes its operators: ping, health, reflection, metrics, shutdown.

use std::time::Duration;

use crate::support::*;
use citypark::pb;
use prost::Message as _;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

#[tokio::test]
async fn ping_echoes_its_payload() {
    let server = TestServer::start().await;
    let mut availability = server.availability().await;
    for payload in [vec![], b"hello".to_vec(), vec![0xff; 4096]] {
        let echo = availability
            .ping(pb::PingRequest {
                payload: payload.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(echo.payload, payload);
    }
}

#[tokio::test]
async fn health_is_serving_for_the_server_and_each_service() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in [
        "",
        "citypark.v1.Availability",
        "citypark.v1.Registry",
        "citypark.v1.Ingest",
    ] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
    }
    expect_code(
        health
            .check(HealthCheckRequest {
                service: "citypark.v1.Nothing".into(),
            })
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn health_turns_not_serving_when_shutdown_begins() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "citypark.v1.Availability".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut watch).await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    let stopping = tokio::spawn(server.stop());
    let then = next(&mut watch).await.unwrap().unwrap();
    assert_eq!(then.status(), ServingStatus::NotServing);
    drop(watch);
    stopping.await.unwrap().unwrap();
}

/// Sends one reflection request (v1) and returns the response.
async fn reflect_v1(
    server: &TestServer,
    request: v1::server_reflection_request::MessageRequest,
) -> v1::server_reflection_response::MessageResponse {
    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    next(&mut answers)
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

/// The files of a v1 file descriptor answer.
fn files(
    answer: v1::server_reflection_response::MessageResponse,
) -> Vec<prost_types::FileDescriptorProto> {
    match answer {
        v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files) => files
            .file_descriptor_proto
            .iter()
            .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
            .collect(),
        other => panic!("expected file descriptors, got {other:?}"),
    }
}

const CITYPARK_SERVICES: [&str; 3] = [
    "citypark.v1.Availability",
    "citypark.v1.Ingest",
    "citypark.v1.Registry",
];

#[tokio::test]
async fn reflection_v1_lists_the_citypark_services() {
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let server = TestServer::start().await;
    let answer = reflect_v1(&server, MessageRequest::ListServices(String::new())).await;
    let MessageResponse::ListServicesResponse(list) = answer else {
        panic!("expected a service list, got {answer:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in CITYPARK_SERVICES {
        assert!(names.contains(&service), "{service} in {names:?}");
    }
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_citypark_services() {
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let server = TestServer::start().await;
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = next(&mut answers).await.unwrap().unwrap().message_response;
    let Some(MessageResponse::ListServicesResponse(list)) = answer else {
        panic!("expected a service list, got {answer:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in CITYPARK_SERVICES {
        assert!(names.contains(&service), "{service} in {names:?}");
    }
}

#[tokio::test]
async fn reflection_resolves_a_service_and_every_file_it_imports() {
    use v1::server_reflection_request::MessageRequest;
    let server = TestServer::start().await;
    let found = files(
        reflect_v1(
            &server,
            MessageRequest::FileContainingSymbol("citypark.v1.Availability".into()),
        )
        .await,
    );
    let availability = found
        .iter()
        .find(|f| f.name() == "citypark/v1/availability.proto")
        .expect("the file declaring the service");
    assert_eq!(availability.package(), "citypark.v1");
    let service = &availability.service[0];
    assert_eq!(service.name(), "Availability");
    let methods: Vec<_> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        [
            "FindNearby",
            "GetAvailability",
            "WatchAvailability",
            "Ping",
            "GetOccupancyHistory",
            "Forecast",
        ]
    );

    // A client can then fetch every import, down to the well-known types.
    let mut pending: Vec<String> = availability.dependency.clone();
    let mut resolved = Vec::new();
    while let Some(name) = pending.pop() {
        if resolved.contains(&name) {
            continue;
        }
        let got = files(reflect_v1(&server, MessageRequest::FileByFilename(name.clone())).await);
        let file = got
            .iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("{name} is resolvable"));
        pending.extend(file.dependency.iter().cloned());
        resolved.push(name);
    }
    resolved.sort();
    assert_eq!(
        resolved,
        [
            "citypark/v1/types.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/timestamp.proto"
        ]
    );
    let types = files(
        reflect_v1(
            &server,
            MessageRequest::FileContainingSymbol("citypark.v1.CarParkAvailability".into()),
        )
        .await,
    );
    assert_eq!(types[0].name(), "citypark/v1/types.proto");
}

#[tokio::test]
async fn metrics_count_requests_by_method_and_code_and_reports_by_result() {
    // The registry is process-wide and other tests run alongside: compare increases.
    let server = TestServer::start().await;
    const FIND_OK: &str =
        r#"citypark_grpc_requests_total{method="citypark.v1.Availability/FindNearby",code="ok"}"#;
    const FIND_INVALID: &str = r#"citypark_grpc_requests_total{method="citypark.v1.Availability/FindNearby",code="invalid_argument"}"#;
    const APPLIED: &str = r#"citypark_ingest_reports_total{result="applied",reason=""}"#;
    const DUPLICATE: &str = r#"citypark_ingest_reports_total{result="duplicate",reason=""}"#;
    const REJECTED: &str =
        r#"citypark_ingest_reports_total{result="rejected",reason="invalid_argument"}"#;
    let all = [FIND_OK, FIND_INVALID, APPLIED, DUPLICATE, REJECTED];
    let before_text = server.metrics_text().await;
    assert!(before_text.starts_with("HTTP/1.1 200"), "{before_text}");
    let before: Vec<f64> = all.iter().map(|s| series(&before_text, s)).collect();

    register(&server, garage("g1", 36.067, 120.383)).await;
    let mut availability = server.availability().await;
    for _ in 0..3 {
        availability.find_nearby(near_here()).await.unwrap();
    }
    let bad = pb::FindNearbyRequest {
        limit: 101,
        ..near_here()
    };
    expect_code(availability.find_nearby(bad).await, Code::InvalidArgument);
    let now = server.now();
    let mut publisher = Publisher::open(&server, OPERATOR_A.1).await.unwrap();
    publisher
        .exchange(vec![
            snapshot("g1", 1, 5, now),
            snapshot("g1", 2, 6, now),
            snapshot("g1", 2, 6, now),
            snapshot("g1", 3, 500, now),
        ])
        .await;

    let text = server.metrics_text().await;
    let after: Vec<f64> = all.iter().map(|s| series(&text, s)).collect();
    for ((name, was), now) in all.iter().zip(&before).zip(&after) {
        let least = match *name {
            FIND_OK => 3.0,
            APPLIED => 2.0,
            _ => 1.0,
        };
        assert!(now - was >= least, "{name}: {was} -> {now}\n{text}");
    }
    assert!(
        text.contains("# TYPE citypark_grpc_request_duration_seconds histogram"),
        "{text}"
    );
    // The status gauges come from the sweeper (every 50 ms in tests); every status of
    // a region with car parks is present, so only their presence can be checked with
    // other servers around.
    let mut text = text;
    for _ in 0..100 {
        if text.contains(r#"citypark_car_parks{region="qingdao",status="open"}"#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = server.metrics_text().await;
    }
    for status in ["open", "closed", "stale", "no_data"] {
        let gauge = format!(r#"citypark_car_parks{{region="qingdao",status="{status}"}}"#);
        assert!(text.contains(&gauge), "{gauge} missing\n{text}");
    }
}

#[tokio::test]
async fn shutdown_ends_open_watch_and_publish_streams_and_drains() {
    // A long grace period, so that finishing well inside it shows the drain completed
    // rather than being cut off at the deadline.
    let server = TestServer::start_with(|s| s.shutdown_grace = Duration::from_secs(60)).await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    let mut watch = watch_ids(&server, &["g1"]).await.unwrap();
    read_snapshot(&mut watch).await;
    let mut publisher = Publisher::open(&server, OPERATOR_A.1).await.unwrap();
    publisher
        .exchange(vec![snapshot("g1", 1, 5, server.now())])
        .await;
    let _ = next_update(&mut watch).await;

    tokio::time::timeout(Duration::from_secs(20), server.stop())
        .await
        .expect("the server drained well before the grace period")
        .expect("a clean stop");
    assert!(
        next(&mut watch).await.unwrap().is_none(),
        "the watch stream ends"
    );
    let status = expect_code(publisher.answer().await, Code::Unavailable);
    assert!(status.message().contains("shutting down"), "{status:?}");
}

/// Every method the server serves (as its reflection lists them) is counted in the
/// request metrics under its own label, not as "other": each is called once with an
/// empty message (what it answers does not matter) and its own count must grow. (The
/// recorder is the process's, so other tests' calls add to the counts, never take.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_method_has_its_own_label_in_the_request_metrics() {
    use tonic::codegen::http::uri::PathAndQuery;
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let server = TestServer::start().await;
    let MessageResponse::ListServicesResponse(list) =
        reflect_v1(&server, MessageRequest::ListServices(String::new())).await
    else {
        panic!("expected a service list");
    };
    let mut paths = Vec::new();
    for service in list
        .service
        .iter()
        .filter(|s| s.name.starts_with("citypark."))
    {
        let found = files(
            reflect_v1(
                &server,
                MessageRequest::FileContainingSymbol(service.name.clone()),
            )
            .await,
        );
        let (package, short) = service.name.rsplit_once('.').unwrap();
        let declared = found
            .iter()
            .filter(|f| f.package() == package)
            .flat_map(|f| &f.service)
            .find(|s| s.name() == short)
            .expect("the service's file");
        for method in &declared.method {
            paths.push((
                format!("/{}/{}", service.name, method.name()),
                method.client_streaming(),
                method.server_streaming(),
            ));
        }
    }
    // Every citypark service, Sessions' nine methods among them.
    assert!(
        paths
            .iter()
            .filter(|p| p.0.starts_with("/citypark.v1.Sessions/"))
            .count()
            >= 9
    );
    let before = requests_by_method(&server.metrics_text().await);
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    for (path, client_streaming, server_streaming) in &paths {
        grpc.ready().await.unwrap();
        let path = PathAndQuery::try_from(path.as_str()).unwrap();
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        // The answer is an error for most (a required field is missing): only the
        // label counts here.
        let _ = match (client_streaming, server_streaming) {
            (false, false) => grpc
                .unary(tonic::Request::new(()), path, codec)
                .await
                .map(|_| ()),
            (false, true) => grpc
                .server_streaming(tonic::Request::new(()), path, codec)
                .await
                .map(|_| ()),
            (true, _) => grpc
                .streaming(tonic::Request::new(tokio_stream::iter([()])), path, codec)
                .await
                .map(|_| ()),
        };
    }
    eventually("every call is counted under its method", || async {
        let after = requests_by_method(&server.metrics_text().await);
        let uncounted: Vec<&str> = paths
            .iter()
            .map(|(path, ..)| &path[1..])
            .filter(|m| {
                after.get(*m).copied().unwrap_or(0.0) <= before.get(*m).copied().unwrap_or(0.0)
            })
            .collect();
        uncounted.is_empty().then_some(())
    })
    .await;
}

/// `citypark_grpc_requests_total` summed over codes, by method label.
fn requests_by_method(text: &str) -> std::collections::HashMap<String, f64> {
    let mut sums = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("citypark_grpc_requests_total{"))
    {
        let Some(rest) = line.split("method=\"").nth(1) else {
            continue;
        };
        let method = rest.split('"').next().unwrap().to_owned();
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *sums.entry(method).or_insert(0.0) += value;
    }
    sums
}
