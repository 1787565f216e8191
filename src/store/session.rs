//! Parking sessions and drivers' accounts as replicated aggregates, each a whole
//! record: a session (in its car park's region), the key of the session a plate is in
//! at a car park (`OpenSession`, beside it), and in the account shards
//! (`_accounts-<n>`, `domain::accounts_region`) plate links, wallets and ledger
//! entries. A wallet and its entries share a shard, so a charge (the wallet's new
//! balance and the entry named by the session, written if absent) is one atomic step.
//! What a session in arrears leaves owed once it moved to history (`Arrear`) stays in
//! the session's region, written in the step that deletes the session.
//!
//! Formats: 1 is the JSON of the domain type behind a `1:` prefix.

use super::table::whole_record_kind;
use crate::domain::{Arrear, LedgerEntry, OpenSession, ParkingSession, PlateLink, Wallet};

whole_record_kind!(
    ParkingSession,
    "parking_session",
    "session_versions",
    "sessions"
);
whole_record_kind!(
    OpenSession,
    "open_session",
    "open_session_versions",
    "open_sessions"
);
whole_record_kind!(
    PlateLink,
    "plate_link",
    "plate_link_versions",
    "plate_links"
);
whole_record_kind!(Wallet, "wallet", "wallet_versions", "wallets");
whole_record_kind!(
    LedgerEntry,
    "ledger_entry",
    "ledger_entry_versions",
    "ledger_entries"
);
whole_record_kind!(Arrear, "arrear", "arrear_versions", "arrears");
