//! citypark's end-to-end tests: one binary, real servers on loopback, real clients.

mod smoke;
mod support;
