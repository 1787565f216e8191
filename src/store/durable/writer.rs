//! The one writer of the live state: a thread that takes every queued group of writes,
//! decides each against the engine (compare-and-set, all or none per group), appends
//! the decided ones to the commit log as one frame synced to disk, and only then makes
//! them visible in the engine, answers, and hands the frame to the folder. Group
//! commit: concurrent callers share one fsync, so a busy server pays far less than one
//! per write.

use std::{
    collections::HashMap,
    sync::{Arc, mpsc},
    time::Instant,
};

use tokio::sync::oneshot;

use super::{
    Health,
    fold::{Budget, Fold},
    log::{Appender, Encoder, Op},
};
use crate::{
    domain::{Error, Result, Timestamp},
    engine::Engine,
    metrics,
    store::{AnyWrite, Committed},
};

/// Writes taken into one commit at most: bounds a commit's time (and the callers' wait
/// behind it) under a flood.
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

/// Runs the writer until every sender is gone; the folder then folds what is left and
/// closes the file.
pub(super) fn run(
    log: Appender,
    seq: u64,
    engine: Arc<Engine>,
    jobs: mpsc::Receiver<Job>,
    folder: mpsc::Sender<Fold>,
    budget: Arc<Budget>,
    health: Arc<Health>,
) {
    let mut writer = Writer {
        log,
        seq,
        engine,
        folder,
        budget,
        health,
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
}

struct Writer {
    log: Appender,
    /// The last commit appended.
    seq: u64,
    engine: Arc<Engine>,
    folder: mpsc::Sender<Fold>,
    budget: Arc<Budget>,
    health: Arc<Health>,
}

/// A frame appended, and the segment the log moved on from after it.
type Appended = (Vec<u8>, Option<std::path::PathBuf>);

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
                    // The file's own business, in the log's order.
                    let _ = self.folder.send(Fold::Compact {
                        kinds,
                        before_ms,
                        reply,
                    });
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
        let (stored, frame) = match self.store(&outcomes) {
            Ok(frame) => (Ok(()), frame),
            Err(e) => (Err(e), None),
        };
        metrics::record_store_commit(stored.is_ok(), started.elapsed().as_secs_f64());
        self.health.set_appending(stored.is_ok());
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
        if let Some((frame, closed)) = frame {
            self.hand_on(frame, closed);
        }
    }

    /// Gives a synced frame to the folder (and the segment the log moved on from, if
    /// it did). The folder's budget is bounded: a folder that falls behind (a file it
    /// cannot write) holds the writer back rather than memory filling.
    fn hand_on(&mut self, frame: Vec<u8>, closed: Option<std::path::PathBuf>) {
        self.budget.take(frame.len());
        let _ = self.folder.send(Fold::Frame(frame));
        if let Some(closed) = closed {
            let _ = self.folder.send(Fold::Closed(closed));
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

    /// Appends every decided group to the log as one frame, synced before it
    /// returns; the frame, to fold (none if nothing was decided), and the segment the
    /// log moved on from after it, if it did.
    fn store(&mut self, outcomes: &[Outcome]) -> Result<Option<Appended>> {
        let mut frame = Encoder::new(self.seq + 1);
        for (groups, now) in outcomes {
            let now_ms = now.as_millisecond();
            for (pending, version) in groups.iter().flatten().flatten() {
                let write = &pending.write;
                let (kind, id, region) = (write.kind(), write.id(), write.region().as_str());
                match &pending.parts {
                    Some(parts) => {
                        let op = match pending.needs_record() {
                            true => Op::Update,
                            false => Op::Upsert,
                        };
                        frame.row(op, kind, id, region, *version, parts, 0);
                    }
                    None => frame.row(Op::Remove, kind, id, region, *version, &[], now_ms),
                }
            }
        }
        if frame.is_empty() {
            return Ok(None);
        }
        let frame = frame.finish();
        let closed = self.log.append(&frame).map_err(|e| {
            tracing::error!(error = %e, "the commit log could not be written");
            Error::Unavailable(format!("the data directory could not be written: {e}"))
        })?;
        self.seq += 1;
        Ok(Some((frame, closed)))
    }
}

/// A group answered without being written.
enum Answered {
    /// A record was not at the version its write expected: one conflict per write.
    Conflict(usize),
    Bug(Error),
}
