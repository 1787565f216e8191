//! The demo city: a generated Qingdao-scale set of car parks and simulated operators.
//!
//! [`Demo`] is the one entry point: it builds a deterministic city from a seed, hands
//! the server its operators' keys, and [`Demo::start`] plays those operator companies,
//! registering the car parks and streaming occupancy through the public gRPC API
//! exactly as a real integration would, so the demo exercises the same paths (auth,
//! sequencing, duplicates, reconnects) that production traffic does.
//!
//! `geo` holds the map (districts, hotspots, shores), `city` turns it into car parks,
//! `simulation` is the occupancy they report and `operator` the clients that report it.

mod city;
mod geo;
mod operator;
mod sharing;
mod simulation;

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::ApiKeys;
use crate::domain::OperatorId;
use crate::pb;

pub use city::{DEMO_REGION, DEMO_TIME_ZONE, DemoOperator, demo_operators, generate_city};
pub use operator::{DemoError, driver_comes};
pub use sharing::generate_offers;
pub use simulation::occupancy_fraction;

/// The demo: its generated city and its operators, not yet running.
///
/// The server has to know the operators' keys before it starts, and the operators
/// can only start once the server listens, hence two steps: [`Demo::add_keys`], then
/// [`Demo::start`].
#[derive(Debug, Clone)]
pub struct Demo {
    city: Vec<pb::CarPark>,
    operators: Vec<DemoOperator>,
    interval: Duration,
}

impl Demo {
    /// The city for `seed`; once started, every car park reports about once per
    /// `interval`.
    pub fn new(seed: u64, interval: Duration) -> Self {
        Self {
            city: generate_city(seed),
            operators: demo_operators(),
            interval,
        }
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
            interval,
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
            if let Err(error) =
                operator::run_operators(endpoint, city, operators, interval, stop).await
            {
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
