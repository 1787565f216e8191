//! Runs the servers on given listeners until a shutdown future fires, then drains.
//!
//! The library never binds a port or reads a signal itself, so tests run it on
//! `127.0.0.1:0` and stop it with a oneshot, exactly as `main` runs it for real.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::{
    auth::ApiKeys,
    clock::{Clock, SystemClock},
    domain::Error,
    engine::Engine,
    grpc::{AdmissionLayer, Api, BrowserLayer, ConnectLayer, MetricsLayer, RateLimits},
    history::{History, SqlHistory},
    map::{Map, MapSettings},
    net::{self, ConnLimits},
    open_data::{Changes, OpenData, Publisher},
    pb,
    service::{HistorySettings, Limits, Payments, Service},
    store::{
        AnyStore, Store,
        embedded::EmbeddedStore,
        redis::{RedisOptions, RedisStore},
    },
    tls::{Tls, TlsError, TlsFiles},
    tokens::DriverTokens,
};

/// How often an idle HTTP/2 connection is pinged, and how long its peer has to answer
/// before the connection is closed.
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes of headers one gRPC request may send (HTTP/2's
/// SETTINGS_MAX_HEADER_LIST_SIZE, told to every client). Four times h2's default, so
/// that a credential too big to read (`auth::MAX_CREDENTIAL_BYTES`) still reaches
/// citypark and is refused with a reason; beyond it the HTTP/2 layer answers 431,
/// which gRPC clients show as UNKNOWN.
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// How long the metrics and HTTP ports wait for a request's headers before they close
/// the connection: a scraper or a gateway sends them at once, and a half-sent request
/// must not hold a connection (an open file) forever.
const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How often histogram samples are folded into their buckets (see `run`).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Serves `app` (the metrics, or the HTTP port's routes) on `listener`, the port
/// `name`, until `stop`, then lets the requests in flight finish. HTTP/1.1 only (over
/// TLS where configured), with a header-read timeout. With a `budget`, each connection
/// takes a place in it (the HTTP port's share of the gRPC port's budget) or is
/// refused at once, the refusal a task of `tasks`; the metrics port, on the ops
/// network, has none.
async fn serve_http(
    listener: tokio::net::TcpListener,
    name: &'static str,
    app: axum::Router,
    tls: Option<Tls>,
    budget: Option<net::Budget>,
    tasks: tokio_util::task::TaskTracker,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::{
        rt::{TokioIo, TokioTimer},
        server::graceful::GracefulShutdown,
        service::TowerToHyperService,
    };
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(METRICS_HEADER_TIMEOUT);
    let mut acceptor = net::Acceptor::new(listener, name);
    let refusing = net::refusals();
    while let Some((stream, remote)) = acceptor.accept(&stop).await {
        let place = match &budget {
            None => None,
            Some(budget) => match budget.http() {
                Some(place) => Some(place),
                None => {
                    net::refuse_soon(stream, name, tls.is_none(), &refusing, &tasks);
                    continue;
                }
            },
        };
        let (tls, http, app) = (tls.clone(), http.clone(), app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _place = place;
            let stream = match tls {
                None => tokio_util::either::Either::Left(stream),
                // The handshake has the header timeout too; a failed one is the
                // client's and ends its connection.
                Some(tls) => {
                    match tokio::time::timeout(METRICS_HEADER_TIMEOUT, tls.accept_http(stream))
                        .await
                    {
                        Ok(Ok(stream)) => tokio_util::either::Either::Right(stream),
                        _ => return,
                    }
                }
            };
            // Routes see the caller's address (axum's `ConnectInfo`): per-client caps
            // are kept under it.
            let app = tower::ServiceExt::map_request(
                app,
                move |mut request: axum::extract::Request<_>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(remote));
                    request
                },
            );
            let connection =
                http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            // A client gone or too slow with its headers ends its connection; nothing
            // to report.
            let _ = watcher.watch(connection).await;
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// Runtime settings of a server.
#[derive(Clone)]
pub struct Settings {
    pub api_keys: ApiKeys,
    /// Keys driver tokens are verified with.
    pub driver_tokens: DriverTokens,
    pub clock: Arc<dyn Clock>,
    pub limits: Limits,
    pub max_message_bytes: usize,
    /// Most concurrent HTTP/2 streams (calls) one connection may open.
    pub max_streams_per_connection: u32,
    /// How connections on the gRPC port are bounded.
    pub connections: ConnLimits,
    /// Calls a second per caller. The default is unlimited, for programs embedding
    /// the server and for tests; the command line's defaults are a city's.
    pub rate_limits: RateLimits,
    /// TLS on the gRPC and metrics ports; plain text when `None`.
    pub tls: Option<TlsFiles>,
    pub shutdown_grace: Duration,
    pub status_sweep: Duration,
    /// How sessions are paid, and how long their plates are kept.
    pub payments: Payments,
    /// Browser origins allowed to call over gRPC-Web; empty means any.
    pub cors_origins: Vec<http::HeaderValue>,
    /// The live map's tiles and where its browsers reach gRPC-Web.
    pub map: MapSettings,
    /// Who open data (DATEX II's header) names as its publisher.
    pub publisher: Publisher,
    /// How finished records move to history (with a backend that has one).
    pub history: HistorySettings,
    /// The MQTT broker reports come from (and signs' availability goes to), if any.
    pub mqtt: Option<crate::mqtt::MqttSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            api_keys: ApiKeys::default(),
            driver_tokens: DriverTokens::default(),
            clock: Arc::new(SystemClock),
            limits: Limits::default(),
            max_message_bytes: 1 << 20,
            max_streams_per_connection: 128,
            connections: ConnLimits::default(),
            rate_limits: RateLimits::unlimited(),
            tls: None,
            shutdown_grace: Duration::from_secs(10),
            status_sweep: Duration::from_secs(5),
            payments: Payments::default(),
            cors_origins: Vec::new(),
            map: MapSettings::default(),
            publisher: Publisher {
                country: "CN".into(),
                national_identifier: "citypark".into(),
            },
            history: HistorySettings::default(),
            mqtt: None,
        }
    }
}

/// The engine answering queries, the store taking writes and the history keeping
/// what is finished.
#[derive(Clone)]
pub struct Backend {
    pub engine: Arc<Engine>,
    pub store: Arc<AnyStore>,
    /// Without one (a library embedding, most tests), finished records stay live.
    pub history: Option<Arc<SqlHistory>>,
}

impl Backend {
    /// The embedded backend: the engine is the store.
    pub fn embedded(change_buffer: usize) -> Self {
        Self::on_engine(Arc::new(Engine::new(change_buffer)))
    }

    /// The embedded backend on an engine already filled (benchmarks load one in bulk).
    pub fn on_engine(engine: Arc<Engine>) -> Self {
        Self {
            store: Arc::new(AnyStore::Embedded(EmbeddedStore::new(engine.clone()))),
            engine,
            history: None,
        }
    }

    /// This backend with `history` as its history of record.
    pub fn with_history(mut self, history: Arc<SqlHistory>) -> Self {
        self.history = Some(history);
        self
    }

    /// The durable embedded backend: the live state kept in `dir` (`live.sqlite3`),
    /// loaded into a fresh engine (blocking while it loads). `clock` must be the
    /// server's.
    pub fn durable(
        dir: &std::path::Path,
        change_buffer: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, crate::store::durable::Opened), Error> {
        let engine = Arc::new(Engine::new(change_buffer));
        let (store, opened) =
            crate::store::durable::DurableStore::open(dir, engine.clone(), clock)?;
        let backend = Self {
            store: Arc::new(AnyStore::Durable(store)),
            engine,
            history: None,
        };
        Ok((backend, opened))
    }

    /// The Redis backend: connects, loads every region's snapshot into a fresh engine
    /// and follows the change streams. `clock` must be the server's.
    pub async fn redis(
        options: RedisOptions,
        change_buffer: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        let engine = Arc::new(Engine::new(change_buffer));
        let store = RedisStore::open(options, engine.clone(), clock).await?;
        Ok(Self {
            store: Arc::new(AnyStore::Redis(store)),
            engine,
            history: None,
        })
    }
}

/// CORS allowing `origins` (any when empty), preflights cached for a day.
fn cors_from(origins: &[http::HeaderValue]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow_origin = if origins.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().cloned())
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .max_age(Duration::from_secs(24 * 3600))
}

/// CORS for open data: reads, with the caching and resuming headers.
fn open_data_cors(origins: &[http::HeaderValue]) -> tower_http::cors::CorsLayer {
    use http::header::{ETAG, HeaderName, IF_NONE_MATCH};
    cors_from(origins)
        .allow_methods([http::Method::GET, http::Method::HEAD])
        .allow_headers([IF_NONE_MATCH, HeaderName::from_static("last-event-id")])
        .expose_headers([ETAG])
}

/// CORS for gRPC-Web and Connect: the headers their clients send (the API key
/// included) and the trailers-as-headers a gRPC-Web client must be able to read.
fn cors(origins: &[http::HeaderValue]) -> tower_http::cors::CorsLayer {
    use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
    cors_from(origins)
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers([
            CONTENT_TYPE,
            AUTHORIZATION,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
            HeaderName::from_static("connect-protocol-version"),
            HeaderName::from_static("connect-timeout-ms"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
}

/// Time background tasks get to stop even when draining took the whole grace period:
/// longer than the Redis store's reply timeout (2 s), which bounds a write in flight.
const MIN_STOP: Duration = Duration::from_secs(3);

/// The services that write through the store: out of rotation while it is down.
const WRITE_SERVICES: [&str; 5] = [
    pb::registry_server::SERVICE_NAME,
    pb::ingest_server::SERVICE_NAME,
    pb::reservations_server::SERVICE_NAME,
    pb::shared_parking_server::SERVICE_NAME,
    pb::sessions_server::SERVICE_NAME,
];
/// Every citypark service.
const ALL_SERVICES: [&str; 6] = [
    pb::registry_server::SERVICE_NAME,
    pb::ingest_server::SERVICE_NAME,
    pb::availability_server::SERVICE_NAME,
    pb::reservations_server::SERVICE_NAME,
    pb::shared_parking_server::SERVICE_NAME,
    pb::sessions_server::SERVICE_NAME,
];

async fn set_health(
    health: &tonic_health::server::HealthReporter,
    services: &[&str],
    serving: bool,
) {
    use tonic_health::ServingStatus;
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for service in services {
        health.set_service_status(service, status).await;
    }
}

/// Why the server stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("metrics server failed: {0}")]
    Metrics(#[source] std::io::Error),
    #[error("reflection service could not be built: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

/// Serves gRPC on `grpc` (Prometheus metrics on `metrics` and citypark's HTTP routes on
/// `http`, if given) until
/// `shutdown` completes; then marks health NOT_SERVING, ends watch and publish
/// streams, stops accepting, drains open calls, and stops and joins every background
/// task (the store's included), all within the grace period. No task it started
/// outlives it.
pub async fn run(
    grpc: TcpListener,
    metrics: Option<TcpListener>,
    http: Option<TcpListener>,
    backend: Backend,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    let handle = crate::metrics::install();
    let token = CancellationToken::new();
    // The ports' own tasks: the accept loop, handshakes, refusals, the certificate
    // watcher.
    let port_tasks = tokio_util::task::TaskTracker::new();
    let tls = match &settings.tls {
        Some(files) => Some(Tls::load(files, &port_tasks, token.clone())?),
        None => None,
    };
    let service = Service::new(
        backend.engine.clone(),
        backend.store.clone(),
        settings.clock.clone(),
        settings.limits.clone(),
    )
    .with_payments(settings.payments.clone());
    let service = match &backend.history {
        Some(history) => service.with_history(history.clone(), settings.history.clone()),
        None => service,
    };
    let (keys, drivers) = (
        Arc::new(settings.api_keys.clone()),
        Arc::new(settings.driver_tokens.clone()),
    );
    let admission =
        AdmissionLayer::new(keys.clone(), drivers.clone(), settings.rate_limits.clone());
    let api = Api::new(service.clone(), keys, drivers, token.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, &ALL_SERVICES, true).await;

    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure()).build_v1()?;
    let reflection_v1alpha =
        reflection(tonic_reflection::server::Builder::configure()).build_v1alpha()?;

    let max = settings.max_message_bytes;
    let request_metrics = MetricsLayer::new();
    // Browsers speak gRPC-Web over HTTP/1.1 or HTTP/2 and ask CORS first; native
    // clients speak gRPC over HTTP/2; the rest speak Connect's HTTP/JSON. One port
    // serves all three.
    let router = Server::builder()
        .accept_http1(true)
        // One connection may not hold more calls than this (a watch is one each);
        // further calls wait for a place, on the client's side.
        .max_concurrent_streams(Some(settings.max_streams_per_connection))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        // A peer that stops answering pings is dropped, and with it its streams.
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        // Outermost: a Connect call becomes a gRPC call that takes the whole stack.
        .layer(ConnectLayer::new(max, request_metrics.clone()))
        .layer(request_metrics)
        // CORS and gRPC-Web, for browsers' calls only.
        .layer(BrowserLayer::new(cors(&settings.cors_origins)))
        // Innermost, so that it sees gRPC-Web calls translated and its refusals go
        // back through the translation and CORS.
        .layer(admission)
        .add_routes(
            crate::grpc::routes(api, max)
                .add_service(health_service)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha),
        );

    let addr = grpc.local_addr().ok();
    let connections = settings
        .connections
        .clone()
        .within_open_files(net::open_files_limit());
    // One budget for the gRPC and HTTP ports' connections (the HTTP port may hold half).
    let budget = net::Budget::new(connections.max_connections);
    let incoming = net::incoming(
        grpc,
        connections,
        budget.clone(),
        tls.clone(),
        &port_tasks,
        token.clone(),
    );
    // The sampler takes the change feed before the first call can change anything.
    let sampler = tokio::spawn(service.sample_occupancy(token.clone()));
    // Forecasters learn from live numbers at once; their last three weeks come from
    // history in the background.
    let restore = {
        let (service, token) = (service.clone(), token.clone());
        tokio::spawn(async move { service.restore_forecasts(token).await })
    };
    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut grpc_task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = grpc_stopped.await;
    }));

    // The recorder keeps every histogram sample (a call's latency, a report's age) until
    // it is folded into the buckets, which a scrape does; folding them here as well
    // bounds what an instance that nobody scrapes (or runs without a metrics port)
    // holds to a few seconds' worth.
    let upkeep = {
        let (handle, stop) = (handle.clone(), token.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => handle.run_upkeep(),
                }
            }
        })
    };
    let metrics_task = match metrics {
        Some(listener) => {
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let handle = handle.clone();
                    async move { handle.render() }
                }),
            );
            let stop = token.clone();
            Some(tokio::spawn(serve_http(
                listener,
                "metrics",
                app,
                tls.clone(),
                None,
                port_tasks.clone(),
                stop,
            )))
        }
        None => None,
    };
    // The HTTP port, and with it the open-data change streams' hub, which follows the
    // engine's feed: without the port, nobody could listen.
    let (http_task, changes_task) = http.map_or((None, None), |listener| {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let (changes, changes_task) = Changes::start(
            &backend.engine,
            backend.engine.change_buffer(),
            crate::streams::Places::new(
                settings.limits.max_watchers,
                settings.limits.max_watchers_per_client,
            ),
            epoch,
            token.clone(),
        );
        let map = Map::new(
            Arc::new(crate::http::Regions::new(backend.engine.clone())),
            settings.map.clone(),
            addr.map_or(0, |a| a.port()),
            settings.limits.max_watch_car_parks,
        );
        let open_data = OpenData::new(
            backend.engine.clone(),
            settings.clock.clone(),
            settings.publisher.clone(),
            changes,
        );
        let openapi = crate::openapi::OpenApi {
            base_url: settings.map.grpc_web_url.clone(),
            grpc_port: addr.map_or(0, |a| a.port()),
            tls: tls.is_some(),
        };
        let app = crate::http::router(
            service.clone(),
            Arc::new(settings.api_keys.clone()),
            map,
            open_data,
            openapi,
            open_data_cors(&settings.cors_origins),
        );
        let task = tokio::spawn(serve_http(
            listener,
            "http",
            app,
            tls,
            Some(budget.clone()),
            port_tasks.clone(),
            token.clone(),
        ));
        (Some(task), Some(changes_task))
    });

    // A store that can lose its backend takes the write services out of rotation
    // while it is gone; queries keep answering from the engine.
    let store_health = backend.store.health().map(|mut up| {
        let health = health.clone();
        let token = token.clone();
        tokio::spawn(async move {
            loop {
                let serving = *up.borrow_and_update();
                crate::metrics::record_store_up(serving);
                if !serving {
                    tracing::warn!(
                        "store unreachable: Registry, Ingest, Reservations and SharedParking report NOT_SERVING"
                    );
                }
                set_health(&health, &WRITE_SERVICES, serving).await;
                tokio::select! {
                    _ = token.cancelled() => return,
                    changed = up.changed() => if changed.is_err() { return },
                }
            }
        })
    });

    let sweeper = {
        let (service, token, every) = (service.clone(), token.clone(), settings.status_sweep);
        tokio::spawn(async move { service.sweep_statuses(every, token).await })
    };
    let reservation_sweeper = {
        let (service, token) = (service.clone(), token.clone());
        let every = settings.status_sweep.min(Duration::from_secs(1));
        tokio::spawn(async move { service.sweep_reservations(every, token).await })
    };
    let session_sweeper = {
        let (service, token) = (service.clone(), token.clone());
        let every = settings.status_sweep.min(Duration::from_secs(1));
        tokio::spawn(async move { service.sweep_sessions(every, token).await })
    };
    let history_sweeper = {
        let (service, token) = (service.clone(), token.clone());
        tokio::spawn(async move { service.sweep_history(token).await })
    };
    let mqtt = settings
        .mqtt
        .clone()
        .map(|mqtt| tokio::spawn(crate::mqtt::run(service.clone(), mqtt, token.clone())));

    tracing::info!(addr = ?addr, store = backend.store.name(), car_parks = backend.engine.len(), "citypark serving");
    let early = tokio::select! {
        () = shutdown => None,
        result = &mut grpc_task => Some(result),
    };
    let deadline = tokio::time::Instant::now() + settings.shutdown_grace;
    let result = match early {
        Some(result) => match result {
            Ok(r) => r.map_err(AppError::from),
            // The runtime is shutting down under us (a test's end, say): nothing to
            // drain.
            Err(join) if join.is_cancelled() => Ok(()),
            Err(join) => panic!("gRPC server task panicked: {join}"),
        },
        None => {
            tracing::info!("shutting down: health NOT_SERVING, draining");
            set_health(&health, &ALL_SERVICES, false).await;
            // Streams end first (publishers are told to reconnect and resend), so the
            // drain waits only for unary calls in flight.
            token.cancel();
            let _ = stop_grpc.send(());
            match tokio::time::timeout_at(deadline, &mut grpc_task).await {
                Ok(Ok(r)) => r.map_err(AppError::from),
                Ok(Err(join)) => panic!("gRPC server task panicked: {join}"),
                Err(_) => {
                    tracing::warn!(grace = ?settings.shutdown_grace, "drain deadline passed; closing open calls");
                    grpc_task.abort();
                    Ok(())
                }
            }
        }
    };
    token.cancel();
    // Then every background task, within what is left of the grace period: the
    // call-serving tasks, the sweepers, the health follower, the metrics upkeep and
    // server, and the store's own (its writer fails what it has not written; its followers stop).
    let background = async {
        service.wait_tasks().await;
        port_tasks.close();
        port_tasks.wait().await;
        let _ = sweeper.await;
        let _ = reservation_sweeper.await;
        let _ = session_sweeper.await;
        let _ = history_sweeper.await;
        if let Some(task) = mqtt {
            let _ = task.await;
        }
        let _ = sampler.await;
        let _ = restore.await;
        let _ = upkeep.await;
        if let Some(task) = changes_task {
            let _ = task.await;
        }
        if let Some(task) = store_health {
            let _ = task.await;
        }
        let metrics = match metrics_task {
            Some(task) => task.await.ok().and_then(Result::err),
            None => None,
        };
        if let Some(task) = http_task {
            let _ = task.await;
        }
        backend.store.close().await;
        if let Some(history) = &backend.history {
            history.close().await;
        }
        metrics
    };
    let stopped = tokio::time::timeout_at(
        deadline.max(tokio::time::Instant::now() + MIN_STOP),
        background,
    )
    .await;
    match stopped {
        Ok(Some(e)) => return Err(AppError::Metrics(e)),
        Ok(None) => {}
        Err(_) => tracing::warn!("background tasks did not stop within the grace period"),
    }
    tracing::info!("stopped");
    result
}
