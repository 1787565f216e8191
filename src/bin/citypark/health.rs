//! `citypark health`: one standard gRPC health check, for container and supervisor
//! health checks (Docker's HEALTHCHECK, compose, an exec probe) that have no
//! grpc_health_probe to hand.
//!
//! Its exit status is the answer: 0 when the server reports SERVING, 1 for anything
//! else (NOT_SERVING, an unknown service, no connection, no answer in time), since
//! Docker reads 1 as "unhealthy" and reserves 2. Either way it prints one line.

use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::client::{ConnectArgs, connect, say};

/// Arguments of `health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The service to ask about, e.g. citypark.v1.Ingest (which is NOT_SERVING while
    /// the store is down); empty asks about the server as a whole.
    #[arg(long, default_value = "", env = "CITYPARK_HEALTH_SERVICE")]
    service: String,
    /// How long connecting and the check may take together, in milliseconds.
    #[arg(
        long,
        default_value_t = 2_000,
        env = "CITYPARK_HEALTH_TIMEOUT_MS",
        value_parser = clap::value_parser!(u64).range(1..=600_000)
    )]
    timeout_ms: u64,
}

/// Checks the health of the server or one of its services: `Ok` only for SERVING.
pub async fn health(args: HealthArgs) -> anyhow::Result<()> {
    let what = if args.service.is_empty() {
        format!("server at {}", args.connect.server())
    } else {
        format!("{} at {}", args.service, args.connect.server())
    };
    let limit = Duration::from_millis(args.timeout_ms);
    let check = async {
        let mut client = HealthClient::new(connect(&args.connect).await?);
        let request = HealthCheckRequest {
            service: args.service.clone(),
        };
        client
            .check(request)
            .await
            .map(|answer| answer.into_inner().status())
            .map_err(|status| match status.code() {
                // The standard's answer for a name the server does not know: a typo in
                // a probe's configuration should say so, not look like an outage.
                Code::NotFound => anyhow!("{what}: unknown service ({})", status.message()),
                code => anyhow!("{what}: check failed: {code:?}: {}", status.message()),
            })
    };
    let status = tokio::time::timeout(limit, check)
        .await
        .map_err(|_| anyhow!("{what}: no answer within {} ms", args.timeout_ms))??;
    match status {
        ServingStatus::Serving => {
            say(format_args!("{what}: SERVING"))?;
            Ok(())
        }
        other => Err(anyhow!("{what}: {}", other.as_str_name())),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        health: HealthArgs,
    }

    #[test]
    fn defaults_ask_the_local_server_as_a_whole() {
        let cli = TestCli::try_parse_from(["health"]).expect("no flag is required");
        assert_eq!(cli.health.connect.server(), "http://127.0.0.1:50051");
        assert_eq!(cli.health.service, "");
        assert_eq!(cli.health.timeout_ms, 2_000);
        assert!(TestCli::try_parse_from(["health", "--timeout-ms", "0"]).is_err());
    }
}
