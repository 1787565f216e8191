//! citypark: every car park of a city as one virtual car park, served over gRPC.
//!
//! See ARCHITECTURE.md for the code map and the invariants between modules.

pub mod demo;
pub mod domain;
pub mod pb;
