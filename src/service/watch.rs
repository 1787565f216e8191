//! Watches: the current state of a selection, then its changes, resynced when behind.

use std::collections::HashSet;

use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_util::sync::CancellationToken;

use super::Service;
use crate::{
    domain::{Availability, BoundingBox, CarParkId, Result},
    engine::{Change, ChangeKind},
    metrics,
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
        shutdown: CancellationToken,
    ) -> Result<mpsc::Receiver<WatchEvent>> {
        self.check_watch(&selector)?;
        let (tx, rx) = mpsc::channel(self.limits.watch_buffer);
        // Subscribe before the first snapshot, so no change can fall between the two.
        let mut changes = self.engine.subscribe();
        let filter = match &selector {
            WatchSelector::Ids(ids) => Filter::Ids(ids.iter().cloned().collect()),
            WatchSelector::Area(area) => Filter::Area(*area),
        };
        let service = self.clone();
        tokio::spawn(async move {
            let _gauge = metrics::WatcherGauge::new();
            if service.send_snapshot(&selector, &tx).await.is_err() {
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
                        if service.send_snapshot(&selector, &tx).await.is_err() {
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

    async fn send_snapshot(
        &self,
        selector: &WatchSelector,
        tx: &mpsc::Sender<WatchEvent>,
    ) -> Result<(), ()> {
        let now = self.now();
        let states = match selector {
            WatchSelector::Ids(ids) => {
                let unique: HashSet<_> = ids.iter().collect();
                let mut states: Vec<_> = unique
                    .into_iter()
                    .filter_map(|id| self.engine.availability(id.as_str(), now))
                    .collect();
                states.sort_by(|a, b| a.car_park.cmp(&b.car_park));
                states
            }
            // The cap was checked when the watch started; a later resync sends the
            // area as it is then, even if it has grown.
            WatchSelector::Area(area) => self
                .engine
                .in_area(area, usize::MAX, now)
                .unwrap_or_default(),
        };
        let n = states.len() as u32;
        for state in states {
            tx.send(WatchEvent::Update(state)).await.map_err(drop)?;
        }
        tx.send(WatchEvent::SnapshotComplete(n)).await.map_err(drop)
    }
}
