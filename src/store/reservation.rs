//! A car park's reservation ledger as replicated aggregates: each reservation a record
//! of its own (its id names its car park, so its region), and per car park and UTC day
//! one record of slot counts. A change that takes or frees slots writes the reservation
//! and its days in one group (`Store::commit_group`), so no two writers can both take a
//! slot's last space, and every write is as small as one reservation.
//!
//! Per driver, in its account shard, one record of the reservations its creates are
//! taking (`domain::ReservationClaims`), where the driver's limit is checked and taken.
//!
//! Formats: 1 is the JSON of `domain::Reservation`, of `domain::SlotCounts` and of
//! `domain::ReservationClaims`, behind a `1:` prefix.

use super::table::whole_record_kind;
use crate::domain::{Reservation, ReservationClaims, SlotCounts};

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
whole_record_kind!(
    ReservationClaims,
    "reservation_claims",
    "reservation_claim_versions",
    "reservation_claims"
);
