//! The Redis key schema. Every key of a region carries the region as a hash tag, so
//! one atomic step's keys share a Redis Cluster slot.

use crate::{
    domain::{CarParkId, RegionId},
    store::Aggregate,
};

/// Keys of one region, under a deployment prefix (default `cp`).
#[derive(Debug, Clone)]
pub struct RegionKeys {
    /// `cp:{qingdao}`: what every key of the region starts with.
    base: String,
    /// Counter: changes ever made in the region, of every kind; numbers the stream
    /// entries without holes.
    pub counter: String,
    /// Stream: every change of every kind, capped.
    pub changes: String,
    /// Sorted set: the tombstones of compacted kinds by when their delete was made,
    /// for `compact.lua`.
    pub tombstones: String,
}

impl RegionKeys {
    pub fn new(prefix: &str, region: &RegionId) -> Self {
        let base = format!("{prefix}:{{{region}}}");
        Self {
            counter: format!("{base}:n"),
            changes: format!("{base}:changes"),
            tombstones: format!("{base}:tombstones"),
            base,
        }
    }

    /// A hash of the region, by its name relative to the region (`parks`).
    pub fn hash(&self, name: &str) -> String {
        format!("{}:{name}", self.base)
    }

    /// The hash of versions of kind `A`.
    pub fn versions<A: Aggregate>(&self) -> String {
        self.hash(A::VERSIONS)
    }

    /// The hashes of the parts of kind `A`, in part order.
    pub fn parts<A: Aggregate>(&self) -> Vec<String> {
        A::PARTS.iter().map(|p| self.hash(p)).collect()
    }
}

/// Set of every region that has records.
pub fn regions(prefix: &str) -> String {
    format!("{prefix}:regions")
}

/// Stream announcing each region as it joins `regions` (field `region`), which every
/// instance follows, so that a car park in a new region is served everywhere within
/// milliseconds; capped (a late reader has the set).
pub fn announcements(prefix: &str) -> String {
    format!("{prefix}:regions:new")
}

/// String: the region a car park id belongs to, or `deleted:<version>` after a delete;
/// keeps ids unique across regions and their versions growing (`claim.lua`).
pub fn id_owner(prefix: &str, id: &CarParkId) -> String {
    format!("{prefix}:id:{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CarParkState;

    #[test]
    fn region_keys_share_one_hash_tag() {
        let keys = RegionKeys::new("cp", &RegionId::parse("qingdao").unwrap());
        let mut all = keys.parts::<CarParkState>();
        all.extend([
            keys.versions::<CarParkState>(),
            keys.counter.clone(),
            keys.changes.clone(),
        ]);
        for key in &all {
            assert!(key.starts_with("cp:{qingdao}:"), "{key}");
        }
        // The car park's keys are those citypark always used, so stored data stays.
        assert_eq!(
            all,
            [
                "cp:{qingdao}:parks",
                "cp:{qingdao}:live",
                "cp:{qingdao}:versions",
                "cp:{qingdao}:n",
                "cp:{qingdao}:changes"
            ]
        );
    }
}
