//! The spatial index: car parks as points on the unit sphere in an R-tree.
//!
//! Chord distance between unit vectors is monotonic in great-circle distance, so the
//! R-tree's Euclidean nearest-neighbour walk visits car parks in exact great-circle
//! order with no correction step (see `LatLng::unit_vector`).

use rstar::{AABB, PointDistance, RTree, RTreeObject};

use crate::domain::LatLng;

/// One car park in the tree: where it is and which slot holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexPoint {
    pub xyz: [f64; 3],
    pub slot: u32,
}

impl IndexPoint {
    pub fn new(at: LatLng, slot: u32) -> Self {
        Self {
            xyz: at.unit_vector(),
            slot,
        }
    }
}

impl RTreeObject for IndexPoint {
    type Envelope = AABB<[f64; 3]>;

    fn envelope(&self) -> Self::Envelope {
        AABB::from_point(self.xyz)
    }
}

impl PointDistance for IndexPoint {
    fn distance_2(&self, p: &[f64; 3]) -> f64 {
        let [x, y, z] = self.xyz;
        (x - p[0]).powi(2) + (y - p[1]).powi(2) + (z - p[2]).powi(2)
    }
}

pub type Tree = RTree<IndexPoint>;

/// The 3-D box that holds every point of a lat/lng box: the corners alone are not
/// enough, since a parallel bulges towards the pole between them, so the box is
/// widened by the bulge (sagitta) of the widest parallel, which is tiny for a city.
pub fn envelope_of(sw: LatLng, ne: LatLng) -> AABB<[f64; 3]> {
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    let mid_lon = (sw.lon() + ne.lon()) / 2.0;
    let edge_lats = [sw.lat(), ne.lat(), 0f64.clamp(sw.lat(), ne.lat())];
    for lat in edge_lats {
        for lon in [sw.lon(), ne.lon(), mid_lon] {
            let p = LatLng::new(lat, lon)
                .expect("corners of a valid box")
                .unit_vector();
            for i in 0..3 {
                lo[i] = lo[i].min(p[i]);
                hi[i] = hi[i].max(p[i]);
            }
        }
    }
    let half_span = (ne.lon() - sw.lon()).to_radians() / 2.0;
    let pad = 1.0 - half_span.cos() + 1e-9;
    AABB::from_corners(lo.map(|v| v - pad), hi.map(|v| v + pad))
}
