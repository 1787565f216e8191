//! Giving memory back once live state shrank: the hand-off frees a hot window's
//! records at once, and an allocator keeps freed pages for reuse unless it is told.
//!
//! The service says when it freed much (`released`); the binary, which owns the
//! allocator, asks it to return what it holds free on each runtime thread once per
//! release, when the thread goes idle (`collect_on_this_thread` from the runtime's
//! park hook). An allocator keeps free pages per thread, and pages freed by one thread
//! (the hand-off's) for another (the one that served the call) are only taken back by
//! their owner, so one thread's collect would not be enough.

use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering},
};

/// Bumped by each release; each thread remembers the last it collected for.
static RELEASES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COLLECTED: Cell<u64> = const { Cell::new(0) };
}

/// Says that much memory was freed (records handed off and their tombstones gone).
pub fn released() {
    RELEASES.fetch_add(1, Ordering::Relaxed);
}

/// Runs `collect` on this thread if a release happened since it last did; one atomic
/// load otherwise, so it may run on every park of a busy thread.
pub fn collect_on_this_thread(collect: impl FnOnce()) {
    let releases = RELEASES.load(Ordering::Relaxed);
    if COLLECTED.get() != releases {
        COLLECTED.set(releases);
        collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_collects_once_per_release() {
        let count = || {
            let mut n = 0;
            collect_on_this_thread(|| n += 1);
            n
        };
        released();
        assert_eq!(count(), 1);
        assert_eq!(count(), 0, "nothing new released");
        let other = std::thread::spawn(move || {
            let mut n = 0;
            collect_on_this_thread(|| n += 1);
            n
        });
        assert_eq!(
            other.join().unwrap(),
            1,
            "another thread collects for itself"
        );
        released();
        assert_eq!(count(), 1);
    }
}
