//! Every unary method over plain HTTP/JSON by the Connect protocol, on the gRPC port:
//! raw HTTP/1.1 as a barrier vendor's PHP or Java integration sends it, binary
//! protobuf bodies, `buf curl --protocol connect`, and connect-web's JSON client in
//! Node (`web/test/connect.e2e.ts`). Each call goes through the same admission (keys,
//! rate limits, limits) and the same request metrics as gRPC. Without Node's tools
//! (the copy of `web/` build.rs installs) the last two say why and skip, unless
//! `CITYPARK_REQUIRE_TOOLS=1` (CI), which makes them fail instead.

use std::path::{Path, PathBuf};

use citypark::{grpc::RateLimits, pb};
use prost::Message as _;
use serde_json::{Value, json};

use crate::support::*;

const REQUIRE_VAR: &str = "CITYPARK_REQUIRE_TOOLS";

/// A Connect unary call with a JSON body: the HTTP status, headers and the JSON answer.
async fn post_json(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, Vec<(String, String)>, Value) {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    let (status, headers, body) =
        http_call(server.addr, "POST", path, &all, body.to_string().as_bytes()).await;
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&body)));
    (status, headers, json)
}

fn iso(t: citypark::domain::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn report_json(id: &str, sequence: u64, free: i32, server: &TestServer) -> Value {
    json!({"report": {
        "carParkId": id,
        "sequence": sequence.to_string(),
        "observedAt": iso(server.now()),
        "snapshot": {"free": [{"category": "SPACE_CATEGORY_STANDARD", "count": free}]},
    }})
}

/// The sum of a request counter's samples for `method` and `code`.
fn requests(metrics: &str, method: &str, code: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("citypark_grpc_requests_total{")
                && l.contains(&format!("method=\"{method}\""))
                && l.contains(&format!("code=\"{code}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_report_and_a_search_as_plain_http_json() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.06, 120.38)).await;
    let key = format!("Bearer {}", OPERATOR_A.1);
    let before = server.metrics_text().await;

    let (status, headers, answer) = post_json(
        &server,
        "/citypark.v1.Ingest/Report",
        &[("Authorization", &key)],
        &report_json("g1", 1, 42, &server),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let ack = &answer["ack"];
    assert_eq!(
        (&ack["carParkId"], &ack["sequence"], &ack["result"]),
        (
            &Value::from("g1"),
            &Value::from("1"),
            &Value::from("REPORT_RESULT_APPLIED")
        ),
        "{answer}"
    );
    // What gRPC reads is what the JSON report wrote.
    let live = availability_of(&server, "g1").await;
    assert_eq!(free_standard(&live), 42);

    let (status, _, answer) = post_json(
        &server,
        "/citypark.v1.Availability/FindNearby",
        &[],
        &json!({"location": {"latitude": 36.06, "longitude": 120.38}, "radiusM": 500}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let first = &answer["results"][0];
    assert_eq!(first["carParkId"], "g1");
    assert_eq!(first["available"], 42);
    assert_eq!(first["status"], "CAR_PARK_STATUS_OPEN");
    // proto3 JSON: 64-bit integers as strings, and every field, zero values included.
    assert_eq!(first["dataAgeSeconds"], "0");
    assert_eq!(first["offerId"], "");

    // A repeated report is harmless, as over gRPC: its sequence says so.
    let (status, _, answer) = post_json(
        &server,
        "/citypark.v1.Ingest/Report",
        &[("Authorization", &key)],
        &report_json("g1", 1, 7, &server),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["ack"]["result"], "REPORT_RESULT_DUPLICATE",
        "{answer}"
    );
    assert_eq!(free_standard(&availability_of(&server, "g1").await), 42);

    // Health over JSON, for a load balancer that speaks HTTP only; an empty body is
    // the empty message.
    let (status, _, body) = http_call(
        server.addr,
        "POST",
        "/grpc.health.v1.Health/Check",
        &[("Content-Type", "application/json")],
        b"",
    )
    .await;
    assert_eq!(
        (status, body.as_slice()),
        (200, &br#"{"status":"SERVING"}"#[..])
    );

    // Counted as gRPC calls are (by the test process's recorder: at least these).
    let after = server.metrics_text().await;
    for (method, at_least) in [
        ("citypark.v1.Ingest/Report", 2.0),
        ("citypark.v1.Availability/FindNearby", 1.0),
    ] {
        let counted = requests(&after, method, "ok") - requests(&before, method, "ok");
        assert!(counted >= at_least, "{method}: {counted}");
    }
}

/// What is sent, to which path, with which headers and body; the HTTP status, the
/// Connect code and a part of the message it is answered.
type Case<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
    &'a str,
);

#[tokio::test]
async fn errors_are_connects_json_with_its_http_status() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.06, 120.38)).await;
    let before = server.metrics_text().await;
    let json_type = ("Content-Type", "application/json");
    let cases: Vec<Case> = vec![
        (
            "no key",
            "/citypark.v1.Ingest/Report",
            vec![json_type],
            report_json("g1", 1, 1, &server).to_string().into_bytes(),
            401,
            "unauthenticated",
            "operator API key",
        ),
        (
            "a car park nobody registered",
            "/citypark.v1.Registry/GetCarPark",
            vec![json_type],
            br#"{"id": "nope"}"#.to_vec(),
            404,
            "not_found",
            "nope",
        ),
        (
            "a field the message does not have",
            "/citypark.v1.Registry/GetCarPark",
            vec![json_type],
            br#"{"carPark": "g1"}"#.to_vec(),
            400,
            "invalid_argument",
            "citypark.v1.GetCarParkRequest",
        ),
        (
            "not JSON",
            "/citypark.v1.Registry/GetCarPark",
            vec![json_type],
            b"id=g1".to_vec(),
            400,
            "invalid_argument",
            "proto3 JSON",
        ),
        (
            "the service's own refusal",
            "/citypark.v1.Availability/FindNearby",
            vec![json_type],
            br#"{"location": {"latitude": 91, "longitude": 0}}"#.to_vec(),
            400,
            "invalid_argument",
            "location",
        ),
        (
            "a server stream",
            "/citypark.v1.Availability/WatchAvailability",
            vec![json_type],
            b"{}".to_vec(),
            501,
            "unimplemented",
            "gRPC and gRPC-Web only",
        ),
        (
            "no such method",
            "/citypark.v1.Availability/Teleport",
            vec![json_type],
            b"{}".to_vec(),
            404,
            "unimplemented",
            "no method",
        ),
        (
            "a compressed body",
            "/citypark.v1.Registry/GetCarPark",
            vec![json_type, ("Content-Encoding", "gzip")],
            b"{}".to_vec(),
            501,
            "unimplemented",
            "uncompressed",
        ),
        (
            "another protocol version",
            "/citypark.v1.Registry/GetCarPark",
            vec![json_type, ("Connect-Protocol-Version", "2")],
            b"{}".to_vec(),
            400,
            "invalid_argument",
            "connect-protocol-version",
        ),
        (
            "no content type (neither Connect nor gRPC)",
            "/citypark.v1.Registry/GetCarPark",
            vec![],
            b"{}".to_vec(),
            415,
            "invalid_argument",
            "Content-Type application/json",
        ),
        (
            "over the message size limit",
            "/citypark.v1.Registry/GetCarPark",
            vec![json_type],
            format!(r#"{{"id": "{}"}}"#, "x".repeat(1 << 20)).into_bytes(),
            429,
            "resource_exhausted",
            "larger than",
        ),
    ];
    for (what, path, headers, body, status, code, says) in cases {
        let (got, got_headers, answer) =
            http_call(server.addr, "POST", path, &headers, &body).await;
        let answer: Value = serde_json::from_slice(&answer)
            .unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(&answer)));
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{what}: {answer}"
        );
        assert_eq!(
            header(&got_headers, "content-type"),
            Some("application/json"),
            "{what}"
        );
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{what}: {message}");
    }
    // A GET is not a Connect unary call.
    let (status, headers, _) = http_get(server.addr, "/citypark.v1.Availability/Ping", &[]).await;
    assert_eq!((status, header(&headers, "allow")), (405, Some("POST")));
    // Calls refused before the stack, for a method it has, count as any other. (The
    // recorder is the test process's: other tests' calls may count too.)
    let after = server.metrics_text().await;
    for (method, code, at_least) in [
        ("citypark.v1.Registry/GetCarPark", "invalid_argument", 2.0),
        ("citypark.v1.Registry/GetCarPark", "resource_exhausted", 1.0),
        ("citypark.v1.Registry/GetCarPark", "not_found", 1.0),
        ("citypark.v1.Ingest/Report", "unauthenticated", 1.0),
    ] {
        let counted = requests(&after, method, code) - requests(&before, method, code);
        assert!(counted >= at_least, "{method} {code}: {counted}");
    }
}

#[tokio::test]
async fn a_rate_limit_refusal_carries_its_retry_info_as_a_connect_detail() {
    let server = TestServer::start_with(|s| {
        s.rate_limits = RateLimits {
            operator: 0.0,
            driver: 0.0,
            anonymous: 1.0,
        };
    })
    .await;
    let mut last = None;
    for _ in 0..10 {
        let answer = post_json(&server, "/citypark.v1.Availability/Ping", &[], &json!({})).await;
        if answer.0 != 200 {
            last = Some(answer);
            break;
        }
    }
    let (status, _, answer) = last.expect("the address's budget runs out");
    assert_eq!(
        (status, &answer["code"]),
        (429, &Value::from("resource_exhausted"))
    );
    let details = answer["details"].as_array().expect("details");
    let retry = details
        .iter()
        .find(|d| d["type"] == "google.rpc.RetryInfo")
        .unwrap_or_else(|| panic!("a RetryInfo: {answer}"));
    // Connect's binary detail: standard base64 without padding, of the message.
    use base64::Engine as _;
    let value = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(retry["value"].as_str().unwrap())
        .unwrap();
    let info = tonic_types::pb::RetryInfo::decode(value.as_slice()).unwrap();
    assert!(info.retry_delay.is_some(), "{info:?}");
}

/// A page on another origin calls with connect-web: CORS lets it, as for gRPC-Web.
#[tokio::test]
async fn a_browser_on_another_origin_may_call_after_its_preflight() {
    let server = TestServer::start().await;
    let origin = ("Origin", "https://app.example");
    let (status, headers, _) = http_call(
        server.addr,
        "OPTIONS",
        "/citypark.v1.Availability/FindNearby",
        &[
            origin,
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "content-type,connect-protocol-version,connect-timeout-ms",
            ),
        ],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let allowed = header(&headers, "access-control-allow-headers").unwrap_or_default();
    for name in [
        "content-type",
        "connect-protocol-version",
        "connect-timeout-ms",
    ] {
        assert!(allowed.contains(name), "{name} in {allowed}");
    }
    let (status, headers, _) = http_call(
        server.addr,
        "POST",
        "/citypark.v1.Availability/Ping",
        &[origin, ("Content-Type", "application/json")],
        b"{}",
    )
    .await;
    assert_eq!(status, 200);
    assert!(header(&headers, "access-control-allow-origin").is_some());
}

#[tokio::test]
async fn binary_protobuf_bodies_are_served_too() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.06, 120.38)).await;
    let request = pb::GetCarParkRequest { id: "g1".into() }.encode_to_vec();
    let (status, headers, body) = http_call(
        server.addr,
        "POST",
        "/citypark.v1.Registry/GetCarPark",
        &[
            ("Content-Type", "application/proto"),
            ("Connect-Protocol-Version", "1"),
        ],
        &request,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(header(&headers, "content-type"), Some("application/proto"));
    let answer = pb::GetCarParkResponse::decode(body.as_slice()).unwrap();
    assert_eq!(answer.car_park.unwrap().name, "Garage g1");
}

// ---------------------------------------------------------------------------------
// With Node's tools: buf curl and connect-web

/// A tool the copy of `web/` build.rs installed (`node_modules/.bin/<name>`), or None
/// after printing why the test skips; panics instead when `CITYPARK_REQUIRE_TOOLS=1`.
fn web_tool(name: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CITYPARK_WEB_WORK"))
        .join("node_modules/.bin")
        .join(name);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var(REQUIRE_VAR).as_deref() == Ok("1") {
        panic!("{} not found and {REQUIRE_VAR}=1", path.display());
    }
    eprintln!(
        "skipping: {} not found: the build installs it with npm when Node.js is present",
        path.display()
    );
    None
}

/// Runs a command off the runtime (the server runs on it) and returns its stdout;
/// panics with its stderr when it fails.
async fn run(mut command: std::process::Command) -> String {
    let output = tokio::task::spawn_blocking(move || command.output().expect("the tool runs"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{:?}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn buf_curl_speaks_connect_to_it_over_http1_and_http2() {
    let Some(buf) = web_tool("buf") else {
        return;
    };
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.06, 120.38)).await;
    report_ok(&server, snapshot("g1", 1, 42, server.now())).await;
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    for http2 in [false, true] {
        let mut command = std::process::Command::new(&buf);
        command.args(["curl", "--protocol", "connect", "--schema"]);
        command.arg(&proto);
        if http2 {
            command.arg("--http2-prior-knowledge");
        }
        command.args([
            "--data",
            r#"{"location": {"latitude": 36.06, "longitude": 120.38}, "radiusM": 500}"#,
            &format!("http://{}/citypark.v1.Availability/FindNearby", server.addr),
        ]);
        let answer: Value = serde_json::from_str(&run(command).await).unwrap();
        assert_eq!(answer["results"][0]["carParkId"], "g1", "http2 {http2}");
        assert_eq!(answer["results"][0]["available"], 42, "http2 {http2}");
    }
}

#[tokio::test]
async fn connect_web_json_client_reports_searches_and_reads_errors() {
    let (Some(esbuild), Some(_)) = (web_tool("esbuild"), web_tool("buf")) else {
        return;
    };
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.06, 120.38)).await;
    let work = Path::new(env!("CITYPARK_WEB_WORK"));
    let bundle = std::env::temp_dir().join(format!("citypark-connect-{}.mjs", std::process::id()));
    let mut command = std::process::Command::new(esbuild);
    command
        .current_dir(work)
        .args([
            "test/connect.e2e.ts",
            "--bundle",
            "--platform=node",
            "--format=esm",
        ])
        .arg(format!("--outfile={}", bundle.display()))
        .arg("--log-level=warning");
    run(command).await;
    let mut command = std::process::Command::new("node");
    command.arg(&bundle).args([
        &format!("http://{}", server.addr),
        OPERATOR_A.1,
        "g1",
        &iso(server.now()),
    ]);
    let out = run(command).await;
    let _ = std::fs::remove_file(&bundle);
    let answer: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        answer,
        json!({
            "report": "REPORT_RESULT_APPLIED",
            "nearby": [{"id": "g1", "available": 33}],
            "missing": "not_found",
            "unauthenticated": "unauthenticated",
        })
    );
    assert_eq!(free_standard(&availability_of(&server, "g1").await), 33);
}
