//! ParkAPI (v1/v2) city GeoJSON: `park_api/cities/<City>.geojson` of
//! offenesdresden/ParkAPI, one FeatureCollection per city.
//!
//! A lot is a Feature with a Point (`[longitude, latitude]`, or `null`) and
//! properties `name`, `total` (its spaces), `address`, `type` (`Parkhaus`,
//! `Tiefgarage`, `Parkplatz`, ...) and sometimes `aux`, the city system's own number.
//! The one feature with `"type": "city"` describes the city, not a lot, and is left
//! out. There is no id: ParkAPI made one of the city and the name, and so does the
//! import (the region and a slug of the name).

use serde_json::Value;

use super::{ImportError, Lot, LotId, Skipped, point, position, skipped, text, whole};
use crate::domain::{CarParkKind, SpaceCategory};

const FORMAT: &str = "a ParkAPI city GeoJSON";

/// The records of a city file, in order (the city feature left out).
pub(super) fn lots(root: &Value) -> Result<Vec<Result<Lot, Skipped>>, ImportError> {
    let shape = |why: &str| ImportError::Shape {
        format: FORMAT,
        why: why.to_owned(),
    };
    if root.get("type").and_then(Value::as_str) != Some("FeatureCollection") {
        return Err(shape("expected a GeoJSON FeatureCollection"));
    }
    let features = root
        .get("features")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("the FeatureCollection has no \"features\" array"))?;
    Ok(features
        .iter()
        .enumerate()
        .filter(|(_, f)| f.pointer("/properties/type").and_then(Value::as_str) != Some("city"))
        .map(|(i, f)| lot(i, f))
        .collect())
}

fn lot(index: usize, feature: &Value) -> Result<Lot, Skipped> {
    let position = position("feature", index);
    let Some(properties) = feature.get("properties").filter(|p| p.is_object()) else {
        return Err(skipped(position, "no properties"));
    };
    let name = match text(properties.get("name")) {
        Some(name) if !name.trim().is_empty() => name.to_owned(),
        _ => return Err(skipped(position, "no name")),
    };
    let total = match properties.get("total") {
        None | Some(Value::Null) => {
            return Err(skipped(name, "no capacity: the source gives no total"));
        }
        Some(total) => whole(total).map_err(|e| skipped(&name, format!("total: {e}")))?,
    };
    let (lat, lon) = match feature.get("geometry") {
        None | Some(Value::Null) => {
            return Err(skipped(name, "no coordinates: the geometry is null"));
        }
        Some(geometry) => point(geometry).map_err(|e| skipped(&name, e))?,
    };
    Ok(Lot {
        source_ref: name.clone(),
        id: LotId::Name,
        address: text(properties.get("address")).unwrap_or("").to_owned(),
        lat,
        lon,
        kind: kind(text(properties.get("type"))),
        capacity: vec![(SpaceCategory::Standard, total)],
        max_height_cm: None,
        // Dresden lists some lots twice under two names with one `aux` (the city's
        // number of the lot): the same lot, not two.
        same_as: properties
            .get("aux")
            .and_then(aux)
            .map(|a| format!("aux {a}")),
        name,
    })
}

/// The kind a ParkAPI `type` names; `None` for none or one it does not know.
fn kind(lot_type: Option<&str>) -> Option<CarParkKind> {
    match lot_type?.trim() {
        // A lot that is partly a Tiefgarage is not all below ground.
        "Parkhaus" | "Parkplatz/Tiefgarage" => Some(CarParkKind::Garage),
        "Tiefgarage" | "underground" => Some(CarParkKind::UndergroundGarage),
        "Parkplatz" | "Parkfläche" => Some(CarParkKind::SurfaceLot),
        _ => None,
    }
}

/// `aux` as text: a number in Dresden, a JSON-encoded string in Köln.
fn aux(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{find, fixture, ids, options, reason_of, spaces};
    use super::super::{Format, parse};
    use crate::pb;

    #[test]
    fn dresden_has_sixty_lots_twenty_two_without_total_and_four_named_twice() {
        let parsed = parse(
            Format::ParkApiGeojson,
            &fixture("parkapi/Dresden.geojson"),
            &options("dresden"),
        )
        .unwrap();
        assert_eq!(
            parsed.car_parks.len() + parsed.skipped.len(),
            60,
            "the city feature is left out"
        );
        assert_eq!(parsed.car_parks.len(), 34);
        assert_eq!(parsed.skipped.len(), 26);
        let no_total = parsed
            .skipped
            .iter()
            .filter(|s| s.reason == "no capacity: the source gives no total")
            .count();
        assert_eq!(no_total, 22);
        assert_eq!(
            reason_of(&parsed, "Centrum Galerie"),
            "duplicate of dresden-centrum-galerie (the same id)"
        );
        assert_eq!(
            reason_of(&parsed, "Wöhrl - Florentinum"),
            "duplicate of dresden-woehrl-florentinum (the same id)"
        );
        assert_eq!(
            reason_of(&parsed, "Frauenkirche Neumarkt"),
            "duplicate of dresden-frauenkirche-neumarkt (the same id)"
        );
        assert_eq!(
            reason_of(&parsed, "GALERIA Karstadt Kaufhof"),
            "duplicate of dresden-karstadt (the same aux 296)"
        );
        assert_eq!(parsed.kind_defaulted, 0, "every Dresden lot has a type");

        let zwinger = find(&parsed, "dresden-haus-am-zwinger");
        assert_eq!(zwinger.name, "Haus am Zwinger");
        assert_eq!(zwinger.address, "Kleine Brüdergasse 3");
        assert_eq!(
            zwinger.kind,
            pb::CarParkKind::UndergroundGarage as i32,
            "Tiefgarage"
        );
        assert_eq!(spaces(zwinger), [("standard", 171)]);
        assert_eq!(
            zwinger.location,
            Some(pb::LatLng {
                latitude: 51.05149,
                longitude: 13.73584
            })
        );
        assert_eq!(
            (zwinger.region.as_str(), zwinger.time_zone.as_str()),
            ("dresden", "Europe/Berlin")
        );
        assert_eq!(zwinger.operator_id, "", "the server's to set");
        let prohlis = find(&parsed, "dresden-prohlis");
        assert_eq!(
            prohlis.kind,
            pb::CarParkKind::SurfaceLot as i32,
            "Parkplatz"
        );
        assert_eq!(
            find(&parsed, "dresden-hauptstrasse").kind,
            pb::CarParkKind::Garage as i32
        );
        assert_eq!(spaces(find(&parsed, "dresden-buehlau")), [("standard", 1)]);
    }

    #[test]
    fn zuerich_lots_without_a_position_are_skipped_and_the_rest_take_the_default_kind() {
        let mut o = options("zuerich");
        o.default_kind = crate::domain::CarParkKind::Garage;
        let parsed = parse(
            Format::ParkApiGeojson,
            &fixture("parkapi/Zuerich.geojson"),
            &o,
        )
        .unwrap();
        assert_eq!(parsed.car_parks.len(), 34);
        assert_eq!(parsed.kind_defaulted, 34, "no Zürich lot has a type");
        for name in [
            "Parkhaus Crowne Plaza",
            "Parkhaus Opéra",
            "Parkplatz Theater 11",
        ] {
            assert_eq!(
                reason_of(&parsed, name),
                "no coordinates: the geometry is null"
            );
        }
        assert_eq!(parsed.skipped.len(), 3);
        // Their ids are made of names, as they would be with a position: what
        // `import --prune` keeps.
        let skipped: Vec<Option<&str>> = parsed.skipped.iter().map(|s| s.id.as_deref()).collect();
        assert!(
            skipped.contains(&Some("zuerich-parkhaus-crowne-plaza")),
            "{skipped:?}"
        );
        let messe = find(&parsed, "zuerich-parkhaus-messe-zuerich-ag");
        assert_eq!(spaces(messe), [("standard", 2000)]);
        assert_eq!(messe.kind, pb::CarParkKind::Garage as i32, "--default-kind");
        assert_eq!(messe.address, "", "Zürich gives no addresses");
        assert!(ids(&parsed).contains(&"zuerich-parkplatz-usz-sued"));
    }

    #[test]
    fn bonn_lots_without_total_are_skipped_office_included() {
        let parsed = parse(
            Format::ParkApiGeojson,
            &fixture("parkapi/Bonn.geojson"),
            &options("bonn"),
        )
        .unwrap();
        assert_eq!(
            ids(&parsed),
            [
                "bonn-marktgarage",
                "bonn-muensterplatzgarage",
                "bonn-friedensplatzgarage",
                "bonn-bahnhofgarage",
                "bonn-stadthausgarage",
                "bonn-beethoven-parkhaus",
            ]
        );
        assert_eq!(parsed.skipped.len(), 5);
        assert_eq!(
            reason_of(&parsed, "Bonner City Parkraum GmbH"),
            "no capacity: the source gives no total"
        );
        assert_eq!(
            find(&parsed, "bonn-marktgarage").kind,
            pb::CarParkKind::SurfaceLot as i32,
            "the default default kind"
        );
    }

    #[test]
    fn other_files_are_refused_and_odd_features_skipped() {
        let o = options("x");
        let err = parse(Format::ParkApiGeojson, br#"{"items": []}"#, &o).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a ParkAPI city GeoJSON: expected a GeoJSON FeatureCollection"
        );
        assert!(
            parse(Format::ParkApiGeojson, b"{", &o)
                .unwrap_err()
                .to_string()
                .starts_with("not JSON")
        );
        let parsed = parse(
            Format::ParkApiGeojson,
            br#"{"type": "FeatureCollection", "features": [
                {"type": "Feature", "geometry": null},
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {"total": 3}},
                {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": []}, "properties": {"name": "Poly", "total": 3}},
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {"name": "Half", "total": 2.5}},
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {"name": "Odd", "type": "Garage", "total": "7"}}
            ]}"#,
            &o,
        )
        .unwrap();
        assert_eq!(reason_of(&parsed, "feature #1"), "no properties");
        assert_eq!(reason_of(&parsed, "feature #2"), "no name");
        assert_eq!(
            reason_of(&parsed, "Poly"),
            "no coordinates: the geometry is a Polygon, not a Point"
        );
        assert_eq!(
            reason_of(&parsed, "Half"),
            "total: 2.5 is not a whole number"
        );
        assert_eq!(ids(&parsed), ["x-odd"]);
        assert_eq!(
            parsed.kind_defaulted, 1,
            "a type it does not know takes the default"
        );
    }
}
