//! Qingdao's geography as the demo models it: its districts, their centres of
//! activity and streets, and the shores that keep car parks out of the sea.
//!
//! Pure data and arithmetic: nothing here knows about car parks beyond where one may
//! stand, so the tables can be checked on their own.

use crate::rng::Rng;

/// A centre of activity inside a district (a CBD, an old town, a mall cluster).
struct Hotspot {
    lat: f64,
    lon: f64,
    sigma_km: f64,
    weight: f64,
}

const fn spot(lat: f64, lon: f64, sigma_km: f64, weight: f64) -> Hotspot {
    Hotspot {
        lat,
        lon,
        sigma_km,
        weight,
    }
}

pub(super) struct District {
    pub(super) name: &'static str,
    pub(super) share: f64,
    /// A box that holds the district's urban area; combined with [`on_land`] it keeps
    /// samples out of Jiaozhou Bay and the Yellow Sea.
    south: f64,
    north: f64,
    west: f64,
    east: f64,
    hotspots: &'static [Hotspot],
    pub(super) streets: &'static [&'static str],
    pub(super) operator: &'static str,
    /// Probability of garage, surface lot and on-street zone.
    pub(super) kind_mix: [f64; 3],
    pub(super) hourly_fen: (i64, i64),
}

impl District {
    fn contains(&self, lat: f64, lon: f64) -> bool {
        (self.south..=self.north).contains(&lat) && (self.west..=self.east).contains(&lon)
    }
}

/// Shares follow density: the old town and CBD of Shinan and Shibei are packed, the
/// outer districts spread out.
pub(super) const DISTRICTS: [District; 6] = [
    District {
        name: "Shinan",
        share: 0.24,
        south: 36.045,
        north: 36.085,
        west: 120.305,
        east: 120.445,
        hotspots: &[
            spot(36.0665, 120.3200, 0.6, 1.0),
            spot(36.0570, 120.3520, 0.5, 0.5),
            spot(36.0690, 120.3600, 0.8, 1.0),
            spot(36.0660, 120.3850, 0.9, 1.6),
            spot(36.0720, 120.4150, 0.9, 1.0),
        ],
        streets: &[
            "Xianggang Middle Road",
            "Zhongshan Road",
            "Yan'an Third Road",
            "Nanjing Road",
            "Donghai West Road",
            "Fuzhou South Road",
            "Taiping Road",
            "Jiangxi Road",
            "Minjiang Road",
        ],
        operator: "shinan-city-parking",
        kind_mix: [0.42, 0.13, 0.45],
        hourly_fen: (600, 1_000),
    },
    District {
        name: "Shibei",
        share: 0.24,
        south: 36.075,
        north: 36.135,
        west: 120.315,
        east: 120.425,
        hotspots: &[
            spot(36.0885, 120.3620, 0.7, 1.4),
            spot(36.0850, 120.3850, 0.8, 1.2),
            spot(36.0950, 120.4000, 1.0, 1.0),
            spot(36.0800, 120.3340, 0.6, 0.6),
            spot(36.1100, 120.3750, 1.0, 0.9),
        ],
        streets: &[
            "Liaoning Road",
            "Taidong First Road",
            "Yan'an Road",
            "Dengzhou Road",
            "Liaoyang West Road",
            "Dunhua Road",
            "Hangzhou Road",
            "Changle Road",
            "Weihai Road",
        ],
        operator: "shibei-harbour-parking",
        kind_mix: [0.40, 0.20, 0.40],
        hourly_fen: (500, 1_000),
    },
    District {
        name: "Licang",
        share: 0.13,
        south: 36.130,
        north: 36.215,
        west: 120.360,
        east: 120.480,
        hotspots: &[
            spot(36.1630, 120.4280, 1.0, 1.4),
            spot(36.1850, 120.4300, 1.0, 0.9),
            spot(36.1420, 120.4050, 0.9, 0.8),
        ],
        streets: &[
            "Jiushui Road",
            "Xiazhuang Road",
            "Wannianquan Road",
            "Jinshui Road",
            "Yongping Road",
            "Chongqing Middle Road",
        ],
        operator: "licang-mall-parking",
        kind_mix: [0.35, 0.30, 0.35],
        hourly_fen: (400, 800),
    },
    District {
        name: "Laoshan",
        share: 0.13,
        south: 36.070,
        north: 36.160,
        west: 120.420,
        east: 120.520,
        hotspots: &[
            spot(36.1050, 120.4620, 1.2, 1.4),
            spot(36.1050, 120.4300, 0.8, 0.8),
            spot(36.1250, 120.4800, 1.0, 0.8),
        ],
        streets: &[
            "Xianggang East Road",
            "Haier Road",
            "Songling Road",
            "Shenzhen Road",
            "Miaoling Road",
            "Tong'an Road",
            "Qinling Road",
        ],
        operator: "laoshan-garages",
        kind_mix: [0.40, 0.28, 0.32],
        hourly_fen: (400, 900),
    },
    District {
        name: "Chengyang",
        share: 0.11,
        south: 36.230,
        north: 36.340,
        west: 120.330,
        east: 120.470,
        hotspots: &[
            spot(36.3070, 120.3960, 1.2, 1.4),
            spot(36.2650, 120.3800, 1.0, 0.8),
            spot(36.3000, 120.4200, 1.0, 0.8),
        ],
        streets: &[
            "Zhengyang Road",
            "Chunyang Road",
            "Changcheng Road",
            "Wenyang Road",
            "Qianyang Road",
            "Chongyang Road",
        ],
        operator: "chengyang-parking",
        kind_mix: [0.30, 0.40, 0.30],
        hourly_fen: (300, 600),
    },
    District {
        name: "Huangdao",
        share: 0.15,
        south: 35.955,
        north: 36.030,
        west: 120.100,
        east: 120.225,
        hotspots: &[
            spot(35.9650, 120.1900, 1.0, 1.4),
            spot(35.9700, 120.1550, 0.9, 1.0),
            spot(35.9750, 120.2150, 0.6, 0.7),
            spot(36.0000, 120.1800, 1.2, 0.6),
        ],
        streets: &[
            "Changjiang Middle Road",
            "Jialingjiang Road",
            "Zhuzhou Road",
            "Wutaishan Road",
            "Jiangshan Middle Road",
            "Lijiang West Road",
            "Huanghe East Road",
        ],
        operator: "west-coast-parking",
        kind_mix: [0.32, 0.38, 0.30],
        hourly_fen: (300, 700),
    },
];

/// Yellow Sea shore south of the eastern peninsula, as (longitude, latitude) from west
/// to east: from the Tuandao tip past Taiping Bay and Fushan Bay to Shilaoren.
const SOUTH_SHORE: [(f64, f64); 11] = [
    (120.290, 36.064),
    (120.318, 36.060),
    (120.340, 36.057),
    (120.352, 36.052),
    (120.370, 36.058),
    (120.385, 36.061),
    (120.410, 36.064),
    (120.440, 36.075),
    (120.470, 36.095),
    (120.500, 36.105),
    (120.560, 36.125),
];

/// Jiaozhou Bay's eastern shore, as (latitude, longitude) from south to north: the
/// harbour, Sifang, Licang and on towards Chengyang.
const BAY_EAST_SHORE: [(f64, f64); 9] = [
    (36.060, 120.300),
    (36.080, 120.310),
    (36.100, 120.318),
    (36.130, 120.340),
    (36.160, 120.355),
    (36.200, 120.360),
    (36.240, 120.330),
    (36.280, 120.310),
    (36.340, 120.300),
];

/// Keeps a car park this far (about 200 m) from the modelled shore, which is coarse.
const SHORE_MARGIN_DEG: f64 = 0.002;

/// Linear interpolation along a polyline sorted by its first coordinate.
fn along(line: &[(f64, f64)], x: f64) -> f64 {
    let first = line[0];
    let last = line[line.len() - 1];
    if x <= first.0 {
        return first.1;
    }
    if x >= last.0 {
        return last.1;
    }
    line.windows(2)
        .find(|w| x <= w[1].0)
        .map(|w| {
            let t = (x - w[0].0) / (w[1].0 - w[0].0);
            w[0].1 + t * (w[1].1 - w[0].1)
        })
        .unwrap_or(last.1)
}

/// Whether a point is on land in the demo's coarse model of Qingdao: the eastern
/// peninsula north of the sea shore and east of the bay, or the urban core of
/// Huangdao west of the bay.
pub(super) fn on_land(lat: f64, lon: f64) -> bool {
    if lon < 120.27 {
        (35.955..=36.030).contains(&lat) && (120.100..=120.225).contains(&lon)
    } else {
        lat > along(&SOUTH_SHORE, lon) + SHORE_MARGIN_DEG
            && lon > along(&BAY_EAST_SHORE, lat) + SHORE_MARGIN_DEG
            && lat < 36.36
            && lon < 120.53
    }
}

pub(super) fn sample_location(rng: &mut Rng, district: &District) -> (f64, f64) {
    let spot = &district.hotspots[rng.weighted(district.hotspots.iter().map(|h| h.weight))];
    // One in ten car parks sits away from the hotspots, so the map has no empty gaps
    // between centres.
    let spread = if rng.chance(0.1) { 3.0 } else { 1.0 };
    for _ in 0..32 {
        let sigma_lat = spot.sigma_km * spread / 111.0;
        let sigma_lon = sigma_lat / spot.lat.to_radians().cos();
        let lat = spot.lat + rng.normal() * sigma_lat;
        let lon = spot.lon + rng.normal() * sigma_lon;
        if district.contains(lat, lon) && on_land(lat, lon) {
            return (round6(lat), round6(lon));
        }
    }
    (spot.lat, spot.lon)
}

/// A micro-degree is about 0.1 m; more digits would only suggest false precision.
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hotspots_are_on_land_in_their_district() {
        for district in &DISTRICTS {
            for h in district.hotspots {
                assert!(
                    district.contains(h.lat, h.lon),
                    "{} {} {}",
                    district.name,
                    h.lat,
                    h.lon
                );
                assert!(
                    on_land(h.lat, h.lon),
                    "{} {} {}",
                    district.name,
                    h.lat,
                    h.lon
                );
            }
        }
    }
}
