//! Any text as a stored record of one of the replicated kinds: the first byte picks
//! the kind, the rest is its parts, one per line, decoded and put into an engine as a
//! Redis store does (`citypark::store::fuzzing`). A panic, or a record accepted that
//! reads back otherwise once written, fails the run.

#![no_main]

use citypark::store::fuzzing::stored_record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = stored_record(data) {
        panic!("{broken}");
    }
});
