//! Any bytes as up to eight calls, to any methods, on one fresh fixture city, so a
//! request meets what earlier ones made (`citypark::grpc::fuzzing`,
//! `Harness::fuzz_calls`). A panic, a status no client request may earn, or an
//! INVALID_ARGUMENT naming no field of the request fails the run.

#![no_main]

use std::sync::LazyLock;

use citypark::grpc::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;

static HARNESS: LazyLock<Harness> = LazyLock::new(Harness::new);

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = HARNESS.fuzz_calls(data) {
        panic!("{broken}");
    }
});
