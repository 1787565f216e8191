//! Drivers' built-in wallets: a double-entry ledger of top-ups, charges and refunds,
//! in integer minor units, whose balance never goes below the configured overdraft.
//!
//! Every entry moves an amount from one account to another, so the sum over all
//! accounts is always zero and a wallet's balance is the sum of its entries. An
//! entry's id is its cause (`charge:<session id>`, `topup:<hash of driver and key>`):
//! writing an entry is "write if absent", which makes a charge retried after a crash
//! or a timeout land once.

use std::fmt;

use super::{
    DriverId, Error, OperatorId, RegionId, SessionId, Timestamp, accounts_region, key_suffix,
};

/// Largest single amount, in minor units (10 million in a currency of cents).
pub const MAX_AMOUNT: i64 = 1_000_000_000;

/// An account of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Account {
    /// A driver's wallet.
    Wallet(DriverId),
    /// Money received from the payment provider that confirmed top-ups.
    TopUps,
    /// What an operator has earned from sessions at its car parks.
    Revenue(OperatorId),
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Wallet(d) => write!(f, "wallet:{d}"),
            Self::TopUps => f.write_str("top_ups"),
            Self::Revenue(o) => write!(f, "revenue:{o}"),
        }
    }
}

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    TopUp,
    Charge,
    Refund,
}

impl EntryKind {
    /// Its stored name (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TopUp => "top_up",
            Self::Charge => "charge",
            Self::Refund => "refund",
        }
    }
}

/// One movement of money from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LedgerEntry {
    /// The driver's account shard, the wallet's.
    pub region: RegionId,
    /// Its cause, unique: `topup:<hash>`, `charge:<session id>`, `refund:<session id>`.
    pub id: String,
    pub driver: DriverId,
    pub kind: EntryKind,
    /// Positive.
    pub amount_minor: i64,
    pub currency: String,
    pub from: Account,
    pub to: Account,
    pub at: Timestamp,
    /// The wallet's balance after this entry.
    pub balance_after: i64,
}

impl LedgerEntry {
    /// What this entry does to `driver`'s wallet's balance.
    pub fn effect_on_wallet(&self) -> i64 {
        let wallet = Account::Wallet(self.driver.clone());
        match (self.from == wallet, self.to == wallet) {
            (true, false) => -self.amount_minor,
            (false, true) => self.amount_minor,
            _ => 0,
        }
    }
}

/// A driver's wallet: its balance and how many entries it holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Wallet {
    /// The driver's account shard (`accounts_region`).
    pub region: RegionId,
    pub driver: DriverId,
    pub currency: String,
    pub balance_minor: i64,
    pub entries: u64,
}

impl Wallet {
    /// A new, empty wallet.
    pub fn new(driver: DriverId, currency: &str) -> Self {
        Self {
            region: accounts_region(driver.as_str()),
            driver,
            currency: currency.to_owned(),
            balance_minor: 0,
            entries: 0,
        }
    }

    /// The id of the top-up `driver` confirms with idempotency key `key`.
    pub fn top_up_id(driver: &DriverId, key: &str) -> String {
        format!("topup:{}", key_suffix(driver, key))
    }

    /// The id of the charge of `session`.
    pub fn charge_id(session: &SessionId) -> String {
        format!("charge:{session}")
    }

    /// A top-up of `amount` confirmed by the payment provider.
    pub fn top_up(
        &self,
        key: &str,
        amount: i64,
        at: Timestamp,
    ) -> Result<(Self, LedgerEntry), Error> {
        check_amount("amount_minor", amount)?;
        let id = Self::top_up_id(&self.driver, key);
        self.post(
            id,
            EntryKind::TopUp,
            amount,
            Account::TopUps,
            Account::Wallet(self.driver.clone()),
            at,
        )
    }

    /// Charges a session's fee to the wallet, for `operator`'s revenue; refused when the
    /// balance would go below `-overdraft`.
    pub fn charge(
        &self,
        session: &SessionId,
        operator: &OperatorId,
        amount: i64,
        currency: &str,
        overdraft: i64,
        at: Timestamp,
    ) -> Result<(Self, LedgerEntry), Error> {
        check_amount("fee_minor", amount)?;
        if currency != self.currency {
            return Err(Error::FailedPrecondition(format!(
                "the wallet holds {}, the fee is in {currency}",
                self.currency
            )));
        }
        if self.balance_minor - amount < -overdraft {
            return Err(Error::FailedPrecondition(format!(
                "the wallet's balance ({} {}) does not cover the fee ({amount})",
                self.balance_minor, self.currency
            )));
        }
        self.post(
            Self::charge_id(session),
            EntryKind::Charge,
            amount,
            Account::Wallet(self.driver.clone()),
            Account::Revenue(operator.clone()),
            at,
        )
    }

    /// Refunds a charged session's fee from `operator`'s revenue.
    pub fn refund(
        &self,
        session: &SessionId,
        operator: &OperatorId,
        amount: i64,
        at: Timestamp,
    ) -> Result<(Self, LedgerEntry), Error> {
        check_amount("amount_minor", amount)?;
        self.post(
            format!("refund:{session}"),
            EntryKind::Refund,
            amount,
            Account::Revenue(operator.clone()),
            Account::Wallet(self.driver.clone()),
            at,
        )
    }

    fn post(
        &self,
        id: String,
        kind: EntryKind,
        amount: i64,
        from: Account,
        to: Account,
        at: Timestamp,
    ) -> Result<(Self, LedgerEntry), Error> {
        let mut entry = LedgerEntry {
            region: self.region.clone(),
            id,
            driver: self.driver.clone(),
            kind,
            amount_minor: amount,
            currency: self.currency.clone(),
            from,
            to,
            at,
            balance_after: 0,
        };
        let balance = self
            .balance_minor
            .checked_add(entry.effect_on_wallet())
            .ok_or_else(|| {
                Error::FailedPrecondition("the wallet's balance would overflow".into())
            })?;
        entry.balance_after = balance;
        let wallet = Self {
            balance_minor: balance,
            entries: self.entries + 1,
            ..self.clone()
        };
        Ok((wallet, entry))
    }
}

fn check_amount(field: &str, amount: i64) -> Result<(), Error> {
    if (1..=MAX_AMOUNT).contains(&amount) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{amount} is not in [1, {MAX_AMOUNT}]"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::CarParkId;

    fn at() -> Timestamp {
        "2026-12-01T08:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_charge_needs_the_balance_within_the_overdraft_and_has_its_session_s_id() {
        let ann = DriverId::parse("ann").unwrap();
        let op = OperatorId::parse("op-a").unwrap();
        let session = SessionId::of_report(&CarParkId::parse("g1").unwrap(), 7);
        let wallet = Wallet::new(ann.clone(), "CNY");
        let (wallet, top_up) = wallet.top_up("t1", 1000, at()).unwrap();
        assert_eq!((wallet.balance_minor, top_up.balance_after), (1000, 1000));
        assert_eq!(top_up.id, Wallet::top_up_id(&ann, "t1"));
        let refused = wallet
            .charge(&session, &op, 1500, "CNY", 0, at())
            .unwrap_err();
        assert!(refused.to_string().contains("does not cover"), "{refused}");
        let (wallet, charge) = wallet
            .charge(&session, &op, 1500, "CNY", 500, at())
            .unwrap();
        assert_eq!(
            (wallet.balance_minor, charge.id.as_str()),
            (-500, "charge:g1~7")
        );
        assert!(wallet.charge(&session, &op, 1, "USD", 500, at()).is_err());
        assert!(wallet.top_up("t2", 0, at()).is_err());
        let (wallet, _) = wallet.refund(&session, &op, 1500, at()).unwrap();
        assert_eq!((wallet.balance_minor, wallet.entries), (1000, 3));
    }

    proptest! {
        /// Whatever happens, the books balance: every account's sum is zero in all,
        /// the wallet's balance is the sum of its entries, and it never goes below
        /// the overdraft.
        #[test]
        fn the_books_always_balance(ops in prop::collection::vec((0u8..3, 1i64..5_000), 1..60), overdraft in 0i64..2_000) {
            let ann = DriverId::parse("ann").unwrap();
            let op = OperatorId::parse("op-a").unwrap();
            let park = CarParkId::parse("g1").unwrap();
            let mut wallet = Wallet::new(ann.clone(), "CNY");
            let mut entries = Vec::new();
            for (i, (kind, amount)) in ops.into_iter().enumerate() {
                let session = SessionId::of_report(&park, i as u64);
                let posted = match kind {
                    0 => wallet.top_up(&format!("k{i}"), amount, at()),
                    1 => wallet.charge(&session, &op, amount, "CNY", overdraft, at()),
                    _ => wallet.refund(&session, &op, amount, at()),
                };
                if let Ok((next, entry)) = posted {
                    wallet = next;
                    entries.push(entry);
                }
                prop_assert!(wallet.balance_minor >= -overdraft);
            }
            let mut accounts: HashMap<String, i64> = HashMap::new();
            for e in &entries {
                *accounts.entry(e.from.to_string()).or_default() -= e.amount_minor;
                *accounts.entry(e.to.to_string()).or_default() += e.amount_minor;
            }
            prop_assert_eq!(accounts.values().sum::<i64>(), 0);
            let sum: i64 = entries.iter().map(LedgerEntry::effect_on_wallet).sum();
            prop_assert_eq!(sum, wallet.balance_minor);
            prop_assert_eq!(accounts.get("wallet:ann").copied().unwrap_or(0), wallet.balance_minor);
            prop_assert_eq!(wallet.entries as usize, entries.len());
        }
    }
}
