//! Reading records consistently (`snapshot.lua`) and loading a region's records of one
//! kind into the engine, in chunks, so a region of a million car parks never sits in
//! memory twice as text.

use std::collections::HashSet;

use tokio::sync::mpsc;

use super::{Shared, unavailable};
use crate::{
    domain::{Error, RegionId, Result},
    engine::Loading,
    metrics,
    store::{
        Aggregate, Versioned,
        table::{DecodeError, Stored},
    },
};

/// Ids read per `snapshot.lua` while loading (well inside Lua's argument limit).
const CHUNK: usize = 1_000;

/// A `snapshot.lua` reply: versions, then each part, by id.
pub(super) type Columns = Vec<Vec<Option<String>>>;

/// The rows of a `snapshot.lua` reply (`columns`: versions, then each part), decoded;
/// a row with no part is an absent record with its version (a tombstone, or 0).
pub(super) fn decode_rows<A: Aggregate>(
    columns: &Columns,
    rows: usize,
) -> Result<Vec<Versioned<A>>> {
    decode_each::<A>(columns, rows)
        .map(|(_, row)| {
            row.map_err(|e| Error::Internal(format!("{} record in Redis: {e}", A::KIND)))
        })
        .collect()
}

fn decode_each<A: Aggregate>(
    columns: &[Vec<Option<String>>],
    rows: usize,
) -> impl Iterator<Item = (usize, Result<Versioned<A>, DecodeError>)> + '_ {
    (0..rows).map(move |i| {
        let cell = |c: usize| {
            columns
                .get(c)
                .and_then(|col| col.get(i))
                .and_then(|v| v.as_deref())
        };
        let version = cell(0).and_then(|v| v.parse().ok()).unwrap_or(0);
        let texts: Vec<Option<&str>> = (1..=A::PARTS.len()).map(cell).collect();
        if texts.iter().all(Option::is_none) {
            return (
                i,
                Ok(Versioned {
                    record: None,
                    version,
                }),
            );
        }
        if texts.iter().any(Option::is_none) {
            return (i, Err(DecodeError::Corrupt("a part is missing".into())));
        }
        let parts: Result<Vec<Option<Stored<'_>>>, DecodeError> = texts
            .iter()
            .map(|t| t.map(Stored::parse).transpose())
            .collect();
        let record = parts.and_then(|parts| A::decode(&parts, None));
        (
            i,
            record.map(|record| Versioned {
                record: Some(record),
                version,
            }),
        )
    })
}

/// Loads every record of kind `A` in `region` into the engine: ids from the version
/// hash (HSCAN, so tombstones come too), records read `CHUNK` at a time, one bulk load.
/// The next chunk is read while this one is decoded, so Redis and this instance work
/// side by side. A record this version cannot read is skipped with a warning and a
/// metric.
pub(super) async fn load_kind<A: Aggregate>(
    shared: &Shared,
    region: &RegionId,
    loading: Loading,
) -> Result<()> {
    let keys = shared.keys(region);
    let (chunks, mut read_chunks) = mpsc::channel::<(Vec<String>, Columns)>(2);
    let read = async move {
        let versions_key = keys.versions::<A>();
        let mut conn = shared.conn.clone();
        let mut seen: HashSet<String> = HashSet::new();
        let mut cursor: u64 = 0;
        loop {
            shared.round_trip("snapshot");
            let (next, flat): (u64, Vec<String>) = redis::cmd("HSCAN")
                .arg(&versions_key)
                .arg(cursor)
                .arg("COUNT")
                .arg(CHUNK)
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable(&e))?;
            // HSCAN may return an id twice; each is read once.
            let ids: Vec<String> = flat
                .into_iter()
                .step_by(2)
                .filter(|id| seen.insert(id.clone()))
                .collect();
            for chunk in ids.chunks(CHUNK) {
                let mut invocation = shared.snapshot.key(&versions_key);
                for part in keys.parts::<A>() {
                    invocation.key(part);
                }
                for id in chunk {
                    invocation.arg(id);
                }
                shared.round_trip("snapshot");
                let columns: Columns = invocation
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| unavailable(&e))?;
                if chunks.send((chunk.to_vec(), columns)).await.is_err() {
                    return Ok(());
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok::<(), Error>(());
            }
        }
    };
    let (mut records, mut tombstones) = (Vec::new(), Vec::new());
    let decode = async {
        while let Some((ids, columns)) = read_chunks.recv().await {
            for (i, row) in decode_each::<A>(&columns, ids.len()) {
                match row {
                    Ok(Versioned {
                        record: Some(record),
                        version,
                    }) => records.push((record, version)),
                    Ok(Versioned {
                        record: None,
                        version,
                    }) => tombstones.push((ids[i].clone(), version)),
                    Err(error) => {
                        tracing::warn!(%error, kind = A::KIND, id = %ids[i], region = %region, "stored record skipped");
                        metrics::record_replication_skipped(A::KIND, error.label());
                    }
                }
            }
        }
    };
    let (read, ()) = tokio::join!(read, decode);
    read?;
    let count = records.len();
    // A tombstone loaded is as old as its delete, which the snapshot does not say:
    // its grace runs from now.
    for (id, version) in &tombstones {
        crate::store::table::note_removed::<A>(&shared.engine, id, *version);
    }
    A::replica(&shared.engine).load_region(region, loading, records, tombstones, shared.now())?;
    tracing::debug!(kind = A::KIND, region = %region, records = count, "kind loaded from redis");
    Ok(())
}
