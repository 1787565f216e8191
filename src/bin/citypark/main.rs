//! The `citypark` binary: parse the command line, then serve or act as a client.

mod cli;
mod client;

use std::{process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::Parser as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use citypark::{
    app,
    config::ServeConfig,
    demo,
    domain::OperatorId,
    service::{Clock, SystemClock},
    store::redis::redact,
    telemetry,
};
use cli::{Cli, Command};

// Small, short-lived allocations dominate a request (protobuf messages, strings);
// mimalloc serves them from per-thread pages, where glibc's malloc contends.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a configuration error (EX_CONFIG would be 78; sysexits' EX_USAGE
/// is what operators' supervisors expect for "fix your flags").
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match cli.command {
        Command::Serve(config) => serve(*config, &runtime),
        Command::HashKey { key } => {
            println!("{}", citypark::auth::hash_key(&key));
            ExitCode::SUCCESS
        }
        Command::Client(command) => match runtime.block_on(client::run(command)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("citypark: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(config: ServeConfig, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let keys = config
        .validate()
        .and_then(|()| config.redis())
        .and_then(|_| config.api_keys());
    let mut keys = match keys {
        Ok(keys) => keys,
        Err(error) => {
            eprintln!("citypark: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(error) = telemetry::init(config.log_format, &config.log) {
        eprintln!("citypark: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if config.demo {
        for op in demo::demo_operators() {
            keys.insert_plain(
                OperatorId::parse(&op.id).expect("demo operator ids are valid"),
                &op.api_key,
            );
        }
    } else if keys.is_empty() {
        tracing::warn!(
            "no operator API keys configured: registry writes and ingest will be refused"
        );
    }
    match runtime.block_on(run(config, keys)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("citypark: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: ServeConfig, keys: citypark::auth::ApiKeys) -> anyhow::Result<()> {
    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding --grpc-addr {}", config.grpc_addr))?;
    let metrics = TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", config.metrics_addr))?;
    let grpc_addr = grpc.local_addr()?;
    tracing::info!(grpc = %grpc_addr, metrics = %metrics.local_addr()?, "listening");

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let backend = match config.redis()? {
        None => app::Backend::embedded(config.change_buffer),
        Some(options) => {
            tracing::info!(store = %redact(&options.url), "connecting to redis");
            app::Backend::redis(options, config.change_buffer, clock.clone()).await?
        }
    };
    let demo_stop = CancellationToken::new();
    if config.demo {
        let city = demo::generate_city(config.demo_seed);
        let spaces: u64 = city
            .iter()
            .flat_map(|c| &c.capacity)
            .map(|c| c.spaces as u64)
            .sum();
        tracing::info!(
            car_parks = city.len(),
            spaces,
            "demo city generated; simulated operators start"
        );
        let interval = std::time::Duration::from_secs(config.demo_interval_secs);
        let endpoint = format!("http://{grpc_addr}");
        let stop = demo_stop.clone();
        tokio::spawn(async move {
            if let Err(error) =
                demo::run_operators(endpoint, city, demo::demo_operators(), interval, stop).await
            {
                tracing::error!(%error, "demo operators stopped");
            }
        });
    }
    let shutdown = async move {
        shutdown_signal().await;
        demo_stop.cancel();
    };
    let settings = app::Settings {
        clock,
        ..config.settings(keys)
    };
    app::run(grpc, Some(metrics), backend, settings, shutdown).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM (what orchestrators send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}
