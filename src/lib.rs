//! citypark: every car park of a city as one virtual car park, served over gRPC.
//!
//! See ARCHITECTURE.md for the code map and the invariants between modules.

pub mod app;
pub mod audit;
pub mod auth;
pub mod backtest;
pub mod clock;
pub mod config;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod gateway;
pub mod grpc;
pub mod history;
pub mod http;
pub mod import;
pub mod map;
pub mod memory;
pub mod metrics;
pub mod mqtt;
pub mod net;
pub mod open_data;
pub mod openapi;
pub mod pb;
pub mod rng;
pub mod service;
pub mod store;
pub mod streams;
pub mod telemetry;
pub mod tls;
pub mod tokens;
