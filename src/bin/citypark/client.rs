//! Placeholder until the client subcommands land (being written now).
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {}
pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {}
}
