//! The durable embedded backend, the single binary's default: the engine answers and
//! decides, and every committed group is in the data directory's commit log (synced at
//! each commit) before it is visible or acknowledged. At start the log is folded into
//! `live.sqlite3` and the engine is rebuilt from the file.
//!
//! Writes go through one writer thread ([`writer`]), which decides each group against
//! the engine, appends a batch of groups to the log as one frame (group commit:
//! concurrent callers share one fsync) and lands them in the engine. A folder thread
//! ([`fold`]) folds the frames into the file behind it. Reads never touch either.

mod backup;
mod export;
mod file;
mod fold;
mod load;
mod log;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

use super::{Aggregate, AnyWrite, Claim, Committed, Store, Versioned, Write, table};
use crate::{
    clock::Clock,
    domain::{CarParkId, Error, RegionId, Result, Timestamp},
    engine::Engine,
};
pub use backup::{Backup, backup};
pub use export::export_to_redis;
pub use file::FILE;
use writer::{Job, Pending};

/// Commits to the commit log before it commits to the engine.
pub struct DurableStore {
    engine: Arc<Engine>,
    /// None once closed.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    folder: Mutex<Option<std::thread::JoinHandle<()>>>,
    healthy: watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
    /// Held until the store is closed: one process per data directory.
    held: Mutex<Option<file::Held>>,
}

/// Whether the store takes writes: its log is written and its file folded into.
pub(super) struct Health {
    appending: AtomicBool,
    folding: AtomicBool,
    up: watch::Sender<bool>,
}

impl Health {
    fn new() -> (Arc<Self>, watch::Receiver<bool>) {
        let (up, healthy) = watch::channel(true);
        let health = Self {
            appending: AtomicBool::new(true),
            folding: AtomicBool::new(true),
            up,
        };
        (Arc::new(health), healthy)
    }

    fn set_appending(&self, ok: bool) {
        self.appending.store(ok, Ordering::Relaxed);
        self.publish();
    }

    fn set_folding(&self, ok: bool) {
        self.folding.store(ok, Ordering::Relaxed);
        self.publish();
    }

    fn publish(&self) {
        let now = self.appending.load(Ordering::Relaxed) && self.folding.load(Ordering::Relaxed);
        self.up.send_if_modified(|up| {
            let changed = *up != now;
            *up = now;
            changed
        });
    }
}

/// What opening found, for the start-up log.
#[derive(Debug, Clone)]
pub struct Opened {
    pub path: PathBuf,
    /// Records loaded, by kind.
    pub records: Vec<(&'static str, usize)>,
    pub took: Duration,
}

impl DurableStore {
    /// Opens (or creates) the live state in `dir` and loads it into `engine`, which
    /// must be empty; refuses a damaged file or a directory another process holds.
    /// Blocking: the file is checked and read whole.
    pub fn open(dir: &Path, engine: Arc<Engine>, clock: Arc<dyn Clock>) -> Result<(Self, Opened)> {
        let started = Instant::now();
        let held = file::hold(dir)?;
        let mut conn = file::open(&held)?;
        let now = clock.now();
        let Recovered {
            seq,
            segment,
            read: records,
        } = recover(&mut conn, dir, |conn| load::load(conn, &engine, now))?;
        let log = log::Appender::create(dir, segment).map_err(|e| {
            Error::Unavailable(format!("starting the commit log in {}: {e}", dir.display()))
        })?;
        let (jobs, receiver) = mpsc::channel();
        let (to_fold, folds) = mpsc::channel();
        let budget = fold::Budget::new();
        let (health, healthy) = Health::new();
        let (folder_health, folder_budget) = (health.clone(), budget.clone());
        let folder_dir = dir.to_path_buf();
        let folder = std::thread::Builder::new()
            .name("citypark-live-folder".into())
            .spawn(move || fold::run(conn, folder_dir, folds, folder_budget, folder_health))
            .map_err(|e| Error::Internal(format!("starting the live-state folder: {e}")))?;
        let writer_engine = engine.clone();
        let writer = std::thread::Builder::new()
            .name("citypark-live-writer".into())
            .spawn(move || writer::run(log, seq, writer_engine, receiver, to_fold, budget, health))
            .map_err(|e| Error::Internal(format!("starting the live-state writer: {e}")))?;
        let opened = Opened {
            path: held.path.clone(),
            records,
            took: started.elapsed(),
        };
        Ok((
            Self {
                engine,
                jobs: Mutex::new(Some(jobs)),
                writer: Mutex::new(Some(writer)),
                folder: Mutex::new(Some(folder)),
                healthy,
                clock,
                held: Mutex::new(Some(held)),
            },
            opened,
        ))
    }

    /// Hands `groups` to the writer and waits for its answer.
    async fn write(&self, groups: Vec<Vec<AnyWrite>>, now: Timestamp) -> writer::Answer {
        let n = groups.len();
        let groups = groups
            .into_iter()
            .map(|group| group.into_iter().map(Pending::of).collect())
            .collect();
        let (reply, answer) = oneshot::channel();
        let sent = self
            .jobs
            .lock()
            .as_ref()
            .map(|jobs| jobs.send(Job::Write { groups, now, reply }).is_ok());
        if sent != Some(true) {
            return vec![Err(stopped()); n];
        }
        answer.await.unwrap_or_else(|_| vec![Err(stopped()); n])
    }
}

/// Where a recovered data directory goes on: the commit its file holds up to, the
/// number for the next log segment, and what `then` read.
struct Recovered<T> {
    seq: u64,
    segment: u64,
    read: T,
}

/// Folds what the log holds beyond the file into it, lets `then` read the result, and
/// only if both succeed commits (synced) and deletes the log. Damage anywhere — in the
/// log, or a record `then` cannot read — refuses the start and changes nothing.
fn recover<T>(
    conn: &mut rusqlite::Connection,
    dir: &Path,
    then: impl FnOnce(&rusqlite::Connection) -> Result<T>,
) -> Result<Recovered<T>> {
    let path = dir.join(FILE);
    let failed = |e: rusqlite::Error| file::refuse(&path, e);
    let tx = conn.transaction().map_err(failed)?;
    file::upgrade(&tx, &path)?;
    let seq = fold::catch_up(&tx, dir, false).map_err(|unread| match unread {
        log::Unread::Damaged(path, why) => file::refuse(&path, why),
        log::Unread::Gone => file::refuse(dir, "a commit log segment vanished while it was read"),
    })?;
    let read = then(&tx).map_err(|e| match e {
        Error::Internal(why) => file::refuse(&path, why),
        other => other,
    })?;
    // Synced even if the log added nothing: the file's last commits may be in the page
    // cache only (a killed process's), and the log that also holds them goes next.
    fold::touch(&tx).map_err(failed)?;
    tx.commit().map_err(failed)?;
    let segments = log::segments(dir).map_err(|e| file::refuse(dir, e))?;
    let segment = segments.last().map_or(1, |(n, _)| n + 1);
    for (_, path) in &segments {
        std::fs::remove_file(path).map_err(|e| file::refuse(path, e))?;
    }
    log::sync_dir(dir).map_err(|e| file::refuse(dir, e))?;
    Ok(Recovered { seq, segment, read })
}

fn stopped() -> Error {
    Error::Unavailable("the live-state writer has stopped".into())
}

impl Store for DurableStore {
    fn name(&self) -> &'static str {
        "durable"
    }

    async fn fetch<A: Aggregate>(
        &self,
        keys: Vec<(RegionId, String)>,
    ) -> Result<Vec<Versioned<A>>> {
        // The engine holds everything the file does once it is committed.
        Ok(Versioned::each_in_replica(&self.engine, &keys))
    }

    async fn commit<A: Aggregate>(
        &self,
        writes: Vec<Write<A>>,
        _what: &'static str,
        now: Timestamp,
    ) -> Vec<Result<Committed>> {
        let groups = table::each_alone(writes);
        table::alone_answers(self.write(groups, now).await)
    }

    async fn commit_group(
        &self,
        writes: Vec<AnyWrite>,
        _what: &'static str,
        now: Timestamp,
    ) -> Result<Vec<Committed>> {
        self.write(vec![writes], now)
            .await
            .pop()
            .expect("one group, one answer")
    }

    /// One engine holds every region, so the registry's own rules keep ids unique.
    async fn claim_id(&self, _id: &CarParkId, _region: &RegionId) -> Result<Claim> {
        Ok(Claim::Claimed { floor: 0 })
    }

    async fn release_id(&self, _id: &CarParkId, _version: u64) {}

    /// Whatever the engine does not hold does not exist.
    async fn locate(&self, ids: Vec<CarParkId>) -> Result<Vec<Option<RegionId>>> {
        Ok(vec![None; ids.len()])
    }

    async fn compact_tombstones(&self, grace: Duration) -> Result<Vec<(&'static str, u64)>> {
        let before_ms = self.clock.now().as_millisecond() - grace.as_millis() as i64;
        let kinds = load::compacted();
        let (reply, answer) = oneshot::channel();
        let sent = self.jobs.lock().as_ref().map(|jobs| {
            jobs.send(Job::Compact {
                kinds,
                before_ms,
                reply,
            })
            .is_ok()
        });
        if sent != Some(true) {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    fn health(&self) -> Option<watch::Receiver<bool>> {
        Some(self.healthy.clone())
    }

    /// A commit costs a sync to disk: concurrent reports decided together share it.
    fn batches_writes(&self) -> bool {
        true
    }

    /// Stops the writer once it has written what was queued, lets the folder fold the
    /// rest and close the file, and lets the data directory go (another process may
    /// take it from then on).
    async fn close(&self) {
        drop(self.jobs.lock().take());
        let writer = self.writer.lock().take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        let folder = self.folder.lock().take();
        if let Some(folder) = folder {
            let _ = tokio::task::spawn_blocking(move || folder.join()).await;
        }
        drop(self.held.lock().take());
    }
}
