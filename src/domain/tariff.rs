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
    /// Counts the car park's changes of prices (1 for its first tariff): a session
    /// records the version it was priced by.
    /// Records written before tariffs had versions read as version 1.
    #[serde(default = "first_version")]
    pub version: u32,
}

fn first_version() -> u32 {
    1
}

impl Default for Tariff {
    fn default() -> Self {
        Self {
            currency: "CNY".to_owned(),
            hourly_rate: 0,
            daily_cap: 0,
            free_minutes: 0,
            version: 1,
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
            version: 1,
        })
    }

    /// Whether two tariffs ask the same prices, whatever their versions.
    pub fn same_prices(&self, other: &Tariff) -> bool {
        (
            &self.currency,
            self.hourly_rate,
            self.daily_cap,
            self.free_minutes,
        ) == (
            &other.currency,
            other.hourly_rate,
            other.daily_cap,
            other.free_minutes,
        )
    }

    /// This tariff replacing `old`: the same version if its prices are the same,
    /// else the next one.
    pub fn replacing(mut self, old: &Tariff) -> Self {
        self.version = if self.same_prices(old) {
            old.version
        } else {
            old.version.max(1) + 1
        };
        self
    }

    /// The price of a stay: free up to `free_minutes`; otherwise every started hour of
    /// the whole stay at the hourly rate, with each started 24 hours capped at the daily
    /// cap.
    pub fn price(&self, stay: &Stay) -> i64 {
        self.fee(stay.start, stay.end, None)
    }

    /// The fee of a parking session from `entry` to `exit`, with `prepaid` (the window
    /// of a reservation or booking it fulfils, paid when booked) credited: nothing when
    /// the whole stay is within the free minutes; otherwise, for each 24 hours from
    /// entry, every started hour of the time not prepaid at the hourly rate, capped at
    /// the daily cap. An exit before the entry (clocks of two devices disagreeing) is
    /// a stay of no length.
    pub fn fee(
        &self,
        entry: Timestamp,
        exit: Timestamp,
        prepaid: Option<(Timestamp, Timestamp)>,
    ) -> i64 {
        const HOUR_MS: i64 = 3_600_000;
        const DAY_MS: i64 = 24 * HOUR_MS;
        let (from, to) = (entry.as_millisecond(), exit.as_millisecond());
        let stay_ms = (to - from).max(0);
        if stay_ms <= i64::from(self.free_minutes) * 60_000 {
            return 0;
        }
        let covered = |start: i64, end: i64| {
            prepaid.map_or(0, |(a, b)| {
                (end.min(b.as_millisecond()) - start.max(a.as_millisecond())).max(0)
            })
        };
        let mut fee = 0i64;
        let mut start = from;
        while start < to {
            let end = (start + DAY_MS).min(to);
            let chargeable = (end - start) - covered(start, end);
            let hours = (chargeable + HOUR_MS - 1) / HOUR_MS;
            let day = hours.saturating_mul(self.hourly_rate);
            fee = fee.saturating_add(if self.daily_cap > 0 {
                day.min(self.daily_cap)
            } else {
                day
            });
            start = end;
        }
        fee
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The rules of a session's fee, for any tariff, stay and prepaid window.
        #[test]
        fn session_fees_keep_their_rules(
            rate in 0i64..10_000,
            cap in 0i64..100_000,
            free in 0i64..120,
            entry in 0i64..10_000,
            minutes in 0i64..(40 * 1440),
            more in 0i64..600,
            window in (0i64..20_000, 0i64..3000),
        ) {
            let t = Tariff::new("CNY", rate, cap, free).unwrap();
            let (a, b) = (at(entry), at(entry + minutes));
            let fee = t.fee(a, b, None);
            // Never negative; nothing within the free minutes.
            prop_assert!(fee >= 0);
            if minutes <= free {
                prop_assert_eq!(fee, 0);
            }
            // A longer stay never costs less.
            prop_assert!(t.fee(a, at(entry + minutes + more), None) >= fee);
            // Each started day costs at most the cap, and at most its hours.
            let days = (minutes + 1439) / 1440;
            if cap > 0 {
                prop_assert!(fee <= days * cap);
            }
            prop_assert!(fee <= ((minutes + 59) / 60) * rate);
            // A prepaid window never adds to the fee; one covering the stay leaves
            // nothing to pay.
            let w = Some((at(window.0), at(window.0 + window.1)));
            prop_assert!(t.fee(a, b, w) <= fee);
            prop_assert_eq!(t.fee(a, b, Some((a, b))), 0);
            // Within 30 days, a session's fee is the listed price of its stay.
            if minutes > 0 && minutes <= MAX_STAY_SECONDS / 60 {
                prop_assert_eq!(t.price(&Stay::new(a, b).unwrap()), fee);
            }
        }
    }

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

    fn at(minutes: i64) -> Timestamp {
        let start: Timestamp = "2026-11-30T01:00:00Z".parse().unwrap();
        Timestamp::from_second(start.as_second() + minutes * 60).unwrap()
    }

    #[test]
    fn a_session_s_fee_credits_its_prepaid_window_and_charges_the_overstay() {
        let t = Tariff::new("CNY", 500, 3000, 15).unwrap();
        // Reserved 1:00 to 3:00 (minutes 60 to 180), arrived at 0:50, left at 3:20:
        // 10 minutes before and 20 after are one started hour.
        let window = Some((at(60), at(180)));
        assert_eq!(t.fee(at(50), at(200), window), 500);
        // Within the window only: nothing to pay.
        assert_eq!(t.fee(at(70), at(170), window), 0);
        // Two hours' overstay: two started hours.
        assert_eq!(t.fee(at(60), at(300), window), 1000);
        // Three days and an hour, no window: three capped days and an hour.
        assert_eq!(t.fee(at(0), at(73 * 60), None), 3 * 3000 + 500);
        // An exit stamped before its entry is a stay of no length.
        assert_eq!(t.fee(at(100), at(90), None), 0);
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
