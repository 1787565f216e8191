//! Ingest: occupancy reports, in order, each with its own result.

use std::collections::HashMap;

use super::{Service, write::Decision};
use crate::{
    domain::{Applied, CarParkId, CarParkState, Error, OperatorId, Report, Result},
    metrics,
    store::{Change, Parts, Versioned, carpark::LIVE},
};

impl Service {
    /// Applies reports for `caller`, in order, each with its own result. The outer
    /// error fails the whole batch (nothing applied, e.g. the store is unreachable).
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
        let count = reports.len() as u64;
        let results = self.apply_reports(caller, &reports).await;
        match &results {
            Ok(results) => results.iter().for_each(metrics::record_report),
            Err(error) => metrics::record_batch_failure(error, count),
        }
        results
    }

    /// The reports on each car park, in order, decided together and committed as one
    /// compare-and-set of the car park, so a store can write a whole batch in one round
    /// trip.
    async fn apply_reports(
        &self,
        caller: &OperatorId,
        reports: &[Report],
    ) -> Result<Vec<Result<Applied>>> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now();
        let mut ids: Vec<CarParkId> = Vec::new();
        let mut chains: Vec<Vec<usize>> = Vec::new();
        let mut by_id: HashMap<&CarParkId, usize> = HashMap::new();
        for (i, report) in reports.iter().enumerate() {
            let c = *by_id.entry(&report.car_park).or_insert_with(|| {
                ids.push(report.car_park.clone());
                chains.push(Vec::new());
                chains.len() - 1
            });
            chains[c].push(i);
        }
        let targets = self.car_park_targets(&ids).await?;
        let decided = self
            .transact(
                "ingest",
                targets,
                0,
                |c, current: &Versioned<CarParkState>| {
                    let chain = chains[c].iter().map(|&i| &reports[i]);
                    let Some(record) = &current.record else {
                        let missing = Error::car_park_not_found(&ids[c]);
                        return Ok(Decision::answer(
                            chain.map(|_| Err(missing.clone())).collect(),
                        ));
                    };
                    let (results, mut steps) = record.apply_reports(chain, caller, now);
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
            .await?;
        let mut results: Vec<Option<Result<Applied>>> = vec![None; reports.len()];
        for (chain, decided) in chains.iter().zip(decided) {
            match decided {
                Ok((chain_results, _)) => {
                    for (&i, result) in chain.iter().zip(chain_results) {
                        results[i] = Some(result);
                    }
                }
                Err(error) => {
                    for &i in chain {
                        results[i] = Some(Err(error.clone()));
                    }
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every report is in one chain"))
            .collect())
    }
}
