//! `citypark backup` and `citypark export-to-redis`: the single binary's live state
//! (`live.sqlite3` in the data directory) copied out, online or to Redis.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::Args;

use citypark::{
    clock::SystemClock,
    store::{durable, redis::RedisOptions},
};

/// `citypark backup` options.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The data directory to back up; its server may be running.
    #[arg(long, env = "CITYPARK_DATA_DIR", default_value = "citypark-data")]
    pub data_dir: PathBuf,

    /// The tar file to write (it must not exist). Restore with
    /// `mkdir NEW && tar -xf FILE -C NEW`, then `citypark serve --data-dir NEW`.
    #[arg(long)]
    pub to: PathBuf,
}

/// `citypark export-to-redis` options.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The data directory whose live state is exported; its server must be stopped.
    #[arg(long, env = "CITYPARK_DATA_DIR", default_value = "citypark-data")]
    pub data_dir: PathBuf,

    /// The Redis to export to (`redis://…`, `rediss://…` or `redis+cluster://…`), with
    /// no city under --redis-prefix yet.
    #[arg(long, env = "CITYPARK_STORE", hide_env_values = true)]
    pub store: String,

    /// Prefix of every Redis key: the one the Redis deployment's servers will use.
    #[arg(long, env = "CITYPARK_REDIS_PREFIX", default_value = "cp")]
    pub redis_prefix: String,
}

pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let done = durable::backup(&args.data_dir, &args.to)
        .with_context(|| format!("backing up {}", args.data_dir.display()))?;
    for (name, size) in &done.files {
        println!("{name}\t{size} bytes");
    }
    println!("backed up to {}", done.to.display());
    Ok(())
}

pub async fn export_to_redis(args: ExportArgs) -> anyhow::Result<()> {
    citypark::store::redis::parse_target(&args.store)
        .map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    let mut options = RedisOptions::new(args.store.trim());
    options.prefix = args.redis_prefix;
    let written = durable::export_to_redis(&args.data_dir, options, Arc::new(SystemClock))
        .await
        .with_context(|| format!("exporting {} to Redis", args.data_dir.display()))?;
    for (kind, n) in &written {
        println!("{kind}\t{n}");
    }
    println!(
        "{} records exported; serve with --store {} and a PostgreSQL --history",
        written.iter().map(|(_, n)| n).sum::<usize>(),
        citypark::store::redis::redact(&args.store)
    );
    Ok(())
}
