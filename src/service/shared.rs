//! Shared parking use cases: offer, update, withdraw, search, book, cancel, check in
//! and out, the no-show sweep and the dropping of old bookings.
//!
//! Every booking change is one group commit (`transact_group`): the booking, the
//! offer's slot counts of the days its window touches when the change takes or frees
//! them, and for a new booking the offer itself, rewritten as it stands, so that a
//! booking decided on terms the host has changed since is decided again. An owner's
//! change commits the offer with every booking it cancels and the days they free.
//! Within an instance the changes of one offer take turns.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use tokio::sync::Mutex as AsyncMutex;

use super::{Service, handoff::page_query, reservations::parse_page_token};
use crate::{
    audit::{self, Who},
    domain::{
        Booked, BookingId, BookingRequest, BookingState, DriverId, Error, LatLng, OfferChange,
        OfferId, OfferState, Party, Radius, Result, SharedBooking, SharedOffer, SlotCounts,
        Timestamp, book, booking_days, chord_to_m, ledger_of,
    },
    metrics,
    store::{Aggregate, AnyWrite, Change, Parts, Store, Versioned, Write},
};

/// How often a change of an offer's records is decided again after another instance
/// changed one of them first (see the reservations' `ATTEMPTS`).
const ATTEMPTS: usize = 64;

/// Per offer, the turn to change it and its bookings on this instance.
#[derive(Default)]
pub(super) struct OfferTurns(parking_lot::Mutex<HashMap<OfferId, Arc<AsyncMutex<()>>>>);

impl OfferTurns {
    fn of(&self, offer: &OfferId) -> Arc<AsyncMutex<()>> {
        let mut turns = self.0.lock();
        if turns.len() > 1_024 {
            turns.retain(|_, m| Arc::strong_count(m) > 1);
        }
        turns.entry(offer.clone()).or_default().clone()
    }
}

/// A write of `record` (all of it) decided on `expected`.
fn put<A: Aggregate>(id: String, record: A, expected: u64) -> AnyWrite {
    Write {
        region: record.region().clone(),
        id,
        expected,
        floor: 0,
        change: Change::put(record, Parts::ALL),
    }
    .into()
}

/// The slot-count ids of `offer`'s ledger that [start, end) touches.
fn day_ids(offer: &OfferId, start: Timestamp, end: Timestamp) -> Vec<String> {
    let ledger = ledger_of(offer);
    SlotCounts::days(start, end)
        .map(|day| SlotCounts::id_of(&ledger, day))
        .collect()
}

fn not_found_offer(id: &OfferId) -> Error {
    Error::NotFound {
        kind: "offer",
        id: id.to_string(),
    }
}

fn not_found_booking(id: &BookingId) -> Error {
    Error::NotFound {
        kind: "booking",
        id: id.to_string(),
    }
}

/// A page of `items` after `token` (the last id of the previous page), by id.
fn page<T>(
    mut items: Vec<T>,
    id: impl Fn(&T) -> String,
    size: usize,
    token: Option<&str>,
) -> (Vec<T>, Option<String>) {
    items.sort_by_key(|t| id(t));
    let mut page: Vec<T> = items
        .into_iter()
        .filter(|t| token.is_none_or(|after| id(t).as_str() > after))
        .take(size + 1)
        .collect();
    let next = (page.len() > size).then(|| {
        page.truncate(size);
        id(page.last().expect("a full page"))
    });
    (page, next)
}

/// One search result.
#[derive(Debug, Clone)]
pub struct OfferFound {
    pub offer: Arc<SharedOffer>,
    pub distance_m: f64,
    pub price_minor: i64,
    /// Spaces free for all of the window.
    pub available: u32,
}

impl Service {
    /// A host offers spaces. An id given makes a retry return the same offer.
    pub async fn offer_space(
        &self,
        host: &DriverId,
        mut offer: SharedOffer,
    ) -> Result<SharedOffer> {
        offer.host = host.clone();
        offer.state = OfferState::Active;
        offer.validate()?;
        // An offer's records live in its region, which car parks must have made known
        // (so every instance follows it).
        if self
            .engine
            .list(Some(&offer.region), None, None, 1)
            .0
            .is_empty()
        {
            return Err(Error::invalid(
                "offer.region",
                format!("{} is not a region of this city", offer.region),
            ));
        }
        let id = offer.id.clone();
        let turn = self.offer_turns.of(&id);
        let _turn = turn.lock().await;
        let result = self
            .transact_group(
                ATTEMPTS,
                "shared",
                |source| {
                    let (region, ids) = (&offer.region, [id.to_string()]);
                    async move { self.read_records::<SharedOffer>(region, &ids, source).await }
                },
                |mut current: Vec<Versioned<SharedOffer>>| {
                    let current = current.pop().expect("one id, one record");
                    match current.record {
                        Some(existing) if existing.host == *host => Ok((Vec::new(), existing)),
                        Some(_) => Err(Error::FailedPrecondition(format!(
                            "offer id {id} is taken; leave it empty for one to be made"
                        ))),
                        None => Ok((
                            vec![put(id.to_string(), offer.clone(), current.version)],
                            offer.clone(),
                        )),
                    }
                },
            )
            .await;
        if result.is_ok() {
            metrics::record_shared("offered");
        }
        result
    }

    /// The host's offer `id`, or NOT_FOUND (another host's offer is not theirs to see).
    fn own_offer(&self, host: &DriverId, id: &OfferId) -> Result<Arc<SharedOffer>> {
        match self.engine.offer(id) {
            Some((offer, _)) if offer.host == *host => Ok(offer),
            _ => Err(not_found_offer(id)),
        }
    }

    /// A host replaces its offer's terms, or withdraws it (`SharedOffer::changed` is
    /// what may change). Bookings the new terms strand are refused, or cancelled by the
    /// host with `reason` when `cancel_bookings`, in the same group as the offer, with
    /// the days they free.
    pub async fn change_offer(
        &self,
        host: &DriverId,
        id: &OfferId,
        change: OfferChange,
        cancel_bookings: bool,
        reason: &str,
    ) -> Result<(SharedOffer, Vec<BookingId>)> {
        let region = self.own_offer(host, id)?.region.clone();
        let turn = self.offer_turns.of(id);
        let _turn = turn.lock().await;
        let now = self.now();
        let result = self
            .transact_group(
                ATTEMPTS,
                "shared",
                |source| {
                    let region = &region;
                    async move {
                        let offer = self
                            .read_records::<SharedOffer>(region, &[id.to_string()], source)
                            .await?
                            .pop()
                            .expect("one id, one record");
                        // The offer's bookings are found in this replica. Every booking
                        // rewrites its offer after itself in one group, so once the
                        // replica holds the offer at the version read, it holds every
                        // booking made before it.
                        self.replica_reaches(id, offer.version).await?;
                        let open: Vec<SharedBooking> = self
                            .engine
                            .bookings_of_offer(id)
                            .into_iter()
                            .filter(|b| b.state.occupies())
                            .collect();
                        let ids: Vec<String> = open.iter().map(|b| b.id.to_string()).collect();
                        let bookings = self
                            .read_records::<SharedBooking>(region, &ids, source)
                            .await?;
                        let mut days: Vec<String> = open
                            .iter()
                            .flat_map(|b| day_ids(id, b.start, b.end))
                            .collect();
                        days.sort();
                        days.dedup();
                        let counts = self.read_records::<SlotCounts>(region, &days, source).await?;
                        Ok((offer, bookings, counts))
                    }
                },
                |(current, bookings, counts): OfferRecords| {
                    let stored = match current.record {
                        Some(o) if o.host == *host => o,
                        _ => return Err(not_found_offer(id)),
                    };
                    let offer = stored.changed(&change)?;
                    let open: Vec<SharedBooking> = bookings
                        .iter()
                        .filter_map(|v| v.record.clone())
                        .filter(|b| b.state.occupies())
                        .collect();
                    let stranded: Vec<SharedBooking> =
                        offer.stranded(&open).into_iter().cloned().collect();
                    if !stranded.is_empty() && !cancel_bookings {
                        let ids: Vec<String> = stranded.iter().map(|b| b.id.to_string()).collect();
                        return Err(Error::FailedPrecondition(format!(
                            "the change would strand {} booking(s): {}; set cancel_bookings to cancel them",
                            ids.len(),
                            ids.join(", ")
                        )));
                    }
                    let mut writes = vec![put(id.to_string(), offer.clone(), current.version)];
                    let mut days: HashMap<i64, (SlotCounts, u64)> = counts
                        .into_iter()
                        .filter_map(|v| v.record.map(|d| (d.day, (d, v.version))))
                        .collect();
                    let (mut cancelled, mut touched) = (Vec::new(), BTreeSet::new());
                    for mut b in stranded {
                        let version = bookings
                            .iter()
                            .find(|v| v.record.as_ref().is_some_and(|r| r.id == b.id))
                            .map_or(0, |v| v.version);
                        b.cancel(Party::Host, reason, now)?;
                        for day in SlotCounts::days(b.start, b.end) {
                            if let Some((d, _)) = days.get_mut(&day) {
                                d.release(b.category, b.start, b.end);
                                touched.insert(day);
                            }
                        }
                        cancelled.push(b.id.clone());
                        writes.push(put(b.id.to_string(), b, version));
                    }
                    for day in touched {
                        let (d, version) = days.remove(&day).expect("read with its bookings");
                        writes.push(put(d.id(), d, version));
                    }
                    Ok((writes, (offer, cancelled)))
                },
            )
            .await;
        if let Ok((_, cancelled)) = &result {
            for _ in cancelled {
                metrics::record_shared("host_cancelled");
            }
        }
        result
    }
}

impl Service {
    /// Waits (a few seconds at most) until this replica holds offer `id` at `version`
    /// or later; UNAVAILABLE if it does not catch up.
    async fn replica_reaches(&self, id: &OfferId, version: u64) -> Result<()> {
        use crate::engine::Replica;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while Replica::<SharedOffer>::version(&*self.engine, id.as_str()) < version {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "offer {id}'s latest bookings have not reached this instance yet; retry"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// What an owner's change is decided on: the offer, its open bookings, and the slot
/// counts of their days.
type OfferRecords = (
    Versioned<SharedOffer>,
    Vec<Versioned<SharedBooking>>,
    Vec<Versioned<SlotCounts>>,
);

/// What a booking change is decided on: the booking, and the slot counts of its days
/// while it occupies them.
type BookingRecords = (Versioned<SharedBooking>, Vec<Versioned<SlotCounts>>);

impl Service {
    /// The host's offers, by id, a page at a time.
    pub fn list_my_offers(
        &self,
        host: &DriverId,
        size: usize,
        token: Option<&str>,
    ) -> (Vec<Arc<SharedOffer>>, Option<String>) {
        page(
            self.engine.offers_of(host),
            |o| o.id.to_string(),
            size,
            token,
        )
    }

    /// ACTIVE offers of `category` within `radius` of `center` with at least
    /// `min_free` spaces for all of [start, end), nearest first, at most `limit`, each
    /// with the window's price.
    #[allow(clippy::too_many_arguments)]
    pub fn search_offers(
        &self,
        center: LatLng,
        radius: Radius,
        start: Timestamp,
        end: Timestamp,
        category: crate::domain::SpaceCategory,
        min_free: u32,
        limit: usize,
    ) -> Result<Vec<OfferFound>> {
        if end <= start {
            return Err(Error::invalid("end_time", "must be after start_time"));
        }
        let now = self.now();
        let found = self
            .engine
            .offers_near(center, radius.chord(), limit, |offer| {
                if offer.category != category || offer.check_window(start, end, now).is_err() {
                    return None;
                }
                // Read once: the filter's count is the answer's.
                let free = self.free_for(offer, start, end);
                (free >= min_free.max(1)).then_some(free)
            });
        Ok(found
            .into_iter()
            .map(|(offer, chord, available)| OfferFound {
                price_minor: offer.price(start, end),
                distance_m: chord_to_m(chord),
                available,
                offer,
            })
            .collect())
    }

    /// The shared offers a FindNearby `query` with `include_shared` admits: of its
    /// category, with its min_available free for all the quarter hours its stay (which
    /// it needs) touches, within its max_price, when its kinds allow SHARED_PRIVATE.
    pub fn nearby_offers(&self, query: &crate::domain::NearbyQuery) -> Result<Vec<OfferFound>> {
        let Some(stay) = &query.stay else {
            return Err(Error::invalid(
                "stay",
                "is required with include_shared: offers are bookable for a window",
            ));
        };
        if !query.kinds.is_empty()
            && !query
                .kinds
                .contains(&crate::domain::CarParkKind::SharedPrivate)
        {
            return Ok(Vec::new());
        }
        // Offers are booked in whole quarter hours: the quarters the stay touches.
        let quarter = 15 * 60_000;
        let (start, end) = (stay.start().as_millisecond(), stay.end().as_millisecond());
        let start = Timestamp::from_millisecond(start - start.rem_euclid(quarter))
            .expect("a stay's start is in range");
        let end = Timestamp::from_millisecond(end + (quarter - end.rem_euclid(quarter)) % quarter)
            .map_err(|_| Error::invalid("stay.end", "is out of range"))?;
        let mut found = self.search_offers(
            query.center,
            query.radius,
            start,
            end,
            query.category,
            query.min_available,
            query.limit,
        )?;
        found.retain(|f| query.max_price.is_none_or(|max| f.price_minor <= max));
        Ok(found)
    }

    /// Spaces of `offer` free for all of [start, end), as the replica shows them.
    fn free_for(&self, offer: &SharedOffer, start: Timestamp, end: Timestamp) -> u32 {
        day_ids(&offer.id, start, end)
            .iter()
            .filter_map(|id| Versioned::<SlotCounts>::in_replica(&self.engine, id).record)
            .flat_map(|d| {
                d.calendar(offer.category, offer.spaces, start, end)
                    .map(|slot| slot.remaining)
                    .collect::<Vec<_>>()
            })
            .min()
            .unwrap_or(offer.spaces)
    }

    /// A driver books a space of an offer.
    pub async fn book_offer(
        &self,
        driver: &DriverId,
        offer_id: &OfferId,
        request: BookingRequest,
    ) -> Result<SharedBooking> {
        let region = self
            .engine
            .offer(offer_id)
            .ok_or_else(|| not_found_offer(offer_id))?
            .0
            .region
            .clone();
        let id = BookingId::for_key(offer_id, driver, &request.idempotency_key);
        let days = if request.start < request.end {
            day_ids(offer_id, request.start, request.end)
        } else {
            Vec::new()
        };
        let turn = self.offer_turns.of(offer_id);
        let _turn = turn.lock().await;
        let now = self.now();
        let result = self
            .transact_group(
                ATTEMPTS,
                "shared",
                |source| {
                    let (region, days) = (&region, &days);
                    let ids = [offer_id.to_string(), id.to_string()];
                    async move {
                        let offer = self
                            .read_records::<SharedOffer>(region, &ids[..1], source)
                            .await?
                            .pop()
                            .expect("one id, one record");
                        let existing = self
                            .read_records::<SharedBooking>(region, &ids[1..], source)
                            .await?
                            .pop()
                            .expect("one id, one record");
                        let counts = self
                            .read_records::<SlotCounts>(region, days, source)
                            .await?;
                        Ok((offer, existing, counts))
                    }
                },
                |(offer, existing, counts): (
                    Versioned<SharedOffer>,
                    Versioned<SharedBooking>,
                    Vec<Versioned<SlotCounts>>,
                )| {
                    let Some(stored) = offer.record else {
                        return Err(not_found_offer(offer_id));
                    };
                    let versions: Vec<u64> = counts.iter().map(|v| v.version).collect();
                    let mut days = booking_days(
                        &stored,
                        request.start,
                        request.end,
                        counts.into_iter().map(|v| v.record).collect(),
                    );
                    if days.len() != versions.len() {
                        // A window book() refuses (an end before its start).
                        days.clear();
                    }
                    match book(
                        &stored,
                        &request,
                        driver,
                        id.clone(),
                        existing.record.as_ref(),
                        &mut days,
                        now,
                    )? {
                        Booked::Existing(b) => Ok((Vec::new(), (b, false))),
                        Booked::New(b) => {
                            // The offer rewritten as read: a host's change since is a
                            // conflict, and the booking is decided again on the new terms.
                            let mut writes = vec![
                                put(b.id.to_string(), b.clone(), existing.version),
                                put(offer_id.to_string(), stored.clone(), offer.version),
                            ];
                            for (day, version) in days.into_iter().zip(versions) {
                                writes.push(put(day.id(), day, version));
                            }
                            Ok((writes, (b, true)))
                        }
                    }
                },
            )
            .await;
        match &result {
            Ok((_, true)) => metrics::record_shared("booked"),
            Ok((_, false)) => {}
            Err(_) => metrics::record_shared("refused"),
        }
        result.map(|(b, _)| b)
    }

    /// One booking, to its driver or its offer's host, live or in history.
    pub async fn get_booking(&self, who: &DriverId, id: &BookingId) -> Result<SharedBooking> {
        let booking = match self.engine.booking(id) {
            Some((b, _)) => Some((*b).clone()),
            None => self.kept::<SharedBooking>(id.as_str()).await?,
        };
        match booking {
            Some(b) if b.party(who).is_some() => Ok(b),
            _ => Err(not_found_booking(id)),
        }
    }

    /// The caller's bookings and those of the caller's offers, live and in history,
    /// newest first (`<created ms>_<id>` page tokens).
    pub async fn list_my_bookings(
        &self,
        who: &DriverId,
        state: Option<BookingState>,
        size: usize,
        token: Option<&str>,
    ) -> Result<(Vec<SharedBooking>, Option<String>)> {
        let after = token
            .map(|t| parse_page_token(t, BookingId::parse).map(|(at, id)| (at, id.to_string())))
            .transpose()?;
        let mut live = self.engine.bookings_of_party(who);
        live.retain(|b| state.is_none_or(|s| b.state == s));
        let mut query = page_query(size, after).with(&["driver", "host"], who.as_str());
        if let Some(state) = state {
            query = query.with(&["state"], state.name());
        }
        let key = |b: &SharedBooking| (b.created_at, b.id.to_string());
        self.merged_page(live, key, query, |b: SharedBooking| b)
            .await
    }

    /// Changes booking `id` as `who` may (`None`: the service itself, for no-shows):
    /// `change` moves it on and says whether it did; a change that frees its window
    /// frees the days in the same group.
    async fn change_booking(
        &self,
        id: &BookingId,
        who: Option<&DriverId>,
        change: impl Fn(&mut SharedBooking, Option<Party>, Timestamp) -> Result<bool>,
    ) -> Result<SharedBooking> {
        let Some((known, _)) = self.engine.booking(id) else {
            return Err(not_found_booking(id));
        };
        let region = known.region.clone();
        let offer = id.offer();
        let turn = self.offer_turns.of(&offer);
        let _turn = turn.lock().await;
        let now = self.now();
        self.transact_group(
            ATTEMPTS,
            "shared",
            |source| {
                let region = &region;
                async move {
                    let current = self
                        .read_records::<SharedBooking>(region, &[id.to_string()], source)
                        .await?
                        .pop()
                        .expect("one id, one record");
                    let days = match &current.record {
                        Some(b) if b.state.occupies() => {
                            let ids = day_ids(&b.offer, b.start, b.end);
                            self.read_records::<SlotCounts>(region, &ids, source)
                                .await?
                        }
                        _ => Vec::new(),
                    };
                    Ok((current, days))
                }
            },
            |(current, days): BookingRecords| {
                let Some(mut b) = current.record else {
                    return Err(not_found_booking(id));
                };
                let party = match who {
                    Some(who) => Some(b.party(who).ok_or_else(|| not_found_booking(id))?),
                    None => None,
                };
                let before = b.state;
                if !change(&mut b, party, now)? {
                    return Ok((Vec::new(), b));
                }
                let mut writes = vec![put(b.id.to_string(), b.clone(), current.version)];
                if b.freed(before) {
                    for v in days {
                        if let Some(mut day) = v.record {
                            day.release(b.category, b.start, b.end);
                            writes.push(put(day.id(), day, v.version));
                        }
                    }
                }
                Ok((writes, b))
            },
        )
        .await
    }

    /// Its driver or its host cancels a booking.
    pub async fn cancel_booking(
        &self,
        who: &DriverId,
        id: &BookingId,
        reason: &str,
    ) -> Result<SharedBooking> {
        let b = self
            .change_booking(id, Some(who), |b, party, now| {
                b.cancel(party.expect("a party"), reason, now)
                    .map(|()| true)
            })
            .await?;
        metrics::record_shared(match b.cancelled_by {
            Some(crate::domain::CancelledBy::Host) => "host_cancelled",
            _ => "cancelled",
        });
        Ok(b)
    }

    /// The car arrived (its driver's app or the host says so).
    pub async fn check_in_booking(&self, who: &DriverId, id: &BookingId) -> Result<SharedBooking> {
        let b = self
            .change_booking(id, Some(who), |b, _, now| b.check_in(now).map(|()| true))
            .await?;
        metrics::record_shared("checked_in");
        Ok(b)
    }

    /// The car left.
    pub async fn check_out_booking(&self, who: &DriverId, id: &BookingId) -> Result<SharedBooking> {
        let b = self
            .change_booking(id, Some(who), |b, _, now| b.check_out(now).map(|()| true))
            .await?;
        metrics::record_shared("completed");
        Ok(b)
    }

    /// The shared part of the reservation sweep: overdue bookings become NO_SHOW and
    /// free their windows; bookings past their retention are dropped.
    pub(super) async fn sweep_bookings(&self, now: Timestamp) {
        for id in self.engine.bookings_overdue(now) {
            let result = self
                .change_booking(&id, None, |b, _, now| Ok(b.expire(now)))
                .await;
            if result
                .as_ref()
                .map_or(true, |b| b.state == BookingState::NoShow)
            {
                audit::write(Who::Service, "booking_no_show", id.as_str(), &result);
            }
            match result {
                Ok(b) if b.state == BookingState::NoShow => metrics::record_shared("no_show"),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(booking = %id, %error, "an overdue booking was not expired yet")
                }
            }
        }
        // With a history, the hand-off moves finished bookings there (see
        // `drop_old_records`).
        let cutoff = match self.history {
            Some(_) => Timestamp::MIN,
            None => now - super::reservations::NO_HISTORY_RETENTION,
        };
        let old: Vec<Write<SharedBooking>> = self
            .engine
            .bookings_finished_by(cutoff, usize::MAX)
            .into_iter()
            .map(|(b, v)| Write {
                region: b.region.clone(),
                id: b.id.to_string(),
                expected: v,
                floor: 0,
                change: Change::Delete,
            })
            .collect();
        if !old.is_empty()
            && let Some(error) = self
                .store
                .commit(old, "shared", now)
                .await
                .into_iter()
                .find_map(Result::err)
        {
            tracing::warn!(%error, "old bookings were not dropped yet");
        }
        metrics::record_shared_states(self.engine.sharing_counts());
    }
}
