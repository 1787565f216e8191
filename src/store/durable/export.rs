//! `citypark export-to-redis`: the live state of a stopped single binary, written
//! whole into an empty Redis, for a town that outgrows one process. Every record keeps
//! its version (clients' preconditions and the change streams go on from them), each
//! car park's id is claimed for its region, and deleted car parks leave their versions
//! behind, as on a Redis deployment.

use std::{path::Path, sync::Arc};

use rusqlite::Connection;

use super::{file, load};
use crate::{
    clock::Clock,
    domain::{CarParkId, CarParkState, Error, Result, Timestamp},
    engine::Engine,
    store::{
        Aggregate, Change, Claim, Committed, Parts, Store, Write,
        redis::{RedisOptions, RedisStore},
    },
};

/// Records written per call (one pipeline per region).
const CHUNK: usize = 1_000;

/// Copies the live state in `dir` into the Redis of `options`, which must hold no city
/// under its prefix yet; records written, by kind. Refuses while a server runs on
/// `dir` (what it acknowledged after the copy would be lost).
pub async fn export_to_redis(
    dir: &Path,
    options: RedisOptions,
    clock: Arc<dyn Clock>,
) -> Result<Vec<(&'static str, usize)>> {
    let held = file::hold(dir)?;
    let mut conn = file::open(&held)?;
    // What a killed server left in its log is the city too.
    super::recover(&mut conn, dir, |_| Ok(()))?;
    let engine = Arc::new(Engine::new(1_024));
    let prefix = options.prefix.clone();
    let store = RedisStore::open(options, engine.clone(), clock).await?;
    if !engine.is_empty() {
        store.close().await;
        return Err(Error::FailedPrecondition(format!(
            "Redis holds a city under prefix {prefix:?} already ({} car parks): export into \
             an empty Redis, or under another --redis-prefix",
            engine.len()
        )));
    }
    let mut written = Vec::new();
    for kind in load::KINDS {
        match kind.export(&conn, &store).await {
            Ok(n) => written.push((kind.name(), n)),
            Err(error) => {
                store.close().await;
                return Err(error);
            }
        }
    }
    store.close().await;
    Ok(written)
}

/// Writes every record of kind `A` to `to` at the version it has here.
pub(super) async fn kind<A: Aggregate>(conn: &Connection, to: &RedisStore) -> Result<usize> {
    let mut records = Vec::new();
    let mut tombstones = Vec::new();
    load::each_row::<A>(conn, |region, id, version, record| {
        match record {
            Some(record) => records.push((region, id, version, record)),
            None => tombstones.push((id, version)),
        }
        Ok(())
    })?;
    let car_parks = A::KIND == CarParkState::KIND;
    let count = records.len();
    let now = Timestamp::now();
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let chunk: Vec<_> = records.by_ref().take(CHUNK).collect();
        if car_parks {
            for (region, id, _, _) in &chunk {
                let id = car_park_id(id)?;
                if let Claim::Taken(other) = to.claim_id(&id, region).await? {
                    return Err(Error::FailedPrecondition(format!(
                        "car park {id} is registered in region {other} in Redis already"
                    )));
                }
            }
        }
        let expected: Vec<(String, u64)> = chunk
            .iter()
            .map(|(_, id, version, _)| (id.clone(), *version))
            .collect();
        let writes = chunk
            .into_iter()
            .map(|(region, id, version, record)| Write {
                region,
                id,
                expected: 0,
                // Written as the first version above the floor: the version it has here.
                floor: version - 1,
                change: Change::put(record, Parts::ALL),
            })
            .collect();
        let results = to.commit(writes, "export", now).await;
        for (result, (id, version)) in results.into_iter().zip(expected) {
            match result? {
                Committed::Written { version: v } if v == version => {}
                Committed::Written { version: v } => {
                    return Err(Error::Internal(format!(
                        "{} {id} was written at version {v}, not {version}",
                        A::KIND
                    )));
                }
                Committed::Conflict => {
                    return Err(Error::FailedPrecondition(format!(
                        "Redis holds {} {id} already",
                        A::KIND
                    )));
                }
            }
        }
    }
    if car_parks {
        // A deleted id's versions go on growing wherever it is registered next.
        for (id, version) in tombstones {
            to.release_id(&car_park_id(&id)?, version).await;
        }
    }
    Ok(count)
}

fn car_park_id(id: &str) -> Result<CarParkId> {
    CarParkId::parse(id)
        .map_err(|_| Error::Internal(format!("the live state holds a bad car park id {id:?}")))
}
