//! The embedded backend: the in-process engine is the authority; nothing is persisted.

use std::sync::Arc;

use super::{Aggregate, Change, Claim, Committed, Store, Versioned, Write};
use crate::{
    domain::{CarParkId, RegionId, Result, Timestamp},
    engine::Engine,
};

/// Commits straight into the engine (a compare-and-set on its versions); a restart
/// starts from an empty city.
pub struct EmbeddedStore {
    engine: Arc<Engine>,
}

impl EmbeddedStore {
    /// A store whose authority is `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

impl Store for EmbeddedStore {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn fetch<A: Aggregate>(
        &self,
        keys: Vec<(RegionId, String)>,
    ) -> Result<Vec<Versioned<A>>> {
        Ok(keys
            .iter()
            .map(|(_, id)| Versioned::in_replica(&self.engine, id))
            .collect())
    }

    async fn commit<A: Aggregate>(
        &self,
        writes: Vec<Write<A>>,
        _what: &'static str,
        now: Timestamp,
    ) -> Vec<Result<Committed>> {
        let replica = A::replica(&self.engine);
        writes
            .into_iter()
            .map(|write| {
                let states = match write.change {
                    Change::Put {
                        record, mut steps, ..
                    } => {
                        steps.push(record);
                        steps
                    }
                    Change::Delete => Vec::new(),
                };
                Ok(
                    match replica.compare_and_set(
                        &write.id,
                        write.expected,
                        write.floor,
                        states,
                        now,
                    ) {
                        Some(version) => Committed::Written { version },
                        None => Committed::Conflict,
                    },
                )
            })
            .collect()
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

    async fn close(&self) {}
}
