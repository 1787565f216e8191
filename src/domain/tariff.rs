//! Tariffs and the price of a stay.

use super::{Error, Timestamp};

/// Longest stay that can be priced or searched.
pub const MAX_STAY_SECONDS: i64 = 30 * 24 * 3600;

/// A validated stay [start, end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stay {
    start: Timestamp,
    end: Timestamp,
}

impl Stay {
    /// Needs end after start, at most 30 days later. Errors name `end`.
    pub fn new(start: Timestamp, end: Timestamp) -> Result<Self, Error> {
        let secs = end.as_second() - start.as_second();
        if end <= start {
            return Err(Error::invalid("end", "must be after start"));
        }
        if secs > MAX_STAY_SECONDS {
            return Err(Error::invalid("end", "a stay is at most 30 days"));
        }
        Ok(Self { start, end })
    }

    /// Arrival.
    pub fn start(&self) -> Timestamp {
        self.start
    }

    /// Departure.
    pub fn end(&self) -> Timestamp {
        self.end
    }

    /// Length in whole minutes, rounded up.
    pub fn minutes(&self) -> i64 {
        let ms = self.end.as_millisecond() - self.start.as_millisecond();
        (ms + 59_999) / 60_000
    }
}

/// How a car park prices a stay, in the currency's minor unit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tariff {
    /// ISO 4217 code.
    pub currency: String,
    /// Price of each started hour.
    pub hourly_rate: i64,
    /// Most charged per started 24 hours; 0 means no cap.
    pub daily_cap: i64,
    /// A stay no longer than this is free.
    pub free_minutes: u32,
}

impl Default for Tariff {
    fn default() -> Self {
        Self {
            currency: "CNY".to_owned(),
            hourly_rate: 0,
            daily_cap: 0,
            free_minutes: 0,
        }
    }
}

impl Tariff {
    /// Validates amounts (non-negative, at most 10^9 minor units) and the currency code.
    pub fn new(
        currency: &str,
        hourly_rate: i64,
        daily_cap: i64,
        free_minutes: i64,
    ) -> Result<Self, Error> {
        const MAX_AMOUNT: i64 = 1_000_000_000;
        let currency = if currency.is_empty() { "CNY" } else { currency };
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Error::invalid(
                "currency",
                format!("{} is not an ISO 4217 code", Error::excerpt(currency)),
            ));
        }
        if !(0..=MAX_AMOUNT).contains(&hourly_rate) {
            return Err(Error::invalid(
                "hourly_rate_minor",
                format!("{hourly_rate} is not in [0, {MAX_AMOUNT}]"),
            ));
        }
        if !(0..=MAX_AMOUNT).contains(&daily_cap) {
            return Err(Error::invalid(
                "daily_cap_minor",
                format!("{daily_cap} is not in [0, {MAX_AMOUNT}]"),
            ));
        }
        if !(0..=1440).contains(&free_minutes) {
            return Err(Error::invalid(
                "free_minutes",
                format!("{free_minutes} is not in [0, 1440]"),
            ));
        }
        Ok(Self {
            currency: currency.to_owned(),
            hourly_rate,
            daily_cap,
            free_minutes: free_minutes as u32,
        })
    }

    /// The price of a stay: free up to `free_minutes`; otherwise every started hour of
    /// the whole stay at the hourly rate, with each started 24 hours capped at the daily cap.
    pub fn price(&self, stay: &Stay) -> i64 {
        let minutes = stay.minutes();
        if minutes <= i64::from(self.free_minutes) {
            return 0;
        }
        let hours = (minutes + 59) / 60;
        if self.daily_cap == 0 {
            return hours * self.hourly_rate;
        }
        let (days, rest) = (hours / 24, hours % 24);
        let day_price = (24 * self.hourly_rate).min(self.daily_cap);
        days * day_price + (rest * self.hourly_rate).min(self.daily_cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stay(minutes: i64) -> Stay {
        let start: Timestamp = "2026-11-30T01:00:00Z".parse().unwrap();
        Stay::new(
            start,
            Timestamp::from_second(start.as_second() + minutes * 60).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn prices_follow_the_rules() {
        let t = Tariff::new("CNY", 500, 3000, 15).unwrap();
        assert_eq!(t.price(&stay(15)), 0, "within free minutes");
        assert_eq!(t.price(&stay(16)), 500, "one started hour");
        assert_eq!(t.price(&stay(61)), 1000, "two started hours");
        assert_eq!(t.price(&stay(10 * 60)), 3000, "capped for the day");
        assert_eq!(t.price(&stay(25 * 60)), 3500, "a day and an hour");
        let uncapped = Tariff::new("CNY", 500, 0, 0).unwrap();
        assert_eq!(uncapped.price(&stay(48 * 60)), 48 * 500);
    }

    #[test]
    fn rejects_bad_tariffs_and_stays() {
        assert!(Tariff::new("cny", 1, 1, 1).is_err());
        assert!(Tariff::new("CNY", -1, 1, 1).is_err());
        assert!(Tariff::new("CNY", 1, 1, 2000).is_err());
        let t: Timestamp = "2026-11-30T01:00:00Z".parse().unwrap();
        assert!(Stay::new(t, t).is_err());
        assert!(
            Stay::new(
                t,
                Timestamp::from_second(t.as_second() + MAX_STAY_SECONDS + 1).unwrap()
            )
            .is_err()
        );
    }
}
