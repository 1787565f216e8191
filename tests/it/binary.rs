//! The real `citypark` binary, started as an operator would start it.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// Kills the process when dropped, so a failing test leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    // A clean environment: no CITYPARK_* variable of the machine changes the flags.
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_citypark"))
            .args(["serve", "--grpc-addr", "127.0.0.1:0"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the citypark binary starts"),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no \"listening\" line in time; stderr so far: {lines:#?}"))
            .expect("stderr is text");
        let done = line.contains("listening");
        lines.push(line);
        if done {
            break;
        }
    }
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
