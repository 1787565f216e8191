//! The one write path of every use case: read, decide by the rules, commit with
//! compare-and-set; after a conflict read from the authority and decide again.
//!
//! The rule is the use case's `decide` closure, run here and nowhere else (never in a
//! store backend); the store only reads versions and commits them.

use super::Service;
use crate::{
    domain::{Error, RegionId, Result},
    store::{Aggregate, AnyWrite, Change, Committed, Store, Versioned, Write},
};

/// Where a group's records are read from: this instance's replica first, the authority
/// after a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Replica,
    Authority,
}

/// How many times a write is decided again after another writer changed its record
/// first.
const MAX_ATTEMPTS: usize = 5;

/// One record a use case writes and what was last read of it.
pub(super) struct Target<A> {
    pub id: String,
    pub current: Versioned<A>,
}

/// What the rule decided for one record: what to write, if anything, and what the
/// caller learns.
pub(super) struct Decision<A, T> {
    pub change: Option<Change<A>>,
    pub output: T,
}

impl<A, T> Decision<A, T> {
    /// Nothing to write.
    pub fn answer(output: T) -> Self {
        Self {
            change: None,
            output,
        }
    }
}

impl Service {
    /// Decides and commits each target; returns what each decision answered, with the
    /// record's version after it. `floor` is the version the first write of a record
    /// must exceed (see `Write::floor`).
    pub(super) async fn transact<A: Aggregate, T>(
        &self,
        what: &'static str,
        mut targets: Vec<Target<A>>,
        floor: u64,
        decide: impl Fn(usize, &Versioned<A>) -> Result<Decision<A, T>>,
    ) -> Vec<Result<(T, u64)>> {
        let mut results: Vec<Option<Result<(T, u64)>>> = targets.iter().map(|_| None).collect();
        let mut pending: Vec<usize> = (0..targets.len()).collect();
        for _ in 0..MAX_ATTEMPTS {
            let mut writes = Vec::new();
            let mut waiting = Vec::new();
            for &i in &pending {
                let target = &targets[i];
                match decide(i, &target.current) {
                    Err(error) => results[i] = Some(Err(error)),
                    Ok(Decision {
                        change: None,
                        output,
                    }) => results[i] = Some(Ok((output, target.current.version))),
                    Ok(Decision {
                        change: Some(change),
                        output,
                    }) => {
                        // A delete is decided on a record, which names its region.
                        let region = match &change {
                            Change::Put { record, .. } => Some(record.region()),
                            Change::Delete => target.current.record.as_ref().map(A::region),
                        };
                        let Some(region) = region.cloned() else {
                            let bug = format!("delete of {} without a region", target.id);
                            results[i] = Some(Err(Error::Internal(bug)));
                            continue;
                        };
                        writes.push(Write {
                            region,
                            id: target.id.clone(),
                            expected: target.current.version,
                            floor,
                            change,
                        });
                        waiting.push((i, output));
                    }
                }
            }
            if writes.is_empty() {
                break;
            }
            let regions: Vec<RegionId> = writes.iter().map(|w| w.region.clone()).collect();
            let committed = self.store.commit(writes, what, self.now()).await;
            let mut conflicted = Vec::new();
            for (((i, output), done), region) in waiting.into_iter().zip(committed).zip(regions) {
                match done {
                    Ok(Committed::Written { version }) => results[i] = Some(Ok((output, version))),
                    Ok(Committed::Conflict) => conflicted.push((i, region)),
                    Err(error) => results[i] = Some(Err(error)),
                }
            }
            if conflicted.is_empty() {
                break;
            }
            // Another writer changed these records first: what the authority holds now
            // is what the rules decide on next.
            let keys = conflicted
                .iter()
                .map(|(i, region)| (region.clone(), targets[*i].id.clone()))
                .collect();
            match self.store.fetch::<A>(keys).await {
                Ok(fetched) => {
                    for ((i, _), current) in conflicted.iter().zip(fetched) {
                        targets[*i].current = current;
                    }
                }
                Err(error) => {
                    for (i, _) in &conflicted {
                        results[*i] = Some(Err(error.clone()));
                    }
                }
            }
            pending = conflicted
                .into_iter()
                .map(|(i, _)| i)
                .filter(|&i| results[i].is_none())
                .collect();
        }
        results
            .into_iter()
            .zip(&targets)
            .map(|(result, target)| {
                result.unwrap_or_else(|| {
                    Err(Error::Unavailable(format!(
                        "{} {} changed concurrently too often; retry",
                        A::KIND.replace('_', " "),
                        target.id
                    )))
                })
            })
            .collect()
    }

    /// Records `ids` of kind `A` in `region`, as `source` holds them.
    pub(super) async fn read_records<A: Aggregate>(
        &self,
        region: &RegionId,
        ids: &[String],
        source: Source,
    ) -> Result<Vec<Versioned<A>>> {
        match source {
            Source::Replica => Ok(ids
                .iter()
                .map(|id| Versioned::in_replica(&self.engine, id))
                .collect()),
            Source::Authority => {
                let keys = ids.iter().map(|id| (region.clone(), id.clone())).collect();
                self.store.fetch(keys).await
            }
        }
    }

    /// Record `id` of kind `A` in `region`, as `source` holds it.
    pub(super) async fn read_record<A: Aggregate>(
        &self,
        region: &RegionId,
        id: &str,
        source: Source,
    ) -> Result<Versioned<A>> {
        let mut one = self
            .read_records::<A>(region, std::slice::from_ref(&id.to_owned()), source)
            .await?;
        Ok(one.pop().expect("one id, one record"))
    }

    /// The write path of a change that spans records (of one region, of any kinds):
    /// `read` what the rule needs, `decide` the writes (each with the version it was
    /// decided on) and what the caller learns, commit them all or none; after a
    /// conflict read from the authority and decide again, at most `attempts` times.
    /// No writes decided is an answer without a commit.
    pub(super) async fn transact_group<S, T, R: Future<Output = Result<S>>>(
        &self,
        attempts: usize,
        what: &'static str,
        read: impl Fn(Source) -> R,
        decide: impl Fn(S) -> Result<(Vec<AnyWrite>, T)>,
    ) -> Result<T> {
        let mut source = Source::Replica;
        for _ in 0..attempts {
            let (writes, output) = decide(read(source).await?)?;
            if writes.is_empty() {
                return Ok(output);
            }
            let committed = self.store.commit_group(writes, what, self.now()).await?;
            if committed
                .iter()
                .all(|c| matches!(c, Committed::Written { .. }))
            {
                return Ok(output);
            }
            // Another writer changed one of the records first.
            source = Source::Authority;
        }
        Err(Error::Unavailable(format!(
            "the records of this {what} changed concurrently too often; retry"
        )))
    }
}
