//! Parking sessions and sensorless payment (无感支付): plates read at gates open and
//! close sessions; a closed session's fee is charged once to its driver's wallet or
//! gateway; drivers link plates, top up and read their wallet; operators list their
//! sessions and settle a day.
//!
//! Every change is one group commit (`transact_group`) in one region: a gate report's
//! car park counts, its session and the key of the session its plate is in at the car
//! park (`OpenSession`) in the car park's region; a wallet and its ledger entry in the driver's account shard; a plate
//! link in the plate's shard. A charge spans two regions (the wallet's shard and the
//! session's car park), so it is two steps, each atomic, made exactly once by naming:
//! the ledger entry is `charge:<session id>`, written only if absent together with the
//! wallet's new balance, and the session is marked paid with that entry as its
//! receipt. A step repeated after a crash, or by another instance, finds the entry and
//! changes nothing; then it marks the session, which only a due session accepts.

use std::{collections::HashSet, sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    Caller, Service,
    handoff::page_query,
    ingest::Sighting,
    reservations::{delete, parse_page_token, put},
    write::{Decision, Source, Target},
};
use crate::{
    audit::{self, Who},
    domain::{
        Applied, CarPark, CarParkId, CarParkState, DriverId, Error, GateNote, LedgerEntry,
        OpenSession, OperatorId, ParkingSession, PaymentMethod, Plate, PlateColor, PlateLink,
        Prepaid, RegionId, Report, ReportOutcome, ReservationState, Result, SessionId,
        SessionState, Settlement, Timestamp, Viewer, Wallet, accounts_region,
    },
    gateway::{self, Callback, ChargeRequest, Gateway, Outcome, Retry},
    history::{ClosedSession, History, KeptEntry, Record},
    metrics,
    store::{AnyWrite, Change, Parts, Versioned, Write, carpark::LIVE},
};

/// How often a session or account change is decided again after another instance
/// changed one of its records first (see `reservations::ATTEMPTS`).
const ATTEMPTS: usize = 64;

/// Ledger entries `GetWallet` shows.
const WALLET_ENTRIES_SHOWN: usize = 50;

/// How sessions are paid, and how long their plates are kept.
#[derive(Debug, Clone)]
pub struct Payments {
    /// The currency of new wallets (ISO 4217).
    pub currency: String,
    /// How far below zero a charge may take a wallet, in minor units.
    pub overdraft_minor: i64,
    /// A closed session's plate is forgotten this long after its exit.
    pub session_retention: Duration,
    /// The external payment gateway, if any: plates may be linked with GATEWAY only
    /// then.
    pub gateway: Option<Arc<Gateway>>,
    /// A gateway attempt that failed in a way worth retrying is made again after this,
    /// doubled each time (at most 5 minutes).
    pub retry_base: Duration,
    /// Attempts made before a charge the gateway never answered is given up (arrears).
    pub max_attempts: u32,
    /// How long a charge the gateway said was pending waits for its callback before
    /// the gateway is asked again.
    pub pending_recheck: Duration,
}

impl Default for Payments {
    fn default() -> Self {
        Self {
            currency: "CNY".to_owned(),
            overdraft_minor: 0,
            session_retention: Duration::from_secs(90 * 24 * 3600),
            gateway: None,
            retry_base: Duration::from_secs(1),
            max_attempts: 8,
            pending_recheck: Duration::from_secs(60),
        }
    }
}

/// `now + d`, saturating.
fn later(now: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// What the payment sweep was told: sessions closed with a charge to make.
#[derive(Default)]
pub(super) struct PaymentsDue(Notify);

/// A driver's wallet as they see it.
#[derive(Debug, Clone)]
pub struct WalletView {
    pub wallet: Wallet,
    pub overdraft_minor: i64,
    /// Newest first.
    pub entries: Vec<LedgerEntry>,
    pub arrears_minor: i64,
}

/// A gate's records: the plate's open-session key, the session the report names, the
/// session the key points at.
type Gate = (
    Versioned<OpenSession>,
    Versioned<ParkingSession>,
    Option<Versioned<ParkingSession>>,
);

/// What a gate report's session is decided with, fixed before its group is: the
/// plate's link, what its driver owes, the reservation that prepaid the stay.
struct AtGate<'a> {
    car_park: &'a CarPark,
    sighting: &'a Sighting,
    /// The session the report names (`<car park>~<sequence>`).
    own: SessionId,
    /// The plate's open-session key at the car park.
    key: String,
    payer: Option<(DriverId, PaymentMethod)>,
    driver: Option<DriverId>,
    arrears: (i64, String),
    prepaid: Option<Prepaid>,
}

/// A gate's session writes, the note for the report's ack and the outcome counted.
type GateWrites = (Vec<AnyWrite>, (GateNote, Option<&'static str>));

impl AtGate<'_> {
    /// An entry: opens the session named by the report; a session the plate still has
    /// open here is voided (its exit was never read).
    fn enter(&self, (open, new, prior): Gate) -> Result<GateWrites> {
        let read = &self.sighting.read;
        let (arrears_minor, arrears_currency) = self.arrears.clone();
        let note = GateNote {
            session: Some(self.own.clone()),
            arrears_minor,
            arrears_currency,
        };
        if new.record.is_some() {
            // This entry opened it already (a report decided again).
            return Ok((Vec::new(), (note, None)));
        }
        let mut writes: Vec<AnyWrite> = Vec::new();
        let mut outcome = "opened";
        if let Some(prior) = prior
            && let Some(mut session) = prior.record
            && session.state == SessionState::Open
        {
            session.void(read.at, "the plate entered again before an exit was read")?;
            writes.push(put(session.id.to_string(), session, prior.version));
            outcome = "voided_previous";
        }
        let mut session = ParkingSession::enter(
            self.own.clone(),
            self.car_park,
            read.clone(),
            self.prepaid.clone(),
            note.arrears_minor > 0,
        );
        session.driver = self.driver.clone();
        writes.push(put(self.own.to_string(), session, new.version));
        let open_now = OpenSession {
            region: self.car_park.region.clone(),
            id: self.key.clone(),
            session: self.own.clone(),
        };
        writes.push(put(self.key.clone(), open_now, open.version));
        Ok((writes, (note, Some(outcome))))
    }

    /// An exit: closes the session the plate is in here, priced and, for a linked
    /// plate, to be charged; with none open, records an exit without entry (named by
    /// the report).
    fn leave(&self, (open, unmatched_now, entered): Gate) -> Result<GateWrites> {
        let read = &self.sighting.read;
        let note = |id: &SessionId| GateNote {
            session: Some(id.clone()),
            ..GateNote::default()
        };
        if let Some(entered) = entered
            && let Some(mut session) = entered.record
            && session.state == SessionState::Open
        {
            session.exit(read.at, self.payer.clone())?;
            let outcome = match (session.state, session.payment.method) {
                (SessionState::ClosedFree, _) => "closed_free",
                (_, PaymentMethod::Barrier) => "closed_at_barrier",
                _ => "closed_to_charge",
            };
            let note = note(&session.id);
            let region = &self.car_park.region;
            let writes = vec![
                put(session.id.to_string(), session, entered.version),
                delete::<OpenSession>(region, self.key.clone(), open.version).into(),
            ];
            return Ok((writes, (note, Some(outcome))));
        }
        if unmatched_now.record.is_some() {
            return Ok((Vec::new(), (note(&self.own), None)));
        }
        let session =
            ParkingSession::exit_without_entry(self.own.clone(), self.car_park, read.clone());
        let writes = vec![put(self.own.to_string(), session, unmatched_now.version)];
        Ok((writes, (note(&self.own), Some("exit_without_entry"))))
    }
}

/// What a charge came to: the receipt (the ledger entry's id) or the refusal.
type Charged = std::result::Result<String, String>;

impl Service {
    /// Applies a gate report — an entry or exit with a plate — together with the
    /// session it opens or closes, as one group: the car park's counts and sequence and
    /// the session (and the plate's open-session key) are written all or none, so a
    /// crash or a lost store never leaves a report applied without its session, nor a
    /// session without its report. A session the rules refuse (an exit read before its
    /// entry) leaves the report standing alone, counted and logged. `None` if the car
    /// park is not in this instance's engine: the caller applies the report alone.
    pub(super) async fn gate_report(
        &self,
        caller: &OperatorId,
        report: &Report,
        sighting: &Sighting,
    ) -> Option<Result<Applied>> {
        let car_park = self.get_car_park(&sighting.car_park).ok()?.0;
        let turn = self.session_turns.of(&car_park.id);
        let _turn = turn.lock().await;
        let now = self.now();
        // A reservation the plate checks in to comes first: the session it opens may
        // be prepaid by it. Only for a report that applies (a resent one does not),
        // and tried only for a plate with a reservation here (most have none), so a
        // gate report is not decided twice for nothing.
        let reserved = !self
            .engine
            .reservations_for_plate(&car_park.id, &sighting.read.plate)
            .is_empty();
        let current = Versioned::<CarParkState>::in_replica(&self.engine, car_park.id.as_str());
        let applies = reserved
            && current.record.as_ref().is_some_and(|record| {
                let (results, _) = record.apply_reports([(report, caller)], now);
                matches!(
                    results.first(),
                    Some(Ok(Applied {
                        outcome: ReportOutcome::Applied { .. },
                        ..
                    }))
                )
            });
        if applies {
            self.plates_seen(vec![sighting.clone()]).await;
        }
        let read = &sighting.read;
        let link = self.engine.plate_link(&read.plate);
        let at_gate = AtGate {
            car_park: &car_park,
            sighting,
            own: SessionId::of_report(&car_park.id, sighting.sequence),
            key: OpenSession::id_of(&car_park.id, &read.plate),
            payer: link.as_ref().map(|l| (l.driver.clone(), l.method)),
            driver: link.as_ref().map(|l| l.driver.clone()),
            arrears: match &link {
                Some(link) if sighting.entry => self.arrears(&link.driver),
                _ => (0, String::new()),
            },
            prepaid: sighting
                .entry
                .then(|| self.prepaid_window(&car_park.id, &read.plate, read.at))
                .flatten(),
        };
        let at_gate = &at_gate;
        let region = &car_park.region;
        let decided = self
            .transact_group(
                ATTEMPTS,
                "ingest",
                |source| async move {
                    let id = at_gate.car_park.id.as_str();
                    let car_park = self.read_record::<CarParkState>(region, id, source).await?;
                    let (key, own, exit) = (&at_gate.key, &at_gate.own, !sighting.entry);
                    let gate = self.read_gate(region, key, own, source, exit).await?;
                    Ok((car_park, gate))
                },
                |(current, gate): (Versioned<CarParkState>, Gate)| {
                    let Some(record) = &current.record else {
                        return Err(Error::car_park_not_found(&at_gate.car_park.id));
                    };
                    let (mut results, mut steps) = record.apply_reports([(report, caller)], now);
                    let mut applied = results.pop().expect("one report, one result")?;
                    let mut writes: Vec<AnyWrite> = Vec::new();
                    if let Some(last) = steps.pop() {
                        let write = Write {
                            region: region.clone(),
                            id: at_gate.car_park.id.to_string(),
                            expected: current.version,
                            floor: 0,
                            change: Change::Put {
                                record: last,
                                parts: Parts::only(LIVE),
                                steps,
                            },
                        };
                        writes.push(write.into());
                    }
                    if !matches!(applied.outcome, ReportOutcome::Applied { .. }) {
                        return Ok((writes, (applied, Ok(None))));
                    }
                    let session = match sighting.entry {
                        true => at_gate.enter(gate),
                        false => at_gate.leave(gate),
                    };
                    let outcome = session.map(|(session_writes, (note, outcome))| {
                        writes.extend(session_writes);
                        applied.gate = Some(note);
                        outcome
                    });
                    Ok((writes, (applied, outcome)))
                },
            )
            .await;
        let (applied, outcome) = match decided {
            Ok(decided) => decided,
            Err(error) => return Some(Err(error)),
        };
        match outcome {
            Ok(Some(outcome)) => {
                metrics::record_session(outcome);
                if let Some(id) = applied.gate.as_ref().and_then(|n| n.session.as_ref()) {
                    audit::gate(outcome, id.as_str());
                }
                if outcome == "closed_to_charge" {
                    self.payments_due.0.notify_one();
                }
            }
            Ok(None) => {}
            Err(error) => {
                metrics::record_session("failed");
                tracing::warn!(car_park = %car_park.id, %error, "a plate read at the gate did not reach its session");
            }
        }
        Some(Ok(applied))
    }

    /// What a plate at a gate is decided on: the key of the session it is in at the
    /// car park, the session the report itself names (`own`), and the session the key
    /// points at, if any. An exit (`confirm_absent`) that finds no key in the replica
    /// asks the authority: an exit without entry writes nothing the entry wrote, so no
    /// compare-and-set would catch an entry made through another instance that this
    /// replica has not seen yet.
    async fn read_gate(
        &self,
        region: &RegionId,
        key: &str,
        own: &SessionId,
        mut source: Source,
        confirm_absent: bool,
    ) -> Result<Gate> {
        let mut open = self.read_record::<OpenSession>(region, key, source).await?;
        if confirm_absent && open.record.is_none() && source == Source::Replica {
            source = Source::Authority;
            open = self.read_record::<OpenSession>(region, key, source).await?;
        }
        let own = self
            .read_record::<ParkingSession>(region, own.as_str(), source)
            .await?;
        let pointed = match &open.record {
            Some(o) => Some(
                self.read_record::<ParkingSession>(region, o.session.as_str(), source)
                    .await?,
            ),
            None => None,
        };
        Ok((open, own, pointed))
    }

    /// What `driver`'s sessions in arrears owe (live, or moved to history and owed by
    /// their `Arrear`), and in which currency.
    fn arrears(&self, driver: &DriverId) -> (i64, String) {
        let owed = self.engine.arrears_of(driver);
        let total = owed.iter().map(|a| a.fee_minor).sum();
        let currency = owed
            .first()
            .map_or_else(String::new, |a| a.currency.clone());
        (total, currency)
    }

    /// The window of the reservation `plate` checked in to at `car_park` that covers
    /// `at`: the stay it prepaid.
    fn prepaid_window(
        &self,
        car_park: &CarParkId,
        plate: &Plate,
        at: Timestamp,
    ) -> Option<Prepaid> {
        self.engine
            .reservations_for_plate(car_park, plate)
            .into_iter()
            .filter(|r| r.state == ReservationState::CheckedIn && r.end > at)
            .max_by_key(|r| r.start)
            .map(|r| Prepaid {
                id: r.id.to_string(),
                start: r.start,
                end: r.end,
            })
    }

    /// Every `every`, and at once when a session closes with a charge to make, until
    /// `stop`: charges the sessions due, and forgets the plates of sessions past their
    /// retention. With several instances each may try; the compare-and-set and the
    /// ledger entry named by the session let exactly one charge each.
    pub async fn sweep_sessions(&self, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                () = self.payments_due.0.notified() => {}
            }
            for id in self.engine.sessions_due() {
                self.charge(&id).await;
            }
            self.pseudonymise(self.now()).await;
            metrics::record_session_states(&self.engine.session_counts());
        }
    }

    /// Charges session `id` if it is due and no attempt holds it.
    async fn charge(&self, id: &SessionId) {
        let Some((session, _)) = self.engine.session(id) else {
            return;
        };
        let now = self.now();
        if !session.may_attempt(now) {
            return;
        }
        if session.payment.method == PaymentMethod::Gateway {
            match self.payments.gateway.clone() {
                Some(gateway) => self.charge_gateway(&session, &gateway, now).await,
                None => {
                    let why = "no payment gateway is configured any more";
                    let _ = self.change_session(id, |s| s.charge_failed(why)).await;
                    metrics::record_payment("gateway", "declined");
                }
            }
            return;
        }
        let charged = self.charge_wallet(&session).await;
        let method = "wallet";
        let charged = match charged {
            Ok(charged) => charged,
            Err(error) => {
                // The store could not say: the next sweep tries again.
                metrics::record_payment(method, "error");
                tracing::warn!(session = %id, %error, "a charge could not be made yet");
                return;
            }
        };
        let result = self
            .change_session(id, |s| {
                s.start_attempt(now, now)?;
                match &charged {
                    Ok(receipt) => s.paid(receipt),
                    Err(why) => s.charge_failed(why),
                }
            })
            .await;
        audit::write(Who::Service, "charge", id.as_str(), &result);
        match result {
            Ok(true) => {
                let outcome = if charged.is_ok() {
                    "succeeded"
                } else {
                    "declined"
                };
                metrics::record_payment(method, outcome);
            }
            Ok(false) => {}
            Err(error) => {
                metrics::record_payment(method, "error");
                tracing::warn!(session = %id, %error, "a charge was made but its session not marked yet");
            }
        }
    }

    /// Asks the gateway to charge `session`: first takes the session for the attempt
    /// (a compare-and-set, so one instance calls at a time), then records what the
    /// gateway answered. The gateway charges a session once, whatever the attempts: the
    /// idempotency key is the session's id.
    async fn charge_gateway(&self, session: &ParkingSession, gateway: &Gateway, now: Timestamp) {
        let id = &session.id;
        // Held for the call and the retry delay, so the answer is recorded before
        // another instance may start an attempt.
        let lease = later(now, gateway.timeout() + self.payments.retry_base);
        match self
            .change_session(id, |s| s.start_attempt(now, lease))
            .await
        {
            Ok(true) => {}
            // Another instance holds it, or it was paid meanwhile.
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(session = %id, %error, "a gateway charge could not start yet");
                return;
            }
        }
        let (Some(driver), Some(attempt)) =
            (&session.driver, session.payment.attempts.checked_add(1))
        else {
            return;
        };
        let request = ChargeRequest {
            session_id: id.to_string(),
            driver_id: driver.to_string(),
            operator_id: session.operator.to_string(),
            car_park_id: id.car_park().to_string(),
            amount_minor: session.fee_minor,
            currency: session.tariff.currency.clone(),
            attempt,
            sent_at: now.to_string(),
        };
        let outcome = gateway.charge(&request).await;
        let now = self.now();
        let (max, base) = (self.payments.max_attempts, self.payments.retry_base);
        let result = self
            .change_session(id, |s| match &outcome {
                Ok(Outcome::Succeeded(receipt)) => s.paid(receipt),
                Ok(Outcome::Declined(why)) => s.charge_failed(why),
                Ok(Outcome::Pending) => s.retry_later(
                    "the gateway is processing the charge",
                    later(now, self.payments.pending_recheck),
                ),
                Err(Retry(why)) if s.payment.attempts >= max => {
                    s.charge_failed(&format!("{why}; gave up after {max} attempts"))
                }
                Err(Retry(why)) => {
                    let doublings = s.payment.attempts.saturating_sub(1).min(16);
                    let delay = (base * 2u32.pow(doublings)).min(Duration::from_secs(300));
                    s.retry_later(why, later(now, delay))
                }
            })
            .await;
        audit::write(Who::Service, "charge", id.as_str(), &result);
        let label = match &outcome {
            Ok(Outcome::Succeeded(_)) => "succeeded",
            Ok(Outcome::Declined(_)) => "declined",
            Ok(Outcome::Pending) => "pending",
            Err(_) => "retry",
        };
        metrics::record_payment("gateway", label);
        if let Err(error) = result {
            tracing::warn!(session = %id, %error, "a gateway's answer was not recorded yet; the charge will be asked again");
        }
    }

    /// The gateway's signed callback about a pending charge: records the charge as
    /// paid or declined. A callback repeated, or about a session settled already,
    /// changes nothing and is answered as done.
    pub async fn payment_callback(&self, body: &[u8], signature: Option<&str>) -> Result<()> {
        let Some(client) = &self.payments.gateway else {
            return Err(Error::NotFound {
                kind: "payment gateway",
                id: "callback".into(),
            });
        };
        if !signature.is_some_and(|s| client.verify(body, s)) {
            return Err(Error::Unauthenticated(
                "the callback's signature does not verify".into(),
            ));
        }
        let callback: Callback = serde_json::from_slice(body)
            .map_err(|e| Error::invalid("body", format!("not a callback: {e}")))?;
        let id = SessionId::parse(&callback.session_id).map_err(|e| e.in_field("session_id"))?;
        let (session, _) = self.engine.session(&id).ok_or_else(|| Error::NotFound {
            kind: "session",
            id: id.to_string(),
        })?;
        if session.payment.method != PaymentMethod::Gateway {
            return Err(Error::FailedPrecondition(format!(
                "session {id} is not paid through the gateway"
            )));
        }
        let result = match callback.status.as_str() {
            "succeeded" if !callback.receipt_id.is_empty() => {
                self.change_session(&id, |s| s.paid(&callback.receipt_id))
                    .await
            }
            "declined" => {
                let why = gateway::reason_or(callback.reason.clone(), "declined by the gateway");
                self.change_session(&id, |s| s.charge_failed(&why)).await
            }
            _ => {
                return Err(Error::invalid(
                    "status",
                    "must be succeeded (with a receipt_id) or declined",
                ));
            }
        };
        audit::write(Who::Service, "payment_callback", id.as_str(), &result);
        if let Ok(true) = result {
            let label = if callback.status == "succeeded" {
                "succeeded"
            } else {
                "declined"
            };
            metrics::record_payment("gateway", label);
        }
        result.map(|_| ())
    }

    /// Posts `session`'s charge to its driver's wallet, once: the receipt (the entry's
    /// id), also when an earlier attempt posted it already, or why it was refused.
    async fn charge_wallet(&self, session: &ParkingSession) -> Result<Charged> {
        let driver = session
            .driver
            .clone()
            .ok_or_else(|| Error::Internal(format!("session {} has no driver", session.id)))?;
        let region = accounts_region(driver.as_str());
        let entry_id = Wallet::charge_id(&session.id);
        let (region, ids) = (&region, &[driver.to_string(), entry_id.clone()]);
        let now = self.now();
        self.transact_group(
            ATTEMPTS,
            "payment",
            |source| async move {
                let wallet = self.read_record::<Wallet>(region, &ids[0], source).await?;
                let entry = self
                    .read_record::<LedgerEntry>(region, &ids[1], source)
                    .await?;
                Ok((wallet, entry))
            },
            |(wallet, entry): (Versioned<Wallet>, Versioned<LedgerEntry>)| {
                if let Some(entry) = entry.record {
                    return Ok((Vec::new(), Ok(entry.id)));
                }
                let current = wallet
                    .record
                    .clone()
                    .unwrap_or_else(|| Wallet::new(driver.clone(), &self.payments.currency));
                match current.charge(
                    &session.id,
                    &session.operator,
                    session.fee_minor,
                    &session.tariff.currency,
                    self.payments.overdraft_minor,
                    now,
                ) {
                    Err(refused) => Ok((Vec::new(), Err(refused.to_string()))),
                    Ok((next, posted)) => {
                        let receipt = posted.id.clone();
                        let writes = vec![
                            put(driver.to_string(), next, wallet.version),
                            put(posted.id.clone(), posted, entry.version),
                        ];
                        Ok((writes, Ok(receipt)))
                    }
                }
            },
        )
        .await
    }

    /// Moves session `id` on by `change` (which may refuse), read from the replica and,
    /// after a conflict, from the authority; whether it changed it. A session that is
    /// gone changes nothing.
    async fn change_session(
        &self,
        id: &SessionId,
        change: impl Fn(&mut ParkingSession) -> Result<()>,
    ) -> Result<bool> {
        let target = Target {
            id: id.to_string(),
            current: Versioned::in_replica(&self.engine, id.as_str()),
        };
        let mut done = self
            .transact(
                "session",
                vec![target],
                0,
                |_, current: &Versioned<ParkingSession>| {
                    let Some(mut session) = current.record.clone() else {
                        return Ok(Decision::answer(false));
                    };
                    match change(&mut session) {
                        Ok(()) => Ok(Decision {
                            change: Some(Change::put(session, crate::store::Parts::ALL)),
                            output: true,
                        }),
                        // Another instance moved it on first: nothing left to do.
                        Err(Error::FailedPrecondition(_)) => Ok(Decision::answer(false)),
                        Err(error) => Err(error),
                    }
                },
            )
            .await;
        done.pop().expect("one target").map(|(changed, _)| changed)
    }

    /// Forgets the plates of sessions that closed before the retention period.
    async fn pseudonymise(&self, now: Timestamp) {
        let Ok(retention) = jiff::SignedDuration::try_from(self.payments.session_retention) else {
            return;
        };
        let Ok(cutoff) = now.checked_sub(retention) else {
            return;
        };
        for id in self.engine.sessions_to_pseudonymise(cutoff) {
            let result = self
                .change_session(&id, |s| {
                    if s.pseudonymise(cutoff) {
                        Ok(())
                    } else {
                        Err(Error::FailedPrecondition("nothing to forget".into()))
                    }
                })
                .await;
            if let Err(error) = result {
                tracing::warn!(session = %id, %error, "a session's plate was not forgotten yet");
            }
        }
    }

    /// `driver` links `plate`, paid by `method`.
    pub async fn link_plate(
        &self,
        driver: &DriverId,
        plate: Plate,
        color: PlateColor,
        method: PaymentMethod,
    ) -> Result<PlateLink> {
        if method == PaymentMethod::Gateway && self.payments.gateway.is_none() {
            return Err(Error::FailedPrecondition(
                "this server has no payment gateway: link the plate with WALLET".into(),
            ));
        }
        let region = accounts_region(plate.as_str());
        let others = self
            .engine
            .plates_of(driver)
            .iter()
            .filter(|l| l.plate != plate)
            .count();
        let now = self.now();
        let (region, ids) = (&region, &[plate.as_str().to_owned()]);
        let result = self
            .transact_group(
                ATTEMPTS,
                "account",
                |source| async move {
                    self.read_record::<PlateLink>(region, &ids[0], source).await
                },
                |current: Versioned<PlateLink>| {
                    let link = PlateLink::link(
                        current.record.as_ref(),
                        others,
                        plate.clone(),
                        color,
                        driver,
                        method,
                        now,
                    )?;
                    if current.record.as_ref() == Some(&link) {
                        return Ok((Vec::new(), link));
                    }
                    let write = put(
                        link.plate.as_str().to_owned(),
                        link.clone(),
                        current.version,
                    );
                    Ok((vec![write], link))
                },
            )
            .await;
        audit::write(Who::Driver(driver), "link_plate", &plate.masked(), &result);
        result
    }

    /// `driver` unlinks `plate`: its entries are no longer theirs from now on.
    pub async fn unlink_plate(&self, driver: &DriverId, plate: &Plate) -> Result<()> {
        let region = accounts_region(plate.as_str());
        let (region, ids) = (&region, &[plate.as_str().to_owned()]);
        let result = self
            .transact_group(
                ATTEMPTS,
                "account",
                |source| async move {
                    self.read_record::<PlateLink>(region, &ids[0], source).await
                },
                |current: Versioned<PlateLink>| {
                    let Some(link) = &current.record else {
                        return Err(Error::NotFound {
                            kind: "linked plate",
                            id: plate.masked(),
                        });
                    };
                    link.check_unlink(driver)?;
                    let write = delete::<PlateLink>(region, ids[0].clone(), current.version);
                    Ok((vec![write.into()], ()))
                },
            )
            .await;
        audit::write(
            Who::Driver(driver),
            "unlink_plate",
            &plate.masked(),
            &result,
        );
        result
    }

    /// The plates `driver` linked, oldest link first.
    pub fn my_plates(&self, driver: &DriverId) -> Vec<PlateLink> {
        self.engine.plates_of(driver)
    }

    /// One session, for its driver or its car park's operator, live or in history.
    pub async fn get_session(&self, caller: &Caller, id: &SessionId) -> Result<ParkingSession> {
        let not_found = || Error::NotFound {
            kind: "session",
            id: id.to_string(),
        };
        let session = match self.engine.session(id) {
            Some((session, _)) => (*session).clone(),
            None => {
                self.kept::<ClosedSession>(id.as_str())
                    .await?
                    .ok_or_else(not_found)?
                    .session
            }
        };
        let visible = match caller {
            Caller::Driver(d) => session.driver.as_ref() == Some(d),
            Caller::Operator(o) => &session.operator == o,
        };
        if visible {
            Ok(session)
        } else {
            Err(not_found())
        }
    }

    /// The sessions charged to `driver`, live and in history, newest first, a page at
    /// a time.
    pub async fn my_sessions(
        &self,
        driver: &DriverId,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<(Vec<ParkingSession>, Option<String>)> {
        let after = parse_token(page_token)?;
        let live = self.engine.sessions_of_driver(driver);
        let query = page_query(page_size, after).with(&["driver"], driver.as_str());
        self.merged_page(live, session_key, query, |k: ClosedSession| k.session)
            .await
    }

    /// The sessions at `operator`'s car parks (or one of them), in a state and a window
    /// of time, live and in history, newest first, a page at a time.
    pub async fn list_sessions(
        &self,
        operator: &OperatorId,
        filter: SessionFilter,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<(Vec<ParkingSession>, Option<String>)> {
        let after = parse_token(page_token)?;
        let ids: Vec<CarParkId> = match &filter.car_park {
            Some(id) => {
                let (car_park, _) = self.get_car_park(id)?;
                if &car_park.operator != operator {
                    // Another operator's car park is not the caller's to read about.
                    return Err(Error::car_park_not_found(id));
                }
                vec![id.clone()]
            }
            None => self
                .car_parks_of(operator)
                .into_iter()
                .map(|c| c.id.clone())
                .collect(),
        };
        let mut live = self.engine.sessions_at(&ids);
        live.retain(|s| {
            let at = ClosedSession::listed_at(s);
            filter.state.is_none_or(|st| s.state == st)
                && filter.from.is_none_or(|from| at >= from)
                && filter.to.is_none_or(|to| at < to)
        });
        // History keeps the operator each session was run by.
        let mut query = page_query(page_size, after).with(&["operator"], operator.as_str());
        if let Some(id) = &filter.car_park {
            query = query.with(&["car_park"], id.as_str());
        }
        if let Some(state) = filter.state {
            query = query.with(&["state"], state.as_str());
        }
        query.from = filter.from;
        query.to = filter.to;
        self.merged_page(live, session_key, query, |k: ClosedSession| k.session)
            .await
    }

    /// The settlement of `operator`'s local `day`: as kept when the day closed, or
    /// else history's sessions of the day as one SQL aggregate, plus the live sessions
    /// of the day that history does not hold yet (a session being handed off is
    /// counted once). `operator` asks for the day of `of` (its own when `None`): an
    /// operator settles only its own car parks.
    pub async fn settlement(
        &self,
        operator: &OperatorId,
        of: Option<&str>,
        day: jiff::civil::Date,
    ) -> Result<Settlement> {
        if of.is_some_and(|of| of != operator.as_str()) {
            return Err(Error::PermissionDenied(
                "an operator may settle only its own car parks".into(),
            ));
        }
        Ok(self.settle(operator, day, true).await?.0)
    }

    /// The settlement of `operator`'s local `day` (the one kept, if `kept` and it was),
    /// and whether nothing of the day is live any more (no session that left on it,
    /// no refund posted on it), so it can no longer change.
    pub(super) async fn settle(
        &self,
        operator: &OperatorId,
        day: jiff::civil::Date,
        kept: bool,
    ) -> Result<(Settlement, bool)> {
        let car_parks = self.car_parks_of(operator);
        let ids: Vec<CarParkId> = car_parks.iter().map(|c| c.id.clone()).collect();
        let now = self.now();
        // The live sessions of the day, read before history (see `merged_page`).
        let live: Vec<ClosedSession> = self
            .engine
            .sessions_at(&ids)
            .into_iter()
            .map(|s| self.closed_session(s, now))
            .filter(|k| k.exit_day == Some(day))
            .collect();
        // Refunds count in the zone of the operator's car parks (one city, one zone);
        // an operator without car parks has nothing to settle.
        let zone = car_parks
            .first()
            .map_or(jiff::tz::TimeZone::UTC, |c| c.time_zone.zone().clone());
        let live_refunds = self.engine.refunds_of(operator);
        let (from, to) = day_bounds(day, &zone)?;
        let done = live.is_empty() && !live_refunds.iter().any(|e| e.at >= from && e.at < to);
        let Some(history) = &self.history else {
            let zoned: Vec<(&ParkingSession, &jiff::tz::TimeZone)> =
                live.iter().map(|k| (&k.session, &zone)).collect();
            let settled = Settlement::of_day(day, zoned, live_refunds.iter().map(|e| (e, &zone)))?;
            return Ok((settled, false));
        };
        if done && kept {
            let settled = history
                .settled(operator, day)
                .await
                .inspect_err(|_| metrics::record_history_error("read"))?;
            if let Some(settled) = settled {
                return Ok((settled, true));
            }
        }
        // Only sessions finished for the hot window can be in history already.
        let closed: Vec<String> = live
            .iter()
            .filter(|k| k.session.state.is_closed())
            .map(|k| k.session.id.to_string())
            .collect();
        let entries: Vec<String> = live_refunds.iter().map(|e| e.id.clone()).collect();
        let kept = history
            .day(operator, day, (from, to), &closed, &entries)
            .await
            .inspect_err(|_| metrics::record_history_error("read"))?;
        let both: HashSet<&str> = kept.sessions_held.iter().map(String::as_str).collect();
        let kept_entries: HashSet<&str> = kept.entries_held.iter().map(String::as_str).collect();
        let only_live = live
            .iter()
            .filter(|k| !both.contains(k.session.id.as_str()))
            .map(|k| (&k.session, &zone));
        let live_refunds = live_refunds
            .iter()
            .filter(|e| !kept_entries.contains(e.id.as_str()))
            .map(|e| (e, &zone));
        let mut settlement = Settlement::of_day(day, only_live, live_refunds)?;
        for sum in kept.sessions {
            settlement.add(
                &sum.currency,
                &sum.state,
                &sum.payment_method,
                &sum.payment_status,
                sum.sessions,
                sum.fee_minor,
            )?;
        }
        for (currency, amount) in kept.refunds {
            settlement.add_refunds(&currency, amount)?;
        }
        Ok((settlement, done))
    }

    /// The sessions at `operator`'s car parks that left on local `day` (the ones its
    /// settlement counts), live and in history, by exit time: for the accountant's
    /// CSV.
    pub async fn sessions_of_day(
        &self,
        operator: &OperatorId,
        day: jiff::civil::Date,
    ) -> Result<Vec<ParkingSession>> {
        /// Sessions read from history per query.
        const PAGE: usize = 1_000;
        let ids: Vec<CarParkId> = self
            .car_parks_of(operator)
            .iter()
            .map(|c| c.id.clone())
            .collect();
        let now = self.now();
        // Live first, then history (see `merged_page`).
        let mut sessions: Vec<ParkingSession> = self
            .engine
            .sessions_at(&ids)
            .into_iter()
            .map(|s| self.closed_session(s, now))
            .filter(|k| k.exit_day == Some(day))
            .map(|k| k.session)
            .collect();
        if let Some(history) = &self.history {
            let live: HashSet<SessionId> = sessions.iter().map(|s| s.id.clone()).collect();
            let mut after = None;
            loop {
                let query = page_query(PAGE, after.take())
                    .with(&["operator"], operator.as_str())
                    .with(&["exit_day"], day.to_string());
                let page: Vec<ClosedSession> = history
                    .list(&query)
                    .await
                    .inspect_err(|_| metrics::record_history_error("read"))?;
                let full = page.len() == PAGE;
                if let Some(last) = page.last() {
                    after = Some((ClosedSession::listed_at(&last.session), last.id()));
                }
                sessions.extend(
                    page.into_iter()
                        .map(|k| k.session)
                        .filter(|s| !live.contains(&s.id)),
                );
                if !full {
                    break;
                }
            }
        }
        sessions.sort_by(|a, b| (a.exit_time, &a.id).cmp(&(b.exit_time, &b.id)));
        Ok(sessions)
    }

    fn car_parks_of(&self, operator: &OperatorId) -> Vec<Arc<CarPark>> {
        self.engine.list(None, Some(operator), None, usize::MAX).0
    }

    /// `driver`'s wallet (empty until its first top-up), its latest entries (live and
    /// in history) and the arrears.
    pub async fn wallet(&self, driver: &DriverId) -> Result<WalletView> {
        let wallet = self
            .engine
            .wallet(driver)
            .unwrap_or_else(|| Wallet::new(driver.clone(), &self.payments.currency));
        let live = self.engine.ledger_of(driver, WALLET_ENTRIES_SHOWN);
        let query = page_query(WALLET_ENTRIES_SHOWN, None).with(&["driver"], driver.as_str());
        let (entries, _) = self
            .merged_page(live, entry_key, query, |k: KeptEntry| k.0)
            .await?;
        Ok(WalletView {
            wallet,
            overdraft_minor: self.payments.overdraft_minor,
            entries,
            arrears_minor: self.arrears(driver).0,
        })
    }

    /// Credits `driver`'s wallet with `amount`, once per `key`: the entry and the
    /// balance after it.
    pub async fn top_up(
        &self,
        driver: &DriverId,
        amount: i64,
        key: &str,
    ) -> Result<(LedgerEntry, i64)> {
        let region = accounts_region(driver.as_str());
        let entry_id = Wallet::top_up_id(driver, key);
        let (region, ids) = (&region, &[driver.to_string(), entry_id]);
        let now = self.now();
        let result = self
            .transact_group(
                ATTEMPTS,
                "account",
                |source| async move {
                    let wallet = self.read_record::<Wallet>(region, &ids[0], source).await?;
                    let entry = self
                        .read_record::<LedgerEntry>(region, &ids[1], source)
                        .await?;
                    Ok((wallet, entry))
                },
                |(wallet, entry): (Versioned<Wallet>, Versioned<LedgerEntry>)| {
                    let current = wallet
                        .record
                        .clone()
                        .unwrap_or_else(|| Wallet::new(driver.clone(), &self.payments.currency));
                    if let Some(entry) = entry.record {
                        if entry.amount_minor != amount {
                            return Err(Error::FailedPrecondition(
                                "this idempotency_key confirmed a top-up of another amount".into(),
                            ));
                        }
                        return Ok((Vec::new(), (entry, current.balance_minor)));
                    }
                    let (next, posted) = current.top_up(key, amount, now)?;
                    let balance = next.balance_minor;
                    let writes = vec![
                        put(driver.to_string(), next, wallet.version),
                        put(posted.id.clone(), posted.clone(), entry.version),
                    ];
                    Ok((writes, (posted, balance)))
                },
            )
            .await;
        audit::write(Who::Driver(driver), "top_up", driver.as_str(), &result);
        result
    }

    /// The plate of `session` as `caller` may see it.
    pub fn plate_for(session: &ParkingSession, caller: &Caller) -> String {
        match caller {
            Caller::Driver(d) => session.plate_for(&Viewer::Driver(d)),
            Caller::Operator(o) => session.plate_for(&Viewer::Operator(o)),
        }
    }
}

/// Which of an operator's sessions to list.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub car_park: Option<CarParkId>,
    pub state: Option<SessionState>,
    /// Entered (or, without an entry, left) at or after.
    pub from: Option<Timestamp>,
    /// ... and before.
    pub to: Option<Timestamp>,
}

/// A session's place in newest-first lists.
fn session_key(s: &ParkingSession) -> (Timestamp, String) {
    (ClosedSession::listed_at(s), s.id.to_string())
}

/// A ledger entry's place in newest-first lists.
fn entry_key(e: &LedgerEntry) -> (Timestamp, String) {
    (e.at, e.id.clone())
}

/// Where a page token (`<ms>_<session id>`) says the previous page stopped.
fn parse_token(token: Option<&str>) -> Result<Option<(Timestamp, String)>> {
    token
        .map(|t| parse_page_token(t, SessionId::parse).map(|(at, id)| (at, id.to_string())))
        .transpose()
}

/// The instants local `day` starts and ends at in `zone`.
fn day_bounds(day: jiff::civil::Date, zone: &jiff::tz::TimeZone) -> Result<(Timestamp, Timestamp)> {
    let start = |d: jiff::civil::Date| {
        d.to_zoned(zone.clone())
            .map(|z| z.timestamp())
            .map_err(|e| Error::invalid("day", e.to_string()))
    };
    let next = day
        .tomorrow()
        .map_err(|e| Error::invalid("day", e.to_string()))?;
    Ok((start(day)?, start(next)?))
}
