//! The pure domain: validated value types and the rules of parking (no I/O, no async).
//!
//! Nothing here imports tokio, tonic, prost or redis: every rule is a function from
//! values to values, so the engine, every store backend and the tests share one copy.

mod carpark;
mod error;
mod forecast;
mod geo;
mod ids;
mod occupancy;
mod query;
mod reservation;
mod schedule;
mod session;
mod shared;
mod tariff;
mod text;
mod wallet;

pub use carpark::{
    Applied, CATEGORY_COUNT, Capacity, CarPark, CarParkKind, CarParkState, CarParkStatus,
    SpaceCategory,
};
pub use error::{Error, ErrorKind, Result};
pub use forecast::{Forecaster, Forecasts, KNOTS, Prediction};
pub use geo::{BoundingBox, EARTH_RADIUS_M, LatLng, Radius, chord_to_m};
pub use ids::{BayId, CarParkId, DriverId, OfferId, OperatorId, RegionId};
pub use occupancy::{
    Availability, CategoryAvailability, Live, MAX_FUTURE_SKEW, Report, ReportBody, ReportOutcome,
};
pub use query::{Admitted, Arrival, NearbyQuery};
pub(crate) use reservation::key_suffix;
pub use reservation::{
    Actor, Booking, CHECKED_IN_RETENTION, CLAIM_GRACE, CalendarSlot, Claim, Created,
    MAX_CALENDAR_SLOTS, Plate, Reservation, ReservationClaims, ReservationId, ReservationPolicy,
    ReservationRequest, ReservationState, SlotCounts, calendar, calendar_slots,
    check_key_elsewhere, check_window, reserve,
};
pub use schedule::{OpeningHours, OpeningPeriod, TimeZoneName};
pub use session::{
    ACCOUNT_SHARDS, Arrear, GateNote, MAX_PLATES_PER_DRIVER, OpenSession, ParkingSession, Payment,
    PaymentMethod, PaymentStatus, PlateColor, PlateLink, PlateRead, Prepaid, SessionFlags,
    SessionId, SessionState, Settlement, Viewer, account_regions, accounts_region,
};
pub use shared::{
    Blackout, Booked, BookingId, BookingRequest, BookingState, CancelledBy, MAX_SPACES,
    OfferChange, OfferState, Party, SHARED_GRACE, SHARED_SLOT_MINUTES, SharedBooking, SharedOffer,
    WeeklyPeriod, book, booking_days, ledger_of,
};
pub use tariff::{Stay, Tariff};
pub use text::check_text;
pub use wallet::{Account, EntryKind, LedgerEntry, MAX_AMOUNT, Wallet};

/// A point in time; the domain takes "now" as an argument and never reads a clock.
pub type Timestamp = jiff::Timestamp;
