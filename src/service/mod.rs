//! Use cases over one engine and one store: who may do what, and where reads and
//! writes go. Writes go to the store (the authority) through one path (`write.rs`),
//! reads to the engine (never a round trip).
//!
//! One file per use case: `registry` (car parks), `ingest` (occupancy reports),
//! `availability` (queries and the status sweep), `watch` (watch streams),
//! `reservations` (the reservation ledger, arrivals by plate, the no-show sweep),
//! `shared` (shared parking: offers, search, bookings), `sessions` (parking sessions
//! by plate, wallets and the charges of closed sessions), `forecasts` (availability
//! forecasts and their restore from history).

mod availability;
mod forecasts;
mod handoff;
mod ingest;
mod registry;
mod reservations;
mod samples;
mod sessions;
mod shared;
mod watch;
mod write;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use forecasts::{ForecastAnswer, MAX_FORECAST_TIMES};
pub use handoff::{HistorySettings, Retention};
pub use ingest::Queued;
pub use reservations::Caller;
pub use samples::MAX_STEPS;
pub use sessions::{Payments, SessionFilter, WalletView};
pub use shared::OfferFound;
pub use watch::{WatchEvent, WatchSelector};

use crate::{
    domain::Timestamp,
    engine::Engine,
    history::SqlHistory,
    store::{AnyStore, Store},
};

/// Limits that protect the service from one client.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most ids in one GetAvailability or watch.
    pub max_ids: usize,
    /// Most reports in one Publish message.
    pub max_batch: usize,
    /// Most car parks a watched area may hold.
    pub max_watch_car_parks: usize,
    /// Events buffered for one watcher before it is considered behind.
    pub watch_buffer: usize,
    /// Most car parks on one ListCarParks page.
    pub max_page_size: usize,
    /// Most RESERVED reservations one driver may hold at once.
    pub max_active_reservations_per_driver: usize,
    /// Most watch streams open at once, in all.
    pub max_watchers: usize,
    /// Most watch streams one client holds at once (an operator, a driver, or for
    /// anonymous watchers their address).
    pub max_watchers_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_ids: 1_000,
            max_batch: 1_000,
            max_watch_car_parks: 10_000,
            watch_buffer: 256,
            max_page_size: 1_000,
            max_watchers: 10_000,
            max_watchers_per_client: 100,
            max_active_reservations_per_driver: 3,
        }
    }
}

/// The use cases of citypark.
#[derive(Clone)]
pub struct Service {
    engine: Arc<Engine>,
    store: Arc<AnyStore>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    /// Tasks that serve one call (watch and publish streams), and the ingest task, so
    /// shutdown can wait for them.
    tasks: TaskTracker,
    /// Where report calls queue for the ingest task (`ingest.rs`), on a store whose
    /// writes cost a round trip; `None` on the embedded store, where each call decides
    /// in its own task.
    ingest: Option<mpsc::Sender<ingest::Job>>,
    /// Stops the ingest task once calls have drained.
    stop: CancellationToken,
    /// Whose turn it is to change each car park's reservations on this instance.
    ledger_turns: Arc<reservations::LedgerTurns>,
    /// Whose turn it is to change each shared offer and its bookings on this instance.
    offer_turns: Arc<shared::OfferTurns>,
    /// Watch streams open, in all and per client.
    watchers: crate::streams::Places,
    /// Whose turn it is to open and close sessions at each car park on this instance.
    session_turns: Arc<reservations::LedgerTurns>,
    /// Wakes the payment sweep when a session closes with a charge to make.
    payments_due: Arc<sessions::PaymentsDue>,
    payments: Arc<Payments>,
    /// The history of record; without one (a library embedding), finished records
    /// stay live.
    history: Option<Arc<SqlHistory>>,
    keeping: Arc<HistorySettings>,
}

impl Service {
    /// A service over `engine` and `store`; starts its ingest task (on the current
    /// runtime) if the store batches writes.
    pub fn new(
        engine: Arc<Engine>,
        store: Arc<AnyStore>,
        clock: Arc<dyn Clock>,
        limits: Limits,
    ) -> Self {
        let (ingest, jobs) = match store.batches_writes() {
            true => {
                let (ingest, jobs) = mpsc::channel(1_024);
                (Some(ingest), Some(jobs))
            }
            false => (None, None),
        };
        let watchers =
            crate::streams::Places::new(limits.max_watchers, limits.max_watchers_per_client);
        let service = Self {
            engine,
            store,
            clock,
            limits,
            tasks: TaskTracker::new(),
            ingest,
            stop: CancellationToken::new(),
            ledger_turns: Arc::default(),
            offer_turns: Arc::default(),
            watchers,
            session_turns: Arc::default(),
            payments_due: Arc::default(),
            payments: Arc::default(),
            history: None,
            keeping: Arc::default(),
        };
        if let Some(jobs) = jobs {
            ingest::spawn(&service, jobs, service.stop.clone());
        }
        service
    }

    /// Runs a task that serves one call (a stream); [`Self::wait_tasks`] waits for it.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Stops the ingest task (reports still queued fail UNAVAILABLE) and waits until
    /// every task has ended (call tasks end when their shutdown token fires or their
    /// client goes away). Called once calls have drained.
    pub async fn wait_tasks(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The service's idea of now.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The service with `payments` as its payment settings.
    pub fn with_payments(mut self, payments: Payments) -> Self {
        self.payments = Arc::new(payments);
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}
