//! Shared offers and bookings in memory: offers by id and host, in an R-tree of their
//! own (searched nearest first, like car parks); bookings by id, offer, driver and
//! host, the BOOKED ones by no-show time.
//!
//! Locking: one `RwLock` for all of it, never held while taking another engine lock.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use rstar::{AABB, PointDistance, RTree, RTreeObject};

use super::{
    Engine,
    replica::{Held, finished_by, keyed_replica, unindex},
};
use crate::domain::{
    BookingId, BookingState, DriverId, LatLng, OfferId, SharedBooking, SharedOffer, Timestamp,
};

/// An offer in the tree.
#[derive(Debug, Clone, PartialEq)]
struct OfferPoint {
    xyz: [f64; 3],
    id: OfferId,
}

impl RTreeObject for OfferPoint {
    type Envelope = AABB<[f64; 3]>;

    fn envelope(&self) -> Self::Envelope {
        AABB::from_point(self.xyz)
    }
}

impl PointDistance for OfferPoint {
    fn distance_2(&self, p: &[f64; 3]) -> f64 {
        let [x, y, z] = self.xyz;
        (x - p[0]).powi(2) + (y - p[1]).powi(2) + (z - p[2]).powi(2)
    }
}

/// Every offer and booking this engine holds.
#[derive(Default)]
pub(super) struct Sharing {
    offers: HashMap<OfferId, Held<SharedOffer>>,
    tree: RTree<OfferPoint>,
    offers_by_host: HashMap<DriverId, HashSet<OfferId>>,
    bookings: HashMap<BookingId, Held<SharedBooking>>,
    by_offer: HashMap<OfferId, HashSet<BookingId>>,
    /// A booking's driver and its offer's host both find it here.
    by_party: HashMap<DriverId, HashSet<BookingId>>,
    due: BTreeSet<(Timestamp, BookingId)>,
    /// Finished ones by when they finished (for the hand-off to history).
    finished: BTreeSet<(Timestamp, BookingId)>,
}

impl Sharing {
    fn set_offer(&mut self, id: OfferId, record: Option<Arc<SharedOffer>>, version: u64) {
        if let Some(old) = self.offers.get(&id).and_then(|h| h.record.clone()) {
            self.tree.remove(&OfferPoint {
                xyz: old.location.unit_vector(),
                id: id.clone(),
            });
            unindex(&mut self.offers_by_host, &old.host, &id);
        }
        if let Some(new) = &record {
            self.tree.insert(OfferPoint {
                xyz: new.location.unit_vector(),
                id: id.clone(),
            });
            self.offers_by_host
                .entry(new.host.clone())
                .or_default()
                .insert(id.clone());
        }
        self.offers.insert(id, Held { record, version });
    }

    fn set_booking(&mut self, id: BookingId, record: Option<Arc<SharedBooking>>, version: u64) {
        if let Some(old) = self.bookings.get(&id).and_then(|h| h.record.clone()) {
            unindex(&mut self.by_offer, &old.offer, &id);
            unindex(&mut self.by_party, &old.driver, &id);
            unindex(&mut self.by_party, &old.host, &id);
            self.due.remove(&(old.no_show_at, id.clone()));
            if let Some(at) = old.finished_at() {
                self.finished.remove(&(at, id.clone()));
            }
        }
        if let Some(new) = &record {
            self.by_offer
                .entry(new.offer.clone())
                .or_default()
                .insert(id.clone());
            for party in [&new.driver, &new.host] {
                self.by_party
                    .entry(party.clone())
                    .or_default()
                    .insert(id.clone());
            }
            if new.state == BookingState::Booked {
                self.due.insert((new.no_show_at, id.clone()));
            }
            if let Some(at) = new.finished_at() {
                self.finished.insert((at, id.clone()));
            }
        }
        self.bookings.insert(id, Held { record, version });
    }

    fn booking(&self, id: &BookingId) -> Option<Arc<SharedBooking>> {
        self.bookings.get(id)?.record.clone()
    }

    fn copies<'a>(&self, ids: impl IntoIterator<Item = &'a BookingId>) -> Vec<SharedBooking> {
        ids.into_iter()
            .filter_map(|id| self.booking(id))
            .map(|b| (*b).clone())
            .collect()
    }
}

impl Engine {
    /// An offer and its version.
    pub fn offer(&self, id: &OfferId) -> Option<(Arc<SharedOffer>, u64)> {
        let sharing = self.sharing.read();
        let held = sharing.offers.get(id)?;
        Some((held.record.clone()?, held.version))
    }

    /// A host's offers.
    pub fn offers_of(&self, host: &DriverId) -> Vec<Arc<SharedOffer>> {
        let sharing = self.sharing.read();
        let Some(ids) = sharing.offers_by_host.get(host) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| sharing.offers.get(id)?.record.clone())
            .collect()
    }

    /// Offers within `radius_chord` (a chord of the unit sphere) of `center`, nearest
    /// first, that `keep` accepts (with what it found out), at most `limit`; with their
    /// chord distances.
    pub fn offers_near<T>(
        &self,
        center: LatLng,
        radius_chord: f64,
        limit: usize,
        keep: impl Fn(&SharedOffer) -> Option<T>,
    ) -> Vec<(Arc<SharedOffer>, f64, T)> {
        let sharing = self.sharing.read();
        let max_d2 = radius_chord.powi(2);
        let mut found = Vec::new();
        for (point, d2) in sharing
            .tree
            .nearest_neighbor_iter_with_distance_2(&center.unit_vector())
        {
            if d2 > max_d2 || found.len() >= limit {
                break;
            }
            if let Some(offer) = sharing.offers.get(&point.id).and_then(|h| h.record.clone())
                && let Some(kept) = keep(&offer)
            {
                found.push((offer, d2.sqrt(), kept));
            }
        }
        found
    }

    /// A booking and its version.
    pub fn booking(&self, id: &BookingId) -> Option<(Arc<SharedBooking>, u64)> {
        let sharing = self.sharing.read();
        let held = sharing.bookings.get(id)?;
        Some((held.record.clone()?, held.version))
    }

    /// The bookings of an offer.
    pub fn bookings_of_offer(&self, offer: &OfferId) -> Vec<SharedBooking> {
        let sharing = self.sharing.read();
        sharing
            .by_offer
            .get(offer)
            .map_or_else(Vec::new, |ids| sharing.copies(ids))
    }

    /// The bookings a driver made, and those of the offers they host.
    pub fn bookings_of_party(&self, who: &DriverId) -> Vec<SharedBooking> {
        let sharing = self.sharing.read();
        sharing
            .by_party
            .get(who)
            .map_or_else(Vec::new, |ids| sharing.copies(ids))
    }

    /// BOOKED bookings past their no-show time.
    pub fn bookings_overdue(&self, now: Timestamp) -> Vec<BookingId> {
        let sharing = self.sharing.read();
        sharing
            .due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Up to `limit` bookings that finished by `cutoff`, oldest first, with their
    /// versions: what the hand-off moves to history.
    pub fn bookings_finished_by(
        &self,
        cutoff: Timestamp,
        limit: usize,
    ) -> Vec<(Arc<SharedBooking>, u64)> {
        let sharing = self.sharing.read();
        finished_by(&sharing.finished, cutoff, true)
            .take(limit)
            .filter_map(|id| {
                let held = sharing.bookings.get(id)?;
                Some((held.record.clone()?, held.version))
            })
            .collect()
    }

    /// How many bookings finished by `cutoff` are still live.
    pub fn bookings_finished_count(&self, cutoff: Timestamp) -> usize {
        finished_by(&self.sharing.read().finished, cutoff, true).count()
    }

    /// Offers and bookings per state (for the metrics).
    pub fn sharing_counts(&self) -> (usize, usize, [usize; 5]) {
        let sharing = self.sharing.read();
        let (mut active, mut withdrawn) = (0, 0);
        for offer in sharing.offers.values().filter_map(|h| h.record.as_ref()) {
            match offer.state {
                crate::domain::OfferState::Active => active += 1,
                crate::domain::OfferState::Withdrawn => withdrawn += 1,
            }
        }
        let mut bookings = [0; 5];
        for b in sharing.bookings.values().filter_map(|h| h.record.as_ref()) {
            let i = BookingState::ALL
                .iter()
                .position(|s| *s == b.state)
                .expect("every state is listed");
            bookings[i] += 1;
        }
        (active, withdrawn, bookings)
    }
}

keyed_replica!(SharedOffer, OfferId, id, sharing, offers, set_offer, |id| {
    OfferId::parse(id).ok()
});
keyed_replica!(
    SharedBooking,
    BookingId,
    id,
    sharing,
    bookings,
    set_booking,
    |id| BookingId::parse(id).ok()
);
