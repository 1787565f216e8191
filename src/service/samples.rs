//! Occupancy samples: every car park's numbers per category and 5-minute bucket
//! (fewest, most and last free spaces, and the status), for history, written in
//! batches by a background writer, never on the ingest path.
//!
//! The sampler follows the engine's change feed, as a watcher does: ingest never waits
//! for it. Numbers count in the bucket they were observed in. A bucket is queued when it ends (or the car park leaves); the writer sends
//! the queue to history a batch at a time. The queue is bounded: while history is slow
//! or down, samples wait, and past the bound new ones are dropped and counted
//! (`citypark_history_samples_total{result="dropped"}`); history back, the writer
//! catches up by itself. Every instance samples what its engine sees; buckets merge
//! in history (fewest of the fewest, most of the most), so two instances writing the
//! same bucket agree.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::Service;
use crate::{
    domain::{CarParkId, CarParkStatus, Error, Result, SpaceCategory, Timestamp},
    engine::{Change, ChangeKind},
    history::{BUCKET_MS, History, Sample, Step, bucket_of, roll_up},
    metrics,
};

/// Samples per write to history.
const BATCH: usize = 1_000;
/// How often ended buckets are queued and the queue written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Most steps one GetOccupancyHistory answers: a week of 5-minute buckets.
pub const MAX_STEPS: i64 = 2_016;

impl Service {
    /// Until `stop`: samples every change the engine publishes from now on (the feed
    /// is taken here, before the task runs, so no change made after this call is
    /// missed) into its bucket and writes ended buckets to history. Without a history,
    /// returns at once. At `stop` the buckets still open are written once more, if
    /// history takes them at once.
    pub fn sample_occupancy(
        &self,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let feed = self.engine.subscribe();
        let service = self.clone();
        async move { service.sample_from(feed, stop).await }
    }

    async fn sample_from(
        &self,
        mut feed: broadcast::Receiver<Arc<Change>>,
        stop: CancellationToken,
    ) {
        let Some(history) = self.history.clone() else {
            return;
        };
        let mut open: HashMap<(CarParkId, SpaceCategory), Sample> = HashMap::new();
        let mut queue: VecDeque<Sample> = VecDeque::new();
        let bound = self.keeping.sample_queue;
        let enqueue = |queue: &mut VecDeque<Sample>, sample: Sample| {
            if queue.len() < bound {
                queue.push_back(sample);
            } else {
                metrics::record_samples("dropped", 1);
            }
        };
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                change = feed.recv() => match change {
                    Ok(change) => {
                        let ChangeKind::Updated(a) = &change.kind else {
                            // Removed: its open buckets are complete.
                            let gone: Vec<_> = open
                                .keys()
                                .filter(|(id, _)| id == &change.car_park)
                                .cloned()
                                .collect();
                            for key in gone {
                                enqueue(&mut queue, open.remove(&key).expect("listed"));
                            }
                            continue;
                        };
                        // A car park that never reported has no numbers to sample.
                        if a.status == CarParkStatus::NoData {
                            continue;
                        }
                        // Numbers count in the bucket they were observed in (a change
                        // of status alone, now).
                        let bucket = bucket_of(a.observed_at.unwrap_or_else(|| self.now()));
                        for c in &a.categories {
                            let key = (a.car_park.clone(), c.category);
                            let entry = open.get_mut(&key);
                            match entry {
                                // Older than the bucket open: late, and left out.
                                Some(s) if s.bucket > bucket => {}
                                Some(s) if s.bucket == bucket => {
                                    s.min_free = s.min_free.min(c.free);
                                    s.max_free = s.max_free.max(c.free);
                                    s.last_free = c.free;
                                    s.capacity = c.capacity;
                                    s.status = a.status.name().to_owned();
                                }
                                _ => {
                                    let fresh = Sample {
                                        car_park: a.car_park.to_string(),
                                        region: a.region.to_string(),
                                        category: c.category,
                                        bucket,
                                        min_free: c.free,
                                        max_free: c.free,
                                        last_free: c.free,
                                        capacity: c.capacity,
                                        status: a.status.name().to_owned(),
                                    };
                                    if let Some(ended) = open.insert(key, fresh) {
                                        enqueue(&mut queue, ended);
                                    }
                                }
                            }
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        // Changes this sampler never saw: their numbers are missing
                        // from the buckets, which still hold the others.
                        metrics::record_samples("dropped", n);
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = tick.tick() => {
                    let current = bucket_of(self.now());
                    let ended: Vec<_> = open
                        .iter()
                        .filter(|(_, s)| s.bucket < current)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in ended {
                        enqueue(&mut queue, open.remove(&key).expect("listed"));
                    }
                    self.write_samples(&history, &mut queue).await;
                }
            }
        }
        // The open buckets as they stand: merged with the rest of their bucket if this
        // instance (or another) writes more of it later.
        queue.extend(open.into_values());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !queue.is_empty() && tokio::time::Instant::now() < deadline {
            if !self.write_samples(&history, &mut queue).await {
                break;
            }
        }
        metrics::record_sample_queue(queue.len());
    }

    /// Writes the queue to history a batch at a time; a batch history refuses stays
    /// queued for the next try. Whether the queue was written whole.
    async fn write_samples(
        &self,
        history: &crate::history::SqlHistory,
        queue: &mut VecDeque<Sample>,
    ) -> bool {
        while !queue.is_empty() {
            let batch: Vec<Sample> = queue.iter().take(BATCH).cloned().collect();
            let started = std::time::Instant::now();
            match history.put_samples(&batch).await {
                Ok(()) => {
                    metrics::record_history_write("sample", started.elapsed().as_secs_f64());
                    metrics::record_samples("written", batch.len() as u64);
                    queue.drain(..batch.len());
                }
                Err(error) => {
                    metrics::record_history_error("samples");
                    metrics::record_history_up(false);
                    tracing::warn!(%error, queued = queue.len(), "occupancy samples wait for history");
                    metrics::record_sample_queue(queue.len());
                    return false;
                }
            }
        }
        metrics::record_sample_queue(0);
        true
    }

    /// `car_park`'s occupancy of `category` over [from, to) in steps of `step`, from
    /// history.
    pub async fn occupancy_history(
        &self,
        car_park: &CarParkId,
        category: SpaceCategory,
        from: Timestamp,
        to: Option<Timestamp>,
        step: Duration,
    ) -> Result<Vec<Step>> {
        let to = to.unwrap_or_else(|| self.now());
        if from >= to {
            return Err(Error::invalid("from", "must be before to"));
        }
        let step_ms = i64::try_from(step.as_millis()).unwrap_or(i64::MAX);
        let step_ms = if step_ms == 0 { BUCKET_MS } else { step_ms };
        if step_ms % BUCKET_MS != 0 || step_ms > 24 * 3600 * 1000 {
            return Err(Error::invalid(
                "step",
                "must be a multiple of 5 minutes, up to a day",
            ));
        }
        let span = to.as_millisecond() - from.as_millisecond();
        if (span + step_ms - 1) / step_ms > MAX_STEPS {
            return Err(Error::invalid(
                "to",
                format!("the window holds more than {MAX_STEPS} steps: shorten it or widen step"),
            ));
        }
        // The car park must exist (now); its history is public, like its availability.
        self.get_car_park(car_park)?;
        let Some(history) = &self.history else {
            return Ok(Vec::new());
        };
        let start = Timestamp::from_millisecond(
            from.as_millisecond() - from.as_millisecond().rem_euclid(step_ms),
        )
        .map_err(|_| Error::invalid("from", "out of range"))?;
        let samples = history
            .samples(car_park.as_str(), category, start, to)
            .await
            .inspect_err(|_| metrics::record_history_error("read"))?;
        Ok(roll_up(&samples, from, to, step_ms))
    }
}
