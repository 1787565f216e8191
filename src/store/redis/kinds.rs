//! Every aggregate kind this version replicates, by name, for the stream follower and
//! the snapshot load. Adding a kind is one line in `KINDS`.

use std::{collections::HashMap, future::Future, marker::PhantomData, pin::Pin};

use super::{Shared, snapshot};
use crate::{
    domain::{
        Arrear, CarParkState, LedgerEntry, OpenSession, ParkingSession, PlateLink, RegionId,
        Reservation, ReservationClaims, Result, SharedBooking, SharedOffer, SlotCounts, Wallet,
    },
    engine::Loading,
    store::{
        Aggregate,
        table::{DecodeError, Stored},
    },
};

/// One change-stream entry, whatever its kind.
pub(super) struct Entry {
    pub kind: String,
    pub op: String,
    pub id: String,
    pub version: u64,
    /// The parts the change sets, by part name.
    pub parts: HashMap<String, String>,
}

type Load<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// A kind, with its type erased so kinds can be listed together.
pub(super) trait Kind: Send + Sync {
    fn name(&self) -> &'static str;

    /// Its version hash, relative to the region's key prefix.
    fn versions(&self) -> &'static str;

    /// Whether its tombstones are compacted (`Aggregate::COMPACTED`).
    fn compacted(&self) -> bool;

    /// Loads the region's records of this kind into the engine.
    fn load<'a>(&'a self, shared: &'a Shared, region: &'a RegionId, loading: Loading) -> Load<'a>;

    /// Applies one entry of this kind to the engine; false if the engine already holds
    /// that version or a newer one.
    fn apply(&self, shared: &Shared, entry: &Entry) -> Result<bool, DecodeError>;
}

struct Of<A>(PhantomData<fn() -> A>);

impl<A: Aggregate> Kind for Of<A> {
    fn name(&self) -> &'static str {
        A::KIND
    }

    fn versions(&self) -> &'static str {
        A::VERSIONS
    }

    fn compacted(&self) -> bool {
        A::COMPACTED
    }

    fn load<'a>(&'a self, shared: &'a Shared, region: &'a RegionId, loading: Loading) -> Load<'a> {
        Box::pin(snapshot::load_kind::<A>(shared, region, loading))
    }

    fn apply(&self, shared: &Shared, entry: &Entry) -> Result<bool, DecodeError> {
        let replica = A::replica(&shared.engine);
        // Most entries an instance reads are its own writes, already written through
        // to its engine: skip them before decoding anything.
        if replica.version(&entry.id) >= entry.version {
            return Ok(false);
        }
        match entry.op.as_str() {
            "del" => {
                let removed = replica.remove(&entry.id, entry.version);
                if removed {
                    crate::store::table::note_removed::<A>(
                        &shared.engine,
                        &entry.id,
                        entry.version,
                    );
                }
                Ok(removed)
            }
            "put" => {
                let parts = A::PARTS
                    .iter()
                    .map(|name| entry.parts.get(*name).map(|t| Stored::parse(t)).transpose())
                    .collect::<Result<Vec<_>, _>>()?;
                let base = replica.get(&entry.id).map(|(record, _)| record);
                let record = A::decode(&parts, base.as_ref())?;
                Ok(replica.put(record, entry.version, shared.now()))
            }
            other => Err(DecodeError::Corrupt(format!("unknown op {other:?}"))),
        }
    }
}

/// Every kind, in load order (reservations' held spaces land in their car parks'
/// counts).
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

/// The kinds' names in load order (the durable store's test holds its list to it).
#[cfg(test)]
pub(crate) fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name()).collect()
}

/// The kind named `name`, if this version knows it.
pub(super) fn kind(name: &str) -> Option<&'static dyn Kind> {
    KINDS.iter().copied().find(|k| k.name() == name)
}
