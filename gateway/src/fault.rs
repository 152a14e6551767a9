//! Fault injection for the crash tests, compiled only with the `fault-injection` feature.
//!
//! With it, `SANDSTEP_CRASH_AT=N` makes the process abort (as a power cut would stop it) at the
//! N-th crash point reached: after every journal write and after every handler call; a point's
//! name instead (`stream-checkpoint`) aborts at that point's first pass. The tests
//! run a deployment with N = 1, 2, 3, ... and check that each restart finishes it exactly once.
//!
//! The boot test cuts a virtual machine's power instead: `SANDSTEP_HOLD_FILE` names a file of
//! point names, one per line. When the first line's point is reached, that line is removed
//! (durably, so the next boot goes on to the next one), the process says
//! `fault injection: holding at NAME` and stops there until the machine is killed.

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

/// A place where the boot test may cut the power (see the module doc); not a crash point, so
/// the crash tests' numbering does not move.
#[cfg(feature = "fault-injection")]
pub fn hold(name: &str) {
    let Some(path) = std::env::var_os("SANDSTEP_HOLD_FILE") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(name) {
        return;
    }
    let rest: String = lines.map(|l| format!("{l}\n")).collect();
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, rest)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    if let Err(e) = written {
        eprintln!("fault injection: cannot update {}: {e}", path.display());
        return;
    }
    eprintln!("fault injection: holding at {name}");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn hold(_name: &str) {}
