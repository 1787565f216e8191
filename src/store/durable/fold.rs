//! Folding the commit log into `live.sqlite3`: the file is the log's checkpoint. At
//! run time a thread of its own folds the frames the writer synced, every
//! [`EVERY`] (or sooner, once [`FOLD_BYTES`] wait) in one transaction, with SQLite's
//! `synchronous = NORMAL` (the log is what makes a commit durable): pages that many
//! commits change are written once a fold, not once a commit, and so the disk is left
//! to the log's syncs. The file's `folded` row says up to which commit it holds. When
//! the writer closes a segment, the folder commits what came before it synced and
//! deletes it. At start, and into a backup's copy, the same `apply` folds what the file lacks.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::Duration,
};

use parking_lot::{Condvar, Mutex};
use rusqlite::{Connection, Transaction, params};
use tokio::sync::oneshot;

use super::{
    Health,
    file::{REMOVE, UPDATE, UPSERT},
    log::{self, Op, Unread},
};
use crate::domain::{Error, Result};

/// What the folder is given, in the order of the log.
pub(super) enum Fold {
    /// A frame the writer appended and synced.
    Frame(Vec<u8>),
    /// A segment every frame of which came before: deleted once the file holds them,
    /// synced.
    Closed(PathBuf),
    /// Drops the tombstones of compacted kinds removed before `before_ms`.
    Compact {
        kinds: Vec<&'static str>,
        before_ms: i64,
        reply: oneshot::Sender<Result<Vec<(&'static str, u64)>>>,
    },
}

/// How often the frames waiting are folded.
const EVERY: Duration = Duration::from_secs(2);
/// Frames waiting that are folded at once, however soon.
const FOLD_BYTES: usize = 64 << 20;
/// Bytes of frames the writer may have handed on and the folder not yet folded; past
/// it the writer waits.
const BUDGET: usize = 256 << 20;
/// How long a failed fold waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The bytes of frames handed to the folder and not yet folded, bounded: memory stays
/// bounded if the folder falls behind (a file it cannot write), and the writer waits.
pub(super) struct Budget {
    held: Mutex<usize>,
    freed: Condvar,
}

impl Budget {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            held: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    /// Takes `n` bytes, waiting while the budget is spent (a frame larger than all of
    /// it goes alone).
    pub(super) fn take(&self, n: usize) {
        let mut held = self.held.lock();
        while *held > 0 && *held + n > BUDGET {
            self.freed.wait(&mut held);
        }
        *held += n;
    }

    fn give(&self, n: usize) {
        *self.held.lock() -= n;
        self.freed.notify_all();
    }
}

impl Fold {
    fn bytes(&self) -> usize {
        match self {
            Fold::Frame(frame) => frame.len(),
            _ => 0,
        }
    }
}

/// The commit the file holds everything up to.
pub(super) fn folded(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT seq FROM folded", [], |row| row.get::<_, i64>(0))
        .map(|seq| seq as u64)
}

/// Makes `tx` write a page, so that its commit, with `synchronous = FULL`, syncs the
/// WAL and with it every commit before it (an empty transaction syncs nothing).
pub(super) fn touch(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute("UPDATE folded SET seq = seq", []).map(drop)
}

/// Applies one frame's payload to the file, in `tx`: its rows, and its sequence number
/// as the one the file now holds. A row that does not fit the file (a partial write
/// without its record) is an error: the log and the file disagree.
pub(super) fn apply(tx: &Transaction<'_>, payload: &[u8]) -> Result<u64> {
    let failed = |e: rusqlite::Error| {
        Error::Unavailable(format!("the data directory could not be written: {e}"))
    };
    let (seq, rows) =
        log::decode(payload).map_err(|why| Error::Internal(format!("a commit: {why}")))?;
    let mut upsert = tx.prepare_cached(UPSERT).map_err(failed)?;
    let mut update = tx.prepare_cached(UPDATE).map_err(failed)?;
    let mut remove = tx.prepare_cached(REMOVE).map_err(failed)?;
    for row in &rows {
        let (kind, id, region) = (&row.kind, &row.id, &row.region);
        let version = row.version as i64;
        let part = |i: usize| row.parts.get(i).and_then(Option::as_deref);
        let changed = match row.op {
            Op::Upsert => upsert.execute(params![kind, id, region, version, part(0), part(1)]),
            Op::Update => update.execute(params![kind, id, region, version, part(0), part(1)]),
            Op::Remove => remove.execute(params![kind, id, region, version, row.removed_at]),
        }
        .map_err(failed)?;
        if changed != 1 {
            return Err(Error::Internal(format!(
                "commit {seq} changes {kind} {id}, which the file does not hold"
            )));
        }
    }
    tx.execute("UPDATE folded SET seq = ?1", [seq as i64])
        .map_err(failed)?;
    Ok(seq)
}

/// Folds every commit of the log in `dir` after the one `tx`'s file holds, in order;
/// the last commit folded (the file's own if none). The log must go on from the file:
/// a gap is `Unread::Gone` (a running server deleted a segment meanwhile) when
/// `running`, else damage.
pub(super) fn catch_up(
    tx: &Transaction<'_>,
    dir: &Path,
    running: bool,
) -> std::result::Result<u64, Unread> {
    let from = folded(tx).map_err(|e| Unread::Damaged(dir.to_path_buf(), e.to_string()))?;
    let mut last = from;
    log::each_frame(dir, |seq, payload| {
        if seq <= last {
            return Ok(());
        }
        if seq != last + 1 {
            return Err(if running {
                Unread::Gone
            } else {
                Unread::Damaged(
                    dir.to_path_buf(),
                    format!(
                        "the commit log goes on at commit {seq}, but the live state holds \
                         commits up to {last}: commits are missing"
                    ),
                )
            });
        }
        apply(tx, payload).map_err(|e| {
            Unread::Damaged(
                dir.to_path_buf(),
                format!("commit {seq} cannot be folded: {e}"),
            )
        })?;
        last = seq;
        Ok(())
    })?;
    Ok(last)
}

/// Runs the folder until the writer is gone, then closes the file (a clean close
/// checkpoints its WAL into it) and deletes the log, which it then holds whole.
pub(super) fn run(
    mut conn: Connection,
    dir: PathBuf,
    jobs: mpsc::Receiver<Fold>,
    budget: Arc<Budget>,
    health: Arc<Health>,
) {
    if let Err(error) = conn.pragma_update(None, "synchronous", "NORMAL") {
        tracing::warn!(%error, "the live-state file stays fully synced");
    }
    while let Ok(first) = jobs.recv() {
        let deadline = std::time::Instant::now() + EVERY;
        let waits = !matches!(first, Fold::Frame(_));
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while !waits && bytes < FOLD_BYTES {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match jobs.recv_timeout(left) {
                // Someone waits for what is not a frame (a compaction's answer; a
                // segment's deletion, not to keep a full log): folded now.
                Ok(job @ (Fold::Compact { .. } | Fold::Closed(_))) => {
                    batch.push(job);
                    break;
                }
                Ok(job) => {
                    bytes += job.bytes();
                    batch.push(job);
                }
                // Time to fold, or the writer stopped: what came is folded.
                Err(_) => break,
            }
        }
        // Folded in order; a segment closes after what came before it is in a synced
        // transaction.
        let mut frames = Vec::new();
        for job in batch {
            match job {
                Fold::Frame(frame) => frames.push(frame),
                Fold::Closed(path) => {
                    let before = std::mem::take(&mut frames);
                    fold_until_done(&mut conn, &before, true, &health, &budget);
                    remove(&path, &dir);
                }
                Fold::Compact {
                    kinds,
                    before_ms,
                    reply,
                } => {
                    let before = std::mem::take(&mut frames);
                    fold_until_done(&mut conn, &before, false, &health, &budget);
                    let _ = reply.send(compact(&mut conn, &kinds, before_ms));
                }
            }
        }
        fold_until_done(&mut conn, &frames, false, &health, &budget);
    }
    // The file synced holds the whole log: the log can go. Otherwise it stays, and the
    // next start folds it again.
    let synced = fold(&mut conn, &[], true);
    if let Err(error) = conn.close().map_err(|(_, e)| e) {
        tracing::warn!(%error, "closing the live-state file");
    }
    match synced.and_then(|()| {
        log::segments(&dir).map_err(|e| Error::Unavailable(format!("listing the commit log: {e}")))
    }) {
        Ok(segments) => {
            for (_, path) in segments {
                remove(&path, &dir);
            }
            if let Err(error) = log::remove_spare(&dir) {
                tracing::warn!(%error, "removing the commit log's spare segment");
            }
        }
        Err(error) => tracing::warn!(%error, "the commit log is kept for the next start"),
    }
}

fn remove(path: &Path, dir: &Path) {
    if let Err(error) = std::fs::remove_file(path).and_then(|()| log::sync_dir(dir)) {
        tracing::warn!(%error, segment = %path.display(), "removing a folded log segment");
    }
}

/// Folds `frames` in one transaction (synced if `synced`, with every one before it), trying again until it
/// succeeds: the log holds them meanwhile, and health says the store is down.
fn fold_until_done(
    conn: &mut Connection,
    frames: &[Vec<u8>],
    synced: bool,
    health: &Health,
    budget: &Budget,
) {
    if frames.is_empty() && !synced {
        return;
    }
    loop {
        match fold(conn, frames, synced) {
            Ok(()) => {
                health.set_folding(true);
                budget.give(frames.iter().map(Vec::len).sum());
                return;
            }
            Err(error) => {
                tracing::error!(%error, "the commit log could not be folded into the live state; retrying");
                health.set_folding(false);
                std::thread::sleep(RETRY);
            }
        }
    }
}

fn fold(conn: &mut Connection, frames: &[Vec<u8>], synced: bool) -> Result<()> {
    let failed = |e: rusqlite::Error| {
        Error::Unavailable(format!("the data directory could not be written: {e}"))
    };
    if synced {
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(failed)?;
    }
    let tx = conn.transaction().map_err(failed)?;
    for frame in frames {
        apply(&tx, log::payload(frame))?;
    }
    if synced {
        touch(&tx).map_err(failed)?;
    }
    let done = tx.commit().map_err(failed);
    if synced {
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(failed)?;
    }
    done
}

/// Drops tombstones of `kinds` removed before `before_ms`; how many, by kind.
fn compact(
    conn: &mut Connection,
    kinds: &[&'static str],
    before_ms: i64,
) -> Result<Vec<(&'static str, u64)>> {
    let failed = |e: rusqlite::Error| {
        Error::Unavailable(format!("the data directory could not be written: {e}"))
    };
    let tx = conn.transaction().map_err(failed)?;
    let mut counts = Vec::new();
    for kind in kinds {
        let n = tx
            .execute(
                "DELETE FROM records WHERE kind = ?1 AND removed_at < ?2 \
                 AND p0 IS NULL AND p1 IS NULL",
                params![kind, before_ms],
            )
            .map_err(failed)?;
        if n > 0 {
            counts.push((*kind, n as u64));
        }
    }
    tx.commit().map_err(failed)?;
    Ok(counts)
}
