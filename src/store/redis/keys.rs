//! The Redis key schema. Every key of a region carries the region as a hash tag, so
//! one atomic step's keys share a Redis Cluster slot.

use crate::domain::{CarParkId, RegionId};

/// Keys of one region, under a deployment prefix (default `cp`).
#[derive(Debug, Clone)]
pub struct RegionKeys {
    /// Hash: car park id → registration JSON.
    pub parks: String,
    /// Hash: car park id → live state JSON.
    pub live: String,
    /// Hash: car park id → version (kept after a delete).
    pub versions: String,
    /// Counter: changes ever made in the region; numbers the stream entries.
    pub counter: String,
    /// Stream: every change, capped.
    pub changes: String,
}

impl RegionKeys {
    pub fn new(prefix: &str, region: &RegionId) -> Self {
        let base = format!("{prefix}:{{{region}}}");
        Self {
            parks: format!("{base}:parks"),
            live: format!("{base}:live"),
            versions: format!("{base}:versions"),
            counter: format!("{base}:n"),
            changes: format!("{base}:changes"),
        }
    }
}

/// Set of every region that has car parks.
pub fn regions(prefix: &str) -> String {
    format!("{prefix}:regions")
}

/// String: the region a car park id belongs to, or `deleted:<version>` after a delete;
/// keeps ids unique across regions and their versions growing (`claim.lua`).
pub fn id_owner(prefix: &str, id: &CarParkId) -> String {
    format!("{prefix}:id:{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_keys_share_one_hash_tag() {
        let keys = RegionKeys::new("cp", &RegionId::parse("qingdao").unwrap());
        for key in [
            &keys.parks,
            &keys.live,
            &keys.versions,
            &keys.counter,
            &keys.changes,
        ] {
            assert!(key.starts_with("cp:{qingdao}:"), "{key}");
        }
    }
}
