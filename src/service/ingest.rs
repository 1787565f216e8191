//! Ingest: occupancy reports, in order, each with its own result.
//!
//! On a store whose writes cost a round trip (Redis), one task per instance takes every
//! pending call's reports (Publish messages and unary reports alike) and decides them
//! together: all reports on one car park, in arrival order, become one compare-and-set
//! of that car park. So calls racing on one car park in an instance never conflict
//! with each other, and a whole batch is written in one round trip. Under load, calls
//! queue while a batch is committed and go together in the next; with no load a call
//! goes alone at once. The durable embedded store batches the same way (a commit is a
//! sync to disk); on the in-memory one a call is decided in its own task. A gate
//! report (a plate at an entry or exit) goes alone, with its session
//! (`Service::gate_report`). A Publish stream queues its next messages while the
//! earlier ones are decided (`queue_reports`), so a batch is not limited to one message
//! per stream.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Service, write::Decision};
use crate::{
    domain::{
        Applied, CarParkId, CarParkState, Error, OperatorId, Plate, PlateRead, Report, ReportBody,
        Result,
    },
    metrics,
    store::{Change, Parts, Versioned, carpark::LIVE},
};

/// Reports a batch is filled up to before it is decided.
const MAX_BATCH_REPORTS: usize = 2_000;

/// One call's reports and where its results go.
pub(super) struct Job {
    caller: OperatorId,
    reports: Vec<Report>,
    reply: oneshot::Sender<Result<Vec<Result<Applied>>>>,
}

/// Starts the task that decides reports; it ends when `stop` fires, failing what is
/// still queued.
pub(super) fn spawn(service: &Service, mut jobs: mpsc::Receiver<Job>, stop: CancellationToken) {
    let service = service.clone();
    service.tasks.clone().spawn(async move {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => break,
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
            };
            let mut size = first.reports.len();
            let mut batch = vec![first];
            while size < MAX_BATCH_REPORTS {
                let Ok(job) = jobs.try_recv() else { break };
                size += job.reports.len();
                batch.push(job);
            }
            let calls: Vec<(&OperatorId, &[Report])> = batch
                .iter()
                .map(|job| (&job.caller, job.reports.as_slice()))
                .collect();
            let results = service.decide_reports(&calls).await;
            for (job, results) in batch.into_iter().zip(results) {
                let _ = job.reply.send(Ok(results));
            }
        }
        jobs.close();
        while let Some(job) = jobs.recv().await {
            let _ = job.reply.send(Err(shutting_down()));
        }
    });
}

/// A plate at a car park's gate: an entry (or else an exit) read by the report with
/// `sequence`.
#[derive(Debug, Clone)]
pub(super) struct Sighting {
    pub car_park: CarParkId,
    pub sequence: u64,
    pub entry: bool,
    pub read: PlateRead,
}

/// The delta reports that carry a well-formed plate, by index. A plate that is not one
/// a reservation or a link could hold matches nothing, so it is left out here.
fn plates_in(reports: &[Report]) -> Vec<(usize, Sighting)> {
    reports
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match &r.body {
            ReportBody::Delta {
                entries,
                exits,
                plate: Some(plate),
                plate_color,
                lane,
            } => {
                let plate = Plate::parse(plate).ok()?;
                let entry = entries.iter().any(|n| *n > 0);
                let exit = exits.iter().any(|n| *n > 0);
                let read = PlateRead {
                    plate,
                    color: *plate_color,
                    lane: lane.clone(),
                    at: r.observed_at,
                };
                (entry || exit).then(|| {
                    let sighting = Sighting {
                        car_park: r.car_park.clone(),
                        sequence: r.sequence,
                        entry,
                        read,
                    };
                    (i, sighting)
                })
            }
            _ => None,
        })
        .collect()
}

fn shutting_down() -> Error {
    Error::Unavailable("server shutting down; reconnect and resend from the last ack".into())
}

/// A call's reports queued for the ingest task (`Service::queue_reports`).
pub struct Queued(Waiting);

enum Waiting {
    /// In the queue (`None`: the ingest task had stopped); so many reports.
    InLine(Option<oneshot::Receiver<Result<Vec<Result<Applied>>>>>, u64),
    Done(Result<Vec<Result<Applied>>>),
}

impl Queued {
    /// Each report's result once its batch is decided; the outer error fails them all.
    pub async fn results(self) -> Result<Vec<Result<Applied>>> {
        let (results, count) = match self.0 {
            Waiting::Done(results) => return results,
            Waiting::InLine(Some(answer), count) => {
                (answer.await.unwrap_or_else(|_| Err(shutting_down())), count)
            }
            Waiting::InLine(None, count) => (Err(shutting_down()), count),
        };
        match &results {
            Ok(results) => results.iter().for_each(metrics::record_report),
            Err(error) => metrics::record_batch_failure(error, count),
        }
        results
    }
}

/// Puts a call's reports in the ingest task's queue, waiting for room.
async fn enqueue(ingest: &mpsc::Sender<Job>, caller: &OperatorId, reports: Vec<Report>) -> Queued {
    let count = reports.len() as u64;
    let (reply, answer) = oneshot::channel();
    let job = Job {
        caller: caller.clone(),
        reports,
        reply,
    };
    let answer = ingest.send(job).await.ok().map(|()| answer);
    Queued(Waiting::InLine(answer, count))
}

impl Service {
    /// Applies reports for `caller`, in order, each with its own result. The outer
    /// error fails the whole batch (nothing applied, e.g. the server is stopping).
    ///
    /// A gate report (an entry or exit with a plate) is applied with its parking
    /// session as one atomic group (`gate_report`), alone and in its place in the
    /// order; the reports between gate reports go together as before.
    pub async fn report(
        &self,
        caller: &OperatorId,
        reports: Vec<Report>,
    ) -> Result<Vec<Result<Applied>>> {
        if reports.len() > self.limits.max_batch {
            return Err(Error::ResourceExhausted(format!(
                "more than {} reports in one message",
                self.limits.max_batch
            )));
        }
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let mut gates = plates_in(&reports).into_iter().peekable();
        if gates.peek().is_none() {
            return self.report_together(caller, reports).await;
        }
        let mut results = Vec::with_capacity(reports.len());
        let mut together = Vec::new();
        for (i, report) in reports.into_iter().enumerate() {
            let Some((_, sighting)) = gates.next_if(|(at, _)| *at == i) else {
                together.push(report);
                continue;
            };
            // What came before it is applied first, in order.
            if !together.is_empty() {
                let run = std::mem::take(&mut together);
                results.extend(self.report_run(caller, run).await);
            }
            let result = match self.gate_report(caller, &report, &sighting).await {
                Some(result) => {
                    metrics::record_report(&result);
                    result
                }
                // A car park this instance does not hold yet: applied alone, its
                // session left to the operator's next read.
                None => self.report_run(caller, vec![report]).await.remove(0),
            };
            results.push(result);
        }
        if !together.is_empty() {
            results.extend(self.report_run(caller, together).await);
        }
        Ok(results)
    }

    /// A run of reports inside a call with gate reports: each fails alone if the run
    /// does (an earlier part of the call may stand).
    async fn report_run(&self, caller: &OperatorId, reports: Vec<Report>) -> Vec<Result<Applied>> {
        let count = reports.len();
        match self.report_together(caller, reports).await {
            Ok(results) => results,
            Err(error) => vec![Err(error); count],
        }
    }

    /// Reports without plates decided together: on the ingest task with every pending
    /// call's (a store whose commit costs a round trip), or here at once.
    async fn report_together(
        &self,
        caller: &OperatorId,
        reports: Vec<Report>,
    ) -> Result<Vec<Result<Applied>>> {
        let Some(ingest) = &self.ingest else {
            // No round trip to share: decided here, at once. Calls racing on one car
            // park may then conflict, and decide again (a lock's worth of work).
            let mut results = self.decide_reports(&[(caller, &reports)]).await;
            let results = results.pop().expect("one call");
            results.iter().for_each(metrics::record_report);
            return Ok(results);
        };
        enqueue(ingest, caller, reports).await.results().await
    }

    /// Whether `reports` may be queued (`queue_reports`) before a stream's earlier
    /// messages are answered: on a store whose writes the ingest task batches, with no
    /// gate report among them (that one is decided with its session once what came
    /// before it is).
    pub fn queues_ahead(&self, reports: &[Report]) -> bool {
        self.ingest.is_some() && plates_in(reports).is_empty()
    }

    /// Reports in their place in the ingest task's queue, answered when their batch is
    /// decided. So a stream can queue its next message while this one is decided, and
    /// the next batch holds every stream's messages, not one each. A caller's queued
    /// calls are decided in the order they were queued, so a car park's reports stay
    /// in order. Where `queues_ahead` is false they are decided here (`report`), and
    /// the caller must have had its earlier calls answered first.
    pub async fn queue_reports(&self, caller: &OperatorId, reports: Vec<Report>) -> Queued {
        match &self.ingest {
            Some(ingest)
                if (1..=self.limits.max_batch).contains(&reports.len())
                    && self.queues_ahead(&reports) =>
            {
                enqueue(ingest, caller, reports).await
            }
            _ => Queued(Waiting::Done(self.report(caller, reports).await)),
        }
    }
    /// Decides a batch of calls' reports: the reports on each car park, in arrival
    /// order, together, committed as one compare-and-set of the car park.
    async fn decide_reports(&self, jobs: &[(&OperatorId, &[Report])]) -> Vec<Vec<Result<Applied>>> {
        let now = self.now();
        let mut ids: Vec<CarParkId> = Vec::new();
        let mut chains: Vec<Vec<(usize, usize)>> = Vec::new();
        let mut by_id: HashMap<&CarParkId, usize> = HashMap::new();
        for (j, (_, reports)) in jobs.iter().enumerate() {
            for (i, report) in reports.iter().enumerate() {
                let c = *by_id.entry(&report.car_park).or_insert_with(|| {
                    ids.push(report.car_park.clone());
                    chains.push(Vec::new());
                    chains.len() - 1
                });
                chains[c].push((j, i));
            }
        }
        let mut results: Vec<Vec<Option<Result<Applied>>>> =
            jobs.iter().map(|(_, r)| vec![None; r.len()]).collect();
        let decided = match self.car_park_targets(&ids).await {
            Ok(targets) => {
                self.transact(
                    "ingest",
                    targets,
                    0,
                    |c, current: &Versioned<CarParkState>| {
                        let chain = chains[c].iter().map(|&(j, i)| (&jobs[j].1[i], jobs[j].0));
                        let Some(record) = &current.record else {
                            let missing = Error::car_park_not_found(&ids[c]);
                            return Ok(Decision::answer(
                                chain.map(|_| Err(missing.clone())).collect(),
                            ));
                        };
                        let (results, mut steps) = record.apply_reports(chain, now);
                        // Every state is a change of its own, so watchers see each report.
                        let change = steps.pop().map(|record| Change::Put {
                            record,
                            parts: Parts::only(LIVE),
                            steps,
                        });
                        Ok(Decision {
                            change,
                            output: results,
                        })
                    },
                )
                .await
            }
            // The store could not say what it holds: every chain fails alike.
            Err(error) => chains.iter().map(|_| Err(error.clone())).collect(),
        };
        for (chain, decided) in chains.iter().zip(decided) {
            match decided {
                Ok((chain_results, _)) => {
                    for (&(j, i), result) in chain.iter().zip(chain_results) {
                        results[j][i] = Some(result);
                    }
                }
                Err(error) => {
                    for &(j, i) in chain {
                        results[j][i] = Some(Err(error.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|r| r.expect("every report is in one chain"))
                    .collect()
            })
            .collect()
    }
}
