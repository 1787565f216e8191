//! The `citypark` binary: parse the command line, then serve or act as a client.

mod cli;
mod client;
mod forecast;
mod health;
mod history;
mod import;
mod live;
mod reserve;
mod sessions;
mod share;

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;
use tokio::net::TcpListener;

use citypark::{
    app,
    config::{ServeConfig, StoreChoice},
    demo::{Demo, DemoHandle},
    service::{Clock, SystemClock},
    store::redis::redact,
    telemetry,
};
use cli::{Cli, Command};

// Small, short-lived allocations dominate a request (protobuf messages, strings);
// mimalloc serves them from per-thread pages, where glibc's malloc contends.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The runtime's park hook: once the hand-off has freed much (`citypark::memory`),
/// each thread has mimalloc give back the pages it holds free.
fn give_back_memory() {
    citypark::memory::collect_on_this_thread(|| {
        // SAFETY: mi_collect takes no pointer; it frees and decommits this thread's
        // unused pages, which any thread may do at any time.
        unsafe { libmimalloc_sys::mi_collect(true) }
    });
}

/// Exit status for a configuration error (EX_CONFIG would be 78; sysexits' EX_USAGE
/// is what operators' supervisors expect for "fix your flags").
const EXIT_CONFIG: u8 = 64;

/// Turns transparent huge pages off for this process: with them the kernel keeps a
/// 2 MiB page resident while any byte of it is in use, so the memory the hand-off
/// frees would mostly stay (mimalloc, built with `no_thp`, no longer asks for them;
/// this covers systems that give them to every process).
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes no pointer and only sets a flag of this
    // process; an old kernel that lacks it answers EINVAL, which changes nothing.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> ExitCode {
    no_huge_pages();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(give_back_memory)
        .build()
        .expect("tokio runtime");
    match cli.command {
        Command::Serve(config) => serve(*config, &runtime),
        Command::Token(args) => exit_with(reserve::token(args)),
        Command::History(command) => exit_with(runtime.block_on(history::run(command))),
        Command::Forecast(command) => exit_with(forecast::run(command)),
        Command::Backup(args) => exit_with(live::backup(args)),
        Command::ExportToRedis(args) => exit_with(runtime.block_on(live::export_to_redis(args))),
        Command::HashKey { key } => {
            println!("{}", citypark::auth::hash_key(&key));
            ExitCode::SUCCESS
        }
        Command::Client(command) => exit_with(runtime.block_on(client::run(*command))),
    }
}

/// A command's exit: success, or its error on stderr and a failure status.
fn exit_with(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("citypark: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: ServeConfig, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let keys = config
        .validate()
        .and_then(|()| config.redis())
        .and_then(|_| config.api_keys())
        .and_then(|keys| Ok((keys, config.driver_tokens()?, config.plate_key()?)));
    let (mut keys, drivers, plate_key) = match keys {
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
    // Every connection is an open file; the server's connection cap is fitted to
    // this limit when it starts.
    if let Some(open_files) = citypark::net::raise_open_files_limit() {
        tracing::debug!(open_files, "open-files limit");
    }
    let demo = config.demo.then(|| {
        Demo::new(
            config.demo_seed,
            Duration::from_secs(config.demo_interval_secs),
        )
    });
    if let Some(demo) = &demo {
        demo.add_keys(&mut keys);
    } else if keys.is_empty() {
        tracing::warn!(
            "no operator API keys configured: registry writes and ingest will be refused"
        );
    }
    if drivers.is_empty() {
        tracing::warn!(
            "no driver token key configured (--driver-jwt-*): reservations will be refused"
        );
    }
    match runtime.block_on(run(config, keys, drivers, plate_key, demo)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("citypark: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    config: ServeConfig,
    keys: citypark::auth::ApiKeys,
    drivers: citypark::tokens::DriverTokens,
    plate_key: Vec<u8>,
    demo: Option<Demo>,
) -> anyhow::Result<()> {
    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding --grpc-addr {}", config.grpc_addr))?;
    let metrics = TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", config.metrics_addr))?;
    let http = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding --http-addr {}", config.http_addr))?;
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.local_addr()?;
    tracing::info!(grpc = %grpc_addr, metrics = %metrics.local_addr()?, http = %http_addr, map = %format!("http://{http_addr}{}", citypark::map::PATH), "listening");

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let backend = match config.store_choice()? {
        StoreChoice::Durable(dir) => {
            let (change_buffer, clock) = (config.change_buffer, clock.clone());
            // Checking and reading the file is blocking work, done before serving.
            let (backend, opened) = tokio::task::spawn_blocking(move || {
                app::Backend::durable(&dir, change_buffer, clock)
            })
            .await??;
            let records: usize = opened.records.iter().map(|(_, n)| n).sum();
            tracing::info!(file = %opened.path.display(), records, took_ms = opened.took.as_millis() as u64, "live state loaded");
            backend
        }
        StoreChoice::Memory => {
            tracing::warn!("--store memory: nothing of the live state outlives this process");
            app::Backend::embedded(config.change_buffer)
        }
        StoreChoice::Redis(options) => {
            tracing::info!(store = %redact(&options.url), "connecting to redis");
            app::Backend::redis(options, config.change_buffer, clock.clone()).await?
        }
    };
    let location = config.history.location()?;
    let history = citypark::history::open(&location, config.history.history_migrate)
        .await
        .context("opening the history database (--history, --data-dir)")?;
    tracing::info!(history = %describe(&location), "history of record");
    let backend = backend.with_history(Arc::new(history));
    let demo = demo.map(|demo| demo.start(format!("http://{grpc_addr}")));
    let stop_demo = demo.as_ref().map(DemoHandle::cancellation_token);
    let shutdown = async move {
        shutdown_signal().await;
        // The operators stop before the server drains, so it is not kept waiting on
        // their streams.
        if let Some(stop_demo) = stop_demo {
            stop_demo.cancel();
        }
    };
    let settings = app::Settings {
        clock,
        history: config.history_settings(plate_key),
        ..config.settings(keys, drivers)
    };
    let served = app::run(grpc, Some(metrics), Some(http), backend, settings, shutdown).await;
    // Joined whether or not the server failed: no demo task outlives the run.
    if let Some(demo) = demo {
        demo.stop().await;
    }
    served?;
    Ok(())
}

/// Where history is, for logs: the file, or the database without its credentials.
fn describe(location: &citypark::history::Location) -> String {
    match location {
        citypark::history::Location::Sqlite(path) => path.display().to_string(),
        citypark::history::Location::Postgres(url) => redact(url),
    }
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
