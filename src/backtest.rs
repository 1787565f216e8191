//! The forecasts' backtest: replays an occupancy history through the same
//! [`Forecaster`] the server runs, training only on the past at each point, and scores
//! it against three baselines at fixed horizons (`citypark forecast backtest`).
//!
//! The input is a CSV file with a header line naming its columns, in any order:
//! `car_park_id`, `capacity`, `observed_at` and `occupied` or `free` (UCI's "Parking
//! Birmingham" names them `SystemCodeNumber`, `Capacity`, `LastUpdated` and
//! `Occupancy`, also read). `observed_at` is RFC 3339, or a local date and time
//! (`2016-10-04 07:59:42`) in the time zone given. Occupancy above capacity or below
//! zero is clamped (a full or an empty car park) and counted.
//!
//! How it scores. At every observation of every car park, after the forecaster has
//! seen it and nothing later, each method forecasts the free spaces 15, 30, 60 and 120
//! minutes on. The truth is the series at that time, interpolated between the
//! observations around it when they are at most an hour apart (else the point is not
//! scored). The baselines: persistence (the last value), seasonal naive (the value at
//! the same local time a week before) and Helsinki's (the mean of the same local time
//! in the previous one to three weeks). A point is scored for all methods or for none:
//! only where a week before is known, so every method answers every scored point.

use std::{collections::BTreeMap, fmt};

use jiff::{ToSpan, Zoned, civil::DateTime, tz::TimeZone};

use crate::domain::{Error, Forecaster, Result, Timestamp};

/// The horizons scored, in minutes.
pub const HORIZONS: [i64; 4] = [15, 30, 60, 120];
/// The widest gap the truth is interpolated across.
const MAX_GAP_MS: i64 = 60 * 60_000;

/// The methods scored, in the table's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Persistence,
    SeasonalNaive,
    Helsinki,
    Citypark,
}

impl Method {
    pub const ALL: [Method; 4] = [
        Method::Persistence,
        Method::SeasonalNaive,
        Method::Helsinki,
        Method::Citypark,
    ];
    pub const BASELINES: [Method; 3] =
        [Method::Persistence, Method::SeasonalNaive, Method::Helsinki];

    pub fn name(self) -> &'static str {
        match self {
            Method::Persistence => "persistence",
            Method::SeasonalNaive => "seasonal naive",
            Method::Helsinki => "Helsinki (3 weeks)",
            Method::Citypark => "citypark",
        }
    }
}

/// Mean absolute error of one method at one horizon.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Mae {
    /// In spaces.
    pub spaces: f64,
    /// In percent of the car park's capacity.
    pub percent: f64,
}

/// The scores at one horizon.
#[derive(Debug, Clone, PartialEq)]
pub struct Horizon {
    pub minutes: i64,
    /// Points scored.
    pub points: usize,
    /// Per method, in [`Method::ALL`]'s order.
    pub mae: [Mae; 4],
    /// The share of points whose truth fell inside citypark's 80% interval.
    pub coverage: f64,
}

impl Horizon {
    pub fn of(&self, method: Method) -> Mae {
        self.mae[Method::ALL
            .iter()
            .position(|m| *m == method)
            .expect("listed")]
    }

    /// The baseline with the lowest MAE (in % of capacity).
    pub fn best_baseline(&self) -> Method {
        Method::BASELINES
            .into_iter()
            .min_by(|a, b| self.of(*a).percent.total_cmp(&self.of(*b).percent))
            .expect("three")
    }

    /// How much lower citypark's MAE is than the best baseline's, in percent (of the
    /// baseline's; negative when worse).
    pub fn gain(&self) -> f64 {
        let best = self.of(self.best_baseline()).percent;
        100.0 * (best - self.of(Method::Citypark).percent) / best
    }
}

/// What a backtest read and how each method scored.
#[derive(Debug, Clone, PartialEq)]
pub struct Backtest {
    pub car_parks: usize,
    pub rows: usize,
    /// Rows whose occupancy was above capacity or below zero.
    pub clamped: usize,
    /// Rows with the time of the row before for the same car park (the later kept).
    pub duplicates: usize,
    pub first: Timestamp,
    pub last: Timestamp,
    pub zone: String,
    pub horizons: Vec<Horizon>,
}

/// One horizon's running sums: per method the absolute errors in spaces and in % of
/// capacity; points scored; points inside the interval.
#[derive(Debug, Clone, Default)]
struct Sums {
    errors: [(f64, f64); 4],
    points: usize,
    covered: usize,
}

/// One observation.
#[derive(Debug, Clone, Copy)]
struct Point {
    ms: i64,
    free: u32,
    capacity: u32,
}

/// The histories of a file, per car park, oldest first.
struct Histories {
    series: BTreeMap<String, Vec<Point>>,
    rows: usize,
    clamped: usize,
    duplicates: usize,
}

/// Reads the CSV `text`, local times in `zone` (`zone_name` for the report), and
/// scores the forecasts on it.
pub fn run(text: &str, zone: &TimeZone, zone_name: &str) -> Result<Backtest> {
    let histories = read(text, zone)?;
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for s in histories.series.values() {
        first = first.min(s[0].ms);
        last = last.max(s[s.len() - 1].ms);
    }
    let mut sums = vec![Sums::default(); HORIZONS.len()];
    for series in histories.series.values() {
        score(series, zone, &mut sums);
    }
    let horizons = HORIZONS
        .iter()
        .zip(sums)
        .map(
            |(
                &minutes,
                Sums {
                    errors,
                    points,
                    covered,
                },
            )| {
                let n = points.max(1) as f64;
                Horizon {
                    minutes,
                    points,
                    mae: errors.map(|(spaces, percent)| Mae {
                        spaces: spaces / n,
                        percent: percent / n,
                    }),
                    coverage: covered as f64 / n,
                }
            },
        )
        .collect();
    Ok(Backtest {
        car_parks: histories.series.len(),
        rows: histories.rows,
        clamped: histories.clamped,
        duplicates: histories.duplicates,
        first: Timestamp::from_millisecond(first).expect("read"),
        last: Timestamp::from_millisecond(last).expect("read"),
        zone: zone_name.to_owned(),
        horizons,
    })
}

/// Replays one car park and adds its points to `sums`, one per horizon.
fn score(series: &[Point], zone: &TimeZone, sums: &mut [Sums]) {
    let mut forecaster = Forecaster::new();
    for p in series {
        let at = Timestamp::from_millisecond(p.ms).expect("read");
        forecaster.observe(at, zone, p.free, p.capacity);
        for (h, sum) in HORIZONS.iter().zip(sums.iter_mut()) {
            let target = at + jiff::SignedDuration::from_mins(*h);
            let Some(truth) = value_at(series, target.as_millisecond()) else {
                continue;
            };
            let weeks: Vec<f64> = (1..=3)
                .filter_map(|w| {
                    let then = weeks_before(target, zone, w)?;
                    value_at(series, then.as_millisecond())
                })
                .collect();
            // Seasonal naive needs the week before itself.
            let Some(week_before) = weeks_before(target, zone, 1)
                .and_then(|then| value_at(series, then.as_millisecond()))
            else {
                continue;
            };
            let helsinki = weeks.iter().sum::<f64>() / weeks.len() as f64;
            let prediction = forecaster.forecast(target, zone, 0).expect("observed");
            let forecasts = [
                f64::from(p.free),
                week_before,
                helsinki,
                f64::from(prediction.available),
            ];
            let capacity = f64::from(p.capacity.max(1));
            for (s, f) in sum.errors.iter_mut().zip(forecasts) {
                let error = (f - truth).abs();
                s.0 += error;
                s.1 += 100.0 * error / capacity;
            }
            sum.points += 1;
            if f64::from(prediction.p10) <= truth && truth <= f64::from(prediction.p90) {
                sum.covered += 1;
            }
        }
    }
}

/// The same local time `weeks` weeks before `at`.
fn weeks_before(at: Timestamp, zone: &TimeZone, weeks: i64) -> Option<Timestamp> {
    let local: Zoned = at.to_zoned(zone.clone());
    local.checked_sub(weeks.weeks()).ok().map(|z| z.timestamp())
}

/// The series at `ms`: an observation then, or the line between the two around it
/// when they are at most [`MAX_GAP_MS`] apart.
fn value_at(series: &[Point], ms: i64) -> Option<f64> {
    let i = series.partition_point(|p| p.ms < ms);
    let after = series.get(i)?;
    if after.ms == ms {
        return Some(f64::from(after.free));
    }
    let before = series.get(i.checked_sub(1)?)?;
    if after.ms - before.ms > MAX_GAP_MS {
        return None;
    }
    let w = (ms - before.ms) as f64 / (after.ms - before.ms) as f64;
    Some(f64::from(before.free) + (f64::from(after.free) - f64::from(before.free)) * w)
}

/// The columns a file names, by position.
struct Columns {
    id: usize,
    capacity: usize,
    observed_at: usize,
    /// The occupancy column, and whether it counts free spaces (else occupied ones).
    count: usize,
    free: bool,
}

impl Columns {
    fn of(header: &str) -> Result<Self> {
        let names: Vec<String> = header
            .split(',')
            .map(|c| c.trim().trim_matches('"').to_ascii_lowercase())
            .collect();
        let find = |wanted: &[&str]| names.iter().position(|n| wanted.contains(&n.as_str()));
        let need = |wanted: &[&str]| {
            find(wanted).ok_or_else(|| {
                Error::invalid(
                    "header",
                    format!(
                        "names no {} column (the first line names the columns)",
                        wanted[0]
                    ),
                )
            })
        };
        let (count, free) = match (find(&["occupied", "occupancy"]), find(&["free"])) {
            (Some(c), None) => (c, false),
            (None, Some(c)) => (c, true),
            (Some(_), Some(_)) => {
                return Err(Error::invalid("header", "names both occupied and free"));
            }
            (None, None) => {
                return Err(Error::invalid("header", "names no occupied or free column"));
            }
        };
        Ok(Self {
            id: need(&["car_park_id", "systemcodenumber"])?,
            capacity: need(&["capacity"])?,
            observed_at: need(&["observed_at", "lastupdated"])?,
            count,
            free,
        })
    }
}

fn read(text: &str, zone: &TimeZone) -> Result<Histories> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines
        .next()
        .ok_or_else(|| Error::invalid("file", "is empty"))?;
    let columns = Columns::of(header.trim_start_matches('\u{feff}'))?;
    let mut series: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    let (mut rows, mut clamped) = (0, 0);
    for (n, line) in lines {
        let line_no = n + 1;
        let fields: Vec<&str> = line
            .split(',')
            .map(|f| f.trim().trim_matches('"'))
            .collect();
        let field = |i: usize, name: &str| {
            fields
                .get(i)
                .copied()
                .filter(|f| !f.is_empty())
                .ok_or_else(|| Error::invalid(format!("line {line_no}"), format!("has no {name}")))
        };
        let number = |i: usize, name: &str| -> Result<i64> {
            let raw = field(i, name)?;
            raw.parse::<i64>().map_err(|_| {
                Error::invalid(
                    format!("line {line_no}"),
                    format!("{name} {} is not a whole number", Error::excerpt(raw)),
                )
            })
        };
        let id = field(columns.id, "car_park_id")?;
        let capacity = number(columns.capacity, "capacity")?;
        if capacity <= 0 || capacity > i64::from(u32::MAX) {
            return Err(Error::invalid(
                format!("line {line_no}"),
                "capacity must be positive",
            ));
        }
        let count = number(
            columns.count,
            if columns.free { "free" } else { "occupied" },
        )?;
        let raw_time = field(columns.observed_at, "observed_at")?;
        let at = parse_time(raw_time, zone).ok_or_else(|| {
            Error::invalid(
                format!("line {line_no}"),
                format!(
                    "observed_at {} is neither RFC 3339 nor a local date and time",
                    Error::excerpt(raw_time)
                ),
            )
        })?;
        let free = if columns.free {
            count
        } else {
            capacity - count
        };
        if !(0..=capacity).contains(&free) {
            clamped += 1;
        }
        rows += 1;
        series.entry(id.to_owned()).or_default().push(Point {
            ms: at.as_millisecond(),
            free: free.clamp(0, capacity) as u32,
            capacity: capacity as u32,
        });
    }
    if rows == 0 {
        return Err(Error::invalid("file", "holds no rows"));
    }
    let mut duplicates = 0;
    for s in series.values_mut() {
        // Stable: of rows with one time, the later in the file is kept.
        s.sort_by_key(|p| p.ms);
        let before = s.len();
        s.reverse();
        s.dedup_by_key(|p| p.ms);
        s.reverse();
        duplicates += before - s.len();
    }
    Ok(Histories {
        series,
        rows,
        clamped,
        duplicates,
    })
}

fn parse_time(raw: &str, zone: &TimeZone) -> Option<Timestamp> {
    if let Ok(at) = raw.parse::<Timestamp>() {
        return Some(at);
    }
    let local: DateTime = raw.parse().ok()?;
    zone.to_ambiguous_zoned(local)
        .compatible()
        .ok()
        .map(|z| z.timestamp())
}

impl fmt::Display for Backtest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let zone = TimeZone::get(&self.zone).unwrap_or(TimeZone::UTC);
        writeln!(
            f,
            "{} car parks, {} rows ({} clamped to 0..capacity, {} repeated times dropped), {} to {} ({})",
            self.car_parks,
            self.rows,
            self.clamped,
            self.duplicates,
            self.first.to_zoned(zone.clone()).date(),
            self.last.to_zoned(zone).date(),
            self.zone,
        )?;
        writeln!(
            f,
            "MAE in spaces (in % of capacity); forecasts at every observation, scored where a week before is known"
        )?;
        write!(f, "{:<8} {:>7}", "horizon", "points")?;
        for m in Method::ALL {
            write!(f, " {:>20}", m.name())?;
        }
        writeln!(f, " {:>14} {:>14}", "vs best", "80% coverage")?;
        for h in &self.horizons {
            write!(f, "{:<8} {:>7}", format!("{} min", h.minutes), h.points)?;
            for m in Method::ALL {
                let mae = h.of(m);
                write!(
                    f,
                    " {:>20}",
                    format!("{:.1} ({:.2}%)", mae.spaces, mae.percent)
                )?;
            }
            writeln!(
                f,
                " {:>14} {:>14}",
                format!("{:+.1}%", -h.gain()),
                format!("{:.1}%", 100.0 * h.coverage)
            )?;
        }
        write!(
            f,
            "vs best: citypark's MAE against the best baseline's at that horizon (negative is better)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_name_their_columns_and_bad_rows_name_their_line() {
        let utc = TimeZone::UTC;
        let e = run("a,b\n1,2\n", &utc, "UTC").unwrap_err();
        assert!(e.to_string().contains("occupied or free"), "{e}");
        let e = run(
            "car_park_id,capacity,observed_at,free\ng1,10,yesterday,4\n",
            &utc,
            "UTC",
        )
        .unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = run(
            "car_park_id,capacity,observed_at,free\ng1,0,2026-01-01T00:00:00Z,4\n",
            &utc,
            "UTC",
        )
        .unwrap_err();
        assert!(e.to_string().contains("capacity"), "{e}");
    }

    #[test]
    fn local_times_follow_the_zone_and_occupancy_is_clamped() {
        let london = TimeZone::get("Europe/London").unwrap();
        let text = "SystemCodeNumber,Capacity,Occupancy,LastUpdated\n\
                    g1,10,12,2016-10-04 08:00:00\n\
                    g1,10,3,2016-10-04 08:30:00\n\
                    g1,10,4,2016-10-04 08:30:00\n";
        let h = read(text, &london).unwrap();
        let s = &h.series["g1"];
        assert_eq!((h.rows, h.clamped, h.duplicates), (3, 1, 1));
        assert_eq!(s[0].free, 0);
        // British Summer Time: 08:00 local is 07:00 UTC; the later of two rows kept.
        assert_eq!(
            Timestamp::from_millisecond(s[0].ms).unwrap().to_string(),
            "2016-10-04T07:00:00Z"
        );
        assert_eq!(s[1].free, 6);
        assert_eq!(value_at(s, s[0].ms + 15 * 60_000), Some(3.0));
        assert_eq!(value_at(s, s[1].ms + 1), None);
    }
}
