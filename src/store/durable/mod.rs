//! The durable embedded backend, the single binary's default: the engine answers and
//! decides, and every committed group is in `live.sqlite3` (WAL, synced at each
//! commit) before it is visible or acknowledged. At start the engine is rebuilt from
//! the file.
//!
//! Writes go through one writer thread ([`writer`]), which decides each group against
//! the engine, writes a batch of groups in one transaction (group commit: concurrent
//! callers share one fsync) and lands them in the engine. Reads never touch the file.

mod backup;
mod checkpoint;
mod export;
mod file;
mod load;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
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

/// Commits to the live-state file before it commits to the engine.
pub struct DurableStore {
    engine: Arc<Engine>,
    /// None once closed.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The checkpointer and what stops it (dropped).
    checkpointer: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    healthy: watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
    /// Held until the store is closed: one process per data directory.
    held: Mutex<Option<file::Held>>,
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
        let conn = file::open(&held)?;
        let records = load::load(&conn, &engine, clock.now()).map_err(|e| match e {
            Error::Internal(why) => file::refuse(&held.path, why),
            other => other,
        })?;
        let (jobs, receiver) = mpsc::channel();
        let (healthy_tx, healthy) = watch::channel(true);
        let writer_engine = engine.clone();
        let writer = std::thread::Builder::new()
            .name("citypark-live-writer".into())
            .spawn(move || writer::run(conn, writer_engine, receiver, healthy_tx))
            .map_err(|e| Error::Internal(format!("starting the live-state writer: {e}")))?;
        let (stop_checkpoints, stopped) = mpsc::channel();
        let checkpointer = checkpoint::spawn(held.path.clone(), stopped)?;
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
                checkpointer: Mutex::new(Some((stop_checkpoints, checkpointer))),
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

    /// Stops the writer once it has written what was queued, closes the file and lets
    /// the data directory go (another process may take it from then on).
    async fn close(&self) {
        // The checkpointer first: the writer's connection, closing last, checkpoints
        // what is left and removes the WAL.
        let checkpointer = self.checkpointer.lock().take();
        if let Some((stop, checkpointer)) = checkpointer {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || checkpointer.join()).await;
        }
        drop(self.jobs.lock().take());
        let writer = self.writer.lock().take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        drop(self.held.lock().take());
    }
}
