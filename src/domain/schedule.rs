//! Opening hours: weekly periods in the car park's IANA time zone.

use std::fmt;

use jiff::tz::TimeZone;

use super::{Error, Timestamp};

/// A validated IANA time zone name with its rules (`Asia/Shanghai`).
#[derive(Clone)]
pub struct TimeZoneName {
    name: String,
    zone: TimeZone,
}

impl TimeZoneName {
    /// Looks the name up in the bundled time zone database.
    pub fn parse(name: &str) -> Result<Self, Error> {
        if name.is_empty() {
            return Err(Error::invalid(
                "",
                "must be an IANA time zone such as \"Asia/Shanghai\"",
            ));
        }
        let zone = TimeZone::get(name).map_err(|_| {
            Error::invalid(
                "",
                format!("{} is not a known IANA time zone", Error::excerpt(name)),
            )
        })?;
        Ok(Self {
            name: name.to_owned(),
            zone,
        })
    }

    /// The IANA name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The zone's rules.
    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }
}

impl fmt::Debug for TimeZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.name)
    }
}

impl serde::Serialize for TimeZoneName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> serde::Deserialize<'de> for TimeZoneName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&name).map_err(serde::de::Error::custom)
    }
}

impl PartialEq for TimeZoneName {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// One opening period on a weekday, in minutes after local midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpeningPeriod {
    /// ISO weekday, 1 = Monday .. 7 = Sunday.
    pub day: u8,
    /// Opens at this minute (0..=1439).
    pub open_minute: u16,
    /// Closes at this minute (open_minute+1 ..= 1440).
    pub close_minute: u16,
}

impl OpeningPeriod {
    /// Validates one period; errors name `day`, `open_minute` or `close_minute`.
    pub fn new(day: u8, open_minute: i64, close_minute: i64) -> Result<Self, Error> {
        if !(1..=7).contains(&day) {
            return Err(Error::invalid("day", "must be a weekday"));
        }
        if !(0..1440).contains(&open_minute) {
            return Err(Error::invalid(
                "open_minute",
                format!("{open_minute} is not in [0, 1439]"),
            ));
        }
        if !(1..=1440).contains(&close_minute) || close_minute <= open_minute {
            return Err(Error::invalid(
                "close_minute",
                format!(
                    "{close_minute} must be after open_minute ({open_minute}) and at most 1440"
                ),
            ));
        }
        Ok(Self {
            day,
            open_minute: open_minute as u16,
            close_minute: close_minute as u16,
        })
    }
}

/// A week of opening periods; no periods means open around the clock.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpeningHours {
    periods: Vec<OpeningPeriod>,
}

impl OpeningHours {
    /// Most periods a week may have.
    pub const MAX_PERIODS: usize = 56;

    /// Open around the clock.
    pub fn always() -> Self {
        Self::default()
    }

    /// Accepts up to [`Self::MAX_PERIODS`] periods.
    pub fn new(periods: Vec<OpeningPeriod>) -> Result<Self, Error> {
        if periods.len() > Self::MAX_PERIODS {
            return Err(Error::invalid(
                "",
                format!("more than {} periods", Self::MAX_PERIODS),
            ));
        }
        Ok(Self { periods })
    }

    /// The periods, as given.
    pub fn periods(&self) -> &[OpeningPeriod] {
        &self.periods
    }

    /// Whether the car park is open at `at`, read in `zone`.
    pub fn is_open(&self, at: Timestamp, zone: &TimeZone) -> bool {
        if self.periods.is_empty() {
            return true;
        }
        // Only the weekday and the minute of the day are needed: the zone's offset at
        // `at` gives both by arithmetic, far cheaper than a full zoned date-time (this
        // runs for every candidate of every nearby query).
        let local = at.as_second() + i64::from(zone.to_offset(at).seconds());
        let days = local.div_euclid(86_400);
        // 1970-01-01 was a Thursday, ISO weekday 4.
        let day = ((days + 3).rem_euclid(7) + 1) as u8;
        let minute = (local.rem_euclid(86_400) / 60) as u16;
        self.periods
            .iter()
            .any(|p| p.day == day && p.open_minute <= minute && minute < p.close_minute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn hours_are_read_in_local_time() {
        let zone = TimeZoneName::parse("Asia/Shanghai").unwrap();
        let weekdays: Vec<_> = (1..=5)
            .map(|d| OpeningPeriod::new(d, 8 * 60, 20 * 60).unwrap())
            .collect();
        let hours = OpeningHours::new(weekdays).unwrap();
        // 2026-11-30 is a Monday; 01:00 UTC is 09:00 in Shanghai.
        assert!(hours.is_open(ts("2026-11-30T01:00:00Z"), zone.zone()));
        assert!(
            !hours.is_open(ts("2026-11-29T23:59:00Z"), zone.zone()),
            "07:59 local"
        );
        assert!(
            !hours.is_open(ts("2026-11-30T12:00:00Z"), zone.zone()),
            "20:00 local"
        );
        assert!(
            !hours.is_open(ts("2026-12-05T03:00:00Z"), zone.zone()),
            "saturday"
        );
        assert!(OpeningHours::always().is_open(ts("2026-12-05T03:00:00Z"), zone.zone()));
    }

    #[test]
    fn weekday_and_minute_match_the_zoned_calendar() {
        // Every 37 minutes over two years, in zones with and without daylight saving.
        for name in [
            "Asia/Shanghai",
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
        ] {
            let zone = TimeZoneName::parse(name).unwrap();
            for (day, minute) in [(1u8, 0i64), (3, 600), (7, 1439)] {
                let hours =
                    OpeningHours::new(vec![OpeningPeriod::new(day, minute, minute + 1).unwrap()])
                        .unwrap();
                let mut t = ts("2026-01-01T00:00:00Z").as_second();
                while t < ts("2028-01-01T00:00:00Z").as_second() {
                    let at = Timestamp::from_second(t).unwrap();
                    let local = at.to_zoned(zone.zone().clone());
                    let expected = local.weekday().to_monday_one_offset() as u8 == day
                        && i64::from(local.hour()) * 60 + i64::from(local.minute()) == minute;
                    assert_eq!(hours.is_open(at, zone.zone()), expected, "{name} {at}");
                    t += 37 * 60;
                }
            }
        }
    }

    #[test]
    fn rejects_bad_periods_and_zones() {
        assert!(OpeningPeriod::new(0, 0, 10).is_err());
        assert!(OpeningPeriod::new(1, 600, 600).is_err());
        assert!(OpeningPeriod::new(1, 0, 1441).is_err());
        assert!(OpeningPeriod::new(7, 0, 1440).is_ok());
        assert!(TimeZoneName::parse("Mars/Olympus").is_err());
        assert!(TimeZoneName::parse("").is_err());
    }
}
