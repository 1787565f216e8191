//! Any bytes as a request to a method of Sessions: the first byte picks the method, the
//! rest is its message, sent through the server's own stack on a fresh fixture city
//! (`citypark::grpc::fuzzing`). A panic, a status no client request may earn, or an
//! INVALID_ARGUMENT naming no field of the request fails the run.

#![no_main]

use std::sync::LazyLock;

use citypark::grpc::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;

static HARNESS: LazyLock<Harness> = LazyLock::new(Harness::new);

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = HARNESS.fuzz("Sessions", data) {
        panic!("{broken}");
    }
});
