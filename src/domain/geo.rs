//! WGS84 points, great-circle distances and boxes.
//!
//! Distances use a spherical Earth (mean radius), which is within 0.5% of the
//! ellipsoid: far finer than "which car park is nearer" needs.

use super::Error;

/// Mean Earth radius in metres (IUGG).
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A validated latitude/longitude in degrees.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatLng {
    lat: f64,
    lon: f64,
}

impl LatLng {
    /// Checks that both are finite and in range. Errors name `latitude` or `longitude`.
    pub fn new(lat: f64, lon: f64) -> Result<Self, Error> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(Error::invalid(
                "latitude",
                format!("{lat} is not a latitude in [-90, 90]"),
            ));
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(Error::invalid(
                "longitude",
                format!("{lon} is not a longitude in [-180, 180]"),
            ));
        }
        Ok(Self { lat, lon })
    }

    /// Latitude in degrees.
    pub fn lat(self) -> f64 {
        self.lat
    }

    /// Longitude in degrees.
    pub fn lon(self) -> f64 {
        self.lon
    }

    /// The point on the unit sphere. Euclidean (chord) distance between unit vectors
    /// grows monotonically with great-circle distance, so a plain 3-D nearest-neighbour
    /// index ranks points exactly by great-circle distance.
    pub fn unit_vector(self) -> [f64; 3] {
        let (lat, lon) = (self.lat.to_radians(), self.lon.to_radians());
        [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
    }

    /// Great-circle distance in metres (haversine).
    pub fn distance_m(self, other: LatLng) -> f64 {
        let (p1, p2) = (self.lat.to_radians(), other.lat.to_radians());
        let dp = p2 - p1;
        let dl = (other.lon - self.lon).to_radians();
        let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
    }
}

/// Converts a chord length between unit vectors to a great-circle distance in metres.
pub fn chord_to_m(chord: f64) -> f64 {
    2.0 * EARTH_RADIUS_M * (chord / 2.0).min(1.0).asin()
}

/// Converts a great-circle distance in metres to the chord length between unit vectors.
pub fn m_to_chord(metres: f64) -> f64 {
    2.0 * (metres / (2.0 * EARTH_RADIUS_M))
        .min(std::f64::consts::FRAC_PI_2)
        .sin()
}

/// A search radius in metres, validated against a cap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Radius(f64);

impl Radius {
    /// Accepts a finite radius in (0, max_m].
    pub fn new(metres: f64, max_m: f64) -> Result<Self, Error> {
        if !metres.is_finite() || metres <= 0.0 {
            return Err(Error::invalid(
                "",
                format!("{metres} is not a positive radius in metres"),
            ));
        }
        if metres > max_m {
            return Err(Error::invalid(
                "",
                format!("{metres} m is over the cap of {max_m} m"),
            ));
        }
        Ok(Self(metres))
    }

    /// The radius as a chord length on the unit sphere (see [`LatLng::unit_vector`]).
    pub fn chord(self) -> f64 {
        m_to_chord(self.0)
    }
}

/// A latitude/longitude box; it does not cross the antimeridian.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundingBox {
    south_west: LatLng,
    north_east: LatLng,
}

impl BoundingBox {
    /// Needs north_east to be north of (or level with) and east of (or level with) south_west.
    pub fn new(south_west: LatLng, north_east: LatLng) -> Result<Self, Error> {
        if north_east.lat < south_west.lat {
            return Err(Error::invalid(
                "north_east.latitude",
                "is south of south_west.latitude",
            ));
        }
        if north_east.lon < south_west.lon {
            return Err(Error::invalid(
                "north_east.longitude",
                "is west of south_west.longitude",
            ));
        }
        Ok(Self {
            south_west,
            north_east,
        })
    }

    /// South-west corner.
    pub fn south_west(&self) -> LatLng {
        self.south_west
    }

    /// North-east corner.
    pub fn north_east(&self) -> LatLng {
        self.north_east
    }

    /// Whether the point lies inside or on the edge.
    pub fn contains(&self, p: LatLng) -> bool {
        (self.south_west.lat..=self.north_east.lat).contains(&p.lat)
            && (self.south_west.lon..=self.north_east.lon).contains(&p.lon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_coordinates() {
        assert!(LatLng::new(f64::NAN, 0.0).is_err());
        assert!(LatLng::new(0.0, f64::INFINITY).is_err());
        assert!(LatLng::new(90.1, 0.0).is_err());
        assert!(LatLng::new(0.0, -180.5).is_err());
        assert!(LatLng::new(-90.0, 180.0).is_ok());
    }

    #[test]
    fn distance_matches_known_value() {
        // Qingdao railway station to May Fourth Square: about 5.6 km.
        let a = LatLng::new(36.0636, 120.3115).unwrap();
        let b = LatLng::new(36.0622, 120.3844).unwrap();
        let d = a.distance_m(b);
        assert!((6_400.0..6_700.0).contains(&d), "{d}");
    }

    #[test]
    fn chord_round_trips() {
        for m in [1.0, 100.0, 50_000.0, 1_000_000.0] {
            let back = chord_to_m(m_to_chord(m));
            assert!((back - m).abs() < 1e-6 * m.max(1.0), "{m} -> {back}");
        }
        let a = LatLng::new(36.0, 120.0).unwrap();
        let b = LatLng::new(36.1, 120.2).unwrap();
        let (ua, ub) = (a.unit_vector(), b.unit_vector());
        let chord =
            ((ua[0] - ub[0]).powi(2) + (ua[1] - ub[1]).powi(2) + (ua[2] - ub[2]).powi(2)).sqrt();
        assert!((chord_to_m(chord) - a.distance_m(b)).abs() < 0.01);
    }
}
