//! The agent as its host programs' subreaper.
//!
//! A program that double-forks leaves an orphan, which the kernel would hand to init, out of
//! the agent's sight. With `PR_SET_CHILD_SUBREAPER` the agent adopts its descendants' orphans
//! instead: while it lives, everything its programs started stays its descendant (the run's
//! control group then stops it, [`super::cgroup`]). An adopted orphan that exits is reaped here,
//! on SIGCHLD: a zombie child that is still in a program run's control group (a zombie keeps
//! its group) and is not a program leader (tokio reaps those). Nothing else the agent spawns
//! (a repair command, a boot loader tool) runs in such a group, so no one else's child is taken.
//! Without program groups the agent does not become a subreaper (it could not tell adopted
//! orphans from its own children).

use std::collections::BTreeSet;
use std::sync::Mutex;

/// The program leaders tokio owns (spawned and not yet reaped by it): never reaped here.
static LEADERS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Spawns a program leader with `spawn` and records it as one tokio will reap, both under the
/// lock the reaper decides under: a leader that exits at once is never taken for an orphan
/// (reaping it would leave tokio and the ledger without its pid and `/proc` entry).
pub fn spawn_owned<T>(
    spawn: impl FnOnce() -> std::io::Result<T>,
    pid: impl Fn(&T) -> Option<u32>,
) -> std::io::Result<T> {
    let mut leaders = LEADERS.lock().expect("leaders");
    let child = spawn()?;
    if let Some(p) = pid(&child) {
        leaders.insert(p as i32);
    }
    Ok(child)
}

/// A leader tokio has reaped (or whose group is gone).
pub fn disown(pid: i32) {
    LEADERS.lock().expect("leaders").remove(&pid);
}

/// Makes this process the subreaper of its descendants and reaps adopted orphans as they
/// exit, until the runtime stops. Call once, in the agent (or a `sandstep run`), on the runtime.
pub fn start() -> std::io::Result<()> {
    if super::cgroup::bases().unified.is_none() {
        return Err(std::io::Error::other(
            "no control groups for host programs, so orphans could not be told apart",
        ));
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    tokio::spawn(async move {
        while sigchld.recv().await.is_some() {
            let _ = tokio::task::spawn_blocking(reap_orphans).await;
        }
    });
    Ok(())
}

/// A zombie child as the reaper sees it: pid, and its unified control group.
pub type Zombie = (i32, Option<String>);

/// Which zombie children to reap: those in a program run's group (beneath `sandstep-programs`)
/// that are not leaders tokio reaps.
pub fn orphans_to_reap(zombies: &[Zombie], leaders: &BTreeSet<i32>) -> Vec<i32> {
    let in_a_run = |g: &Option<String>| {
        g.as_deref()
            .is_some_and(|g| g.contains("/sandstep-programs/"))
    };
    zombies
        .iter()
        .filter(|(pid, group)| in_a_run(group) && !leaders.contains(pid))
        .map(|(pid, _)| *pid)
        .collect()
}

/// Reaps the adopted orphans that have exited; how many.
pub fn reap_orphans() -> usize {
    let me = std::process::id() as i32;
    // Held from before the look at /proc until the reaping: a leader spawned meanwhile is
    // recorded before this sees it ([`spawn_owned`]).
    let leaders = LEADERS.lock().expect("leaders");
    // The ledger's snapshot of /proc; only a zombie child's group is read.
    let zombies: Vec<Zombie> = super::ledger::snapshot()
        .into_iter()
        .filter(|p| p.ppid == me && p.zombie)
        .map(|p| {
            let group = std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid))
                .ok()
                .and_then(|t| super::cgroup::parse_own(&t).unified);
            (p.pid, group)
        })
        .collect();
    let mut reaped = 0;
    for pid in orphans_to_reap(&zombies, &leaders) {
        // SAFETY: waitpid on a zombie child of ours that tokio does not own.
        if unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } == pid {
            reaped += 1;
        }
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_zombie_children_in_a_run_that_tokio_does_not_own_are_reaped() {
        let leaders: BTreeSet<i32> = [10].into();
        let run = || Some("/sandstep-programs/ab12".to_owned());
        let zombies = [
            (10, run()),                // a leader: tokio's
            (11, run()),                // an adopted orphan, exited
            (14, Some("/".to_owned())), // our own child outside any run (a repair)
            (15, None),                 // its group unknown
        ];
        assert_eq!(orphans_to_reap(&zombies, &leaders), [11]);
        // Children and zombies as the ledger's /proc parser reads them.
        let p = super::super::ledger::parse_stat(
            42,
            "42 (a) b) Z 7 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 99 0",
        )
        .unwrap();
        assert_eq!((p.ppid, p.zombie), (7, true));
    }
}
