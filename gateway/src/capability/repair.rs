//! Repairs at start for what was interrupted outside the ledger's view.
//!
//! The ledger ([`super::ledger`]) finds the programs a killed agent started and runs their rule's
//! `recover` command. A package system can also be left half-done by something else: a power cut
//! during an apt-get the agent did not start, or a ledger lost with its disk. A program rule's
//! `recover-if-nonempty` names directories whose entries mean exactly that (dpkg's journal of
//! an unfinished run, `/var/lib/dpkg/updates`: what apt-get checks before it says "dpkg was
//! interrupted, you must manually run 'dpkg --configure -a'"). Before any step runs, each such
//! rule's `recover` command runs once when one of its directories holds entries, unless the
//! ledger's sweep already ran that command, or the program is running now: its rule's
//! `recover-unless-locked` files (apt's and dpkg's locks) is locked by a live process (an apt-get
//! or dpkg started by someone else, mid-run).

use super::ledger::{run_command, RecoverError};
use super::process::ProgramRule;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A rule's repair that is due: what shows the interruption, and the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub handler: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub dir: PathBuf,
    pub entries: usize,
}

/// A repair that ran, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub due: Due,
    pub outcome: Result<i32, RecoverError>,
}

impl std::fmt::Display for Repaired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.due;
        let cmd = d.command.join(" ");
        write!(
            f,
            "at start, {} held {} entr{} of an interrupted run (policy of {})",
            d.dir.display(),
            d.entries,
            if d.entries == 1 { "y" } else { "ies" },
            d.handler
        )?;
        match &self.outcome {
            Ok(0) => write!(f, "; `{cmd}` repaired it"),
            Ok(code) => write!(f, "; `{cmd}` failed with exit code {code}"),
            Err(e) => write!(f, "; `{cmd}` did not run: {e}"),
        }
    }
}

/// The repairs due now: for each program rule (with its handler id) with a `recover` command,
/// the first of its `recover-if-nonempty` directories that holds entries. A command is listed
/// once, and not at all when it is in `already_ran`.
pub fn due<'a>(
    rules: impl IntoIterator<Item = (&'a str, &'a ProgramRule)>,
    already_ran: &[String],
) -> Vec<Due> {
    let mut out: Vec<Due> = Vec::new();
    for (handler, rule) in rules {
        let command = rule.recover.join(" ");
        let known = |d: &Due| d.command == rule.recover;
        if rule.recover.is_empty() || already_ran.contains(&command) || out.iter().any(known) {
            continue;
        }
        let running = rule.recover_unless_locked.iter().any(|l| is_locked(l));
        let found = rule
            .recover_if_nonempty
            .iter()
            .filter(|_| !running)
            .find_map(|dir| Some((dir, entries(dir)?)).filter(|(_, n)| *n > 0));
        if let Some((dir, entries)) = found {
            out.push(Due {
                handler: handler.to_owned(),
                command: rule.recover.clone(),
                env: rule.env.clone(),
                dir: dir.clone(),
                entries,
            });
        }
    }
    out
}

/// How many entries a directory holds (None when it cannot be read: nothing to act on).
fn entries(dir: &std::path::Path) -> Option<usize> {
    Some(std::fs::read_dir(dir).ok()?.filter(|e| e.is_ok()).count())
}

/// Whether another process holds a lock on `path` (a POSIX record lock, as dpkg takes on its
/// lock file): asked with F_GETLK, which takes no lock itself.
fn is_locked(path: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::OpenOptions::new().read(true).open(path) else {
        return false;
    };
    // SAFETY: a zeroed flock is a valid argument; F_GETLK only writes into it.
    let mut probe: libc::flock = unsafe { std::mem::zeroed() };
    probe.l_type = libc::F_WRLCK as libc::c_short;
    probe.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl on an open descriptor with a valid flock.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut probe) };
    r == 0 && probe.l_type != libc::F_UNLCK as libc::c_short
}

/// Runs the due repairs, one after the other. Blocking.
pub fn run(due: Vec<Due>) -> Vec<Repaired> {
    due.into_iter()
        .map(|due| {
            let outcome = run_command(&due.command, &due.env);
            let repaired = Repaired { due, outcome };
            tracing::warn!(%repaired, "repaired an interrupted run");
            repaired
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(dir: &std::path::Path) -> ProgramRule {
        ProgramRule {
            path: "/usr/bin/apt-get".into(),
            forms: vec![],
            env: Default::default(),
            finish_on_cancel: true,
            recover: ["/usr/bin/dpkg", "--configure", "-a"]
                .map(Into::into)
                .to_vec(),
            recover_if_nonempty: vec![dir.to_owned()],
            recover_unless_locked: vec![dir.with_file_name("lock")],
            writable: vec![],
            readable: vec![],
            host_args: vec![],
        }
    }

    /// Two handlers' rules naming the same repair.
    fn due_for(dir: &std::path::Path, ran: &[String]) -> Vec<Due> {
        let r = rule(dir);
        due([("x/apt:1", &r), ("y/apt:1", &r)], ran)
    }

    #[test]
    fn a_repair_is_due_once_when_its_directory_holds_entries_and_the_ledger_did_not_run_it() {
        let t = tempfile::tempdir().unwrap();
        let updates = t.path().join("updates");
        std::fs::create_dir(&updates).unwrap();
        assert!(due_for(&updates, &[]).is_empty(), "empty: nothing due");
        std::fs::write(updates.join("0000"), b"").unwrap();
        let d = due_for(&updates, &[]);
        assert_eq!(d.len(), 1, "one command, though two rules name it");
        assert_eq!(d[0].entries, 1);
        assert_eq!(d[0].command.join(" "), "/usr/bin/dpkg --configure -a");
        let ran = ["/usr/bin/dpkg --configure -a".to_owned()];
        assert!(due_for(&updates, &ran).is_empty(), "the sweep ran it");
        let missing = t.path().join("nope");
        assert!(due_for(&missing, &[]).is_empty());
    }

    #[test]
    fn no_repair_is_due_while_the_program_holds_its_lock() {
        let t = tempfile::tempdir().unwrap();
        let updates = t.path().join("updates");
        std::fs::create_dir(&updates).unwrap();
        std::fs::write(updates.join("0000"), b"").unwrap();
        let lock = t.path().join("lock");
        std::fs::write(&lock, b"").unwrap();
        assert_eq!(due_for(&updates, &[]).len(), 1, "unlocked: interrupted");
        // Another process locks it, as a running dpkg does (a POSIX record lock: a process
        // does not see its own, so a forked child holds it).
        let holder = hold_lock(&lock);
        assert!(
            due_for(&updates, &[]).is_empty(),
            "locked: running, not interrupted"
        );
        // SAFETY: kill and waitpid on the child forked above.
        unsafe {
            libc::kill(holder, libc::SIGKILL);
            libc::waitpid(holder, std::ptr::null_mut(), 0);
        }
        assert_eq!(due_for(&updates, &[]).len(), 1);
    }

    /// A forked child holding a write lock on `path` until it is killed; its pid, once locked.
    fn hold_lock(path: &std::path::Path) -> libc::pid_t {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut pipe = [0; 2];
        // SAFETY: pipe(2) into a two-int array.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child calls only async-signal-safe functions (fcntl, write, pause, _exit).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above; the child never returns.
            unsafe {
                let mut lock: libc::flock = std::mem::zeroed();
                lock.l_type = libc::F_WRLCK as libc::c_short;
                lock.l_whence = libc::SEEK_SET as libc::c_short;
                if libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) != 0 {
                    libc::_exit(1);
                }
                libc::write(pipe[1], b"l".as_ptr().cast(), 1);
                loop {
                    libc::pause();
                }
            }
        }
        let mut byte = [0u8; 1];
        // SAFETY: reading one byte from the pipe's read end, then closing both ends.
        unsafe {
            assert_eq!(libc::read(pipe[0], byte.as_mut_ptr().cast(), 1), 1);
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
        pid
    }
}
