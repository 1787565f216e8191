//! Checkpoints of the live-state file's WAL, on a thread of their own: copying the
//! WAL's pages into the file and syncing it is most of what a commit would otherwise
//! pay now and then (SQLite's automatic checkpoint runs inside the commit that crosses
//! its threshold), and a passive checkpoint never blocks the writer.

use std::{path::PathBuf, sync::mpsc, thread::JoinHandle, time::Duration};

use rusqlite::{Connection, OpenFlags};

use crate::domain::{Error, Result};

/// How often the WAL is checkpointed while the store runs.
const EVERY: Duration = Duration::from_millis(250);

/// The checkpointing thread; it stops when `stop`'s sender is dropped.
pub(super) fn spawn(path: PathBuf, stop: mpsc::Receiver<()>) -> Result<JoinHandle<()>> {
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::Internal(format!("opening {} to checkpoint: {e}", path.display())))?;
    std::thread::Builder::new()
        .name("citypark-live-checkpoint".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(EVERY) {
                // (busy, frames in the WAL, frames copied); a failure is retried at the
                // next turn, and the writer's own checkpoint is the backstop.
                let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
                });
                if let Err(error) = done {
                    tracing::warn!(%error, "checkpointing the live state");
                }
            }
            let _ = conn.close();
        })
        .map_err(|e| Error::Internal(format!("starting the checkpointer: {e}")))
}
