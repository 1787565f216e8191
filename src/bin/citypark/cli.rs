//! Command-line shape of the `citypark` binary.

use citypark::config::ServeConfig;
use clap::{Parser, Subcommand};

use crate::client::ClientCommand;

/// citypark: every car park of a city as one virtual car park, over gRPC.
///
/// `citypark serve --demo` starts a server with a generated Qingdao-scale city;
/// `citypark nearby --lat 36.066 --lon 120.383` then asks it for free spaces.
#[derive(Debug, Parser)]
#[command(name = "citypark", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (embedded store kept in --data-dir, or Redis with --store; --demo
    /// adds a generated city).
    Serve(Box<ServeConfig>),
    /// Back up a data directory (live state, history, plate key) to one tar file,
    /// online: its server may keep running.
    Backup(crate::live::BackupArgs),
    /// Copy a stopped single binary's live state into an empty Redis, to serve the city
    /// from Redis instances from then on.
    ExportToRedis(crate::live::ExportArgs),
    /// The history database: apply its schema's migrations, or show them.
    #[command(subcommand)]
    History(crate::history::HistoryCommand),
    /// Availability forecasts: the backtest on an occupancy history.
    #[command(subcommand)]
    Forecast(crate::forecast::ForecastCommand),
    /// Print the SHA-256 of an API key, for --api-keys and the keys file.
    HashKey {
        /// The key to hash.
        key: String,
    },
    /// Print a driver token (HS256 JWT) for the demo's public secret, or a secret file.
    Token(crate::reserve::TokenArgs),
    #[command(flatten)]
    Client(Box<ClientCommand>),
}
