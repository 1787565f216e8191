//! What the stored-record fuzz target (`fuzz/`) runs and checks: a record's stored
//! text through the decoders a Redis store reads with, then into an engine.
//!
//! The path is the one the snapshot load and the stream follower take for every kind:
//! `Stored::parse` on each part, the kind's `Aggregate::decode` (over the record held,
//! for a change that sets only some parts), then `Replica::put`. Whatever the text,
//! nothing may panic; a text refused is refused with a `DecodeError`. A record
//! accepted must read back the same once written again, so what an instance holds is
//! what it would store.

use std::{fmt::Debug, time::Duration};

use super::{
    Aggregate,
    table::{DecodeError, Stored},
};
use crate::{
    domain::{
        Arrear, Capacity, CarPark, CarParkId, CarParkKind, CarParkState, LatLng, LedgerEntry,
        OpenSession, OpeningHours, OperatorId, ParkingSession, PlateLink, RegionId, Reservation,
        ReservationClaims, SharedBooking, SharedOffer, SlotCounts, SpaceCategory, Tariff,
        TimeZoneName, Timestamp, Wallet,
    },
    engine::Engine,
};

/// The kinds, in the order of `store/redis/kinds.rs`: a fuzz input's first byte picks
/// one by its index.
pub const KINDS: [&str; 12] = [
    CarParkState::KIND,
    SlotCounts::KIND,
    Reservation::KIND,
    SharedOffer::KIND,
    SharedBooking::KIND,
    ParkingSession::KIND,
    OpenSession::KIND,
    PlateLink::KIND,
    Wallet::KIND,
    LedgerEntry::KIND,
    Arrear::KIND,
    ReservationClaims::KIND,
];

/// In a fuzz input's first byte: decode over a record held (a partial change).
pub const OVER_BASE: u8 = 0x80;

/// The fuzz input for `parts` (stored texts, "" for a part the change does not set)
/// of kind `kind`.
pub fn input(kind: &str, over_base: bool, parts: &[&str]) -> Option<Vec<u8>> {
    let index = KINDS.iter().position(|k| *k == kind)?;
    let mut input = vec![index as u8 | if over_base { OVER_BASE } else { 0 }];
    input.extend_from_slice(parts.join("\n").as_bytes());
    Some(input)
}

/// Runs fuzz input `data`: its first byte picks the kind (and [`OVER_BASE`]), the
/// rest is the parts' stored texts, one per line, an empty line for a part the change
/// does not set. An error says what broke the decoders' promise.
pub fn stored_record(data: &[u8]) -> Result<(), String> {
    let Some((&pick, text)) = data.split_first() else {
        return Ok(());
    };
    // Redis values are read as UTF-8 strings: other bytes never reach a decoder.
    let Ok(text) = std::str::from_utf8(text) else {
        return Ok(());
    };
    let over_base = pick & OVER_BASE != 0;
    match usize::from(pick & !OVER_BASE) % KINDS.len() {
        0 => check::<CarParkState>(text, over_base.then(base_car_park).as_ref()),
        1 => check::<SlotCounts>(text, None),
        2 => check::<Reservation>(text, None),
        3 => check::<SharedOffer>(text, None),
        4 => check::<SharedBooking>(text, None),
        5 => check::<ParkingSession>(text, None),
        6 => check::<OpenSession>(text, None),
        7 => check::<PlateLink>(text, None),
        8 => check::<Wallet>(text, None),
        9 => check::<LedgerEntry>(text, None),
        10 => check::<Arrear>(text, None),
        _ => check::<ReservationClaims>(text, None),
    }
}

fn check<A: Aggregate + PartialEq + Debug>(text: &str, base: Option<&A>) -> Result<(), String> {
    let mut lines = text.split('\n');
    let texts: Vec<Option<&str>> = A::PARTS
        .iter()
        .map(|_| lines.next().filter(|t| !t.is_empty()))
        .collect();
    let Ok(record) = decode::<A>(&texts, base) else {
        return Ok(());
    };
    let written: Vec<String> = (0..A::PARTS.len()).map(|i| record.encode_part(i)).collect();
    let written: Vec<Option<&str>> = written.iter().map(|t| Some(t.as_str())).collect();
    match decode::<A>(&written, None) {
        Ok(again) if again == record => {}
        Ok(again) => {
            return Err(format!(
                "a {} record reads back otherwise once written: {record:?} became {again:?}",
                A::KIND
            ));
        }
        Err(error) => {
            return Err(format!(
                "a {} record is refused once written ({error}): {record:?} as {written:?}",
                A::KIND
            ));
        }
    }
    let engine = Engine::new(1);
    A::replica(&engine).put(record, 1, now());
    Ok(())
}

fn decode<A: Aggregate>(texts: &[Option<&str>], base: Option<&A>) -> Result<A, DecodeError> {
    let parts = texts
        .iter()
        .map(|t| t.map(Stored::parse).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    A::decode(&parts, base)
}

fn now() -> Timestamp {
    Timestamp::from_second(1_796_004_000).expect("in range")
}

/// The record a partial car park change is decoded over.
fn base_car_park() -> CarParkState {
    let valid = "a valid fixture value";
    CarParkState::new(CarPark {
        id: CarParkId::parse("g1").expect(valid),
        region: RegionId::parse("qingdao").expect(valid),
        operator: OperatorId::parse("op-a").expect(valid),
        name: "Fixture g1".into(),
        address: "1 Test Road".into(),
        location: LatLng::new(36.067, 120.383).expect(valid),
        kind: CarParkKind::Garage,
        capacity: Capacity::new([(SpaceCategory::Standard, 100)]).expect(valid),
        time_zone: TimeZoneName::parse("Asia/Shanghai").expect(valid),
        opening_hours: OpeningHours::default(),
        closed: false,
        tariff: Tariff::default(),
        covered: false,
        max_height_cm: None,
        modified_at: Timestamp::UNIX_EPOCH,
        report_interval: Duration::from_secs(60),
        reservation_policy: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_as_written_pass_and_garbage_is_refused() {
        let state = base_car_park();
        let (registration, live) = (state.encode_part(0), state.encode_part(1));
        let read = decode::<CarParkState>(&[Some(&registration), Some(&live)], None);
        assert_eq!(read.as_ref(), Ok(&state));
        let whole = input("car_park", false, &[&registration, &live]).unwrap();
        assert_eq!(stored_record(&whole), Ok(()));
        let live_only = input("car_park", true, &["", &live]).unwrap();
        assert_eq!(stored_record(&live_only), Ok(()));
        assert!(decode::<CarParkState>(&[Some("1:{\"id\":"), None], None).is_err());
        assert_eq!(stored_record(b"\x00{\"id\":"), Ok(()));
    }
}
