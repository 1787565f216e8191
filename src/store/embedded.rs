//! The embedded backend: the in-process engine is the authority; nothing is persisted.

use std::sync::Arc;

use parking_lot::RwLock;

use super::{Aggregate, AnyWrite, Claim, Committed, Store, Versioned, Write};
use crate::{
    domain::{CarParkId, Error, RegionId, Result, Timestamp},
    engine::Engine,
};

/// Commits straight into the engine (a compare-and-set on its versions); a restart
/// starts from an empty city.
pub struct EmbeddedStore {
    engine: Arc<Engine>,
    /// A group checks every version and then writes, with no write in between: groups
    /// take it exclusively, single commits shared (one uncontended atomic for them).
    groups: RwLock<()>,
}

impl EmbeddedStore {
    /// A store whose authority is `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            groups: RwLock::new(()),
        }
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
        Ok(Versioned::each_in_replica(&self.engine, &keys))
    }

    async fn commit<A: Aggregate>(
        &self,
        writes: Vec<Write<A>>,
        _what: &'static str,
        now: Timestamp,
    ) -> Vec<Result<Committed>> {
        let replica = A::replica(&self.engine);
        let _shared = self.groups.read();
        writes
            .into_iter()
            .map(|write| {
                let (id, expected, floor) = (write.id.clone(), write.expected, write.floor);
                let states = write.into_states();
                let removed = states.is_empty();
                Ok(
                    match replica.compare_and_set(&id, expected, floor, states, now) {
                        Some(version) => {
                            if removed {
                                crate::store::table::note_removed::<A>(&self.engine, &id, version);
                            }
                            Committed::Written { version }
                        }
                        None => Committed::Conflict,
                    },
                )
            })
            .collect()
    }

    async fn commit_group(
        &self,
        writes: Vec<AnyWrite>,
        _what: &'static str,
        now: Timestamp,
    ) -> Result<Vec<Committed>> {
        let _exclusive = self.groups.write();
        if !writes.iter().all(|w| w.is_current(&self.engine)) {
            return Ok(vec![Committed::Conflict; writes.len()]);
        }
        writes
            .into_iter()
            .map(|write| {
                let kind = write.kind();
                // Every version was just checked under the exclusive lock.
                match write.compare_and_set(&self.engine, now) {
                    Some(version) => Ok(Committed::Written { version }),
                    None => Err(Error::Internal(format!(
                        "a {kind} record changed inside its group"
                    ))),
                }
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
