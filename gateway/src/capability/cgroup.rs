//! A control group per host-program run: every descendant found and stopped, and a pids limit.
//!
//! A process can leave its process group (`setsid`), clear its environment (the ledger's token)
//! and double-fork away from its parent; it cannot leave its control group. So each run of a
//! host program gets its own group (`<base>/<token>`, the ledger entry's token): the child joins
//! it between fork and exec (writing `0` to the group's `cgroup.procs`, opened beforehand), and
//! everything it starts is born there. When the run ends (unless it must finish), is cancelled,
//! or a new agent finds what a killed one left, every member is killed (`cgroup.kill` where the
//! kernel has it, SIGKILL to each member otherwise) and the group removed. A `pids.max` from the
//! policy holds fork bombs.
//!
//! Where the groups live: the unified (v2) hierarchy, beneath the agent's own group (under
//! systemd the unit delegates its subtree: `Delegate=yes`), for membership; the pids limit goes
//! to the v2 group when its `pids` controller can be enabled there, else to the v1 `pids`
//! hierarchy of a hybrid machine. A machine where neither can be written keeps the process-group
//! and token tracking alone (`sandstep doctor` says so).
//!
//! Which mounts and own groups apply is decided by pure functions over `/proc/self/mountinfo`
//! and `/proc/self/cgroup`.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// The cgroup mounts that matter: the unified hierarchy, and a v1 `pids` hierarchy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mounts {
    pub unified: Option<PathBuf>,
    pub pids_v1: Option<PathBuf>,
}

/// Reads `/proc/self/mountinfo`: the cgroup2 mount, and the v1 mount carrying `pids`.
pub fn parse_mountinfo(text: &str) -> Mounts {
    let mut m = Mounts::default();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split_whitespace().nth(4);
        let mut r = right.split_whitespace();
        let (fstype, _source, options) = (r.next(), r.next(), r.next().unwrap_or(""));
        match (fstype, mount_point) {
            (Some("cgroup2"), Some(p)) if m.unified.is_none() => m.unified = Some(p.into()),
            (Some("cgroup"), Some(p)) if options.split(',').any(|o| o == "pids") => {
                m.pids_v1 = Some(p.into())
            }
            _ => {}
        }
    }
    m
}

/// This process's groups, from `/proc/self/cgroup`: the unified one (`0::/path`) and the v1
/// `pids` one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Own {
    pub unified: Option<String>,
    pub pids_v1: Option<String>,
}

pub fn parse_own(text: &str) -> Own {
    let mut own = Own::default();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (id, controllers, path) = (f.next(), f.next(), f.next());
        match (id, controllers, path) {
            (Some("0"), Some(""), Some(p)) => own.unified = Some(p.to_owned()),
            (_, Some(c), Some(p)) if c.split(',').any(|c| c == "pids") => {
                own.pids_v1 = Some(p.to_owned())
            }
            _ => {}
        }
    }
    own
}

/// A group path beneath a mount (`own` is absolute within the hierarchy).
fn beneath(mount: &Path, own: &str, leaf: &str) -> PathBuf {
    let mut p = mount.to_path_buf();
    p.extend(own.split('/').filter(|c| !c.is_empty()));
    p.push(leaf);
    p
}

/// Where this machine's program groups go (decided once).
#[derive(Debug, Clone, Default)]
pub struct Bases {
    /// Membership and kill: `<unified mount><own>/sandstep-programs`.
    pub unified: Option<PathBuf>,
    /// The pids limit, when the unified base cannot hold it: the v1 pids hierarchy's base.
    pub pids_v1: Option<PathBuf>,
    /// Whether the unified base has the `pids` controller for its children.
    pub unified_pids: bool,
}

const LEAF: &str = "sandstep-programs";

/// The bases, made on first use; a base that cannot be made is left out.
pub fn bases() -> &'static Bases {
    static BASES: std::sync::OnceLock<Bases> = std::sync::OnceLock::new();
    BASES.get_or_init(|| {
        let mounts =
            parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
        let own = parse_own(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
        let made = |p: PathBuf| match std::fs::create_dir(&p) {
            Ok(()) => Some(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Some(p),
            Err(e) => {
                tracing::warn!(path = %p.display(), "no control group for host programs: {e}");
                None
            }
        };
        let unified = match (&mounts.unified, &own.unified) {
            (Some(m), Some(o)) => made(beneath(m, o, LEAF)),
            _ => None,
        };
        if let (Some(m), Some(o), Some(_)) = (&mounts.unified, &own.unified, &unified) {
            offer_pids(&beneath(m, o, ""), o == "/");
        }
        let unified_pids = unified.as_deref().is_some_and(enable_pids);
        let pids_v1 = match (unified_pids, &mounts.pids_v1, &own.pids_v1) {
            (false, Some(m), Some(o)) => made(beneath(m, o, LEAF)),
            _ => None,
        };
        Bases {
            unified,
            pids_v1,
            unified_pids,
        }
    })
}

/// Offers the `pids` controller to the agent's own group's children (so the base can pass it
/// on). A group other than the root may not hold processes and hand controllers down (cgroup
/// v2's no-internal-process rule): under a delegated unit the agent first moves itself into a
/// leaf of its own group (`agent`), as systemd's delegation documentation describes, when it is
/// alone in that group. Nothing is changed where the own group does not offer `pids`.
fn offer_pids(own: &Path, is_root: bool) {
    let has = |file: &str| {
        std::fs::read_to_string(own.join(file))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"))
    };
    if !has("cgroup.controllers") || has("cgroup.subtree_control") {
        return;
    }
    if !is_root {
        // Only a group of the agent's own (a delegated unit's): never move out of a group it
        // shares with other processes (an operator's login session running `sandstep run`).
        let me = std::process::id().to_string();
        let alone = std::fs::read_to_string(own.join("cgroup.procs"))
            .is_ok_and(|p| p.lines().all(|l| l.trim() == me));
        if !alone {
            return;
        }
        let leaf = own.join("agent");
        let moved = std::fs::create_dir(&leaf)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .and_then(|()| std::fs::write(leaf.join("cgroup.procs"), "0"));
        if let Err(e) = moved {
            tracing::warn!(path = %leaf.display(), "cannot move the agent into a leaf group: {e}");
            return;
        }
    }
    if let Err(e) = std::fs::write(own.join("cgroup.subtree_control"), "+pids") {
        tracing::warn!(path = %own.display(), "cannot offer the pids controller: {e}");
    }
}

/// Turns on the `pids` controller for the base's children, if the hierarchy offers it.
fn enable_pids(base: &Path) -> bool {
    let offered = std::fs::read_to_string(base.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"));
    offered && std::fs::write(base.join("cgroup.subtree_control"), "+pids").is_ok()
}

/// The groups of one run.
#[derive(Debug)]
pub struct RunGroup {
    dirs: Vec<PathBuf>,
    procs: Vec<OwnedFd>,
}

impl RunGroup {
    /// Makes the run's groups (named by its token) with `pids_max`, and opens their
    /// `cgroup.procs` for the child to join. None where the machine offers no group.
    pub fn create(token: &str, pids_max: u32) -> std::io::Result<Option<RunGroup>> {
        let b = bases();
        let Some(unified) = &b.unified else {
            return Ok(None);
        };
        let mut g = RunGroup {
            dirs: Vec::new(),
            procs: Vec::new(),
        };
        let mut add = |dir: PathBuf, limit: bool| -> std::io::Result<()> {
            std::fs::create_dir(&dir)?;
            g.dirs.push(dir.clone());
            if limit {
                std::fs::write(dir.join("pids.max"), pids_max.to_string())?;
            }
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))?;
            g.procs.push(f.into());
            Ok(())
        };
        let made = add(unified.join(token), b.unified_pids).and_then(|()| match &b.pids_v1 {
            Some(v1) => add(v1.join(token), true),
            None => Ok(()),
        });
        if let Err(e) = made {
            remove(&g.dirs, std::time::Duration::ZERO);
            return Err(e);
        }
        Ok(Some(g))
    }

    /// The directories, recorded in the ledger entry.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The descriptors the child writes to join (see [`enter`]).
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// Joins the run's groups: called in the child between fork and exec (only `write`).
pub fn enter(fds: &[RawFd]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: write(2) of a static byte to a descriptor the parent opened.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The processes in the groups now.
pub fn members(dirs: &[PathBuf]) -> Vec<i32> {
    let mut pids: Vec<i32> = dirs
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Kills every member (the unified group's `cgroup.kill`, and SIGKILL to each member, for
/// kernels without it and for the v1 group).
pub fn kill(dirs: &[PathBuf]) {
    for d in dirs {
        let _ = std::fs::write(d.join("cgroup.kill"), "1");
    }
    for pid in members(dirs) {
        // SAFETY: kill(2) on a member of a group this run made.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Removes the groups once empty, waiting up to `wait` for killed members to go (a group that
/// stays, holding what a package started, is left).
pub fn remove(dirs: &[PathBuf], wait: std::time::Duration) {
    let until = std::time::Instant::now() + wait;
    for d in dirs {
        while std::fs::remove_dir(d).is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound) {
            if std::time::Instant::now() >= until {
                tracing::info!(path = %d.display(), "a program group is not empty; left");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_and_v1_pids_mounts_are_found_in_mountinfo() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(hybrid),
            Mounts {
                unified: Some("/sys/fs/cgroup/unified".into()),
                pids_v1: Some("/sys/fs/cgroup/pids".into()),
            }
        );
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_mountinfo(v2),
            Mounts {
                unified: Some("/sys/fs/cgroup".into()),
                pids_v1: None,
            }
        );
    }

    #[test]
    fn own_groups_are_read_from_proc_self_cgroup() {
        let hybrid = "9:name=systemd:/\n8:pids:/x\n4:memory:/a/b\n0::/\n";
        assert_eq!(
            parse_own(hybrid),
            Own {
                unified: Some("/".into()),
                pids_v1: Some("/x".into()),
            }
        );
        let v2 = "0::/system.slice/sandstep-agent.service\n";
        let own = parse_own(v2);
        assert_eq!(
            beneath(
                Path::new("/sys/fs/cgroup"),
                own.unified.as_deref().unwrap(),
                LEAF
            ),
            Path::new("/sys/fs/cgroup/system.slice/sandstep-agent.service/sandstep-programs")
        );
        assert_eq!(
            beneath(Path::new("/sys/fs/cgroup/unified"), "/", LEAF),
            Path::new("/sys/fs/cgroup/unified/sandstep-programs")
        );
    }
}
