//! Availability forecasts: per car park and category, a weekly profile of free spaces
//! by local time, the current deviation from it, and how fast that deviation fades.
//!
//! The model (ARCHITECTURE.md, "Forecasts", has it with its equations and the
//! backtest that chose it). With f the free share of capacity, P the weekly profile at
//! a local time and d = f(t) − P(t) the deviation at the newest observation t:
//!
//!   f̂(t + h) = P(t + h) + φ(h) · d,
//!
//! where φ(h) is how much of today's deviation is still there h later, learned per car
//! park by regression of later deviations on earlier ones at the horizons in
//! [`KNOTS`] (φ(0) = 1). The 80% interval is f̂ plus the 10th and 90th percentiles of
//! the residuals at that horizon, tracked online. Everything learns as observations
//! arrive; nothing is fitted offline, so a replay of history (at start, or in the
//! backtest) and live reports go through the same [`Forecaster::observe`].
//!
//! Size: about 1 KB per car park and category (the weekly profile is 672 bytes),
//! tested below.

use jiff::tz::TimeZone;

use super::{CATEGORY_COUNT, CarPark, Live, SpaceCategory, Timestamp};

/// Minutes in a profile slot.
const SLOT_MINUTES: i64 = 30;
/// Minutes in a week.
const WEEK_MINUTES: i64 = 7 * 24 * 60;
/// Slots of the weekly profile.
const WEEK_SLOTS: usize = (WEEK_MINUTES / SLOT_MINUTES) as usize;
/// Slots of the daily profile (every day alike), used where the weekly one has not
/// seen a slot yet: a new car park's first week.
const DAY_SLOTS: usize = (24 * 60 / SLOT_MINUTES) as usize;
/// Learning happens once per cell of this many minutes, so a car park reporting every
/// few seconds weighs no more than one reporting every quarter hour.
const CELL_MINUTES: i64 = 15;
/// Horizons (minutes) at which the fade φ and the residuals' percentiles are learned;
/// between them they are interpolated, beyond the last the fade keeps decaying.
pub const KNOTS: [f32; 5] = [15.0, 30.0, 60.0, 120.0, 240.0];
/// Earlier deviations kept to learn from: one per cell over the longest knot.
const RING: usize = (240 / CELL_MINUTES) as usize + 1;
/// A profile slot not seen yet.
const UNSEEN: u16 = u16::MAX;
/// A profile value's scale: 0 is no space free, `SCALE` all of them.
const SCALE: f32 = 65_534.0;

/// How fast the profile follows change: each slot moves this share towards a new
/// week's value (chosen by the backtest; about the weight of Helsinki's three weeks).
const PROFILE_RATE: f32 = 0.35;
/// The daily profile's rate.
const DAILY_RATE: f32 = 0.2;
/// Per learning event, what the fade's sums keep of their past.
const FADE_MEMORY: f32 = 0.995;
/// The percentile trackers' step, as a share of the mean absolute residual: fast
/// enough to follow the hours of the day (mornings err more than afternoons).
const SPREAD_STEP: f32 = 0.1;
/// The lower tracker aims at this quantile of the residuals, the upper at one minus
/// it. The residuals learned from are against single reports; the truth between two
/// reports is smoother, and at 0.10 the backtest covered 84–86% at 15 to 60 minutes.
/// 0.11 brings every horizon within 78–85% (BENCHMARKS.md, "Forecasts").
const QUANTILE: f32 = 0.11;
/// The mean absolute residual's rate.
const MAD_RATE: f32 = 0.02;
/// z of the 90th percentile of a normal distribution.
const Z90: f32 = 1.281_551_6;

/// One car park's (one category's) forecaster.
#[derive(Debug, Clone)]
pub struct Forecaster {
    weekly: [u16; WEEK_SLOTS],
    daily: [u16; DAY_SLOTS],
    /// The slot being observed (local minutes since the epoch / 30) and its sum.
    open_slot: i64,
    open_sum: f32,
    open_count: u16,
    /// The newest observation: when (ms), its free share, its deviation (NaN when the
    /// profile did not know its time).
    last_ms: i64,
    last_share: f32,
    last_deviation: f32,
    capacity: u32,
    /// Deviations at earlier cells: (minutes since the epoch, deviation), indexed by
    /// cell modulo RING; NaN empty.
    ring: [(u32, f32); RING],
    /// Per knot, the regression sums of a later deviation on an earlier one.
    fade: [(f32, f32); KNOTS.len()],
    /// Per knot, the residual's 10th and 90th percentiles and mean absolute value
    /// (shares of capacity).
    spread: [(f32, f32, f32); KNOTS.len()],
    /// Local days observed (for "how sure"), and the last of them.
    days: u16,
    last_day: i32,
}

/// A forecast of one time: available spaces predicted (free minus those held for
/// reservations), the 80% interval and the chance of at least one available space.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Predicted available spaces, rounded.
    pub available: u32,
    /// 10th percentile: 9 times in 10 there are at least this many (rounded down).
    pub p10: u32,
    /// 90th percentile: 9 times in 10 there are at most this many (rounded up).
    pub p90: u32,
    /// The probability that at least one space is free, 0 to 1.
    pub probability: f32,
}

impl Default for Forecaster {
    fn default() -> Self {
        Self::new()
    }
}

impl Forecaster {
    pub fn new() -> Self {
        let mut spread = [(0.0, 0.0, 0.0); KNOTS.len()];
        for (s, h) in spread.iter_mut().zip(KNOTS) {
            // A prior that widens with the horizon (5% of capacity at an hour), soon
            // replaced by what the car park shows.
            let width = 0.05 * (h / 60.0).sqrt();
            *s = (-width, width, width * 0.8);
        }
        let mut fade = [(0.0, 0.0); KNOTS.len()];
        for (f, h) in fade.iter_mut().zip(KNOTS) {
            // Prior: a deviation halves in about two hours, worth a few observations.
            let weight = 0.01;
            *f = ((-h / 170.0).exp() * weight, weight);
        }
        Self {
            weekly: [UNSEEN; WEEK_SLOTS],
            daily: [UNSEEN; DAY_SLOTS],
            open_slot: i64::MIN,
            open_sum: 0.0,
            open_count: 0,
            last_ms: i64::MIN,
            last_share: 0.0,
            last_deviation: f32::NAN,
            capacity: 0,
            ring: [(0, f32::NAN); RING],
            fade,
            spread,
            days: 0,
            last_day: i32::MIN,
        }
    }

    /// Whether it has seen an observation.
    pub fn is_empty(&self) -> bool {
        self.last_ms == i64::MIN
    }

    /// When the newest observation was made.
    pub fn observed_at(&self) -> Option<Timestamp> {
        (!self.is_empty())
            .then(|| Timestamp::from_millisecond(self.last_ms).ok())
            .flatten()
    }

    /// Days of the week's profile learned so far (each weekday counts once a week).
    pub fn days_learned(&self) -> u32 {
        u32::from(self.days)
    }

    /// Learns from `free` of `capacity` spaces observed `at` in a car park of `zone`.
    /// An observation not newer than the last is ignored (a replay may overlap).
    pub fn observe(&mut self, at: Timestamp, zone: &TimeZone, free: u32, capacity: u32) {
        let ms = at.as_millisecond();
        if ms <= self.last_ms || capacity == 0 {
            return;
        }
        let share = free.min(capacity) as f32 / capacity as f32;
        self.capacity = capacity;
        let local = local_minutes(ms, zone);
        let slot = local.div_euclid(SLOT_MINUTES);
        if self.open_count > 0 && slot != self.open_slot {
            self.close_slot();
        }
        if slot != self.open_slot {
            self.open_slot = slot;
            self.open_sum = 0.0;
            self.open_count = 0;
        }
        self.open_sum += share;
        self.open_count = self.open_count.saturating_add(1);

        let expected = self.profile(week_minute(local) as f32);
        let deviation = expected.map_or(f32::NAN, |p| share - p);
        let minute = (ms.div_euclid(60_000)) as u32;
        let cell = minute / CELL_MINUTES as u32;
        let entry = &mut self.ring[cell as usize % RING];
        let first_in_cell = entry.1.is_nan() || entry.0 / CELL_MINUTES as u32 != cell;
        if first_in_cell && let Some(expected) = expected {
            self.learn(minute, share, deviation, expected);
            self.ring[cell as usize % RING] = (minute, deviation);
        }
        self.last_ms = ms;
        self.last_share = share;
        self.last_deviation = deviation;
    }

    /// Learns how the earlier deviations in the ring turned out at `minute`.
    fn learn(&mut self, minute: u32, share: f32, deviation: f32, expected: f32) {
        for f in &mut self.fade {
            f.0 *= FADE_MEMORY;
            f.1 *= FADE_MEMORY;
        }
        for i in 0..RING {
            let (then, earlier) = self.ring[i];
            if earlier.is_nan() || then >= minute {
                continue;
            }
            let age = (minute - then) as f32;
            let Some((k, w)) = knot_weights(age) else {
                continue;
            };
            // What a forecast made then would have said now, with the fade as it is.
            let predicted = (expected + self.fade_at(age) * earlier).clamp(0.0, 1.0);
            let residual = share - predicted;
            for (knot, weight) in [(k, w), (k.wrapping_sub(1), 1.0 - w)] {
                if knot >= KNOTS.len() || weight <= 0.0 {
                    continue;
                }
                let fade = &mut self.fade[knot];
                fade.0 += weight * earlier * deviation;
                fade.1 += weight * earlier * earlier;
                let (lo, hi, mad) = &mut self.spread[knot];
                *mad += weight * MAD_RATE * (residual.abs() - *mad);
                let step = weight * SPREAD_STEP * mad.max(0.002);
                let q = QUANTILE;
                *lo += step * if residual < *lo { q - 1.0 } else { q };
                *hi += step * if residual > *hi { 1.0 - q } else { -q };
            }
        }
    }

    /// Folds the slot just observed into the profiles.
    fn close_slot(&mut self) {
        let mean = self.open_sum / f32::from(self.open_count.max(1));
        let week_slot = (week_minute(self.open_slot * SLOT_MINUTES) / SLOT_MINUTES) as usize;
        let was = self.weekly[week_slot];
        self.weekly[week_slot] = blend(was, mean, PROFILE_RATE);
        let day_slot = week_slot % DAY_SLOTS;
        self.daily[day_slot] = blend(self.daily[day_slot], mean, DAILY_RATE);
        // A day's first slot counts the day.
        let day = self.open_slot.div_euclid(DAY_SLOTS as i64) as i32;
        if day != self.last_day {
            self.last_day = day;
            self.days = self.days.saturating_add(1);
        }
        self.open_count = 0;
        self.open_sum = 0.0;
    }

    /// The profile's free share at a local minute of the week, interpolated between
    /// slot centres; None where neither profile has seen the time.
    fn profile(&self, week_minute: f32) -> Option<f32> {
        let x = (week_minute - SLOT_MINUTES as f32 / 2.0) / SLOT_MINUTES as f32;
        let i0 = x.floor();
        let w = x - i0;
        let i0 = (i0 as i64).rem_euclid(WEEK_SLOTS as i64) as usize;
        let i1 = (i0 + 1) % WEEK_SLOTS;
        match (self.slot(i0), self.slot(i1)) {
            (Some(a), Some(b)) => Some(a + (b - a) * w),
            (Some(a), None) => Some(a),
            (None, Some(b)) => Some(b),
            (None, None) => None,
        }
    }

    fn slot(&self, i: usize) -> Option<f32> {
        let v = match self.weekly[i] {
            UNSEEN => self.daily[i % DAY_SLOTS],
            v => v,
        };
        (v != UNSEEN).then(|| f32::from(v) / SCALE)
    }

    /// φ at `age` minutes.
    fn fade_at(&self, age: f32) -> f32 {
        let phi = |k: usize| {
            let (sxy, sxx) = self.fade[k];
            (sxy / sxx).clamp(0.0, 1.0)
        };
        if age <= 0.0 {
            return 1.0;
        }
        let last = KNOTS.len() - 1;
        if age >= KNOTS[last] {
            // Beyond the last knot, the deviation keeps fading at the rate it had
            // between the last two.
            let (a, b) = (phi(last - 1), phi(last));
            let rate = if a > 0.0 && b > 0.0 && b < a {
                (a / b).ln() / (KNOTS[last] - KNOTS[last - 1])
            } else {
                1.0 / KNOTS[last]
            };
            return b * (-(age - KNOTS[last]) * rate).exp();
        }
        let (k, w) = knot_weights(age).expect("within the knots");
        let before = if k == 0 { 1.0 } else { phi(k - 1) };
        before + (phi(k) - before) * w
    }

    /// The residual's 10th and 90th percentiles at `age` minutes.
    fn spread_at(&self, age: f32) -> (f32, f32) {
        let last = KNOTS.len() - 1;
        if age >= KNOTS[last] {
            let (lo, hi, _) = self.spread[last];
            return (lo, hi);
        }
        let (k, w) = knot_weights(age.max(0.0)).expect("within the knots");
        let (lo0, hi0) = if k == 0 {
            (0.0, 0.0)
        } else {
            (self.spread[k - 1].0, self.spread[k - 1].1)
        };
        let (lo1, hi1, _) = self.spread[k];
        (lo0 + (lo1 - lo0) * w, hi0 + (hi1 - hi0) * w)
    }

    /// The forecast of available spaces `at` for a car park of `zone` that holds `held`
    /// spaces for reservations; None before the first observation. A time before the
    /// newest observation is forecast as of it.
    pub fn forecast(&self, at: Timestamp, zone: &TimeZone, held: u32) -> Option<Prediction> {
        if self.is_empty() {
            return None;
        }
        let ms = at.as_millisecond().max(self.last_ms);
        let age = (ms - self.last_ms) as f32 / 60_000.0;
        let fade = self.fade_at(age);
        let expected = self.profile(week_minute(local_minutes(ms, zone)) as f32);
        let share = match expected {
            Some(p) if !self.last_deviation.is_nan() => p + fade * self.last_deviation,
            // The profile knows the time asked but not the last observation's: lean
            // on the observation as the fade says, on the profile for the rest.
            Some(p) => fade * self.last_share + (1.0 - fade) * p,
            None => self.last_share,
        }
        .clamp(0.0, 1.0);
        let (lo, hi) = self.spread_at(age);
        let capacity = self.capacity as f32;
        let held = held as f32;
        let free = share * capacity;
        let p10 = ((share + lo).clamp(0.0, 1.0) * capacity - held)
            .max(0.0)
            .floor();
        let p90 = ((share + hi).clamp(0.0, 1.0) * capacity - held)
            .max(0.0)
            .ceil();
        // At least one space available: free ≥ held + 0.5 under a normal on each side
        // of the median, with the spread of that side's percentile.
        let threshold = held + 0.5;
        let probability = if free >= threshold {
            let sigma = (-lo * capacity / Z90).max(1e-3);
            normal_cdf((free - threshold) / sigma)
        } else {
            let sigma = (hi * capacity / Z90).max(1e-3);
            1.0 - normal_cdf((threshold - free) / sigma)
        };
        Some(Prediction {
            available: (free - held).max(0.0).round() as u32,
            p10: p10 as u32,
            p90: p90 as u32,
            probability: probability.clamp(0.0, 1.0),
        })
    }
}

/// A car park's forecasters, one per category it has spaces of, made as its numbers
/// arrive. Kept beside its live state (the engine), so a forecast costs no lookup.
#[derive(Debug, Clone, Default)]
pub struct Forecasts([Option<Box<Forecaster>>; CATEGORY_COUNT]);

impl Forecasts {
    /// Learns the car park's newest numbers (each category's free spaces when
    /// observed); numbers already seen change nothing.
    pub fn observe(&mut self, car_park: &CarPark, live: &Live) {
        let Some(at) = live.observed_at() else {
            return;
        };
        for category in SpaceCategory::ALL {
            let capacity = car_park.capacity.of(category);
            if capacity == 0 {
                continue;
            }
            self.0[category.index()]
                .get_or_insert_with(Box::default)
                .observe(at, car_park.time_zone.zone(), live.free(category), capacity);
        }
    }

    /// One category's forecaster.
    pub fn of(&self, category: SpaceCategory) -> Option<&Forecaster> {
        self.0[category.index()].as_deref()
    }

    /// Puts `forecaster` in for `category` (one restored from history).
    pub fn set(&mut self, category: SpaceCategory, forecaster: Forecaster) {
        self.0[category.index()] = Some(Box::new(forecaster));
    }

    /// The forecast of `category`'s available spaces `at`; None when the category has
    /// no spaces or no numbers were seen.
    pub fn forecast(
        &self,
        car_park: &CarPark,
        live: &Live,
        category: SpaceCategory,
        at: Timestamp,
    ) -> Option<Prediction> {
        if car_park.capacity.of(category) == 0 {
            return None;
        }
        self.of(category)?
            .forecast(at, car_park.time_zone.zone(), live.held(category))
    }
}

/// The knot at or after `age` and its weight (the one before takes the rest; knot 0
/// is age 0, where the fade is 1 and the spread 0); None past the last knot.
fn knot_weights(age: f32) -> Option<(usize, f32)> {
    let k = KNOTS.iter().position(|&h| age <= h)?;
    let before = if k == 0 { 0.0 } else { KNOTS[k - 1] };
    Some((k, (age - before) / (KNOTS[k] - before)))
}

/// A profile slot moved `rate` of the way to `share` (set to it when unseen).
fn blend(was: u16, share: f32, rate: f32) -> u16 {
    let next = match was {
        UNSEEN => share,
        v => f32::from(v) / SCALE * (1.0 - rate) + share * rate,
    };
    (next.clamp(0.0, 1.0) * SCALE).round() as u16
}

/// Local minutes since the epoch's local midnight, in `zone`.
fn local_minutes(ms: i64, zone: &TimeZone) -> i64 {
    let at = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
    let offset = i64::from(zone.to_offset(at).seconds());
    (ms.div_euclid(1000) + offset).div_euclid(60)
}

/// Minutes since Monday 00:00 of a local minute count (1970-01-01 was a Thursday).
fn week_minute(local_minutes: i64) -> i64 {
    (local_minutes + 3 * 24 * 60).rem_euclid(WEEK_MINUTES)
}

/// The standard normal distribution function (Abramowitz and Stegun 7.1.26; error
/// below 1.5e-7).
fn normal_cdf(z: f32) -> f32 {
    let x = f64::from(z) / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    let erf = if x >= 0.0 { erf } else { -erf };
    (0.5 * (1.0 + erf)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: i64, minute: i64) -> Timestamp {
        // 2026-11-02 was a Monday.
        let monday = jiff::civil::date(2026, 11, 2)
            .to_zoned(TimeZone::UTC)
            .unwrap()
            .timestamp();
        monday + jiff::SignedDuration::from_mins(day * 24 * 60 + minute)
    }

    #[test]
    fn it_fits_in_about_a_kilobyte() {
        assert!(
            std::mem::size_of::<Forecaster>() <= 1_100,
            "{}",
            std::mem::size_of::<Forecaster>()
        );
    }

    #[test]
    fn nothing_seen_forecasts_nothing_and_one_observation_persists() {
        let utc = TimeZone::UTC;
        let mut f = Forecaster::new();
        assert_eq!(f.forecast(at(0, 600), &utc, 0), None);
        f.observe(at(0, 600), &utc, 40, 100);
        let p = f.forecast(at(0, 660), &utc, 0).unwrap();
        assert_eq!(p.available, 40);
        assert!(p.p10 < 40 && p.p90 > 40, "{p:?}");
        assert!(p.probability > 0.99, "{p:?}");
    }

    /// A car park that fills every weekday morning: after three weeks the forecast at
    /// 08:00 for 09:00 says it will be nearly full (2 free; the 30-minute slots smooth
    /// the ramp a little), where persistence says half (51).
    #[test]
    fn the_weekly_profile_predicts_the_morning_fill() {
        let utc = TimeZone::UTC;
        let mut f = Forecaster::new();
        let free_at = |minute: i64| -> u32 {
            // 100 free at 07:00, falling to 2 by 09:00, then flat.
            let m = (minute - 7 * 60).clamp(0, 120);
            100 - (98 * m / 120) as u32
        };
        for day in 0..21 {
            for minute in (6 * 60..18 * 60).step_by(10) {
                f.observe(at(day, minute), &utc, free_at(minute), 100);
            }
        }
        f.observe(at(21, 8 * 60), &utc, free_at(8 * 60), 100);
        let p = f.forecast(at(21, 9 * 60), &utc, 0).unwrap();
        assert!(p.available <= 12, "{p:?}");
        assert!(p.probability < 1.0);
        // Today runs 20 spaces emptier than usual: part of it is still there in 30
        // minutes.
        let mut g = f.clone();
        g.observe(at(21, 8 * 60 + 10), &utc, free_at(8 * 60 + 10) + 20, 100);
        let q = g.forecast(at(21, 8 * 60 + 40), &utc, 0).unwrap();
        let usual = free_at(8 * 60 + 40);
        assert!(
            q.available > usual + 2 && q.available < usual + 21,
            "{q:?} {usual}"
        );
    }

    #[test]
    fn a_full_car_park_has_a_low_chance_of_a_space() {
        let utc = TimeZone::UTC;
        let mut f = Forecaster::new();
        for day in 0..14 {
            for minute in (0..24 * 60).step_by(15) {
                f.observe(at(day, minute), &utc, 0, 200);
            }
        }
        let p = f.forecast(at(14, 30), &utc, 0).unwrap();
        assert_eq!(p.available, 0);
        assert!(p.probability < 0.5, "{p:?}");
    }

    #[test]
    fn the_normal_distribution_function_is_right() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-6);
        assert!((normal_cdf(Z90) - 0.9).abs() < 1e-5);
        assert!((normal_cdf(-1.959_964) - 0.025).abs() < 1e-5);
    }
}
