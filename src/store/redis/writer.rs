//! The report writer: one task that takes every pending report, from every Publish
//! stream and unary call, and writes them in pipelined batches.
//!
//! Under load, reports queue while a batch is in flight and go together in the next,
//! so Redis sees many reports per round trip; with no load a report goes alone at once.
//! Jobs are taken in arrival order and a car park's reports stay in order, so
//! per-car-park order holds across streams. All reports on one car park in a batch
//! are computed in order in Rust and written as one compare-and-set of its version:
//! they commit together or are recomputed together.

use std::{collections::HashMap, sync::Arc};

use tokio::sync::{mpsc, oneshot};

use super::{MAX_ATTEMPTS, Shared, Write, WriteResult, encode, unavailable};
use crate::{
    domain::{
        CarPark, CarParkId, Error, Live, OperatorId, RegionId, Report, ReportOutcome, Result,
        Timestamp,
    },
    engine::Applied,
    metrics,
};

/// Reports a batch is filled up to before it is written.
const MAX_BATCH_REPORTS: usize = 2_000;

/// One caller's reports and where to send their results.
pub struct Job {
    reports: Vec<Report>,
    caller: OperatorId,
    now: Timestamp,
    reply: oneshot::Sender<Vec<Result<Applied>>>,
}

/// Starts the writer; it ends when every sender is dropped.
pub(super) fn spawn(shared: Arc<Shared>) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(1_024);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut size = first.reports.len();
            let mut jobs = vec![first];
            while size < MAX_BATCH_REPORTS {
                let Ok(job) = rx.try_recv() else { break };
                size += job.reports.len();
                jobs.push(job);
            }
            write_batch(&shared, jobs).await;
        }
    });
    tx
}

/// Queues reports and waits for their results.
pub(super) async fn submit(
    writer: &mpsc::Sender<Job>,
    reports: Vec<Report>,
    caller: OperatorId,
    now: Timestamp,
) -> Result<Vec<Result<Applied>>> {
    if reports.is_empty() {
        return Ok(Vec::new());
    }
    let (reply, results) = oneshot::channel();
    let gone = || Error::Unavailable("the store is shutting down".into());
    writer
        .send(Job {
            reports,
            caller,
            now,
            reply,
        })
        .await
        .map_err(|_| gone())?;
    results.await.map_err(|_| gone())
}

/// The reports of one car park in a batch, as (job, index) in arrival order.
struct Chain {
    id: CarParkId,
    items: Vec<(usize, usize)>,
    /// What Redis (or the replica) holds: registration and live state, and version.
    base: Option<(Arc<CarPark>, Live)>,
    version: u64,
}

/// Each report's result, once settled.
type Results = Vec<Vec<Option<Result<Applied>>>>;

impl Chain {
    /// Takes the car park's state as just read from Redis, or settles every report of
    /// the chain with the error that kept it from being read.
    fn rebase(&mut self, fetched: Result<(Option<(CarPark, Live)>, u64)>, results: &mut Results) {
        match fetched {
            Ok((state, version)) => {
                self.base = state.map(|(cp, live)| (Arc::new(cp), live));
                self.version = version;
            }
            Err(error) => {
                for &(job, i) in &self.items {
                    results[job][i] = Some(Err(error.clone()));
                }
            }
        }
    }
}

/// A chain computed against its base: the results and, if anything changed, the write.
struct Computed {
    results: Vec<Result<Applied>>,
    write: Option<(Live, u64)>,
}

fn compute(chain: &Chain, jobs: &[Job]) -> Computed {
    let Some((car_park, base)) = &chain.base else {
        let results = chain
            .items
            .iter()
            .map(|_| Err(Error::car_park_not_found(&chain.id)))
            .collect();
        return Computed {
            results,
            write: None,
        };
    };
    let mut live = base.clone();
    let mut changed = false;
    let results = chain
        .items
        .iter()
        .map(|&(job, i)| {
            let job = &jobs[job];
            car_park.check_owner(&job.caller)?;
            let outcome = live.apply(car_park, &job.reports[i], job.now)?;
            changed |= outcome != ReportOutcome::Duplicate;
            Ok(Applied {
                outcome,
                availability: live.availability(car_park, job.now),
            })
        })
        .collect();
    Computed {
        results,
        write: changed.then_some((live, chain.version)),
    }
}

async fn write_batch(shared: &Arc<Shared>, jobs: Vec<Job>) {
    let mut chains: Vec<Chain> = Vec::new();
    let mut by_id: HashMap<CarParkId, usize> = HashMap::new();
    for (j, job) in jobs.iter().enumerate() {
        for (i, report) in job.reports.iter().enumerate() {
            let c = *by_id.entry(report.car_park.clone()).or_insert_with(|| {
                let (base, version) = shared.engine.versioned(report.car_park.as_str());
                chains.push(Chain {
                    id: report.car_park.clone(),
                    items: Vec::new(),
                    base,
                    version,
                });
                chains.len() - 1
            });
            chains[c].items.push((j, i));
        }
    }
    let mut results: Results = jobs.iter().map(|j| vec![None; j.reports.len()]).collect();
    // A car park this replica does not hold may exist all the same (registered through
    // another instance, not replicated here yet): Redis decides before NOT_FOUND.
    let unknown: Vec<usize> = (0..chains.len())
        .filter(|&c| chains[c].base.is_none())
        .collect();
    if !unknown.is_empty() {
        let ids: Vec<&CarParkId> = unknown.iter().map(|&c| &chains[c].id).collect();
        let owners = shared.owners(&ids, "ingest").await;
        for (k, &c) in unknown.iter().enumerate() {
            let state = match &owners {
                Ok(owners) => {
                    shared
                        .fetch_unknown(&chains[c].id, owners[k].clone(), "ingest")
                        .await
                }
                Err(error) => Err(error.clone()),
            };
            chains[c].rebase(state, &mut results);
        }
    }
    let mut pending: Vec<usize> = (0..chains.len())
        .filter(|&c| {
            chains[c]
                .items
                .iter()
                .any(|&(j, i)| results[j][i].is_none())
        })
        .collect();
    for attempt in 0..MAX_ATTEMPTS {
        if pending.is_empty() {
            break;
        }
        let computed: Vec<Computed> = pending
            .iter()
            .map(|&c| compute(&chains[c], &jobs))
            .collect();
        // Writes grouped by region: one pipeline (one round trip) per region, since a
        // region's keys share one Cluster slot and so one node.
        let mut by_region: HashMap<RegionId, Vec<usize>> = HashMap::new();
        for (k, done) in computed.iter().enumerate() {
            if done.write.is_some() {
                let region = chains[pending[k]]
                    .base
                    .as_ref()
                    .expect("a write has a base")
                    .0
                    .region
                    .clone();
                by_region.entry(region).or_default().push(k);
            }
        }
        let mut retry = Vec::new();
        let mut outcome: Vec<Option<Result<WriteResult>>> = vec![None; computed.len()];
        for (region, ks) in &by_region {
            let keys = shared.keys(region);
            let lives: Vec<String> = ks
                .iter()
                .map(|&k| encode(&computed[k].write.as_ref().expect("grouped writes").0))
                .collect();
            let mut pipe = redis::pipe();
            // Loading the script in the same round trip makes the batch immune to a
            // script cache emptied by a Redis restart or failover.
            pipe.load_script(&shared.write).ignore();
            for (&k, live) in ks.iter().zip(&lives) {
                let chain = &chains[pending[k]];
                let expected = computed[k].write.as_ref().expect("grouped writes").1;
                let write = Write {
                    op: "live",
                    id: &chain.id,
                    expected,
                    park: "",
                    live,
                    floor: 0,
                };
                pipe.invoke_script(&shared.write_invocation(&keys, &write));
            }
            let mut conn = shared.conn.clone();
            shared.round_trip("ingest");
            let reply: redis::RedisResult<Vec<Vec<i64>>> = pipe.query_async(&mut conn).await;
            match reply {
                Ok(replies) => {
                    shared.set_healthy(true);
                    metrics::record_redis_reports_written(ks.len() as u64);
                    for (&k, reply) in ks.iter().zip(replies) {
                        outcome[k] = Some(WriteResult::parse(&reply));
                    }
                }
                Err(error) => {
                    shared.set_healthy(false);
                    let error = unavailable(&error);
                    for &k in ks {
                        outcome[k] = Some(Err(error.clone()));
                    }
                }
            }
        }
        for (k, done) in computed.into_iter().enumerate() {
            let c = pending[k];
            let chain = &chains[c];
            let settled = match (&done.write, outcome[k].take()) {
                (None, _) => Some(done.results),
                (Some((live, _)), Some(Ok(WriteResult::Written { version, .. }))) => {
                    // Written through to this replica at once, so the next batch
                    // computes from it; the stream entry is then skipped by version.
                    shared.engine.live_versioned(
                        chain.id.as_str(),
                        live.clone(),
                        version,
                        chain_now(chain, &jobs),
                    );
                    Some(done.results)
                }
                (Some(_), Some(Ok(WriteResult::Missing))) => Some(
                    chain
                        .items
                        .iter()
                        .map(|_| Err(Error::car_park_not_found(&chain.id)))
                        .collect(),
                ),
                (Some(_), Some(Err(error))) => {
                    Some(chain.items.iter().map(|_| Err(error.clone())).collect())
                }
                (Some(_), Some(Ok(WriteResult::Conflict { .. })) | None) => None,
            };
            match settled {
                Some(chain_results) => {
                    for (&(job, i), result) in chain.items.iter().zip(chain_results) {
                        results[job][i] = Some(result);
                    }
                }
                None => retry.push(c),
            }
        }
        // Another instance changed these car parks first: start again from Redis.
        for &c in &retry {
            let region = chains[c]
                .base
                .as_ref()
                .expect("a write has a base")
                .0
                .region
                .clone();
            let keys = shared.keys(&region);
            let fetched = shared.fetch(&keys, &chains[c].id, "ingest").await;
            chains[c].rebase(fetched, &mut results);
        }
        pending = retry
            .into_iter()
            .filter(|&c| {
                chains[c]
                    .items
                    .iter()
                    .any(|&(j, i)| results[j][i].is_none())
            })
            .collect();
        if attempt + 1 == MAX_ATTEMPTS {
            for &c in &pending {
                for &(job, i) in &chains[c].items {
                    results[job][i] = Some(Err(Error::Unavailable(format!(
                        "car park {} changed concurrently too often; resend",
                        chains[c].id
                    ))));
                }
            }
        }
    }
    for (job, results) in jobs.into_iter().zip(results) {
        let results = results
            .into_iter()
            .map(|r| r.expect("every report settled"))
            .collect();
        let _ = job.reply.send(results);
    }
}

/// The time of the chain's last report, for the status shown to watchers.
fn chain_now(chain: &Chain, jobs: &[Job]) -> Timestamp {
    chain
        .items
        .last()
        .map_or_else(Timestamp::now, |&(job, _)| jobs[job].now)
}
