//! The demo city: a generated Qingdao-scale set of car parks and simulated operators.
//!
//! [`Demo`] is the one entry point: it builds a deterministic city from a seed, hands
//! the server its operators' keys, and [`Demo::start`] plays those operator companies,
//! registering the car parks and streaming occupancy through the public gRPC API
//! exactly as a real integration would, so the demo exercises the same paths (auth,
//! sequencing, duplicates, reconnects) that production traffic does. Beside them it
//! plays hosts offering shared spaces and drivers whose linked plates the operators'
//! gates read, so sessions open, close and are paid as they would be.
//!
//! `geo` holds the map (districts, hotspots, shores), `city` turns it into car parks,
//! `simulation` is the occupancy they report (and the plates their gates read),
//! `operator` the clients that report it, `sharing` the hosts of shared spaces and
//! `drivers` the drivers who pay for parking by plate.

mod city;
mod drivers;
mod geo;
mod operator;
mod sharing;
mod simulation;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::ApiKeys;
use crate::clock::{Clock, SystemClock};
use crate::domain::OperatorId;
use crate::pb;

pub use city::{DEMO_REGION, DEMO_TIME_ZONE, DemoOperator, demo_operators, generate_city};
pub use drivers::{DEMO_DRIVERS, DemoDriver, demo_drivers};
pub use operator::{DemoError, driver_comes};
pub use sharing::generate_offers;
pub use simulation::occupancy_fraction;

/// The demo: its generated city and its operators, not yet running.
///
/// The server has to know the operators' keys before it starts, and the operators
/// can only start once the server listens, hence two steps: [`Demo::add_keys`], then
/// [`Demo::start`].
#[derive(Clone)]
pub struct Demo {
    city: Vec<pb::CarPark>,
    operators: Vec<DemoOperator>,
    drivers: Vec<DemoDriver>,
    interval: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("car_parks", &self.city.len())
            .field("operators", &self.operators.len())
            .field("drivers", &self.drivers.len())
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Demo {
    /// The city and its drivers for `seed`; once started, every car park reports
    /// about once per `interval`, observed at the system clock's time.
    pub fn new(seed: u64, interval: Duration) -> Self {
        Self {
            city: generate_city(seed),
            operators: demo_operators(),
            drivers: demo_drivers(seed),
            interval,
            clock: Arc::new(SystemClock),
        }
    }

    /// The same demo observing the time on `clock`, which must be the server's: a
    /// report is refused when observed too far ahead of the server's clock, and a test
    /// that moves a hand clock on makes the demo's cars stay that much longer.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self { clock, ..self }
    }

    /// The drivers who link plates and pay by plate (their ids are the `sub` of demo
    /// tokens).
    pub fn drivers(&self) -> &[DemoDriver] {
        &self.drivers
    }

    /// Adds the demo operators' well-known keys (`demo-key-<operator>`), so the server
    /// accepts their writes.
    pub fn add_keys(&self, keys: &mut ApiKeys) {
        for operator in &self.operators {
            keys.insert_plain(
                OperatorId::parse(&operator.id).expect("demo operator ids are valid"),
                &operator.api_key,
            );
        }
    }

    /// Starts the operators against the server at `endpoint` (`http://host:port`) on
    /// the current tokio runtime. They keep going until [`DemoHandle::stop`].
    pub fn start(self, endpoint: String) -> DemoHandle {
        let Self {
            city,
            operators,
            drivers,
            interval,
            clock,
        } = self;
        let spaces: u64 = city
            .iter()
            .flat_map(|c| &c.capacity)
            .map(|c| c.spaces as u64)
            .sum();
        tracing::info!(
            car_parks = city.len(),
            spaces,
            "demo city generated; simulated operators start"
        );
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            // Logged here rather than by `stop`: a refused registration ends the demo at
            // startup, and the log should say so then, not at shutdown.
            let demo = operator::Plan {
                city,
                operators,
                drivers,
                interval,
                clock,
            };
            if let Err(error) = operator::run_operators(endpoint, demo, stop).await {
                tracing::error!(%error, "demo operators stopped");
            }
        });
        DemoHandle {
            cancel,
            task: Some(task),
        }
    }
}

/// The running demo. [`DemoHandle::stop`] ends it; dropping it only asks the tasks to
/// stop, without waiting for them.
#[derive(Debug)]
#[must_use = "a demo that is never stopped outlives the server it talks to"]
pub struct DemoHandle {
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl DemoHandle {
    /// A token that stops the operators when cancelled, for a shutdown future that must
    /// stop them before the server drains but cannot own the handle. It does not wait:
    /// [`DemoHandle::stop`] still has to be awaited.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops every operator and waits until every task the demo spawned has ended
    /// (each drains the acknowledgements of what it sent, for at most 2 s).
    pub async fn stop(mut self) {
        self.cancel.cancel();
        let Some(task) = self.task.take() else { return };
        if let Err(error) = task.await
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
    }
}

impl Drop for DemoHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
