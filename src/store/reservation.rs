//! A car park's reservation ledger as replicated aggregates: each reservation a record
//! of its own (its id names its car park, so its region), and per car park and UTC day
//! one record of slot counts. A change that takes or frees slots writes the reservation
//! and its days in one group (`Store::commit_group`), so no two writers can both take a
//! slot's last space, and every write is as small as one reservation.
//!
//! Formats: 1 is the JSON of `domain::Reservation`, and of `domain::SlotCounts`, behind
//! a `1:` prefix.

use super::table::whole_record_kind;
use crate::domain::{Reservation, SlotCounts};

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
