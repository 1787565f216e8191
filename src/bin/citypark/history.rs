//! `citypark history`: the history database's schema, for operators who apply schema
//! changes themselves (then `serve --history-migrate=check`).

use anyhow::Context as _;
use clap::Subcommand;

use citypark::{
    config::HistoryConfig,
    history::{History, Migrate, SqlHistory},
};

#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// Apply the migrations this binary carries that were not applied yet.
    Migrate(HistoryConfig),
    /// List the migrations this binary carries and whether each was applied.
    Status(HistoryConfig),
}

pub async fn run(command: HistoryCommand) -> anyhow::Result<()> {
    let (config, migrate) = match command {
        HistoryCommand::Migrate(config) => (config, true),
        HistoryCommand::Status(config) => (config, false),
    };
    let location = config.location()?;
    // `status` must not change the schema: it opens without migrating, which `check`
    // would refuse while migrations are missing, so it reads them from a connection
    // that tolerates that.
    let history = if migrate {
        SqlHistory::open(&location, Migrate::Auto).await
    } else {
        SqlHistory::open_unchecked(&location).await
    }
    .context("opening the history database")?;
    let migrations = history.migrations().await?;
    for (version, description, applied) in &migrations {
        let state = if *applied { "applied" } else { "pending" };
        println!("{version}\t{state}\t{description}");
    }
    println!(
        "{}: {} of {} migrations applied",
        history.name(),
        migrations.iter().filter(|m| m.2).count(),
        migrations.len()
    );
    history.close().await;
    Ok(())
}
