//! Writing: each caller's writes in one pipeline per region (one round trip), each
//! write one `write.lua` (a compare-and-set of one record of any kind).
//!
//! Batching is the caller's: the service's ingest task hands over every pending
//! report of an instance at once, so Redis sees many reports per round trip under
//! load; a registry call's single write goes alone. The writes made go through to
//! this instance's engine before the caller is answered, so the next decision here
//! starts from them (their stream entries are then skipped by version).

use std::collections::HashMap;

use super::{Shared, unconfirmed};
use crate::{
    domain::{Error, RegionId, Result, Timestamp},
    metrics,
    store::{Aggregate, Change, Committed, Parts, Write},
};

/// One write, ready for `write.lua`: its arguments and the states it stores, oldest
/// first (none for a delete).
struct Prepared<A> {
    id: String,
    args: Vec<String>,
    states: Vec<A>,
}

/// The arguments of one `write.lua` (its keys are the region's, see `write`).
fn prepare<A: Aggregate>(shared: &Shared, write: Write<A>) -> Prepared<A> {
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
    args.extend(A::PARTS.iter().map(|name| (*name).to_owned()));
    for state in &states {
        for i in 0..A::PARTS.len() {
            args.push(if parts.has(i) {
                state.encode_part(i)
            } else {
                String::new()
            });
        }
    }
    Prepared {
        id: write.id,
        args,
        states,
    }
}

/// Writes `writes`, one pipeline per region, and makes the ones written visible in this
/// instance's engine. `what` names the round trips in the metrics.
pub(super) async fn write<A: Aggregate>(
    shared: &Shared,
    writes: Vec<Write<A>>,
    what: &'static str,
    now: Timestamp,
) -> Vec<Result<Committed>> {
    let mut results: Vec<Option<Result<Committed>>> = vec![None; writes.len()];
    let mut by_region: HashMap<RegionId, Vec<(usize, Prepared<A>)>> = HashMap::new();
    for (i, write) in writes.into_iter().enumerate() {
        let region = write.region.clone();
        by_region
            .entry(region)
            .or_default()
            .push((i, prepare(shared, write)));
    }
    // One pipeline (one round trip) per region: a region's keys share one Cluster slot
    // and so one node.
    for (region, prepared) in by_region {
        let keys = shared.keys(&region);
        let parts = keys.parts::<A>();
        let mut script_keys = vec![keys.versions::<A>(), keys.counter, keys.changes];
        script_keys.extend(parts);
        let mut pipe = redis::pipe();
        // Loading the script in the same round trip makes the batch immune to a script
        // cache emptied by a Redis restart or failover.
        pipe.load_script(&shared.write).ignore();
        for (_, write) in &prepared {
            let mut invocation = shared.write.prepare_invoke();
            for key in &script_keys {
                invocation.key(key);
            }
            for arg in &write.args {
                invocation.arg(arg);
            }
            pipe.invoke_script(&invocation);
        }
        let mut conn = shared.conn.clone();
        shared.round_trip(what);
        let reply: redis::RedisResult<Vec<Vec<i64>>> = pipe.query_async(&mut conn).await;
        let replies = match reply {
            Ok(replies) => replies,
            Err(error) => {
                shared.set_healthy(false);
                let error = unconfirmed(&error);
                for (i, _) in prepared {
                    results[i] = Some(Err(error.clone()));
                }
                continue;
            }
        };
        shared.set_healthy(true);
        if what == "ingest" {
            let reports = prepared.iter().map(|(_, w)| w.states.len() as u64);
            metrics::record_redis_reports_written(reports.sum());
        }
        let replica = A::replica(&shared.engine);
        for ((i, write), reply) in prepared.into_iter().zip(replies) {
            results[i] = Some(match reply.as_slice() {
                [1, _, version] => {
                    let version = *version as u64;
                    // Through to this replica before the caller is answered, so a
                    // client reads its write here at once. The states were written as
                    // the last versions up to the one Redis answered.
                    if write.states.is_empty() {
                        replica.remove(&write.id, version);
                    } else {
                        let first = version + 1 - write.states.len() as u64;
                        for (k, state) in write.states.into_iter().enumerate() {
                            replica.put(state, first + k as u64, now);
                        }
                    }
                    Ok(Committed::Written { version })
                }
                [0, _] => Ok(Committed::Conflict),
                other => Err(Error::Internal(format!(
                    "unexpected reply from write.lua: {other:?}"
                ))),
            });
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every write settled"))
        .collect()
}
