//! Rebuilding the engine from the live-state file at start: every kind, in the load
//! order of the Redis snapshot (`store/redis/kinds.rs`), through the kinds' own
//! decoders. A row this version cannot read stops the start: skipping it would lose it
//! at the next write.

use std::{collections::HashMap, future::Future, marker::PhantomData, pin::Pin};

use rusqlite::Connection;

use super::file::MAX_PARTS;
use crate::{
    domain::{
        Arrear, CarParkState, Error, LedgerEntry, OpenSession, ParkingSession, PlateLink, RegionId,
        Reservation, ReservationClaims, Result, SharedBooking, SharedOffer, SlotCounts, Timestamp,
        Wallet,
    },
    engine::{Engine, Loading},
    store::{Aggregate, redis::RedisStore, table::Stored},
};

/// A kind, its type erased so kinds can be listed together.
pub(super) trait Kind: Send + Sync {
    fn name(&self) -> &'static str;

    /// Whether its tombstones are compacted (`Aggregate::COMPACTED`).
    fn compacted(&self) -> bool;

    /// Loads every record and tombstone of the kind into `engine`; how many records.
    fn load(&self, conn: &Connection, engine: &Engine, now: Timestamp) -> Result<usize>;

    /// Writes every record of the kind to Redis (`citypark export-to-redis`).
    fn export<'a>(&'a self, conn: &'a Connection, to: &'a RedisStore) -> Export<'a>;
}

/// An export of one kind: how many records it wrote.
pub(super) type Export<'a> = Pin<Box<dyn Future<Output = Result<usize>> + 'a>>;

struct Of<A>(PhantomData<fn() -> A>);

/// A region's records and tombstones of one kind, as read.
type Region<A> = (Vec<(A, u64)>, Vec<(String, u64)>);

impl<A: Aggregate> Kind for Of<A> {
    fn name(&self) -> &'static str {
        A::KIND
    }

    fn compacted(&self) -> bool {
        A::COMPACTED
    }

    fn load(&self, conn: &Connection, engine: &Engine, now: Timestamp) -> Result<usize> {
        let mut regions: HashMap<RegionId, Region<A>> = HashMap::new();
        let mut count = 0;
        each_row::<A>(conn, |region, id, version, record| {
            let (records, tombstones) = regions.entry(region).or_default();
            match record {
                Some(record) => {
                    records.push((record, version));
                    count += 1;
                }
                None => tombstones.push((id, version)),
            }
            Ok(())
        })?;
        for (region, (records, tombstones)) in regions {
            for (id, version) in &tombstones {
                crate::store::table::note_removed::<A>(engine, id, *version);
            }
            A::replica(engine).load_region(&region, Loading::New, records, tombstones, now)?;
        }
        Ok(count)
    }

    fn export<'a>(&'a self, conn: &'a Connection, to: &'a RedisStore) -> Export<'a> {
        Box::pin(super::export::kind::<A>(conn, to))
    }
}

/// Calls `f` with every row of kind `A`: its region, id, version and record (`None`
/// for a tombstone), decoded by the kind's own decoder.
pub(super) fn each_row<A: Aggregate>(
    conn: &Connection,
    mut f: impl FnMut(RegionId, String, u64, Option<A>) -> Result<()>,
) -> Result<()> {
    let failed = |e: rusqlite::Error| {
        Error::Internal(format!(
            "reading {} records from the live state: {e}",
            A::KIND
        ))
    };
    let mut statement = conn
        .prepare("SELECT region, id, version, p0, p1 FROM records WHERE kind = ?1")
        .map_err(failed)?;
    let mut rows = statement.query([A::KIND]).map_err(failed)?;
    while let Some(row) = rows.next().map_err(failed)? {
        let region: String = row.get(0).map_err(failed)?;
        let id: String = row.get(1).map_err(failed)?;
        let version: i64 = row.get(2).map_err(failed)?;
        let mut texts: [Option<String>; MAX_PARTS] = Default::default();
        for (i, text) in texts.iter_mut().enumerate() {
            *text = row.get(3 + i).map_err(failed)?;
        }
        let unreadable = |why: String| {
            Error::Internal(format!(
                "its {} record {id:?} cannot be read ({why}; a newer citypark may have \
                 written it)",
                A::KIND
            ))
        };
        let region = RegionId::parse(&region)
            .map_err(|_| unreadable(format!("its region {region:?} is not a region")))?;
        let texts = &texts[..A::PARTS.len()];
        let record = if texts.iter().all(Option::is_none) {
            None
        } else if texts.iter().any(Option::is_none) {
            return Err(unreadable("a part is missing".into()));
        } else {
            let parts = texts
                .iter()
                .map(|t| t.as_deref().map(Stored::parse).transpose())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| unreadable(e.to_string()))?;
            Some(A::decode(&parts, None).map_err(|e| unreadable(e.to_string()))?)
        };
        f(region, id, version as u64, record)?;
    }
    Ok(())
}

/// Every kind, in load order (reservations' held spaces land in their car parks'
/// counts): the order of `store/redis/kinds.rs`, which a test holds this list to.
pub(super) const KINDS: &[&dyn Kind] = &[
    &Of::<CarParkState>(PhantomData),
    &Of::<SlotCounts>(PhantomData),
    &Of::<Reservation>(PhantomData),
    &Of::<SharedOffer>(PhantomData),
    &Of::<SharedBooking>(PhantomData),
    &Of::<ParkingSession>(PhantomData),
    &Of::<OpenSession>(PhantomData),
    &Of::<PlateLink>(PhantomData),
    &Of::<Wallet>(PhantomData),
    &Of::<LedgerEntry>(PhantomData),
    &Of::<Arrear>(PhantomData),
    &Of::<ReservationClaims>(PhantomData),
];

/// Loads the whole live state into `engine`; records loaded by kind.
pub(super) fn load(
    conn: &Connection,
    engine: &Engine,
    now: Timestamp,
) -> Result<Vec<(&'static str, usize)>> {
    KINDS
        .iter()
        .map(|kind| Ok((kind.name(), kind.load(conn, engine, now)?)))
        .collect()
}

/// The kinds' names in load order.
#[cfg(test)]
pub(super) fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name()).collect()
}

/// The kinds whose tombstones are compacted.
pub(super) fn compacted() -> Vec<&'static str> {
    KINDS
        .iter()
        .filter(|k| k.compacted())
        .map(|k| k.name())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_kind_redis_loads_is_loaded_here_in_the_same_order() {
        assert_eq!(
            super::kind_names(),
            crate::store::redis::kinds::kind_names()
        );
        assert_eq!(super::kind_names(), crate::store::fuzzing::KINDS);
    }

    #[test]
    fn every_kind_fits_the_file_s_part_columns() {
        use crate::{domain::CarParkState, store::Aggregate};
        // The widest kind; the others have one part each (`whole_record_kind!`).
        assert!(CarParkState::PARTS.len() <= super::MAX_PARTS);
    }
}
