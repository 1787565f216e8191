//! The real `citypark` binary, started as an operator would start it.

use std::time::Duration;

use crate::support::Binary;

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let child = Binary::serve(&[]);
    let lines = child.lines_until("listening", Duration::from_secs(20));
    drop(child);
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "an escape code in {line:?}");
    }
    let listening = lines.last().unwrap();
    assert!(
        listening.contains(" INFO ") && listening.contains("grpc=127.0.0.1:"),
        "{listening:?}"
    );
}
