//! Configuration of `citypark serve`: every flag also reads a `CITYPARK_*` variable.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::{Args, ValueEnum};

use crate::{
    auth::ApiKeys,
    domain::{Error, Result},
    service::Limits,
    tokens::{DEMO_SECRET, DriverTokens},
};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `--store memory`.
const MEMORY: &str = "memory";

/// Where the city's live state lives (`--store`).
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// Embedded, kept in this data directory.
    Durable(PathBuf),
    /// Embedded, kept nowhere.
    Memory,
    Redis(crate::store::redis::RedisOptions),
}

/// `citypark serve` options.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address of the gRPC server.
    #[arg(long, env = "CITYPARK_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Where the city's live state lives. Empty: embedded in this process and kept in
    /// --data-dir (every acknowledged write is first synced to its commit log, which is
    /// folded into `live.sqlite3`; a restart continues from them). `memory`: embedded and kept nowhere — gone at
    /// exit; for tests and throwaway demos. `redis://[:password@]host:port/db` (or
    /// `rediss://` for TLS): a standalone Redis. `redis+cluster://host1:port1,…`: a
    /// Redis Cluster. With Redis, any number of instances serve one city.
    #[arg(
        long,
        env = "CITYPARK_STORE",
        default_value = "",
        hide_env_values = true
    )]
    pub store: String,

    /// Prefix of every Redis key, so deployments can share a Redis.
    #[arg(long, env = "CITYPARK_REDIS_PREFIX", default_value = "cp")]
    pub redis_prefix: String,

    /// Seconds start-up keeps retrying to reach Redis before it fails.
    #[arg(
        long,
        env = "CITYPARK_REDIS_CONNECT_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub redis_connect_timeout_secs: u64,

    /// Approximate length each region's Redis change stream is capped at (entries older
    /// than --tombstone-grace-minutes are trimmed too). An instance further behind
    /// reloads the region's snapshot.
    #[arg(long, env = "CITYPARK_REDIS_STREAM_MAX_LEN", default_value_t = 100_000)]
    pub redis_stream_max_len: u64,

    /// Address of the Prometheus /metrics endpoint.
    #[arg(long, env = "CITYPARK_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,

    /// Address of citypark's HTTP port: the live city map (/map/) and the payment
    /// gateway's callbacks (POST /payments/v1/callback).
    #[arg(long, env = "CITYPARK_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// XYZ tile URL template for the map's background, e.g.
    /// `https://tile.openstreetmap.org/{z}/{x}/{y}.png`; none by default, so the map
    /// needs no network beyond citypark.
    #[arg(long, env = "CITYPARK_MAP_TILES_URL")]
    pub map_tiles_url: Option<String>,

    /// The attribution the tile provider requires, shown on the map (HTML).
    #[arg(long, env = "CITYPARK_MAP_TILES_ATTRIBUTION", default_value = "")]
    pub map_tiles_attribution: String,

    /// ISO 3166-1 alpha-2 country of the open-data publisher (DATEX II's
    /// publicationCreator).
    #[arg(long, env = "CITYPARK_OPEN_DATA_COUNTRY", default_value = "CN")]
    pub open_data_country: String,

    /// The open-data publisher's identifier in its country (DATEX II's
    /// publicationCreator).
    #[arg(long, env = "CITYPARK_OPEN_DATA_PUBLISHER", default_value = "citypark")]
    pub open_data_publisher: String,

    /// Where browsers reach the gRPC port for gRPC-Web, e.g.
    /// `https://api.city.example`; by default the map's own host on the gRPC port.
    /// Its origin must be allowed by --cors-origins when that is set.
    #[arg(long, env = "CITYPARK_MAP_GRPC_WEB_URL")]
    pub map_grpc_web_url: Option<String>,

    /// The external payment gateway's charge URL (http:// or https://): plates may
    /// then be linked with payment method GATEWAY. Needs --payment-gateway-secret-file.
    #[arg(
        long,
        env = "CITYPARK_PAYMENT_GATEWAY_URL",
        requires = "payment_gateway_secret_file"
    )]
    pub payment_gateway_url: Option<String>,

    /// A file holding the secret (at least 32 bytes) shared with the gateway: requests
    /// and callbacks are signed with HMAC-SHA256 over their body.
    #[arg(long, env = "CITYPARK_PAYMENT_GATEWAY_SECRET_FILE")]
    pub payment_gateway_secret_file: Option<PathBuf>,

    /// How long a charge waits for the gateway's answer, in milliseconds; no answer by
    /// then is retried later (the gateway charges a session once whatever the
    /// attempts: the idempotency key is the session id).
    #[arg(
        long,
        env = "CITYPARK_PAYMENT_GATEWAY_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub payment_gateway_timeout_ms: u64,

    /// Load a generated Qingdao-scale demo city and run simulated operators that
    /// stream occupancy through the gRPC API. Adds the demo operators' well-known
    /// API keys ("demo-key-<operator>") and accepts driver tokens signed with the
    /// public demo secret (`citypark token` prints one): never use in production.
    #[arg(long, env = "CITYPARK_DEMO")]
    pub demo: bool,

    /// Seed of the demo city.
    #[arg(long, env = "CITYPARK_DEMO_SEED", default_value_t = 2026)]
    pub demo_seed: u64,

    /// How often each demo car park reports, in seconds.
    #[arg(long, env = "CITYPARK_DEMO_INTERVAL_SECS", default_value_t = 20)]
    pub demo_interval_secs: u64,

    /// TOML file of operator API keys: [[operator]] tables with `id` and `key_sha256`
    /// (hex SHA-256 of the key; `citypark hash-key` prints it).
    #[arg(long, env = "CITYPARK_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Operator API keys as `operator:sha256hex` pairs, comma-separated.
    #[arg(long, env = "CITYPARK_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,

    /// File holding the HS256 secret driver tokens (bearer JWTs) are signed with.
    #[arg(long, env = "CITYPARK_DRIVER_JWT_SECRET_FILE")]
    pub driver_jwt_secret_file: Option<PathBuf>,

    /// PEM public key (RSA for RS256, EC P-256 for ES256, Ed25519 for EdDSA) driver
    /// tokens are verified with.
    #[arg(long, env = "CITYPARK_DRIVER_JWT_PUBLIC_KEY_FILE")]
    pub driver_jwt_public_key_file: Option<PathBuf>,

    /// The `iss` driver tokens must carry; unchecked when unset.
    #[arg(long, env = "CITYPARK_DRIVER_JWT_ISSUER")]
    pub driver_jwt_issuer: Option<String>,

    /// The `aud` driver tokens must carry (one string, or an array holding it); unchecked
    /// when unset.
    #[arg(long, env = "CITYPARK_DRIVER_JWT_AUDIENCE")]
    pub driver_jwt_audience: Option<String>,

    /// Most RESERVED reservations one driver may hold at once.
    #[arg(
        long,
        env = "CITYPARK_MAX_ACTIVE_RESERVATIONS_PER_DRIVER",
        default_value_t = 3
    )]
    pub max_active_reservations_per_driver: usize,

    /// The currency of drivers' built-in wallets (ISO 4217); sessions priced in another
    /// currency are not charged to them.
    #[arg(long, env = "CITYPARK_WALLET_CURRENCY", default_value = "CNY")]
    pub wallet_currency: String,

    /// How far below zero a session's charge may take a wallet, in minor units.
    #[arg(long, env = "CITYPARK_WALLET_OVERDRAFT_MINOR", default_value_t = 0)]
    pub wallet_overdraft_minor: i64,

    /// Days after its exit a closed session's plate is forgotten (pseudonymised).
    #[arg(long, env = "CITYPARK_SESSION_RETENTION_DAYS", default_value_t = 90)]
    pub session_retention_days: u32,

    /// Most watch streams open at once, in all; open data's change streams (the HTTP
    /// port) have their own count under the same number.
    #[arg(long, env = "CITYPARK_MAX_WATCHERS", default_value_t = 10_000)]
    pub max_watchers: usize,

    /// Most watch streams one client holds at once: an operator or a driver by its
    /// credential, an anonymous watcher by its address; also the most open-data change
    /// streams one address holds.
    #[arg(long, env = "CITYPARK_MAX_WATCHERS_PER_CLIENT", default_value_t = 100)]
    pub max_watchers_per_client: usize,

    /// Browser origins allowed to call the API over gRPC-Web (CORS), comma-separated,
    /// e.g. `https://app.example.com`; empty allows any origin (the API's queries are
    /// public, and writes still need an API key).
    #[arg(long, env = "CITYPARK_CORS_ORIGINS", default_value = "")]
    pub cors_origins: String,

    /// Log format.
    #[arg(
        long,
        env = "CITYPARK_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,

    /// Log filter in RUST_LOG syntax.
    #[arg(long, env = "CITYPARK_LOG", default_value = "info")]
    pub log: String,

    /// Seconds a shutdown may take: draining open calls, then stopping background tasks.
    #[arg(long, env = "CITYPARK_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Largest accepted request message, in bytes.
    #[arg(long, env = "CITYPARK_MAX_MESSAGE_BYTES", default_value_t = 1 << 20)]
    pub max_message_bytes: usize,

    /// Most concurrent calls (HTTP/2 streams) one connection may have open; further
    /// calls wait on the client's side for a place.
    #[arg(
        long,
        env = "CITYPARK_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 128
    )]
    pub max_streams_per_connection: u32,

    /// Most connections open at once on the gRPC and HTTP ports together, the HTTP port
    /// holding at most half; more are refused at once (a GOAWAY or a 503 naming this
    /// flag). Lowered at start if the open-files limit is too small for it.
    #[arg(long, env = "CITYPARK_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Seconds a new connection has to start its first call (TLS handshake included);
    /// a connection that sends nothing, or only a preface or part of a header, is
    /// closed then.
    #[arg(long, env = "CITYPARK_FIRST_CALL_TIMEOUT_SECS", default_value_t = 10)]
    pub first_call_timeout_secs: u64,

    /// Seconds a connection may stay open with no call in flight.
    #[arg(long, env = "CITYPARK_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    pub idle_timeout_secs: u64,

    /// Calls a second each operator (API key or client certificate) may make, with
    /// bursts of twice that; 0 is unlimited.
    #[arg(long, env = "CITYPARK_RATE_OPERATOR", default_value_t = 2_000.0)]
    pub rate_operator: f64,

    /// Calls a second each driver (token) may make, with bursts of twice that; 0 is
    /// unlimited.
    #[arg(long, env = "CITYPARK_RATE_DRIVER", default_value_t = 50.0)]
    pub rate_driver: f64,

    /// Calls a second each address (an IPv6 /64) may make without a credential, with
    /// bursts of twice that; 0 is unlimited. Behind a proxy that hides clients'
    /// addresses, every anonymous client shares one budget: use a pass-through (L4)
    /// load balancer, or set 0 and limit at the proxy.
    #[arg(long, env = "CITYPARK_RATE_ANONYMOUS", default_value_t = 200.0)]
    pub rate_anonymous: f64,

    /// PEM certificate chain for TLS on the gRPC and metrics ports (with
    /// --tls-key-file); reloaded within 10 s when the file changes.
    #[arg(long, env = "CITYPARK_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "CITYPARK_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// PEM CA certificates for operators' client certificates (mutual TLS): a client
    /// certificate signed by this CA proves the operator its subject's common name
    /// names, as an API key would. Clients without a certificate still connect.
    #[arg(long, env = "CITYPARK_TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// An MQTT broker to take occupancy reports from (sensor networks, gateways that
    /// speak no gRPC): `mqtt://host[:1883]`, or `mqtts://host[:8883]` for TLS. Reports
    /// arrive on `citypark/v1/reports/<operator>/<car park id>` (QoS 1) and each one's
    /// ack goes to `citypark/v1/acks/<operator>/<car park id>`. The broker's ACL must
    /// keep each device to its operator's topics (deploy/mosquitto/).
    #[arg(long, env = "CITYPARK_MQTT_URL")]
    pub mqtt_url: Option<String>,

    /// File holding the MQTT username and password, one line: `username:password`.
    #[arg(long, env = "CITYPARK_MQTT_CREDENTIALS_FILE", requires = "mqtt_url")]
    pub mqtt_credentials_file: Option<PathBuf>,

    /// PEM certificates to trust for an `mqtts://` broker, besides the public roots.
    #[arg(long, env = "CITYPARK_MQTT_CA_FILE", requires = "mqtt_url")]
    pub mqtt_ca_file: Option<PathBuf>,

    /// The MQTT client id: stable across restarts (the broker keeps the reports not
    /// yet acknowledged in its session) and unique per instance. Default:
    /// `citypark-<host name>-<gRPC port>`.
    #[arg(long, env = "CITYPARK_MQTT_CLIENT_ID", requires = "mqtt_url")]
    pub mqtt_client_id: Option<String>,

    /// The shared subscription group (`$share/<group>/…`): of the instances in one
    /// group, each report reaches one. Empty: every instance takes every report.
    #[arg(long, env = "CITYPARK_MQTT_SHARE_GROUP", default_value = "citypark")]
    pub mqtt_share_group: String,

    /// Publish each car park's availability, retained, to
    /// `citypark/v1/availability/<region>/<car park id>` on every change (at most once
    /// a second per car park), for roadside guidance signs.
    #[arg(
        long,
        env = "CITYPARK_MQTT_PUBLISH_AVAILABILITY",
        requires = "mqtt_url"
    )]
    pub mqtt_publish_availability: bool,

    /// Changes kept for slow watchers before they are resynced.
    #[arg(long, env = "CITYPARK_CHANGE_BUFFER", default_value_t = 4096)]
    pub change_buffer: usize,

    /// Seconds between sweeps that find car parks turning STALE or CLOSED with time.
    #[arg(long, env = "CITYPARK_STATUS_SWEEP_SECS", default_value_t = 5)]
    pub status_sweep_secs: u64,

    #[command(flatten)]
    pub history: HistoryConfig,

    /// Minutes a finished record (a closed session, a finished reservation or
    /// booking, a ledger entry) stays in live state before it moves to history.
    #[arg(long, env = "CITYPARK_HOT_WINDOW_MINUTES", default_value_t = 1440)]
    pub hot_window_minutes: u32,

    /// Finished records moved to history a second at most, per instance (0: as fast
    /// as history takes them). The hand-off shares the cores with the calls; a city's
    /// sessions finish at tens a second, hundreds at the evening peak.
    #[arg(long, env = "CITYPARK_HAND_OFF_RATE", default_value_t = 2000)]
    pub hand_off_rate: u32,

    /// Minutes a removed record's version (its tombstone) is kept in live state, and a
    /// change in Redis's change stream: longer than any instance takes to read it.
    #[arg(long, env = "CITYPARK_TOMBSTONE_GRACE_MINUTES", default_value_t = 60)]
    pub tombstone_grace_minutes: u32,

    /// Days history keeps money records: sessions, reservations, bookings, ledger
    /// entries.
    #[arg(
        long,
        env = "CITYPARK_HISTORY_RETENTION_MONEY_DAYS",
        default_value_t = 3650
    )]
    pub history_retention_money_days: u32,

    /// Days history keeps occupancy samples.
    #[arg(
        long,
        env = "CITYPARK_HISTORY_RETENTION_OCCUPANCY_DAYS",
        default_value_t = 730
    )]
    pub history_retention_occupancy_days: u32,

    /// File holding the secret key of plates' keyed hashes (HMAC-SHA256), which is
    /// all history keeps of a plate after --session-retention-days. Required with a
    /// PostgreSQL history (every instance must use one key); by default the SQLite
    /// history's is `plate-key` in --data-dir, made on first start.
    #[arg(long, env = "CITYPARK_HISTORY_PLATE_KEY_FILE")]
    pub history_plate_key_file: Option<PathBuf>,
}

/// Where history lives (`serve`, `history migrate`).
#[derive(Debug, Clone, Args)]
pub struct HistoryConfig {
    /// Directory of the single binary's files, created on first start: the live state
    /// of the embedded store (`live.sqlite3` and its commit log `live.log.<n>`), the
    /// SQLite history (`history.sqlite3`)
    /// and the plates' hash key (`plate-key`). One server per directory.
    #[arg(long, env = "CITYPARK_DATA_DIR", default_value = "citypark-data")]
    pub data_dir: PathBuf,

    /// The history of record (closed sessions, finished reservations and bookings,
    /// ledger entries, occupancy samples): `postgres://user[:password]@host:port/db`,
    /// shared by every instance (required with a Redis --store), or empty for a SQLite
    /// file in --data-dir.
    #[arg(
        long,
        env = "CITYPARK_HISTORY",
        default_value = "",
        hide_env_values = true
    )]
    pub history: String,

    /// auto: apply the history schema's migrations at start; check: refuse to start
    /// unless they were applied (`citypark history migrate`).
    #[arg(
        long,
        env = "CITYPARK_HISTORY_MIGRATE",
        value_enum,
        default_value = "auto"
    )]
    pub history_migrate: crate::history::Migrate,
}

impl HistoryConfig {
    /// Where history lives, checked.
    pub fn location(&self) -> Result<crate::history::Location> {
        crate::history::Location::parse(Some(self.history.trim()), &self.data_dir).map_err(|_| {
            Error::invalid(
                "--history",
                "expected postgres://… (or empty for a SQLite file in --data-dir)",
            )
        })
    }
}

impl ServeConfig {
    /// The configured API keys (file, then list). Errors are for the user to fix.
    pub fn api_keys(&self) -> Result<ApiKeys> {
        let mut keys = ApiKeys::default();
        if let Some(path) = &self.api_keys_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::invalid("--api-keys-file", format!("{}: {e}", path.display()))
            })?;
            keys.add_toml(&text)
                .map_err(|e| e.in_field("--api-keys-file"))?;
        }
        if let Some(list) = &self.api_keys {
            keys.add_list(list).map_err(|e| e.in_field("--api-keys"))?;
        }
        Ok(keys)
    }

    /// The configured driver-token keys; with `--demo`, the demo secret too.
    pub fn driver_tokens(&self) -> Result<DriverTokens> {
        let mut tokens = DriverTokens::default();
        let (issuer, audience) = (
            self.driver_jwt_issuer.as_deref(),
            self.driver_jwt_audience.as_deref(),
        );
        let read = |path: &PathBuf, flag: &str| {
            std::fs::read(path)
                .map_err(|e| Error::invalid(flag, format!("{}: {e}", path.display())))
        };
        if let Some(path) = &self.driver_jwt_secret_file {
            let secret = read(path, "--driver-jwt-secret-file")?;
            let secret = secret.trim_ascii();
            if secret.len() < 32 {
                return Err(Error::invalid(
                    "--driver-jwt-secret-file",
                    "the secret must be at least 32 bytes",
                ));
            }
            tokens.add_secret(secret, issuer, audience);
        }
        if let Some(path) = &self.driver_jwt_public_key_file {
            let pem = read(path, "--driver-jwt-public-key-file")?;
            tokens.add_public_pem(&pem, issuer, audience)?;
        }
        if self.demo {
            tokens.add_secret(DEMO_SECRET.as_bytes(), issuer, audience);
        }
        Ok(tokens)
    }

    /// Checks ranges clap cannot express.
    pub fn validate(&self) -> Result<()> {
        if !(1024..=64 << 20).contains(&self.max_message_bytes) {
            return Err(Error::invalid(
                "--max-message-bytes",
                "must be 1 KiB to 64 MiB",
            ));
        }
        if self.change_buffer == 0 || self.status_sweep_secs == 0 || self.demo_interval_secs == 0 {
            return Err(Error::invalid(
                "--change-buffer/--status-sweep-secs/--demo-interval-secs",
                "must be positive",
            ));
        }
        if self.tombstone_grace_minutes == 0 {
            // It is the change stream's reach too: with none, instances would miss
            // every change they did not read at once and reload again and again.
            return Err(Error::invalid(
                "--tombstone-grace-minutes",
                "must be at least 1 (it is also how long the change stream keeps changes)",
            ));
        }
        if self.max_streams_per_connection == 0 {
            return Err(Error::invalid(
                "--max-streams-per-connection",
                "must be positive",
            ));
        }
        if self.max_connections == 0
            || self.first_call_timeout_secs == 0
            || self.idle_timeout_secs == 0
        {
            return Err(Error::invalid(
                "--max-connections/--first-call-timeout-secs/--idle-timeout-secs",
                "must be positive",
            ));
        }
        for (flag, rate) in [
            ("--rate-operator", self.rate_operator),
            ("--rate-driver", self.rate_driver),
            ("--rate-anonymous", self.rate_anonymous),
        ] {
            if !(0.0..=1e9).contains(&rate) {
                return Err(Error::invalid(
                    flag,
                    "must be 0 (unlimited) or a positive number of calls a second",
                ));
            }
        }
        if self.max_watchers == 0 || self.max_watchers_per_client == 0 {
            return Err(Error::invalid(
                "--max-watchers/--max-watchers-per-client",
                "must be positive",
            ));
        }
        if !(1..=1_000).contains(&self.max_active_reservations_per_driver) {
            return Err(Error::invalid(
                "--max-active-reservations-per-driver",
                "must be 1 to 1000",
            ));
        }
        let currency_ok = self.wallet_currency.len() == 3
            && self.wallet_currency.chars().all(|c| c.is_ascii_uppercase());
        if !currency_ok {
            return Err(Error::invalid(
                "--wallet-currency",
                "must be an ISO 4217 code, e.g. CNY",
            ));
        }
        if !(0..=crate::domain::MAX_AMOUNT).contains(&self.wallet_overdraft_minor) {
            return Err(Error::invalid(
                "--wallet-overdraft-minor",
                format!("must be 0 to {}", crate::domain::MAX_AMOUNT),
            ));
        }
        if !(1..=3_650).contains(&self.session_retention_days) {
            return Err(Error::invalid(
                "--session-retention-days",
                "must be 1 to 3650",
            ));
        }
        if !(1..=525_600).contains(&self.hot_window_minutes) {
            return Err(Error::invalid(
                "--hot-window-minutes",
                "must be 1 to 525600 (a year)",
            ));
        }
        if self.history_retention_money_days == 0 || self.history_retention_occupancy_days == 0 {
            return Err(Error::invalid(
                "--history-retention-money-days/--history-retention-occupancy-days",
                "must be positive",
            ));
        }
        let location = self.history.location()?;
        if self.redis()?.is_some() && !location.is_postgres() {
            return Err(Error::invalid(
                "--history",
                "a Redis store's instances share one history: set --history postgres://…",
            ));
        }
        if location.is_postgres() && self.history_plate_key_file.is_none() {
            return Err(Error::invalid(
                "--history-plate-key-file",
                "required with a PostgreSQL history: every instance must hash plates with one key",
            ));
        }
        self.payment_gateway()?;
        self.mqtt()?;
        self.cors_origins()?;
        self.map()?;
        self.publisher()?;
        Ok(())
    }

    /// The key of plates' keyed hashes: the file's bytes (at least 16, surrounding
    /// whitespace trimmed), or the data directory's `plate-key`, made on first start.
    pub fn plate_key(&self) -> Result<Vec<u8>> {
        let read = |path: &std::path::Path| -> Result<Vec<u8>> {
            let bytes = std::fs::read(path).map_err(|e| {
                Error::invalid(
                    "--history-plate-key-file",
                    format!("{}: {e}", path.display()),
                )
            })?;
            let key = bytes.trim_ascii().to_vec();
            if key.len() < 16 {
                return Err(Error::invalid(
                    "--history-plate-key-file",
                    format!("{} holds fewer than 16 bytes", path.display()),
                ));
            }
            Ok(key)
        };
        if let Some(path) = &self.history_plate_key_file {
            return read(path);
        }
        let path = self.history.data_dir.join("plate-key");
        if !path.exists() {
            make_key_file(&path).map_err(|e| {
                Error::invalid(
                    "--data-dir",
                    format!("cannot write {}: {e}", path.display()),
                )
            })?;
        }
        read(&path)
    }

    /// How finished records move to history and how long it keeps them.
    pub fn history_settings(&self, plate_key: Vec<u8>) -> crate::service::HistorySettings {
        const DAY: u64 = 24 * 3600;
        crate::service::HistorySettings {
            hot_window: Duration::from_secs(u64::from(self.hot_window_minutes) * 60),
            retention: crate::service::Retention {
                money: Duration::from_secs(u64::from(self.history_retention_money_days) * DAY),
                occupancy: Duration::from_secs(
                    u64::from(self.history_retention_occupancy_days) * DAY,
                ),
            },
            plate_key: plate_key.into(),
            tombstone_grace: Duration::from_secs(u64::from(self.tombstone_grace_minutes) * 60),
            rate: std::num::NonZeroU32::new(self.hand_off_rate),
            ..crate::service::HistorySettings::default()
        }
    }

    /// The open-data publisher, checked.
    pub fn publisher(&self) -> Result<crate::open_data::Publisher> {
        let country = &self.open_data_country;
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Error::invalid(
                "--open-data-country",
                "must be an ISO 3166-1 alpha-2 code, e.g. CN",
            ));
        }
        let publisher = self.open_data_publisher.trim();
        if publisher.is_empty() || publisher.len() > 100 {
            return Err(Error::invalid(
                "--open-data-publisher",
                "must be 1 to 100 characters",
            ));
        }
        Ok(crate::open_data::Publisher {
            country: country.clone(),
            national_identifier: publisher.to_owned(),
        })
    }

    /// The live map's settings, checked; errors name the flag.
    pub fn map(&self) -> Result<crate::map::MapSettings> {
        let http_url = |flag: &'static str, url: &str| -> Result<()> {
            let uri: http::Uri = url
                .parse()
                .map_err(|e| Error::invalid(flag, format!("{url:?}: {e}")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(Error::invalid(
                    flag,
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
            Ok(())
        };
        if let Some(url) = &self.map_tiles_url {
            // The placeholders are not valid in a URI; checked with them filled in.
            let filled = url
                .replace("{z}", "0")
                .replace("{x}", "0")
                .replace("{y}", "0")
                .replace("{s}", "a");
            http_url("--map-tiles-url", &filled)?;
            if !["{z}", "{x}", "{y}"].iter().all(|p| url.contains(p)) {
                return Err(Error::invalid(
                    "--map-tiles-url",
                    "must hold {z}, {x} and {y}",
                ));
            }
        }
        if let Some(url) = &self.map_grpc_web_url {
            http_url("--map-grpc-web-url", url)?;
        }
        Ok(crate::map::MapSettings {
            grpc_web_url: self
                .map_grpc_web_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_owned()),
            tiles_url: self.map_tiles_url.clone(),
            tiles_attribution: self.map_tiles_attribution.clone(),
        })
    }

    /// Where the live state lives, checked.
    pub fn store_choice(&self) -> Result<StoreChoice> {
        Ok(match self.store.trim() {
            "" => StoreChoice::Durable(self.history.data_dir.clone()),
            MEMORY => StoreChoice::Memory,
            _ => StoreChoice::Redis(self.redis()?.expect("a Redis target")),
        })
    }

    /// The Redis options, or None for an embedded store.
    pub fn redis(&self) -> Result<Option<crate::store::redis::RedisOptions>> {
        if matches!(self.store.trim(), "" | MEMORY) {
            return Ok(None);
        }
        crate::store::redis::parse_target(&self.store).map_err(|e| {
            Error::invalid(
                "--store",
                format!("{}: {e}", crate::store::redis::redact(&self.store)),
            )
        })?;
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(['{', '}', ' ']) {
            return Err(Error::invalid(
                "--redis-prefix",
                "must be non-empty, without braces or spaces",
            ));
        }
        if self.redis_stream_max_len < 1_000 {
            return Err(Error::invalid(
                "--redis-stream-max-len",
                "must be at least 1000",
            ));
        }
        let mut options = crate::store::redis::RedisOptions::new(self.store.trim());
        options.prefix = self.redis_prefix.clone();
        options.connect_timeout = Duration::from_secs(self.redis_connect_timeout_secs);
        options.stream_max_len = self.redis_stream_max_len;
        Ok(Some(options))
    }

    /// The payment gateway's client, if one is configured; errors name the flag.
    /// How to use the MQTT broker, when there is one: the URL, the credentials file
    /// and the TLS roots read and checked.
    pub fn mqtt(&self) -> Result<Option<crate::mqtt::MqttSettings>> {
        let Some(url) = &self.mqtt_url else {
            return Ok(None);
        };
        let broker =
            crate::mqtt::Broker::parse(url).map_err(|e| Error::invalid("--mqtt-url", e))?;
        let credentials = match &self.mqtt_credentials_file {
            Some(path) => Some(
                crate::mqtt::read_credentials(path)
                    .map_err(|e| Error::invalid("--mqtt-credentials-file", e))?,
            ),
            None => None,
        };
        let client_id = match &self.mqtt_client_id {
            Some(id) if id.is_empty() || id.len() > 128 => {
                return Err(Error::invalid("--mqtt-client-id", "must be 1 to 128 bytes"));
            }
            Some(id) => id.clone(),
            None => crate::mqtt::default_client_id(self.grpc_addr.port()),
        };
        if self.mqtt_ca_file.is_some() && !broker.tls {
            return Err(Error::invalid(
                "--mqtt-ca-file",
                "is for an mqtts:// broker; --mqtt-url is plain mqtt://",
            ));
        }
        let group = self.mqtt_share_group.trim();
        if group.contains(['/', '+', '#']) {
            return Err(Error::invalid(
                "--mqtt-share-group",
                "a share group holds no '/', '+' or '#'",
            ));
        }
        let settings = crate::mqtt::MqttSettings {
            broker,
            credentials,
            ca_file: self.mqtt_ca_file.clone(),
            client_id,
            share_group: (!group.is_empty()).then(|| group.to_owned()),
            publish_availability: self.mqtt_publish_availability,
            max_message_bytes: self.max_message_bytes,
            max_back_off: crate::mqtt::MAX_BACK_OFF,
        };
        crate::mqtt::check(&settings).map_err(|e| Error::invalid("--mqtt-ca-file", e))?;
        Ok(Some(settings))
    }

    pub fn payment_gateway(&self) -> Result<Option<Arc<crate::gateway::Gateway>>> {
        let (Some(url), Some(secret_file)) =
            (&self.payment_gateway_url, &self.payment_gateway_secret_file)
        else {
            return Ok(None);
        };
        let bad_url = |why: String| Error::invalid("--payment-gateway-url", why);
        let url: http::Uri = url.parse().map_err(|e| bad_url(format!("{e}")))?;
        let secret = std::fs::read(secret_file).map_err(|e| {
            Error::invalid(
                "--payment-gateway-secret-file",
                format!("{}: {e}", secret_file.display()),
            )
        })?;
        // A trailing newline is the file's, not the secret's.
        let secret = secret.trim_ascii_end().to_vec();
        if !(1..=600_000).contains(&self.payment_gateway_timeout_ms) {
            return Err(Error::invalid(
                "--payment-gateway-timeout-ms",
                "must be 1 to 600000",
            ));
        }
        let config = crate::gateway::GatewayConfig {
            url,
            secret: secret.into(),
            timeout: Duration::from_millis(self.payment_gateway_timeout_ms),
        };
        let gateway = crate::gateway::Gateway::new(config).map_err(|why| {
            let flag = if why.contains("secret") {
                "--payment-gateway-secret-file"
            } else {
                "--payment-gateway-url"
            };
            Error::invalid(flag, why)
        })?;
        Ok(Some(Arc::new(gateway)))
    }

    /// The CORS origins, checked.
    pub fn cors_origins(&self) -> Result<Vec<http::HeaderValue>> {
        self.cors_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|o| {
                if !(o.starts_with("http://") || o.starts_with("https://")) {
                    return Err(Error::invalid(
                        "--cors-origins",
                        format!("{o:?} is not an http(s) origin"),
                    ));
                }
                http::HeaderValue::from_str(o).map_err(|_| {
                    Error::invalid("--cors-origins", format!("{o:?} is not a valid origin"))
                })
            })
            .collect()
    }

    /// Runtime settings from this configuration.
    pub fn settings(&self, api_keys: ApiKeys, driver_tokens: DriverTokens) -> crate::app::Settings {
        crate::app::Settings {
            api_keys,
            driver_tokens,
            limits: Limits {
                max_active_reservations_per_driver: self.max_active_reservations_per_driver,
                max_watchers: self.max_watchers,
                max_watchers_per_client: self.max_watchers_per_client,
                ..Limits::default()
            },
            max_message_bytes: self.max_message_bytes,
            max_streams_per_connection: self.max_streams_per_connection,
            connections: crate::net::ConnLimits {
                max_connections: self.max_connections,
                first_call_timeout: Duration::from_secs(self.first_call_timeout_secs),
                idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            },
            rate_limits: crate::grpc::RateLimits {
                operator: self.rate_operator,
                driver: self.rate_driver,
                anonymous: self.rate_anonymous,
            },
            tls: self
                .tls_cert_file
                .clone()
                .zip(self.tls_key_file.clone())
                .map(|(cert, key)| crate::tls::TlsFiles {
                    cert,
                    key,
                    client_ca: self.tls_client_ca_file.clone(),
                    reload_every: Duration::from_secs(10),
                }),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            status_sweep: Duration::from_secs(self.status_sweep_secs),
            payments: crate::service::Payments {
                currency: self.wallet_currency.clone(),
                overdraft_minor: self.wallet_overdraft_minor,
                session_retention: Duration::from_secs(
                    u64::from(self.session_retention_days) * 24 * 3600,
                ),
                // Checked by `validate`.
                gateway: self.payment_gateway().ok().flatten(),
                ..crate::service::Payments::default()
            },
            // Checked by `validate`.
            cors_origins: self.cors_origins().unwrap_or_default(),
            map: self.map().unwrap_or_default(),
            publisher: self
                .publisher()
                .unwrap_or_else(|_| crate::app::Settings::default().publisher),
            // Checked by `validate`.
            mqtt: self.mqtt().ok().flatten(),
            ..crate::app::Settings::default()
        }
    }
}

/// Writes 32 random bytes, hex-encoded, to a new file only its owner may read.
fn make_key_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(hex::encode(key).as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeConfig,
    }

    fn parse(args: &[&str]) -> ServeConfig {
        Cli::try_parse_from(std::iter::once("citypark").chain(args.iter().copied()))
            .expect("flags parse")
            .serve
    }

    fn field_of(error: Error) -> String {
        match error {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("not a field error: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_embedded_and_valid() {
        let config = parse(&[]);
        assert!(config.validate().is_ok());
        assert!(config.redis().unwrap().is_none());
        assert!(config.cors_origins().unwrap().is_empty());
        assert_eq!(
            config
                .settings(ApiKeys::default(), DriverTokens::default())
                .max_message_bytes,
            1 << 20
        );
    }

    #[test]
    fn the_hand_off_is_paced_unless_told_otherwise() {
        let rate = |args: &[&str]| parse(args).history_settings(Vec::new()).rate;
        assert_eq!(rate(&[]).map(|r| r.get()), Some(2_000));
        assert_eq!(
            rate(&["--hand-off-rate", "500"]).map(|r| r.get()),
            Some(500)
        );
        assert_eq!(rate(&["--hand-off-rate", "0"]), None);
    }

    #[test]
    fn bad_values_name_their_flag() {
        let bad = |args: &[&str]| {
            let config = parse(args);
            field_of(
                config
                    .validate()
                    .and_then(|()| config.redis().map(drop))
                    .unwrap_err(),
            )
        };
        assert_eq!(bad(&["--cors-origins", "ftp://x"]), "--cors-origins");
        assert_eq!(
            bad(&["--map-tiles-url", "https://t.example/{z}/{x}.png"]),
            "--map-tiles-url"
        );
        assert_eq!(
            bad(&["--map-tiles-url", "file:///{z}/{x}/{y}.png"]),
            "--map-tiles-url"
        );
        assert_eq!(
            bad(&["--map-grpc-web-url", "api.example:50051"]),
            "--map-grpc-web-url"
        );
        assert_eq!(
            bad(&["--open-data-country", "China"]),
            "--open-data-country"
        );
        assert_eq!(bad(&["--max-message-bytes", "10"]), "--max-message-bytes");
        assert_eq!(bad(&["--rate-driver=-1"]), "--rate-driver");
        assert_eq!(bad(&["--rate-anonymous", "NaN"]), "--rate-anonymous");
        assert_eq!(bad(&["--store", "http://x"]), "--store");
        assert_eq!(bad(&["--store", "redis://h:1"]), "--history");
        assert_eq!(bad(&["--history", "mysql://h/db"]), "--history");
        assert_eq!(
            bad(&["--history", "postgres://h/db"]),
            "--history-plate-key-file"
        );
        assert_eq!(bad(&["--hot-window-minutes", "0"]), "--hot-window-minutes");
        assert_eq!(bad(&["--store", "redis+cluster://"]), "--store");
        assert_eq!(
            bad(&["--store", "redis://h:1", "--redis-prefix", "a{b}"]),
            "--redis-prefix"
        );
        assert_eq!(
            bad(&["--store", "redis://h:1", "--redis-stream-max-len", "10"]),
            "--redis-stream-max-len"
        );
        assert_eq!(
            bad(&["--tombstone-grace-minutes", "0"]),
            "--tombstone-grace-minutes"
        );
        assert_eq!(bad(&["--mqtt-url", "tcp://broker"]), "--mqtt-url");
        assert_eq!(bad(&["--mqtt-url", "mqtt://u:p@broker"]), "--mqtt-url");
        fn mqtt<'a>(more: &[&'a str]) -> Vec<&'a str> {
            [&["--mqtt-url", "mqtt://broker"][..], more].concat()
        }
        assert_eq!(
            bad(&mqtt(&["--mqtt-credentials-file", "/nonexistent/login"])),
            "--mqtt-credentials-file"
        );
        assert_eq!(
            bad(&mqtt(&["--mqtt-ca-file", "/nonexistent/ca.pem"])),
            "--mqtt-ca-file"
        );
        assert_eq!(
            bad(&[
                "--mqtt-url",
                "mqtts://broker",
                "--mqtt-ca-file",
                "/nonexistent/ca.pem"
            ]),
            "--mqtt-ca-file"
        );
        assert_eq!(
            bad(&mqtt(&["--mqtt-share-group", "a/b"])),
            "--mqtt-share-group"
        );
        assert_eq!(bad(&mqtt(&["--mqtt-client-id", ""])), "--mqtt-client-id");
    }

    #[test]
    fn mqtt_settings_follow_the_flags() {
        let config = parse(&["--mqtt-url", "mqtts://broker.city:8884"]);
        let mqtt = config.mqtt().unwrap().expect("mqtt");
        assert_eq!(
            (mqtt.broker.host.as_str(), mqtt.broker.port, mqtt.broker.tls),
            ("broker.city", 8884, true)
        );
        assert_eq!(mqtt.share_group.as_deref(), Some("citypark"));
        assert!(mqtt.client_id.starts_with("citypark-") && mqtt.client_id.ends_with("-50051"));
        assert!(!mqtt.publish_availability);
        assert_eq!(mqtt.max_back_off, std::time::Duration::from_secs(30));
        let config = parse(&[
            "--mqtt-url",
            "mqtt://broker",
            "--mqtt-share-group",
            "",
            "--mqtt-client-id",
            "citypark-7",
            "--mqtt-publish-availability",
        ]);
        let mqtt = config
            .settings(ApiKeys::default(), DriverTokens::default())
            .mqtt
            .expect("mqtt");
        assert_eq!(
            (
                mqtt.share_group,
                mqtt.client_id.as_str(),
                mqtt.publish_availability
            ),
            (None, "citypark-7", true)
        );
        assert!(parse(&[]).mqtt().unwrap().is_none());
    }

    #[test]
    fn redis_options_follow_the_flags_and_hide_the_password() {
        let config = parse(&[
            "--store",
            "redis://:secret@h:6379/2",
            "--redis-prefix",
            "city",
            "--redis-connect-timeout-secs",
            "7",
        ]);
        let options = config.redis().unwrap().expect("redis");
        assert_eq!(
            (options.prefix.as_str(), options.connect_timeout),
            ("city", Duration::from_secs(7))
        );
        let error = parse(&["--store", "mysql://:secret@h"])
            .redis()
            .unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
        let origins = parse(&["--cors-origins", "https://a.example, https://b.example"])
            .cors_origins()
            .unwrap();
        assert_eq!(origins.len(), 2);
    }

    #[test]
    fn the_map_takes_tiles_and_a_grpc_web_url() {
        let map = parse(&[
            "--map-tiles-url",
            "https://{s}.tile.example/{z}/{x}/{y}.png",
            "--map-grpc-web-url",
            "https://api.city.example/grpc/",
        ])
        .map()
        .unwrap();
        assert_eq!(
            map.tiles_url.as_deref(),
            Some("https://{s}.tile.example/{z}/{x}/{y}.png")
        );
        assert_eq!(
            map.grpc_web_url.as_deref(),
            Some("https://api.city.example/grpc")
        );
        let defaults = parse(&[]);
        assert_eq!(defaults.http_addr.to_string(), "127.0.0.1:8080");
        assert!(defaults.map().unwrap().tiles_url.is_none());
    }
}
