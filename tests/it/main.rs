//! citypark's end-to-end tests: one binary, real servers on loopback, real clients.

mod auth;
mod bad_input;
mod binary;
mod connections;
mod demo;
mod grpc_web;
mod ingest;
mod nearby;
mod nearby_property;
mod rate_limits;
mod redis_formats;
mod redis_harness;
mod redis_instances;
mod redis_support;
mod registry;
mod reservations;
mod shared;
mod shutdown;
mod smoke;
mod standard_services;
mod status_time;
mod store_conformance;
mod store_health;
mod support;
mod tls;
mod watch;
