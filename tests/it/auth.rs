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

/// Test-only keys: an RSA pair made for these tests (`openssl genpkey -algorithm RSA`).
const TEST_RSA_KEY: &str = include_str!("../data/jwt/test-rsa.key");
const TEST_RSA_PUB: &str = include_str!("../data/jwt/test-rsa.pub");

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token with `claims`, signed with `key` under `alg`.
fn signed(
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    claims: serde_json::Value,
) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, key).unwrap()
}

#[tokio::test]
async fn driver_tokens_hold_against_forgery_and_rotate() {
    use citypark::tokens::DriverTokens;
    use jsonwebtoken::{Algorithm, EncodingKey};
    const OLD: &[u8] = b"the-old-driver-secret-0123456789ab";
    const NEW: &[u8] = b"the-new-driver-secret-0123456789ab";
    let server = TestServer::start_with(|s| {
        let mut tokens = DriverTokens::default();
        // During a rotation both secrets are valid; and an identity provider's key.
        tokens.add_secret(OLD, Some("city"), Some("citypark"));
        tokens.add_secret(NEW, Some("city"), Some("citypark"));
        tokens
            .add_public_pem(TEST_RSA_PUB.as_bytes(), Some("city"), Some("citypark"))
            .unwrap();
        s.driver_tokens = tokens;
    })
    .await;
    let now = unix_now();
    let claims = |extra: serde_json::Value| {
        let mut c =
            serde_json::json!({"sub": "alice", "exp": now + 600, "iss": "city", "aud": "citypark"});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let hs = |secret: &[u8], extra| {
        signed(
            Algorithm::HS256,
            &EncodingKey::from_secret(secret),
            claims(extra),
        )
    };
    // Exactly these claims, signed with the new secret.
    let bare = |claims| signed(Algorithm::HS256, &EncodingKey::from_secret(NEW), claims);
    let rsa = EncodingKey::from_rsa_pem(TEST_RSA_KEY.as_bytes()).unwrap();
    let good = hs(NEW, serde_json::json!({}));
    // `alg: none`: a valid token's claims under an unsigned header.
    let claims_part = good.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims_part}.");
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("the new secret", good.clone(), None),
        (
            "the old secret, still valid while rotating",
            hs(OLD, serde_json::json!({})),
            None,
        ),
        (
            "the identity provider's RSA key",
            signed(Algorithm::RS256, &rsa, claims(serde_json::json!({}))),
            None,
        ),
        ("alg none", none, Some("")),
        // HS256 with the RSA public key as its secret: the algorithm is the key's.
        (
            "HS/RS key confusion",
            hs(TEST_RSA_PUB.as_bytes(), serde_json::json!({})),
            Some("no key"),
        ),
        (
            "an unknown secret",
            hs(b"somebody-else's-secret-0123456789", serde_json::json!({})),
            Some("no key"),
        ),
        (
            "expired",
            hs(NEW, serde_json::json!({"exp": now - 120})),
            Some("expired"),
        ),
        (
            "not valid yet",
            hs(NEW, serde_json::json!({"nbf": now + 3600})),
            Some("not valid yet"),
        ),
        (
            "another issuer",
            hs(NEW, serde_json::json!({"iss": "evil"})),
            Some("issuer"),
        ),
        (
            "another audience",
            hs(NEW, serde_json::json!({"aud": "elsewhere"})),
            Some("audience"),
        ),
        // A configured issuer and audience are required, not only checked when there.
        (
            "no issuer",
            bare(serde_json::json!({"sub": "alice", "exp": now + 600, "aud": "citypark"})),
            Some("lacks the iss claim"),
        ),
        (
            "no audience",
            bare(serde_json::json!({"sub": "alice", "exp": now + 600, "iss": "city"})),
            Some("lacks the aud claim"),
        ),
        // `aud` as an array (RFC 7519 §4.1.3).
        (
            "an audience array holding this server",
            hs(NEW, serde_json::json!({"aud": ["billing", "citypark"]})),
            None,
        ),
        (
            "an audience array without it",
            hs(NEW, serde_json::json!({"aud": ["billing"]})),
            Some("audience"),
        ),
    ];
    let mut reservations = server.reservations().await;
    for (what, token, refused) in cases {
        let answer = reservations
            .list_reservations(authed(pb::ListReservationsRequest::default(), &token))
            .await;
        match (refused, answer) {
            (None, Ok(_)) => {}
            (Some(why), Err(status)) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
                assert!(
                    status.message().contains(why),
                    "{what}: {}",
                    status.message()
                );
                assert!(
                    !status.message().contains("Signature")
                        && !status.message().contains("ErrorKind"),
                    "{what}: no library text: {}",
                    status.message()
                );
            }
            (refused, answer) => panic!("{what}: expected refusal {refused:?}, got {answer:?}"),
        }
    }
}

#[tokio::test]
async fn an_oversized_token_is_refused_with_a_reason_not_a_bare_http_status() {
    let server = TestServer::start().await;
    // A validly signed token padded to 16 KB, as a confused or hostile client sends.
    let padded = signed(
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(DRIVER_SECRET.as_bytes()),
        serde_json::json!({"sub": "alice", "exp": unix_now() + 600, "pad": "x".repeat(12_000)}),
    );
    assert!(padded.len() > 16_000, "{}", padded.len());
    let mut reservations = server.reservations().await;
    let refused = reservations
        .list_reservations(authed(pb::ListReservationsRequest::default(), &padded))
        .await
        .expect_err("a 16 KB token is refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("8 KiB"),
        "the refusal says why: {refused:?}"
    );
    // A token of ordinary size on the same connection is taken.
    reservations
        .list_reservations(authed(
            pb::ListReservationsRequest::default(),
            &driver_token("alice"),
        ))
        .await
        .expect("an ordinary token after the oversized one");

    // Past the headers' limit (64 KiB, told to clients in HTTP/2's settings) the
    // HTTP/2 layer refuses the request itself, as documented; the connection and the
    // server carry on.
    let huge = "k".repeat(70 * 1024);
    let refused = reservations
        .list_reservations(authed(pb::ListReservationsRequest::default(), &huge))
        .await
        .expect_err("headers over the limit are refused");
    assert!(refused.message().contains("431"), "{refused:?}");
    reservations
        .list_reservations(authed(
            pb::ListReservationsRequest::default(),
            &driver_token("alice"),
        ))
        .await
        .expect("an ordinary call after headers over the limit");
}
