//! The one writer of the live-state file: a thread that takes every queued group of
//! writes, decides each against the engine (compare-and-set, all or none per group),
//! writes the decided ones in one transaction synced to disk, and only then makes them
//! visible in the engine and answers. Group commit: concurrent callers share one
//! fsync, so a busy server pays far less than one per write.

use std::{
    collections::HashMap,
    sync::{Arc, mpsc},
    time::Instant,
};

use rusqlite::{Connection, params};
use tokio::sync::{oneshot, watch};

use super::file::{REMOVE, UPDATE, UPSERT};
use crate::{
    domain::{Error, Result, Timestamp},
    engine::Engine,
    metrics,
    store::{AnyWrite, Committed},
};

/// Writes taken into one transaction at most: bounds a transaction's time (and the
/// callers' wait behind it) under a flood.
const MAX_BATCH: usize = 8_192;

/// Groups of writes, each all or none; one answer per group, one `Committed` per write.
pub(super) type Answer = Vec<Result<Vec<Committed>>>;

/// A write with what the file stores of it, encoded by its caller (in parallel, off
/// the writer's thread).
pub(super) struct Pending {
    write: AnyWrite,
    /// The last state's parts, `None` where unset; `None` for a delete.
    parts: Option<Vec<Option<String>>>,
}

impl Pending {
    pub(super) fn of(write: AnyWrite) -> Self {
        let parts = write.last_parts();
        Self { write, parts }
    }

    /// Whether the write needs its record to exist: a delete, or a put of some parts.
    fn needs_record(&self) -> bool {
        match &self.parts {
            None => true,
            Some(parts) => parts.iter().any(Option::is_none),
        }
    }
}

/// What the writer is asked to do.
pub(super) enum Job {
    Write {
        groups: Vec<Vec<Pending>>,
        now: Timestamp,
        reply: oneshot::Sender<Answer>,
    },
    /// Drops the tombstones of compacted kinds removed before `before_ms`.
    Compact {
        kinds: Vec<&'static str>,
        before_ms: i64,
        reply: oneshot::Sender<Result<Vec<(&'static str, u64)>>>,
    },
}

impl Job {
    fn writes(&self) -> usize {
        match self {
            Job::Write { groups, .. } => groups.iter().map(Vec::len).sum(),
            Job::Compact { .. } => 1,
        }
    }
}

/// Runs the writer until every sender is gone, then closes the file (a clean close
/// checkpoints the WAL into it).
pub(super) fn run(
    conn: Connection,
    engine: Arc<Engine>,
    jobs: mpsc::Receiver<Job>,
    healthy: watch::Sender<bool>,
) {
    let mut writer = Writer {
        conn,
        engine,
        healthy,
    };
    while let Ok(first) = jobs.recv() {
        let mut taken = first.writes();
        let mut batch = vec![first];
        while taken < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => {
                    taken += job.writes();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        writer.batch(batch);
    }
    if let Err(error) = writer.conn.close().map_err(|(_, e)| e) {
        tracing::warn!(%error, "closing the live-state file");
    }
}

struct Writer {
    conn: Connection,
    engine: Arc<Engine>,
    healthy: watch::Sender<bool>,
}

/// A decided write: the write and the version it takes.
type Decided = (Pending, u64);

/// A job's groups as decided, and when it was decided.
type Outcome = (Vec<std::result::Result<Vec<Decided>, Answered>>, Timestamp);

impl Writer {
    fn batch(&mut self, batch: Vec<Job>) {
        let mut writes = Vec::new();
        for job in batch {
            match job {
                Job::Write { groups, now, reply } => writes.push((groups, now, reply)),
                Job::Compact {
                    kinds,
                    before_ms,
                    reply,
                } => {
                    let _ = reply.send(self.compact(&kinds, before_ms));
                }
            }
        }
        if !writes.is_empty() {
            self.write(writes);
        }
    }

    /// Decides, writes and lands the groups of every job, then answers each job.
    fn write(&mut self, jobs: Vec<(Vec<Vec<Pending>>, Timestamp, oneshot::Sender<Answer>)>) {
        // What this batch has decided so far, by kind and id: (version, record held),
        // so a later group in it is decided against an earlier one.
        let mut decided: HashMap<(&'static str, String), (u64, bool)> = HashMap::new();
        // Per job, per group: its decided writes, or its answer already (a conflict).
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        for (groups, now, reply) in jobs {
            let groups = groups
                .into_iter()
                .map(|group| self.decide(group, &mut decided))
                .collect();
            outcomes.push((groups, now));
            replies.push(reply);
        }
        let started = Instant::now();
        let stored = self.store(&outcomes);
        metrics::record_store_commit(stored.is_ok(), started.elapsed().as_secs_f64());
        self.healthy.send_if_modified(|up| {
            let changed = *up != stored.is_ok();
            *up = stored.is_ok();
            changed
        });
        for ((groups, now), reply) in outcomes.into_iter().zip(replies) {
            let answer = groups
                .into_iter()
                .map(|group| match (group, &stored) {
                    (Err(Answered::Conflict(n)), _) => Ok(vec![Committed::Conflict; n]),
                    (Err(Answered::Bug(e)), _) => Err(e),
                    (Ok(_), Err(e)) => Err(e.clone()),
                    (Ok(writes), Ok(())) => Ok(writes
                        .into_iter()
                        .map(|(pending, version)| {
                            // On disk: now visible here, before the caller is answered.
                            pending.write.land(&self.engine, version, now);
                            Committed::Written { version }
                        })
                        .collect()),
                })
                .collect();
            let _ = reply.send(answer);
        }
    }

    /// A group's writes with their new versions if every record is at the version its
    /// write expects (and a delete or a partial write finds its record), else its
    /// answer.
    fn decide(
        &self,
        group: Vec<Pending>,
        decided: &mut HashMap<(&'static str, String), (u64, bool)>,
    ) -> std::result::Result<Vec<Decided>, Answered> {
        if let Some(first) = group.first()
            && group
                .iter()
                .any(|p| p.write.region() != first.write.region())
        {
            let writes: Vec<&AnyWrite> = group.iter().map(|p| &p.write).collect();
            return Err(Answered::Bug(Error::Internal(format!(
                "a group of writes spans regions: {writes:?}"
            ))));
        }
        let held: Vec<(u64, bool)> = group
            .iter()
            .map(|p| {
                decided
                    .get(&(p.write.kind(), p.write.id().to_owned()))
                    .copied()
                    .unwrap_or_else(|| p.write.held(&self.engine))
            })
            .collect();
        let current = group.iter().zip(&held).all(|(p, &(version, exists))| {
            version == p.write.expected() && (exists || !p.needs_record())
        });
        if !current {
            return Err(Answered::Conflict(group.len()));
        }
        Ok(group
            .into_iter()
            .zip(held)
            .map(|(p, (version, _))| {
                let version = version.max(p.write.floor()) + p.write.steps() as u64;
                let key = (p.write.kind(), p.write.id().to_owned());
                decided.insert(key, (version, p.parts.is_some()));
                (p, version)
            })
            .collect())
    }

    /// Writes every decided group in one transaction, synced before it returns.
    fn store(&mut self, outcomes: &[Outcome]) -> Result<()> {
        let failed = |e: rusqlite::Error| {
            tracing::error!(error = %e, "the live state could not be written");
            Error::Unavailable(format!("the data directory could not be written: {e}"))
        };
        let tx = self.conn.transaction().map_err(failed)?;
        {
            let mut upsert = tx.prepare_cached(UPSERT).map_err(failed)?;
            let mut update = tx.prepare_cached(UPDATE).map_err(failed)?;
            let mut remove = tx.prepare_cached(REMOVE).map_err(failed)?;
            for (groups, now) in outcomes {
                let now_ms = now.as_millisecond();
                for (pending, version) in groups.iter().flatten().flatten() {
                    let write = &pending.write;
                    let (kind, id, region) = (write.kind(), write.id(), write.region().as_str());
                    let version = *version as i64;
                    match &pending.parts {
                        Some(parts) => {
                            let part = |i: usize| parts.get(i).and_then(Option::as_deref);
                            let values = params![kind, id, region, version, part(0), part(1)];
                            let changed = if pending.needs_record() {
                                update.execute(values)
                            } else {
                                upsert.execute(values)
                            };
                            if changed.map_err(failed)? != 1 {
                                // Decided against the engine, which holds what the file
                                // does: a missing row is a bug, and the batch is undone.
                                return Err(Error::Internal(format!(
                                    "no row for {kind} {id} in the live-state file"
                                )));
                            }
                        }
                        None => {
                            remove
                                .execute(params![kind, id, region, version, now_ms])
                                .map_err(failed)?;
                        }
                    }
                }
            }
        }
        tx.commit().map_err(failed)
    }

    /// Drops tombstones of `kinds` removed before `before_ms`; how many, by kind.
    fn compact(
        &mut self,
        kinds: &[&'static str],
        before_ms: i64,
    ) -> Result<Vec<(&'static str, u64)>> {
        let failed = |e: rusqlite::Error| {
            Error::Unavailable(format!("the data directory could not be written: {e}"))
        };
        let tx = self.conn.transaction().map_err(failed)?;
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
}

/// A group answered without being written.
enum Answered {
    /// A record was not at the version its write expected: one conflict per write.
    Conflict(usize),
    Bug(Error),
}
