//! citypark's end-to-end tests: one binary, real servers on loopback, real clients.

mod auth;
mod bad_input;
mod binary;
mod demo;
mod grpc_web;
mod ingest;
mod nearby;
mod nearby_property;
mod redis_harness;
mod redis_instances;
mod redis_support;
mod registry;
mod smoke;
mod standard_services;
mod status_time;
mod store_conformance;
mod support;
mod watch;
