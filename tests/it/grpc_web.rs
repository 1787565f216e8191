//! gRPC-Web for browsers: calls over plain HTTP/1.1 and the CORS preflight they need.

use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use citypark::pb;

/// Sends one raw HTTP/1.1 request and returns the whole response as bytes.
async fn http1(server: &TestServer, head: &str, body: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "{head}\r\nHost: citypark\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .expect("the server answers")
        .unwrap();
    response
}

/// One gRPC(-Web) frame: flag, 4-byte big-endian length, payload.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_browser_can_call_over_grpc_web_on_http1() {
    let server = TestServer::start().await;
    let ping = pb::PingRequest {
        payload: b"from a browser".to_vec(),
    };
    let response = http1(
        &server,
        "POST /citypark.v1.Availability/Ping HTTP/1.1\r\nContent-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1",
        &frame(0, &ping.encode_to_vec()),
    )
    .await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_lowercase()
            .contains("content-type: application/grpc-web+proto"),
        "{text}"
    );
    let echo = pb::PingResponse {
        payload: ping.payload.clone(),
    }
    .encode_to_vec();
    assert!(contains(&response, &frame(0, &echo)), "{text}");
    // gRPC-Web carries the status as a trailer frame (flag 0x80) in the body.
    assert!(contains(&response, b"grpc-status:0"), "{text}");

    let bad = http1(
        &server,
        "POST /citypark.v1.Availability/FindNearby HTTP/1.1\r\nContent-Type: application/grpc-web+proto",
        &frame(0, &pb::FindNearbyRequest::default().encode_to_vec()),
    )
    .await;
    let text = String::from_utf8_lossy(&bad);
    assert!(
        text.contains("grpc-status:3") || text.contains("grpc-status: 3"),
        "INVALID_ARGUMENT travels to the browser: {text}"
    );
    assert!(text.contains("location"), "{text}");
}

#[tokio::test]
async fn the_cors_preflight_allows_the_grpc_web_headers() {
    let server = TestServer::start().await;
    let response = http1(
        &server,
        "OPTIONS /citypark.v1.Ingest/Report HTTP/1.1\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type,x-grpc-web,authorization",
        b"",
    )
    .await;
    let text = String::from_utf8_lossy(&response).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("access-control-allow-origin: *"), "{text}");
    for header in ["content-type", "x-grpc-web", "authorization"] {
        assert!(text.contains(header), "{header} not allowed: {text}");
    }
}

#[tokio::test]
async fn only_the_configured_origins_are_allowed() {
    let server = TestServer::start_with(|s| {
        s.cors_origins = vec![http::HeaderValue::from_static("https://app.example.com")];
    })
    .await;
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /citypark.v1.Availability/Ping HTTP/1.1\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST"
        )
    };
    let allowed = http1(&server, &preflight("https://app.example.com"), b"").await;
    let text = String::from_utf8_lossy(&allowed).to_lowercase();
    assert!(
        text.contains("access-control-allow-origin: https://app.example.com"),
        "{text}"
    );
    let refused = http1(&server, &preflight("https://evil.example.net"), b"").await;
    let text = String::from_utf8_lossy(&refused).to_lowercase();
    assert!(!text.contains("access-control-allow-origin"), "{text}");
}

#[tokio::test]
async fn a_malformed_grpc_web_body_is_the_client_s_error_without_library_text() {
    let server = TestServer::start().await;
    // gRPC-Web text is base64; byte 0x80 is none of its symbols.
    let response = http1(
        &server,
        "POST /citypark.v1.Availability/Ping HTTP/1.1\r\nContent-Type: application/grpc-web-text",
        b"\x80\x00\x00\x00\x10abc",
    )
    .await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.contains("grpc-status: 3"), "{text}");
    assert!(
        text.contains("grpc-message: the gRPC-Web request body is malformed"),
        "{text}"
    );
    assert!(!text.contains("tonic"), "no library text: {text}");
}
