//! Rate limits: a token bucket per operator, per driver and per anonymous address;
//! a refusal is RESOURCE_EXHAUSTED with the delay to retry after in its details.

use std::time::Duration;

use citypark::{grpc::RateLimits, pb};
use tonic::{Code, Request};
use tonic_types::StatusExt;

use crate::support::*;

fn ping() -> pb::PingRequest {
    pb::PingRequest::default()
}

fn with_bearer<T>(message: T, credential: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    request
}

fn rate_limited(text: &str, caller: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with("citypark_rate_limited_total")
                && l.contains(&format!("caller=\"{caller}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn each_caller_has_its_own_rate_and_a_refusal_says_when_to_retry() {
    let server = TestServer::start_with(|s| {
        s.rate_limits = RateLimits {
            operator: 3.0,
            driver: 2.0,
            anonymous: 2.0,
        };
    })
    .await;
    let before = server.metrics_text().await;
    let mut client = server.availability().await;

    // Two calls a second with bursts of four: the fifth at once is refused.
    for _ in 0..4 {
        client.ping(ping()).await.unwrap();
    }
    let refused = client.ping(ping()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("anonymous") && refused.message().contains("retry in"),
        "{}",
        refused.message()
    );
    let retry = refused
        .get_details_retry_info()
        .expect("a RetryInfo in the status details")
        .retry_delay
        .expect("a retry delay");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_millis(500),
        "{retry:?}"
    );
    // A made-up credential proves nothing: the same address's budget.
    let forged = client
        .ping(with_bearer(ping(), "not-a-key"))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::ResourceExhausted);

    // Load balancers' health checks are never limited.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    for _ in 0..10 {
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap();
    }

    // Each driver and each operator has a budget of its own.
    let (ann, bob) = (driver_token("ann"), driver_token("bob"));
    for _ in 0..4 {
        client.ping(with_bearer(ping(), &ann)).await.unwrap();
    }
    let refused = client.ping(with_bearer(ping(), &ann)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("driver"),
        "{}",
        refused.message()
    );
    client.ping(with_bearer(ping(), &bob)).await.unwrap();
    for _ in 0..6 {
        client
            .ping(with_bearer(ping(), OPERATOR_A.1))
            .await
            .unwrap();
    }
    assert_eq!(
        client
            .ping(with_bearer(ping(), OPERATOR_A.1))
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );

    // After the delay it named, the address may call again.
    tokio::time::sleep(retry).await;
    client.ping(ping()).await.unwrap();

    let after = server.metrics_text().await;
    for (caller, at_least) in [("anonymous", 2.0), ("driver", 1.0), ("operator", 1.0)] {
        assert!(
            rate_limited(&after, caller) - rate_limited(&before, caller) >= at_least,
            "{caller}"
        );
    }
    // Labels name the class of caller, never the caller.
    for line in after.lines().filter(|l| l.contains("rate_limited")) {
        assert!(
            !line.contains("127.0.0.1") && !line.contains("ann") && !line.contains("op-a"),
            "{line}"
        );
    }
}
