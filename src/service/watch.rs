//! Watches: the current state of a selection, then its changes, resynced when behind.

use std::collections::{BTreeSet, HashSet};

use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_util::sync::CancellationToken;

use super::Service;
use crate::{
    domain::{Availability, BoundingBox, CarParkId, Error, Result},
    engine::{Change, ChangeKind},
    metrics,
    streams::Full,
};

/// Which car parks a watcher follows.
#[derive(Debug, Clone)]
pub enum WatchSelector {
    Ids(Vec<CarParkId>),
    /// Every car park inside, including ones registered later.
    Area(BoundingBox),
}

/// One event for a watcher.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    Update(Availability),
    SnapshotComplete(u32),
    /// The watcher fell behind and missed this many changes; a snapshot follows.
    Resync(u64),
    Removed(CarParkId),
}

enum Filter {
    Ids(HashSet<CarParkId>),
    Area(BoundingBox),
}

impl Filter {
    /// What this watcher is told of a change, if anything. An area watcher is told
    /// that a car park which moved out of its area is gone from it.
    fn event(&self, change: &Change) -> Option<WatchEvent> {
        let update = || match &change.kind {
            ChangeKind::Updated(a) => WatchEvent::Update(a.clone()),
            ChangeKind::Removed => WatchEvent::Removed(change.car_park.clone()),
        };
        match self {
            Filter::Ids(ids) => ids.contains(&change.car_park).then(update),
            Filter::Area(area) if area.contains(change.location) => Some(update()),
            Filter::Area(area) => change
                .moved_from
                .filter(|from| area.contains(*from))
                .map(|_| WatchEvent::Removed(change.car_park.clone())),
        }
    }
}

impl Service {
    /// Starts a watch and returns its events. The watch runs in a task of its own that
    /// ends when the receiver is dropped or `shutdown` fires. Ingest never waits for a
    /// watcher: changes reach it through a bounded broadcast, and a watcher that falls
    /// more than the broadcast's capacity behind is resynced instead.
    pub fn watch(
        &self,
        selector: WatchSelector,
        client: String,
        shutdown: CancellationToken,
    ) -> Result<mpsc::Receiver<WatchEvent>> {
        // A slot for the stream's whole life, so no client can hold the memory of
        // thousands of watchers.
        let slot = self.watchers.take(client).map_err(|full| match full {
            Full::Server(max) => Error::ResourceExhausted(format!(
                "this server has {max} watch streams open, its most (--max-watchers); retry later"
            )),
            Full::Client(max) => Error::ResourceExhausted(format!(
                "this client has {max} watch streams open, the most one client may \
                 (--max-watchers-per-client); close one, or watch an area or a list of ids \
                 in one stream"
            )),
        })?;
        // Subscribe before the first snapshot, so no change can fall between the two.
        let mut changes = self.engine.subscribe();
        let first = self.snapshot(&selector, true)?;
        let (tx, rx) = mpsc::channel(self.limits.watch_buffer);
        let filter = match &selector {
            WatchSelector::Ids(ids) => Filter::Ids(ids.iter().cloned().collect()),
            WatchSelector::Area(area) => Filter::Area(*area),
        };
        let service = self.clone();
        self.spawn(async move {
            let _slot = slot;
            let _gauge = metrics::Held::watcher();
            if send_snapshot(&tx, first).await.is_err() {
                return;
            }
            loop {
                let received = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    r = changes.recv() => r,
                };
                let event = match received {
                    Ok(change) => match filter.event(&change) {
                        Some(event) => event,
                        None => continue,
                    },
                    Err(RecvError::Lagged(missed)) => {
                        metrics::record_resync();
                        if tx.send(WatchEvent::Resync(missed)).await.is_err() {
                            return;
                        }
                        // The snapshot covers every change still queued for this
                        // receiver; replaying those after it would take the watcher
                        // back in time, so go on from the newest change instead.
                        changes = changes.resubscribe();
                        // The watch was checked when it started: now it gets what
                        // there is (a deleted id is left out, a grown area sent whole).
                        let fresh = service.snapshot(&selector, false).unwrap_or_default();
                        if send_snapshot(&tx, fresh).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// The current state of a selection, in id order. When a watch starts (`first`)
    /// its ids must be 1 to `max_ids` registered car parks and its area must hold at
    /// most `max_watch_car_parks`; a resync later sends what there is.
    fn snapshot(&self, selector: &WatchSelector, first: bool) -> Result<Vec<Availability>> {
        let now = self.now();
        match selector {
            WatchSelector::Ids(ids) => {
                let max = self.limits.max_ids;
                if first && (ids.is_empty() || ids.len() > max) {
                    return Err(Error::invalid(
                        "ids.ids",
                        format!("must list 1 to {max} ids"),
                    ));
                }
                let mut states = Vec::with_capacity(ids.len());
                for id in ids.iter().collect::<BTreeSet<_>>() {
                    match self.engine.availability(id.as_str(), now) {
                        Some(state) => states.push(state),
                        None if first => return Err(Error::car_park_not_found(id)),
                        None => {}
                    }
                }
                Ok(states)
            }
            WatchSelector::Area(area) => {
                let max = if first {
                    self.limits.max_watch_car_parks
                } else {
                    usize::MAX
                };
                self.engine.in_area(area, max, now)
            }
        }
    }
}

/// Sends a snapshot and its end marker; Err if the watcher is gone.
async fn send_snapshot(tx: &mpsc::Sender<WatchEvent>, states: Vec<Availability>) -> Result<(), ()> {
    let n = states.len() as u32;
    for state in states {
        tx.send(WatchEvent::Update(state)).await.map_err(drop)?;
    }
    tx.send(WatchEvent::SnapshotComplete(n)).await.map_err(drop)
}
