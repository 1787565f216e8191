//! ParkAPI v3 parking sites: the public API's `GET /v3/parking-sites` answer
//! (`{"items": [...], "total_count": n}`), the push API's input (the same envelope,
//! `uid` instead of `original_uid`, coordinates possibly as strings), a bare array of
//! sites or one site.
//!
//! A site's id is its `original_uid` (public answer) or `uid` (push input): the id in
//! its source system. `capacity` is all its spaces; the spaces reserved for disabled
//! drivers and for charging are among them (the `restrictions` of type `DISABLED` and
//! `CHARGING` without `hours`, or the deprecated `capacity_disabled` and
//! `capacity_charging`), and become citypark's `accessible` and `ev_charging`
//! categories, the rest `standard`. Sites for bicycles, motorcycles or items are not
//! car parks and are skipped.

use serde_json::Value;

use super::{ImportError, Lot, LotId, Skipped, number, position, skipped, text, whole};
use crate::domain::{CarParkKind, SpaceCategory};

const FORMAT: &str = "ParkAPI v3 parking sites";

/// The sites of a file, in order.
pub(super) fn lots(root: &Value) -> Result<Vec<Result<Lot, Skipped>>, ImportError> {
    let items = match root {
        Value::Array(items) => items.as_slice(),
        Value::Object(o) => match o.get("items") {
            Some(Value::Array(items)) => items.as_slice(),
            Some(_) => {
                return Err(ImportError::Shape {
                    format: FORMAT,
                    why: "\"items\" is not an array".to_owned(),
                });
            }
            // One site on its own.
            None => std::slice::from_ref(root),
        },
        _ => {
            return Err(ImportError::Shape {
                format: FORMAT,
                why: "expected {\"items\": [...]}, an array of sites or one site".to_owned(),
            });
        }
    };
    Ok(items.iter().enumerate().map(|(i, s)| lot(i, s)).collect())
}

fn lot(index: usize, site: &Value) -> Result<Lot, Skipped> {
    let uid = site
        .get("original_uid")
        .or_else(|| site.get("uid"))
        .and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    let name = text(site.get("name")).map(str::to_owned);
    let source_ref = uid
        .clone()
        .or_else(|| name.clone())
        .unwrap_or_else(|| position("item", index));
    if !site.is_object() {
        return Err(skipped(source_ref, "not a parking site object"));
    }
    let Some(uid) = uid else {
        return Err(skipped(
            source_ref,
            "no id: the site has neither original_uid nor uid",
        ));
    };
    let Some(name) = name.filter(|n| !n.trim().is_empty()) else {
        return Err(skipped(source_ref, "no name"));
    };
    if let Some(purpose) = text(site.get("purpose")).filter(|p| *p != "CAR") {
        return Err(skipped(
            source_ref,
            format!("not a car park for cars: purpose {purpose}"),
        ));
    }
    let kind = match text(site.get("type")) {
        Some("CAR_PARK") => Some(CarParkKind::Garage),
        Some("UNDERGROUND") => Some(CarParkKind::UndergroundGarage),
        Some("OFF_STREET_PARKING_GROUND") => Some(CarParkKind::SurfaceLot),
        Some("ON_STREET") => Some(CarParkKind::OnStreet),
        Some(
            t @ ("WALL_LOOPS" | "SAFE_WALL_LOOPS" | "STANDS" | "LOCKERS" | "SHED" | "TWO_TIER"
            | "BUILDING" | "FLOOR" | "LOCKBOX"),
        ) => {
            return Err(skipped(
                source_ref,
                format!("not a car park for cars: type {t}"),
            ));
        }
        // OTHER, none, or one newer than this reader: the default kind.
        _ => None,
    };
    let (Some(lat), Some(lon)) = (
        site.get("lat").and_then(number),
        site.get("lon").and_then(number),
    ) else {
        return Err(skipped(
            source_ref,
            "no coordinates: no numeric lat and lon",
        ));
    };
    let capacity = match site.get("capacity") {
        None | Some(Value::Null) => {
            return Err(skipped(source_ref, "no capacity: the site has no capacity"));
        }
        Some(c) => whole(c).map_err(|e| skipped(&source_ref, format!("capacity: {e}")))?,
    };
    let accessible =
        reserved(site, "DISABLED", "capacity_disabled").map_err(|e| skipped(&source_ref, e))?;
    let charging =
        reserved(site, "CHARGING", "capacity_charging").map_err(|e| skipped(&source_ref, e))?;
    if accessible + charging > capacity {
        return Err(skipped(
            source_ref,
            format!(
                "its {accessible} spaces for disabled drivers and {charging} for charging are more than its capacity {capacity}"
            ),
        ));
    }
    let max_height_cm = match site.get("max_height") {
        None | Some(Value::Null) => None,
        Some(h) => Some(whole(h).map_err(|e| skipped(&source_ref, format!("max_height: {e}")))?),
    };
    Ok(Lot {
        id: LotId::Source(uid),
        address: text(site.get("address")).unwrap_or("").to_owned(),
        lat,
        lon,
        kind,
        capacity: vec![
            (SpaceCategory::Standard, capacity - accessible - charging),
            (SpaceCategory::EvCharging, charging),
            (SpaceCategory::Accessible, accessible),
        ],
        max_height_cm,
        same_as: None,
        name,
        source_ref,
    })
}

/// The spaces of `capacity` reserved for `audience`: the site's restrictions for it
/// that hold at all hours (one with `hours` leaves its spaces to everyone else at other
/// times, so they stay standard), or else the deprecated `legacy` field; 0 if neither.
fn reserved(site: &Value, audience: &str, legacy: &str) -> Result<i64, String> {
    let restrictions: Vec<&Value> = site
        .get("restrictions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| text(r.get("type")) == Some(audience))
        .filter(|r| r.get("hours").is_none_or(Value::is_null))
        .collect();
    if !restrictions.is_empty() {
        let mut sum = 0;
        for r in restrictions {
            if let Some(c) = r.get("capacity").filter(|c| !c.is_null()) {
                sum += whole(c).map_err(|e| format!("restrictions {audience} capacity: {e}"))?;
            }
        }
        return Ok(sum);
    }
    match site.get(legacy) {
        None | Some(Value::Null) => Ok(0),
        Some(c) => whole(c).map_err(|e| format!("{legacy}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{find, fixture, ids, options, reason_of, spaces};
    use super::super::{Format, parse};
    use crate::pb;

    #[test]
    fn the_push_list_imports_the_valid_site_and_skips_the_one_without_uid() {
        let parsed = parse(
            Format::ParkApiV3,
            &fixture("parkapi-v3/admin-parking-site-list.json"),
            &options("stuttgart"),
        )
        .unwrap();
        assert_eq!(ids(&parsed), ["12717250"]);
        let site = find(&parsed, "12717250");
        assert_eq!(site.name, "Parkhaus Hofdiener");
        assert_eq!(site.address, "Schellingstraße");
        assert_eq!(
            site.kind,
            pb::CarParkKind::OnStreet as i32,
            "type ON_STREET"
        );
        assert_eq!(spaces(site), [("standard", 158)]);
        assert_eq!(
            site.location,
            Some(pb::LatLng {
                latitude: 54.03005,
                longitude: 5.12696
            }),
            "coordinates given as strings"
        );
        assert_eq!(parsed.skipped.len(), 1);
        assert_eq!(
            reason_of(&parsed, "Bülow Carre"),
            "no id: the site has neither original_uid nor uid"
        );
    }

    #[test]
    fn spaces_for_disabled_drivers_are_accessible_whether_restrictions_or_legacy() {
        for file in [
            "parkapi-v3/admin-parking-site-item-with-relations.json",
            "parkapi-v3/admin-parking-site-item-with-legacy-fields.json",
        ] {
            let parsed = parse(Format::ParkApiV3, &fixture(file), &options("stuttgart")).unwrap();
            assert_eq!(ids(&parsed), ["12717250"], "{file}: one site on its own");
            assert_eq!(
                spaces(&parsed.car_parks[0]),
                [("standard", 147), ("accessible", 11)],
                "{file}: 11 of its 158 spaces are for disabled drivers"
            );
        }
    }

    #[test]
    fn the_public_answer_imports_every_site_by_original_uid() {
        let parsed = parse(
            Format::ParkApiV3,
            &fixture("parkapi-v3/public-parking-sites-list.json"),
            &options("demo"),
        )
        .unwrap();
        assert_eq!(
            ids(&parsed),
            [
                "demo-parking-site-1",
                "demo-parking-site-2",
                "demo-parking-site-3"
            ]
        );
        assert!(parsed.skipped.is_empty());
        let first = find(&parsed, "demo-parking-site-1");
        assert_eq!(first.kind, pb::CarParkKind::Garage as i32, "type CAR_PARK");
        assert_eq!(spaces(first), [("standard", 100)]);
        assert_eq!(first.address, "Demo Address, Demo City");
        assert_eq!(
            first.location.map(|l| (l.latitude, l.longitude)),
            Some((50.1, 10.1))
        );
    }

    #[test]
    fn bicycles_missing_numbers_and_impossible_splits_are_skipped() {
        let parsed = parse(
            Format::ParkApiV3,
            br#"[
                {"original_uid": "b1", "name": "Bike", "purpose": "BIKE", "type": "STANDS", "lat": 1, "lon": 2, "capacity": 10},
                {"original_uid": "b2", "name": "Stands", "type": "STANDS", "lat": 1, "lon": 2, "capacity": 10},
                {"original_uid": "n1", "name": "Nowhere", "type": "CAR_PARK", "capacity": 10},
                {"original_uid": "n2", "name": "Unknown", "type": "CAR_PARK", "lat": 1, "lon": 2},
                {"original_uid": "s1", "name": "Split", "lat": 1, "lon": 2, "capacity": 10, "capacity_disabled": 8, "capacity_charging": 3},
                {"original_uid": "ok", "name": "Fine", "type": "UNDERGROUND", "lat": 1, "lon": 2, "capacity": 10, "capacity_charging": 2, "max_height": 200,
                 "restrictions": [{"type": "DISABLED", "hours": "Mo-Fr 08:00-18:00", "capacity": 3}]},
                {"original_uid": "g1", "name": "Ground", "type": "OFF_STREET_PARKING_GROUND", "lat": 1, "lon": 2, "capacity": 5},
                {"original_uid": "o1", "name": "Other", "type": "OTHER", "lat": 1, "lon": 2, "capacity": 5}
            ]"#,
            &options("x"),
        )
        .unwrap();
        assert_eq!(
            reason_of(&parsed, "b1"),
            "not a car park for cars: purpose BIKE"
        );
        assert_eq!(
            reason_of(&parsed, "b2"),
            "not a car park for cars: type STANDS"
        );
        assert_eq!(
            reason_of(&parsed, "n1"),
            "no coordinates: no numeric lat and lon"
        );
        assert_eq!(
            reason_of(&parsed, "n2"),
            "no capacity: the site has no capacity"
        );
        assert_eq!(
            reason_of(&parsed, "s1"),
            "its 8 spaces for disabled drivers and 3 for charging are more than its capacity 10"
        );
        assert_eq!(ids(&parsed), ["ok", "g1", "o1"]);
        let fine = find(&parsed, "ok");
        assert_eq!(
            spaces(fine),
            [("standard", 8), ("ev_charging", 2)],
            "spaces reserved at some hours only stay standard"
        );
        assert_eq!(
            (fine.kind, fine.max_height_cm),
            (pb::CarParkKind::UndergroundGarage as i32, 200)
        );
        assert_eq!(find(&parsed, "g1").kind, pb::CarParkKind::SurfaceLot as i32);
        assert_eq!(parsed.kind_defaulted, 1, "OTHER");
        let err = parse(Format::ParkApiV3, b"3", &options("x")).unwrap_err();
        assert!(
            err.to_string().starts_with("not ParkAPI v3 parking sites"),
            "{err}"
        );
    }
}
