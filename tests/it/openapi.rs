//! The OpenAPI 3.1 description of the HTTP/JSON API (`/openapi.json` on the HTTP
//! port, generated from `proto/` at build time): valid by `openapi-spec-validator`,
//! naming the gRPC port as its server, and true of the running server by
//! schemathesis (PyPI), which calls every operation with data it derives from the
//! description: no answer is a server error, and every answer, its status, content
//! type and body, is one the description allows. Without the Python tools these tests
//! say why and skip, unless `CITYPARK_REQUIRE_TOOLS=1` (CI, whose `.ci/run` installs
//! them), which makes them fail instead.

use std::process::Command;

use serde_json::Value;

use crate::support::*;

const REQUIRE_VAR: &str = "CITYPARK_REQUIRE_TOOLS";

/// Whether `tool` runs; prints why the test skips when not, or panics with
/// `CITYPARK_REQUIRE_TOOLS=1`.
fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var(REQUIRE_VAR).as_deref() == Ok("1") {
            panic!("{tool} not found and {REQUIRE_VAR}=1: pip install {tool}");
        }
        eprintln!(
            "skipping: {tool} not found (pip install {tool}), or set {REQUIRE_VAR}=1 to fail instead"
        );
    }
    found
}

/// Runs a command off the runtime (the server runs on it): its status and output.
async fn run(mut command: Command) -> (bool, String) {
    let output = tokio::task::spawn_blocking(move || command.output().expect("the tool runs"))
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

async fn description(server: &TestServer) -> Value {
    let (status, headers, body) = http_get(server.http_addr, "/openapi.json", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn the_description_is_valid_openapi_and_names_the_grpc_port() {
    let server = TestServer::start().await;
    let description = description(&server).await;
    assert_eq!(description["openapi"], "3.1.0");
    // The gRPC port on the host the caller reached (the test's client says
    // `Host: citypark`).
    assert_eq!(
        description["servers"][0]["url"],
        format!("http://citypark:{}", server.addr.port())
    );
    let report = &description["paths"]["/citypark.v1.Ingest/Report"]["post"];
    assert_eq!(
        report["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/citypark.v1.ReportRequest"
    );
    // The proto's comments are the descriptions.
    let sequence = &description["components"]["schemas"]["citypark.v1.OccupancyReport"]["properties"]
        ["sequence"];
    assert!(
        sequence["description"]
            .as_str()
            .is_some_and(|d| d.contains("sequence number")),
        "{sequence}"
    );
    assert_eq!(sequence["format"], "int64");

    if !have("openapi-spec-validator") {
        return;
    }
    let file = std::env::temp_dir().join(format!("citypark-openapi-{}.json", std::process::id()));
    std::fs::write(&file, description.to_string()).unwrap();
    let mut command = Command::new("openapi-spec-validator");
    command.arg(&file);
    let (ok, output) = run(command).await;
    let _ = std::fs::remove_file(&file);
    assert!(ok, "{output}");
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_every_answer_matches_the_description() {
    if !have("schemathesis") {
        return;
    }
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.06, 120.38)).await;
    register(&server, garage("g2", 36.07, 120.39)).await;
    report_ok(&server, snapshot("g1", 1, 42, server.now())).await;
    let mut command = Command::new("schemathesis");
    command
        .arg("run")
        .arg(format!("http://{}/openapi.json", server.http_addr))
        .arg("--url")
        .arg(format!("http://{}", server.addr))
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance",
            "--max-examples",
            "20",
            "--phases",
            "examples,coverage,fuzzing",
            "--generation-deterministic",
            "--header",
            &format!("Authorization: Bearer {}", OPERATOR_A.1),
        ])
        // Its cache and reports in a directory of their own, not the checkout.
        .current_dir(std::env::temp_dir())
        // No colours or progress bars in the test's output.
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "");
    let (ok, output) = run(command).await;
    assert!(ok, "{output}");
    assert!(output.contains("passed"), "{output}");
}
