//! Car park ids, unique across regions: each region's records live in their own
//! Cluster slot, so one key per id (`cp:id:<id>`, `claim.lua`) guards uniqueness and
//! says which region holds an id this instance does not know yet.

use std::sync::Arc;

use redis::AsyncCommands;

use super::{Shared, keys, unavailable};
use crate::{
    domain::{CarParkId, Error, RegionId, Result},
    store::Claim,
};

/// Claims `id` for `region` (`claim.lua`) and makes sure the region is known to every
/// instance and followed by this one.
pub(super) async fn claim(
    shared: &Arc<Shared>,
    id: &CarParkId,
    region: &RegionId,
) -> Result<Claim> {
    let mut conn = shared.conn.clone();
    shared.round_trip("registry");
    let (claimed, answer): (i64, String) = shared
        .claim
        .key(keys::id_owner(&shared.options.prefix, id))
        .arg(region.as_str())
        .invoke_async(&mut conn)
        .await
        .map_err(|e| unavailable(&e))?;
    if claimed != 1 {
        let held = RegionId::parse(&answer)
            .map_err(|_| Error::Internal(format!("bad region {answer:?} from claim.lua")))?;
        return Ok(Claim::Taken(held));
    }
    let floor = answer
        .parse()
        .map_err(|_| Error::Internal(format!("bad floor {answer:?} from claim.lua")))?;
    if !shared.regions.lock().await.contains(region) {
        shared.round_trip("registry");
        let added: i64 = conn
            .sadd(keys::regions(&shared.options.prefix), region.as_str())
            .await
            .map_err(|e| unavailable(&e))?;
        if added == 1 {
            announce(shared, region).await;
        }
        shared.region(region).await?;
    }
    Ok(Claim::Claimed { floor })
}

/// Tells every instance of a region new to Redis (after it joined the set, so that a
/// reader of the stream from any point finds the rest in the set). Best effort: an
/// instance that misses it finds the region in the set within a second.
async fn announce(shared: &Shared, region: &RegionId) {
    let mut conn = shared.conn.clone();
    shared.round_trip("registry");
    let sent: redis::RedisResult<String> = redis::cmd("XADD")
        .arg(keys::announcements(&shared.options.prefix))
        .arg("MAXLEN")
        .arg("~")
        .arg(ANNOUNCEMENTS_KEPT)
        .arg("*")
        .arg("region")
        .arg(region.as_str())
        .query_async(&mut conn)
        .await;
    if let Err(error) = sent {
        tracing::warn!(%error, region = %region, "could not announce a new region");
    }
}

/// Announcements kept: a new region is rare, and a reader further behind reads the set.
const ANNOUNCEMENTS_KEPT: usize = 1000;

/// Frees a deleted car park's id, keeping the version reached for `claim.lua`. Best
/// effort: a leftover claim only stops the id from moving to another region.
pub(super) async fn release(shared: &Shared, id: &CarParkId, version: u64) {
    let mut conn = shared.conn.clone();
    shared.round_trip("registry");
    let freed: redis::RedisResult<()> = conn
        .set(
            keys::id_owner(&shared.options.prefix, id),
            format!("deleted:{version}"),
        )
        .await;
    if let Err(error) = freed {
        tracing::warn!(%error, car_park = %id, "could not free a deleted car park's id");
    }
}

/// The region each id is registered in, per Redis; `None` for an id no region holds.
/// A region found is followed here from then on. The lookups go out together (ids
/// are in different Cluster slots, so not in one pipeline).
pub(super) async fn locate(
    shared: &Arc<Shared>,
    ids: &[CarParkId],
) -> Result<Vec<Option<RegionId>>> {
    let mut lookups = tokio::task::JoinSet::new();
    for (k, id) in ids.iter().enumerate() {
        let (mut conn, key) = (
            shared.conn.clone(),
            keys::id_owner(&shared.options.prefix, id),
        );
        shared.round_trip("ingest");
        lookups.spawn(async move { (k, conn.get::<_, Option<String>>(key).await) });
    }
    let mut owners = vec![None; ids.len()];
    while let Some(done) = lookups.join_next().await {
        let (k, owner) = done.map_err(|e| Error::Internal(format!("owner lookup: {e}")))?;
        // Anything but a region ("deleted:<version>") means no car park.
        owners[k] = owner
            .map_err(|e| unavailable(&e))?
            .and_then(|r| RegionId::parse(&r).ok());
    }
    for region in owners.iter().flatten() {
        shared.region(region).await?;
    }
    Ok(owners)
}
