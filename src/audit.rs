//! The audit trail: every write (and every bulk export of personal data), as one
//! structured event on the tracing target
//! `citypark::audit`: who (`operator:<id>`, `driver:<id>`, or `citypark` for what the
//! service does by itself: no-shows, arrivals by plate), which action, on which record,
//! and how it ended (`ok` or the error's kind). Never a key, a token or a plate.
//!
//! Route it with the log filter: `--log info` includes it; occupancy reports, which
//! come by the thousand a second, are at DEBUG (`--log info,citypark::audit=debug`
//! adds them), and `citypark::audit=off` drops the trail.

use std::fmt;

use crate::{
    domain::{DriverId, OperatorId, Result},
    service::Caller,
};

/// Who made a write.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    Operator(&'a OperatorId),
    Driver(&'a DriverId),
    /// The service itself (the sweeper, arrivals by plate).
    Service,
}

impl<'a> From<&'a Caller> for Who<'a> {
    fn from(caller: &'a Caller) -> Self {
        match caller {
            Caller::Driver(d) => Who::Driver(d),
            Caller::Operator(o) => Who::Operator(o),
        }
    }
}

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Operator(id) => write!(f, "operator:{id}"),
            Who::Driver(id) => write!(f, "driver:{id}"),
            Who::Service => f.write_str("citypark"),
        }
    }
}

fn outcome<T>(result: &Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.kind().label(),
    }
}

/// One write by `who`: `action` on record `on`, ending as `result`.
pub fn write<T>(who: Who<'_>, action: &'static str, on: &str, result: &Result<T>) {
    tracing::info!(target: "citypark::audit", who = %who, action, on, result = outcome(result), "write");
}

/// A session a plate at a gate opened or closed (DEBUG: there is one per plated
/// report; the charges that follow are at INFO).
pub fn gate(action: &'static str, on: &str) {
    tracing::debug!(target: "citypark::audit", who = %Who::Service, action, on, result = "ok", "write");
}

/// A bulk read of personal data (an operator's day of sessions, plates included):
/// who, what and which.
pub fn export(who: Who<'_>, action: &'static str, on: &str) {
    tracing::info!(target: "citypark::audit", who = %who, action, on, result = "ok", "export");
}

/// One occupancy report (DEBUG: they are many).
pub fn report<T>(who: Who<'_>, on: &str, sequence: u64, result: &Result<T>) {
    tracing::debug!(target: "citypark::audit", who = %who, action = "report", on, sequence, result = outcome(result), "write");
}
