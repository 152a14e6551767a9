//! Fault injection for the crash tests, compiled only with the `fault-injection` feature.
//!
//! With it, `SANDSTEP_CRASH_AT=N` makes the process abort (as a power cut would stop it) at the
//! N-th crash point reached: after every journal write and after every handler call; a point's
//! name instead (`stream-checkpoint`) aborts at that point's first pass. The tests
//! run a deployment with N = 1, 2, 3, ... and check that each restart finishes it exactly once.

#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var("SANDSTEP_CRASH_AT") else {
        return;
    };
    // A name crashes at that point's first pass; a number at the N-th point of any name.
    if spec == name {
        eprintln!("fault injection: crashing at {name}");
        std::process::abort();
    }
    let Ok(at) = spec.parse::<u64>() else {
        return;
    };
    if COUNT.fetch_add(1, Ordering::SeqCst) + 1 == at {
        eprintln!("fault injection: crashing at point {at} ({name})");
        std::process::abort();
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}
