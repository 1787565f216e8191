//! FIWARE `OffStreetParking` entities (Smart Data Models, dataModel.Parking), as a
//! context broker answers them: NGSI-v2 or NGSI-LD, key-values or normalized, one
//! entity, an array of entities, or NGSI-LD's GeoJSON (a Feature or a
//! FeatureCollection, the entity's attributes in `properties`).
//!
//! The representation is read per attribute: an attribute that is an object with a
//! `value` (NGSI-v2 normalized `{"type": "Number", "value": 414}`, NGSI-LD
//! `{"type": "Property", "value": …}` and `GeoProperty`) is its value; anything else is
//! the value itself (key-values). The id loses its `urn:ngsi-ld:OffStreetParking:`
//! prefix; `totalSpotNumber` is the capacity; `category` and `layout` tell the kind.

use serde_json::{Map, Value};

use super::{ImportError, Lot, LotId, Skipped, number, point, position, skipped, whole};
use crate::domain::{CarParkKind, SpaceCategory};

const FORMAT: &str = "NGSI OffStreetParking entities";
const TYPE: &str = "OffStreetParking";

/// The entities of a file, in order.
pub(super) fn lots(root: &Value) -> Result<Vec<Result<Lot, Skipped>>, ImportError> {
    let entities: Vec<&Value> = match root {
        Value::Array(items) => items.iter().collect(),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("FeatureCollection") => o
            .get("features")
            .and_then(Value::as_array)
            .ok_or_else(|| ImportError::Shape {
                format: FORMAT,
                why: "the FeatureCollection has no \"features\" array".to_owned(),
            })?
            .iter()
            .collect(),
        Value::Object(_) => vec![root],
        _ => {
            return Err(ImportError::Shape {
                format: FORMAT,
                why: "expected an entity or an array of entities".to_owned(),
            });
        }
    };
    Ok(entities
        .into_iter()
        .enumerate()
        .map(|(i, e)| lot(i, e))
        .collect())
}

/// An attribute's value in any representation: `{"value": v, ...}` is `v` (and a
/// JSON-LD value object `{"@value": v}` is `v`), anything else is itself.
fn unwrap(attribute: &Value) -> &Value {
    let inner = match attribute {
        Value::Object(o) if o.contains_key("value") => &o["value"],
        other => other,
    };
    match inner {
        Value::Object(o) if o.contains_key("@value") => &o["@value"],
        other => other,
    }
}

fn lot(index: usize, entity: &Value) -> Result<Lot, Skipped> {
    let position = position("entity", index);
    let Some(object) = entity.as_object() else {
        return Err(skipped(position, "not an entity object"));
    };
    // NGSI-LD GeoJSON: the attributes in `properties`, the location as `geometry`.
    let feature = object.get("type").and_then(Value::as_str) == Some("Feature");
    let attributes: &Map<String, Value> = if feature {
        match object.get("properties").and_then(Value::as_object) {
            Some(p) => p,
            None => return Err(skipped(position, "a Feature without properties")),
        }
    } else {
        object
    };
    let attribute = |name: &str| attributes.get(name).map(unwrap).filter(|v| !v.is_null());
    let raw_id = object.get("id").and_then(Value::as_str);
    let source_ref = raw_id.map_or(position, str::to_owned);
    let entity_type = attribute("type").and_then(Value::as_str).unwrap_or("");
    // An expanded NGSI-LD type is the data model's URI, ending in the type's name.
    if entity_type != TYPE && !entity_type.ends_with(&format!("/{TYPE}")) {
        return Err(skipped(
            source_ref,
            format!("not an {TYPE} entity: type {entity_type:?}"),
        ));
    }
    let Some(raw_id) = raw_id else {
        return Err(skipped(source_ref, "no id"));
    };
    let Some(name) = attribute("name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty())
    else {
        return Err(skipped(source_ref, "no name"));
    };
    if let Some(vehicles) = attribute("allowedVehicleType").and_then(Value::as_array) {
        let names: Vec<&str> = vehicles.iter().filter_map(Value::as_str).collect();
        let for_cars = |v: &&str| {
            matches!(
                *v,
                "car" | "anyVehicle" | "carWithCaravan" | "carWithTrailer" | "van"
            )
        };
        if !names.is_empty() && !names.iter().any(for_cars) {
            return Err(skipped(
                source_ref,
                format!(
                    "not a car park for cars: allowedVehicleType {}",
                    names.join(", ")
                ),
            ));
        }
    }
    let location = if feature {
        object.get("geometry").map(unwrap)
    } else {
        attribute("location")
    };
    let (lat, lon) = match location.filter(|l| !l.is_null()) {
        None => return Err(skipped(source_ref, "no coordinates: no location")),
        Some(l) => point(l).map_err(|e| skipped(&source_ref, e))?,
    };
    let total = match attribute("totalSpotNumber") {
        None => {
            return Err(skipped(
                source_ref,
                "no capacity: the entity has no totalSpotNumber",
            ));
        }
        Some(t) => whole(t).map_err(|e| skipped(&source_ref, format!("totalSpotNumber: {e}")))?,
    };
    let max_height_cm = match attribute("maximumAllowedHeight") {
        None => None,
        Some(h) => match number(h) {
            // In metres, like every length of the data model.
            Some(m) => Some((m * 100.0).round() as i64),
            None => {
                return Err(skipped(
                    source_ref,
                    format!("maximumAllowedHeight: {h} is not a number"),
                ));
            }
        },
    };
    Ok(Lot {
        id: LotId::Source(local_id(raw_id).to_owned()),
        name: name.to_owned(),
        address: attribute("address").map(address).unwrap_or_default(),
        lat,
        lon,
        kind: kind(attribute("category"), attribute("layout")),
        capacity: vec![(SpaceCategory::Standard, total)],
        max_height_cm,
        same_as: None,
        source_ref,
    })
}

/// The id without NGSI-LD's `urn:ngsi-ld:<Type>:` (or `urn:ngsi-ld:`) in front.
fn local_id(id: &str) -> &str {
    let Some(rest) = id.strip_prefix("urn:ngsi-ld:") else {
        return id;
    };
    rest.strip_prefix(TYPE)
        .and_then(|r| r.strip_prefix(':'))
        .filter(|r| !r.is_empty())
        .unwrap_or(rest)
}

/// A schema.org PostalAddress as one line: street, postal code and locality, region,
/// country; or the text itself.
fn address(value: &Value) -> String {
    if let Some(text) = value.as_str() {
        return text.to_owned();
    }
    let part = |key: &str| value.get(key).and_then(Value::as_str).map(str::trim);
    let locality = [part("postalCode"), part("addressLocality")]
        .into_iter()
        .flatten()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    [
        part("streetAddress"),
        Some(locality.as_str()),
        part("addressRegion"),
        part("addressCountry"),
    ]
    .into_iter()
    .flatten()
    .filter(|p| !p.is_empty())
    .collect::<Vec<_>>()
    .join(", ")
}

/// The kind `category` says (`underground`, `parkingGarage`; `parkingLot`, `ground`),
/// or else `layout` (`multiStorey` and the like; `surface`, `openSpace`, `field`);
/// `None` when neither says.
fn kind(category: Option<&Value>, layout: Option<&Value>) -> Option<CarParkKind> {
    let has = |list: Option<&Value>, names: &[&str]| {
        list.and_then(Value::as_array).is_some_and(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .any(|v| names.contains(&v))
        })
    };
    if has(category, &["underground"]) {
        Some(CarParkKind::UndergroundGarage)
    } else if has(category, &["parkingGarage"]) {
        Some(CarParkKind::Garage)
    } else if has(category, &["parkingLot", "ground"]) {
        Some(CarParkKind::SurfaceLot)
    } else if has(
        layout,
        &[
            "multiStorey",
            "multiLevel",
            "automatedParkingGarage",
            "nested",
            "rooftop",
        ],
    ) {
        Some(CarParkKind::Garage)
    } else if has(layout, &["surface", "openSpace", "field"]) {
        Some(CarParkKind::SurfaceLot)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fixture, ids, options, reason_of, spaces};
    use super::super::{Format, parse};
    use crate::pb;

    #[test]
    fn every_representation_of_the_example_reads_the_same() {
        for (file, address) in [
            (
                "fiware/example.json",
                "Rua de Fernandes Tomás, Porto, Portugal",
            ),
            (
                "fiware/example-normalized.json",
                "Rua de Fernandes Tomás, Porto, Portugal",
            ),
            (
                "fiware/example.jsonld",
                "Rua de Fernandes Tomás, Porto, Portugal",
            ),
            // The normalized NGSI-LD example spells the street without its accent.
            (
                "fiware/example-normalized.jsonld",
                "Rua de Fernandes Tomas, Porto, Portugal",
            ),
            (
                "fiware/example-geojsonfeature.json",
                "Rua de Fernandes Tomás, Porto, Portugal",
            ),
        ] {
            let parsed = parse(Format::Ngsi, &fixture(file), &options("porto")).unwrap();
            assert!(parsed.skipped.is_empty(), "{file}: {:?}", parsed.skipped);
            assert_eq!(ids(&parsed), ["porto-ParkingLot-23889"], "{file}");
            let c = &parsed.car_parks[0];
            assert_eq!(c.name, "Parque de estacionamento Trindade", "{file}");
            assert_eq!(c.address, address, "{file}");
            assert_eq!(spaces(c), [("standard", 414)], "{file}");
            assert_eq!(
                c.location.map(|l| (l.latitude, l.longitude)),
                Some((41.150691773, -8.60961198807)),
                "{file}"
            );
            assert_eq!(
                c.kind,
                pb::CarParkKind::UndergroundGarage as i32,
                "{file}: underground"
            );
            assert_eq!(parsed.kind_defaulted, 0);
        }
    }

    #[test]
    fn arrays_mixed_types_and_missing_numbers() {
        let parsed = parse(
            Format::Ngsi,
            br#"[
                {"id": "urn:ngsi-ld:OffStreetParking:a:1", "type": "OffStreetParking", "name": "A",
                 "location": {"type": "Point", "coordinates": [13.7, 51.0]}, "totalSpotNumber": 40,
                 "layout": ["surface"], "maximumAllowedHeight": 2.1, "address": "Hauptstr. 1"},
                {"id": "urn:ngsi-ld:OnStreetParking:b", "type": "OnStreetParking", "name": "B"},
                {"id": "c", "type": "https://smartdatamodels.org/dataModel.Parking/OffStreetParking",
                 "name": {"type": "Property", "value": "C"},
                 "location": {"type": "GeoProperty", "value": {"type": "Polygon", "coordinates": []}},
                 "totalSpotNumber": {"type": "Property", "value": 10}},
                {"id": "d", "type": "OffStreetParking", "name": "D",
                 "location": {"type": "Point", "coordinates": [13.7, 51.0]}},
                {"id": "e", "type": "OffStreetParking", "name": "E", "allowedVehicleType": ["bicycle"],
                 "location": {"type": "Point", "coordinates": [13.7, 51.0]}, "totalSpotNumber": 40},
                {"id": "urn:ngsi-ld:f", "type": "OffStreetParking", "name": "F",
                 "location": {"type": "Point", "coordinates": [13.7, 51.0]}, "totalSpotNumber": 5}
            ]"#,
            &options("x"),
        )
        .unwrap();
        assert_eq!(ids(&parsed), ["a-1", "f"]);
        let a = &parsed.car_parks[0];
        assert_eq!(
            (a.kind, a.max_height_cm),
            (pb::CarParkKind::SurfaceLot as i32, 210)
        );
        assert_eq!(a.address, "Hauptstr. 1");
        assert_eq!(parsed.kind_defaulted, 1, "F says no kind");
        assert_eq!(
            reason_of(&parsed, "urn:ngsi-ld:OnStreetParking:b"),
            "not an OffStreetParking entity: type \"OnStreetParking\""
        );
        assert_eq!(
            reason_of(&parsed, "c"),
            "no coordinates: the geometry is a Polygon, not a Point"
        );
        assert_eq!(
            reason_of(&parsed, "d"),
            "no capacity: the entity has no totalSpotNumber"
        );
        assert_eq!(
            reason_of(&parsed, "e"),
            "not a car park for cars: allowedVehicleType bicycle"
        );
    }
}
