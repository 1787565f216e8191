//! The writer: one task that takes every pending write, from every caller, and writes
//! them in pipelined batches, one round trip per region.
//!
//! Under load, writes queue while a batch is in flight and go together in the next, so
//! Redis sees many per round trip; with no load a write goes alone at once. Jobs are
//! taken in arrival order, so a record's writes stay in order across callers. Each
//! write is one `write.lua` (a compare-and-set of one record of any kind); the ones
//! written go through to this instance's engine at once, so the next decision here
//! starts from them (the stream entry is then skipped by its version).

use std::{collections::HashMap, sync::Arc};

use tokio::sync::{mpsc, oneshot};

use super::{Shared, unconfirmed};
use crate::{
    domain::{Error, RegionId, Result, Timestamp},
    engine::Engine,
    metrics,
    store::{Aggregate, Change, Committed, Parts, Write},
};

/// Writes a batch is filled up to before it is written.
const MAX_BATCH_WRITES: usize = 2_000;

/// Applies a written record to this instance's engine, at the version Redis gave it.
type WriteThrough = Box<dyn FnOnce(&Engine, u64, Timestamp) + Send>;

/// One write, ready for `write.lua`.
struct Pending {
    region: RegionId,
    /// States the write stores (0 for a delete): reports, for an ingest write.
    states: usize,
    keys: Vec<String>,
    args: Vec<String>,
    through: WriteThrough,
}

/// One caller's writes and where to send their results.
pub struct Job {
    writes: Vec<Pending>,
    /// What the writes are for, as the round-trip metric names it.
    what: &'static str,
    /// When they were decided, for the status watchers are shown.
    now: Timestamp,
    reply: oneshot::Sender<Vec<Result<Committed>>>,
}

/// Starts the writer; it ends when the store closes, failing what it has not written.
pub(super) fn spawn(shared: &Arc<Shared>) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(1_024);
    let (writer, stop) = (shared.clone(), shared.stop.clone());
    shared.tasks.spawn(async move {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => break,
                job = rx.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
            };
            let mut size = first.writes.len();
            let mut jobs = vec![first];
            while size < MAX_BATCH_WRITES {
                let Ok(job) = rx.try_recv() else { break };
                size += job.writes.len();
                jobs.push(job);
            }
            write_batch(&writer, jobs).await;
        }
        // Closing: what is still queued was never written.
        rx.close();
        while let Some(job) = rx.recv().await {
            let gone = Error::Unavailable("the store is shutting down; retry".into());
            let _ = job
                .reply
                .send(job.writes.iter().map(|_| Err(gone.clone())).collect());
        }
    });
    tx
}

/// Queues writes and waits for their results.
pub(super) async fn submit<A: Aggregate>(
    shared: &Shared,
    writer: &mpsc::Sender<Job>,
    writes: Vec<Write<A>>,
    what: &'static str,
    now: Timestamp,
) -> Vec<Result<Committed>> {
    if writes.is_empty() {
        return Vec::new();
    }
    let n = writes.len();
    let writes = writes.into_iter().map(|w| prepare(shared, w)).collect();
    let (reply, results) = oneshot::channel();
    let gone = || {
        vec![
            Err(Error::Unavailable(
                "the store is shutting down; retry".into()
            ));
            n
        ]
    };
    if writer
        .send(Job {
            writes,
            what,
            now,
            reply,
        })
        .await
        .is_err()
    {
        return gone();
    }
    results.await.unwrap_or_else(|_| gone())
}

/// The keys and arguments of one `write.lua`, and its write-through.
fn prepare<A: Aggregate>(shared: &Shared, write: Write<A>) -> Pending {
    let keys = shared.keys(&write.region);
    let mut script_keys = vec![
        keys.versions::<A>(),
        keys.counter.clone(),
        keys.changes.clone(),
    ];
    script_keys.extend(keys.parts::<A>());
    let (op, states, parts) = match write.change {
        Change::Put {
            record,
            parts,
            mut steps,
        } => {
            steps.push(record);
            ("put", steps, parts)
        }
        Change::Delete => ("del", Vec::new(), Parts::ALL),
    };
    let mut args = vec![
        A::KIND.to_owned(),
        op.to_owned(),
        write.id.clone(),
        write.expected.to_string(),
        write.floor.to_string(),
        shared.options.stream_max_len.to_string(),
        states.len().to_string(),
    ];
    for state in &states {
        for (i, name) in A::PARTS.iter().enumerate() {
            args.push((*name).to_owned());
            args.push(if parts.has(i) {
                state.encode_part(i)
            } else {
                String::new()
            });
        }
    }
    let id = write.id;
    let states_len = states.len();
    let through: WriteThrough = if states.is_empty() {
        Box::new(move |engine, version, _| {
            A::replica(engine).remove(&id, version);
        })
    } else {
        // The states were written as the last versions up to the one Redis answers.
        Box::new(move |engine, last, now| {
            let first = last + 1 - states.len() as u64;
            for (k, state) in states.into_iter().enumerate() {
                A::replica(engine).put(state, first + k as u64, now);
            }
        })
    };
    Pending {
        states: states_len,
        region: write.region,
        keys: script_keys,
        args,
        through,
    }
}

async fn write_batch(shared: &Arc<Shared>, jobs: Vec<Job>) {
    let mut results: Vec<Vec<Option<Result<Committed>>>> =
        jobs.iter().map(|j| vec![None; j.writes.len()]).collect();
    let mut by_region: HashMap<&RegionId, Vec<(usize, usize)>> = HashMap::new();
    for (j, job) in jobs.iter().enumerate() {
        for (w, write) in job.writes.iter().enumerate() {
            by_region.entry(&write.region).or_default().push((j, w));
        }
    }
    let mut written: Vec<((usize, usize), u64)> = Vec::new();
    // One pipeline (one round trip) per region: a region's keys share one Cluster slot
    // and so one node.
    for (_, items) in by_region {
        let mut pipe = redis::pipe();
        // Loading the script in the same round trip makes the batch immune to a script
        // cache emptied by a Redis restart or failover.
        pipe.load_script(&shared.write).ignore();
        for &(j, w) in &items {
            let write = &jobs[j].writes[w];
            let mut invocation = shared.write.prepare_invoke();
            for key in &write.keys {
                invocation.key(key);
            }
            for arg in &write.args {
                invocation.arg(arg);
            }
            pipe.invoke_script(&invocation);
        }
        let what = if items.iter().any(|&(j, _)| jobs[j].what == "ingest") {
            "ingest"
        } else {
            jobs[items[0].0].what
        };
        let mut conn = shared.conn.clone();
        shared.round_trip(what);
        let reply: redis::RedisResult<Vec<Vec<i64>>> = pipe.query_async(&mut conn).await;
        match reply {
            Ok(replies) => {
                shared.set_healthy(true);
                let reports = items
                    .iter()
                    .filter(|&&(j, _)| jobs[j].what == "ingest")
                    .map(|&(j, w)| jobs[j].writes[w].states as u64);
                metrics::record_redis_reports_written(reports.sum());
                for (&(j, w), reply) in items.iter().zip(replies) {
                    results[j][w] = Some(match reply.as_slice() {
                        [1, _, version] => {
                            written.push(((j, w), *version as u64));
                            Ok(Committed::Written {
                                version: *version as u64,
                            })
                        }
                        [0, _] => Ok(Committed::Conflict),
                        other => Err(Error::Internal(format!(
                            "unexpected reply from write.lua: {other:?}"
                        ))),
                    });
                }
            }
            Err(error) => {
                shared.set_healthy(false);
                let error = unconfirmed(&error);
                for (j, w) in items {
                    results[j][w] = Some(Err(error.clone()));
                }
            }
        }
    }
    // Through to this replica before anyone is answered, so a client reads its write
    // here at once.
    let mut throughs: Vec<Vec<Option<WriteThrough>>> = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        throughs.push(job.writes.into_iter().map(|p| Some(p.through)).collect());
        replies.push((job.reply, job.now));
    }
    for ((j, w), version) in written {
        if let Some(through) = throughs[j][w].take() {
            through(&shared.engine, version, replies[j].1);
        }
    }
    for ((reply, _), results) in replies.into_iter().zip(results) {
        let results = results
            .into_iter()
            .map(|r| r.expect("every write settled"))
            .collect();
        let _ = reply.send(results);
    }
}
