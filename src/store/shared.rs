//! Shared parking as replicated aggregates: each offer a record, each booking a record
//! (its id names its offer). A booking's slots are counted in the reservations' slot
//! ledger (`SlotCounts`, ledger `@<offer id>`), committed with it in one group.
//!
//! Formats: 1 is the JSON of `domain::SharedOffer`, and of `domain::SharedBooking`,
//! behind a `1:` prefix.

use super::table::whole_record_kind;
use crate::domain::{SharedBooking, SharedOffer};

whole_record_kind!(
    SharedOffer,
    "shared_offer",
    "shared_offer_versions",
    "shared_offers"
);
whole_record_kind!(
    SharedBooking,
    "shared_booking",
    "shared_booking_versions",
    "shared_bookings"
);
