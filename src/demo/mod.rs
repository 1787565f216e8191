//! The demo city: a generated Qingdao-scale set of car parks and simulated operators.
//!
//! [`generate_city`] builds a deterministic city from a seed; [`run_operators`] plays its
//! operator companies, registering the car parks and streaming occupancy through the
//! public gRPC API exactly as a real integration would, so the demo exercises the same
//! paths (auth, sequencing, duplicates, reconnects) that production traffic does.
//!
//! `geo` holds the map (districts, hotspots, shores), `city` turns it into car parks,
//! `simulation` is the occupancy they report and `operator` the clients that report it.

mod city;
mod geo;
mod operator;
mod simulation;

pub use city::{DEMO_REGION, DEMO_TIME_ZONE, DemoOperator, demo_operators, generate_city};
pub use operator::{DemoError, run_operators};
pub use simulation::occupancy_fraction;
