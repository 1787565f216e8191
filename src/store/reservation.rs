//! A car park's reservation ledger as replicated aggregates: each reservation a record
//! of its own (its id names its car park, so its region), and per car park and UTC day
//! one record of slot counts. A change that takes or frees slots writes the reservation
//! and its days in one group (`Store::commit_group`), so no two writers can both take a
//! slot's last space, and every write is as small as one reservation.
//!
//! Formats: 1 is the JSON of `domain::Reservation`, and of `domain::SlotCounts`, behind
//! a `1:` prefix.

use super::table::{Aggregate, DecodeError, Stored, encode};
use crate::{
    domain::{RegionId, Reservation, SlotCounts},
    engine::{Engine, Replica},
};

/// A kind of one part, written whole by every change, in format 1: `$kind` records in
/// the version hash `$versions` and the part hash `$part`.
macro_rules! whole_record_kind {
    ($t:ty, $kind:literal, $versions:literal, $part:literal) => {
        impl Aggregate for $t {
            const KIND: &'static str = $kind;
            const FORMAT: u32 = 1;
            const VERSIONS: &'static str = $versions;
            const PARTS: &'static [&'static str] = &[$part];

            fn region(&self) -> &RegionId {
                &self.region
            }

            fn encode_part(&self, _part: usize) -> String {
                encode(Self::FORMAT, self)
            }

            fn decode(
                parts: &[Option<Stored<'_>>],
                base: Option<&Self>,
            ) -> Result<Self, DecodeError> {
                match (parts.first().copied().flatten(), base) {
                    (Some(stored), _) => stored.json(Self::FORMAT),
                    (None, Some(base)) => Ok(base.clone()),
                    (None, None) => Err(DecodeError::MissingBase),
                }
            }

            fn replica(engine: &Engine) -> &dyn Replica<Self> {
                engine
            }
        }
    };
}

whole_record_kind!(
    Reservation,
    "reservation",
    "reservation_versions",
    "reservations"
);
whole_record_kind!(
    SlotCounts,
    "slot_counts",
    "slot_count_versions",
    "slot_counts"
);
