//! `citypark forecast`: the forecasts' backtest on an occupancy history.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use citypark::domain::TimeZoneName;

#[derive(Debug, Subcommand)]
pub enum ForecastCommand {
    /// Replay an occupancy history (CSV: car_park_id, capacity, observed_at, and
    /// occupied or free) through the server's forecaster, training only on the past,
    /// and print its MAE at 15, 30, 60 and 120 minutes against persistence, seasonal
    /// naive and Helsinki's three-week mean, and its 80% interval's coverage.
    Backtest(BacktestArgs),
}

#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// The CSV file; its first line names the columns.
    pub file: PathBuf,
    /// The IANA time zone of local times in the file and of the car parks' weekly
    /// profile (times with an offset are read as they are).
    #[arg(long, default_value = "UTC", env = "CITYPARK_BACKTEST_TIME_ZONE")]
    pub time_zone: String,
}

pub fn run(command: ForecastCommand) -> anyhow::Result<()> {
    let ForecastCommand::Backtest(args) = command;
    let zone = TimeZoneName::parse(&args.time_zone)
        .map_err(|e| anyhow::anyhow!("--time-zone: {}", e.to_string().trim_start_matches(": ")))?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let report = citypark::backtest::run(&text, zone.zone(), zone.as_str())
        .with_context(|| format!("{}", args.file.display()))?;
    println!("{report}");
    Ok(())
}
