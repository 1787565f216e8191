//! Writing: each caller's writes in one pipeline per region (one round trip), each
//! write, or group of writes committed together, one `write.lua` (a compare-and-set of
//! its records, of any kinds, all or none).
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
    store::{AnyWrite, Committed},
};

/// Writes each group of `groups` (each all of one region) atomically, one pipeline per
/// region, and makes the ones written visible in this instance's engine. Answers per
/// group one `Committed` per write (all written or all in conflict). `what` names the
/// round trips in the metrics.
pub(super) async fn write(
    shared: &Shared,
    groups: Vec<Vec<AnyWrite>>,
    what: &'static str,
    now: Timestamp,
) -> Vec<Result<Vec<Committed>>> {
    let mut results: Vec<Option<Result<Vec<Committed>>>> = groups.iter().map(|_| None).collect();
    let mut by_region: HashMap<RegionId, Vec<(usize, Vec<AnyWrite>)>> = HashMap::new();
    for (i, group) in groups.into_iter().enumerate() {
        let Some(region) = group.first().map(|w| w.region().clone()) else {
            results[i] = Some(Ok(Vec::new()));
            continue;
        };
        if group.iter().any(|w| w.region() != &region) {
            let bug = format!("a group of writes spans regions: {group:?}");
            results[i] = Some(Err(Error::Internal(bug)));
            continue;
        }
        by_region.entry(region).or_default().push((i, group));
    }
    // One pipeline (one round trip) per region: a region's keys share one Cluster slot
    // and so one node.
    for (region, groups) in by_region {
        let keys = shared.keys(&region);
        let mut pipe = redis::pipe();
        // Loading the script in the same round trip makes the batch immune to a script
        // cache emptied by a Redis restart or failover.
        pipe.load_script(&shared.write).ignore();
        for (_, group) in &groups {
            let mut invocation = shared.write.prepare_invoke();
            invocation
                .key(&keys.counter)
                .key(&keys.changes)
                .key(&keys.tombstones)
                .arg(shared.options.stream_max_len)
                .arg(group.len());
            for write in group {
                let encoded = write.encode();
                invocation.key(keys.hash(encoded.versions));
                for part in encoded.parts {
                    invocation.key(keys.hash(part));
                }
                invocation
                    .arg(encoded.kind)
                    .arg(encoded.op)
                    .arg(encoded.id)
                    .arg(encoded.expected)
                    .arg(encoded.floor)
                    .arg(encoded.parts.len())
                    .arg(encoded.states.len())
                    .arg(u8::from(encoded.compacted))
                    .arg(encoded.parts);
                for state in &encoded.states {
                    invocation.arg(state);
                }
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
                for (i, _) in groups {
                    results[i] = Some(Err(error.clone()));
                }
                continue;
            }
        };
        shared.set_healthy(true);
        if what == "ingest" {
            let reports = groups.iter().flat_map(|(_, g)| g).map(AnyWrite::steps);
            metrics::record_redis_reports_written(reports.sum::<usize>() as u64);
        }
        for ((i, group), reply) in groups.into_iter().zip(replies) {
            results[i] = Some(match reply.as_slice() {
                [1, _, versions @ ..] if versions.len() == group.len() => {
                    // Through to this replica before the caller is answered, so a
                    // client reads its write here at once.
                    let mut committed = Vec::with_capacity(group.len());
                    for (write, &version) in group.into_iter().zip(versions) {
                        let version = version as u64;
                        write.land(&shared.engine, version, now);
                        committed.push(Committed::Written { version });
                    }
                    Ok(committed)
                }
                [0, _, _] => Ok(vec![Committed::Conflict; group.len()]),
                other => Err(Error::Internal(format!(
                    "unexpected reply from write.lua: {other:?}"
                ))),
            });
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every group settled"))
        .collect()
}
