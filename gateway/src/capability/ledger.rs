//! The ledger of running host programs: what a killed agent left behind, found at the next start.
//!
//! Each program the process capability starts gets an entry for as long as it runs, made durable
//! *before* the program starts: a token the program and every descendant that keeps its
//! environment carry (`SANDSTEP_PROGRAM=<token>`), then, once spawned, its process group and the
//! leader's start time. An agent killed at any instant, even between the spawn and recording the
//! group, so leaves an entry that finds the program. An agent killed with `kill -9` cannot
//! remove its entries, so the next agent finds them before it runs any step ([`ProgramLedger::
//! sweep`]): a program that was to be left to finish (`finish-on-cancel`: apt-get, dpkg) is
//! waited for up to its time limit; anything else still alive of the group is stopped (SIGTERM,
//! then SIGKILL); then the rule's `recover` command runs (`dpkg --configure -a` for apt), so a
//! transaction that a power cut interrupted is repaired and said so. Which processes belong to an
//! entry is a pure decision ([`survivors`]) over a snapshot of `/proc`.
//!
//! A program that leaves its process group (`setsid`) and clears its environment is still found:
//! each run has its own control group ([`super::cgroup`], recorded in the entry), and whatever is
//! in it belongs to the run.

use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The environment variable that carries an entry's token into the program and its descendants.
pub const TOKEN_VAR: &str = "SANDSTEP_PROGRAM";

/// One running program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Names the entry and is in the program's environment ([`TOKEN_VAR`]); empty in entries of
    /// agents before 0.2 (found by their group alone).
    #[serde(default)]
    pub token: String,
    /// Its process group (the leader's pid); 0 while the program is being started.
    pub pgid: i32,
    /// The leader's start time, in clock ticks since boot (`/proc/PID/stat` field 22).
    pub leader_start: u64,
    /// `/proc/sys/kernel/random/boot_id` when it started.
    pub boot_id: String,
    pub program: String,
    pub handler: String,
    /// Left to finish by a cancel (the sweep waits for it).
    pub finish_on_cancel: bool,
    /// Milliseconds since the epoch after which it is stopped even so (its time limit).
    pub deadline_ms: u64,
    /// Run after an interrupted run (program and arguments), with `env`.
    #[serde(default)]
    pub recover: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The agent that started it (pid, start time): while that agent lives the entry is its
    /// own, and another process on the same data dir leaves it alone.
    #[serde(default)]
    pub owner: Option<(i32, u64)>,
    /// The run's control groups ([`super::cgroup`]): whatever is in them is the run's, however
    /// it left its process group or environment.
    #[serde(default)]
    pub cgroups: Vec<std::path::PathBuf>,
}

/// This process, as an entry's owner.
pub fn this_process() -> Option<(i32, u64)> {
    let pid = std::process::id() as i32;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(pid, &stat).map(|p| (pid, p.start))
}

/// Whether the agent that recorded `entry` is still running (then the entry is not a leftover).
pub fn owner_alive(entry: &Entry, procs: &[ProcInfo], boot_id: &str) -> bool {
    entry.boot_id == boot_id
        && entry.owner.is_some_and(|(pid, start)| {
            procs
                .iter()
                .any(|p| p.pid == pid && p.start == start && !p.zombie)
        })
}

/// A process as the sweep sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    /// Its parent (the agent, for an orphan it adopted as subreaper).
    pub ppid: i32,
    pub pgrp: i32,
    pub start: u64,
    /// Exited, not yet reaped (where init does not reap, it stays so): nothing left to stop.
    pub zombie: bool,
    /// Its [`TOKEN_VAR`], when the snapshot read environments ([`snapshot_with_tokens`]).
    pub token: Option<String>,
}

/// The processes of `procs` that belong to `entry`: those carrying its token, and the members
/// of its group.
///
/// Linux does not hand out a pid that is still some group's id, so while anything of the group
/// lives its number means this group. When a process with the group's number lives but started
/// at another time, the number was reused: the group is gone. Members started before the leader
/// cannot be ours. An entry recorded before its spawn (pgid 0) is found by its token alone.
pub fn survivors(entry: &Entry, procs: &[ProcInfo], boot_id: &str) -> Vec<i32> {
    if entry.boot_id != boot_id {
        return Vec::new();
    }
    let group_reused = procs
        .iter()
        .any(|p| p.pid == entry.pgid && p.start != entry.leader_start);
    let in_group = |p: &ProcInfo| {
        entry.pgid != 0 && !group_reused && p.pgrp == entry.pgid && p.start >= entry.leader_start
    };
    let has_token =
        |p: &ProcInfo| !entry.token.is_empty() && p.token.as_deref() == Some(entry.token.as_str());
    procs
        .iter()
        .filter(|p| !p.zombie && (in_group(p) || has_token(p)))
        .map(|p| p.pid)
        .collect()
}

/// Parses the group and start time out of `/proc/PID/stat` (the name may hold spaces and `)`).
pub fn parse_stat(pid: i32, stat: &str) -> Option<ProcInfo> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state (3), ppid (4), pgrp (5), ..., starttime (22).
    Some(ProcInfo {
        pid,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
        zombie: *fields.first()? == "Z",
        token: None,
    })
}

/// The value of [`TOKEN_VAR`] in a `/proc/PID/environ` (NUL-separated `NAME=value`).
pub fn token_in_environ(environ: &[u8]) -> Option<String> {
    let prefix = format!("{TOKEN_VAR}=");
    environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Every process now running, with the token in its environment (for the sweep: reading every
/// environment costs more than [`snapshot`]).
pub fn snapshot_with_tokens() -> Vec<ProcInfo> {
    let mut procs = snapshot();
    for p in &mut procs {
        p.token = std::fs::read(format!("/proc/{}/environ", p.pid))
            .ok()
            .and_then(|e| token_in_environ(&e));
    }
    procs
}

/// A new entry token: 128 random bits, hex.
pub fn new_token() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// Every process now running.
pub fn snapshot() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            parse_stat(
                pid,
                &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
            )
        })
        .collect()
}

/// This boot's id.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// What the sweep did about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub program: String,
    pub handler: String,
    /// Processes still running when the sweep found the entry.
    pub found: usize,
    /// Stopped by a signal (the rest ended on their own).
    pub stopped: usize,
    /// The recover command and how it ended.
    pub recover: Option<(String, Result<i32, RecoverError>)>,
}

impl std::fmt::Display for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` of handler {} was interrupted (the agent stopped while it ran)",
            self.program, self.handler
        )?;
        if self.found > 0 {
            write!(
                f,
                "; {} of its processes were still running, {} stopped by a signal",
                self.found, self.stopped
            )?;
        }
        match &self.recover {
            Some((cmd, Ok(0))) => write!(f, "; `{cmd}` repaired what it left"),
            Some((cmd, Ok(code))) => write!(f, "; `{cmd}` failed with exit code {code}"),
            Some((cmd, Err(e))) => write!(f, "; `{cmd}` did not run: {e}"),
            None => Ok(()),
        }
    }
}

/// The directory of entries (the data dir's `programs/`, mode 0700).
#[derive(Debug)]
pub struct ProgramLedger {
    dir: Dir,
}

/// An entry's file: by its token, or (entries of agents before 0.2) its group.
fn entry_name(entry: &Entry) -> String {
    if entry.token.is_empty() {
        format!("{}.json", entry.pgid)
    } else {
        format!("{}.json", entry.token)
    }
}

impl ProgramLedger {
    pub fn new(dir: Dir) -> Self {
        ProgramLedger { dir }
    }

    /// Records a program about to start, or (again) one that started (durably either way).
    pub fn record(&self, entry: &Entry) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(entry).expect("an entry serializes");
        crate::datadir::write_atomic(&self.dir, &entry_name(entry), &bytes, 0o600)
    }

    /// Forgets a program that is gone (or never started).
    pub fn remove(&self, entry: &Entry) {
        let _ = self.dir.remove_file(entry_name(entry));
    }

    fn entries(&self) -> Vec<Entry> {
        let Ok(names) = self.dir.entries() else {
            return Vec::new();
        };
        names
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json"))
            .filter_map(|n| {
                let bytes = self.dir.read(&n).ok()?;
                match serde_json::from_slice::<Entry>(&bytes) {
                    Ok(e) => Some(e),
                    Err(err) => {
                        tracing::warn!(entry = %n, %err, "unreadable program ledger entry, removed");
                        let _ = self.dir.remove_file(&n);
                        None
                    }
                }
            })
            .collect()
    }

    /// Deals with every entry a previous agent left (blocking: it may wait for a program to
    /// finish). Must run before any step does.
    pub fn sweep(&self, grace: Duration) -> Vec<Recovered> {
        let boot = boot_id();
        let procs = snapshot();
        self.entries()
            .into_iter()
            .filter(|entry| !owner_alive(entry, &procs, &boot))
            .map(|entry| {
                let report = settle(&entry, &boot, grace);
                self.remove(&entry);
                report
            })
            .collect()
    }
}

fn signal_all(pids: &[i32], signal: i32) {
    for &pid in pids {
        // SAFETY: kill(2) on pids that `survivors` found in this entry's group.
        unsafe { libc::kill(pid, signal) };
    }
}

/// What is alive of an entry now: its group and token ([`survivors`]) and its control groups'
/// members.
fn alive(entry: &Entry, boot: &str) -> Vec<i32> {
    let mut left = survivors(entry, &snapshot_with_tokens(), boot);
    if entry.boot_id == boot {
        left.extend(super::cgroup::members(&entry.cgroups));
    }
    left.sort_unstable();
    left.dedup();
    left
}

/// Waits until nothing of the entry lives or `until` passes; what is still alive.
fn wait_for(entry: &Entry, boot: &str, until: Instant) -> Vec<i32> {
    loop {
        let left = alive(entry, boot);
        if left.is_empty() || Instant::now() >= until {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops or waits for what is left of one entry, then runs its recover command.
fn settle(entry: &Entry, boot: &str, grace: Duration) -> Recovered {
    let found = alive(entry, boot);
    let mut left = found.clone();
    if entry.finish_on_cancel && !left.is_empty() {
        let remaining = Duration::from_millis(
            entry
                .deadline_ms
                .saturating_sub(sandstep_transport::clock::now_ms()),
        );
        tracing::warn!(program = %entry.program, pgid = entry.pgid, "waiting for a program the previous agent left to finish");
        left = wait_for(entry, boot, Instant::now() + remaining);
    }
    let mut stopped = 0;
    if !left.is_empty() {
        stopped = left.len();
        signal_all(&left, libc::SIGTERM);
        let after_term = wait_for(entry, boot, Instant::now() + grace);
        signal_all(&after_term, libc::SIGKILL);
        super::cgroup::kill(&entry.cgroups);
        wait_for(entry, boot, Instant::now() + Duration::from_secs(5));
    }
    super::cgroup::remove(&entry.cgroups, Duration::from_secs(1));
    let recover = (!entry.recover.is_empty()).then(|| {
        let cmd = entry.recover.join(" ");
        (cmd, run_recover(entry))
    });
    let report = Recovered {
        program: entry.program.clone(),
        handler: entry.handler.clone(),
        found: found.len(),
        stopped,
        recover,
    };
    tracing::warn!(%report, "recovered from an interrupted host program");
    report
}

/// Why a recover command did not run to its end (kept in the report, so plain data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError {
    #[error("empty command")]
    Empty,
    #[error("{program}: {cause}")]
    Spawn { program: String, cause: String },
    #[error("stopped after {}s", .0.as_secs())]
    TimedOut(Duration),
    #[error("waiting for it: {0}")]
    Wait(String),
}

/// How long a recover command may take.
const RECOVER_LIMIT: Duration = Duration::from_secs(1800);

fn run_recover(entry: &Entry) -> Result<i32, RecoverError> {
    run_command(&entry.recover, &entry.env)
}

/// Runs a repair command (with the policy's environment for its program) to its end, up to
/// [`RECOVER_LIMIT`].
pub(crate) fn run_command(
    command: &[String],
    env: &std::collections::BTreeMap<String, String>,
) -> Result<i32, RecoverError> {
    let (program, args) = command.split_first().ok_or(RecoverError::Empty)?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", super::PROGRAM_PATH)
        .env("LANG", "C")
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| RecoverError::Spawn {
            program: program.clone(),
            cause: e.to_string(),
        })?;
    let until = Instant::now() + RECOVER_LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status.code().unwrap_or(-1)),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(100)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RecoverError::TimedOut(RECOVER_LIMIT));
            }
            Err(e) => return Err(RecoverError::Wait(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            token: String::new(),
            pgid: 100,
            leader_start: 5000,
            boot_id: "b1".into(),
            program: "/bin/sh".into(),
            handler: "h".into(),
            finish_on_cancel: false,
            deadline_ms: 0,
            recover: vec![],
            env: Default::default(),
            owner: Some((42, 100)),
            cgroups: vec![],
        }
    }

    #[test]
    fn an_entry_whose_agent_still_runs_is_not_a_leftover() {
        let alive = [p(42, 42, 100)];
        assert!(owner_alive(&entry(), &alive, "b1"));
        // The agent is gone, its pid reused, or this is another boot: a leftover.
        assert!(!owner_alive(&entry(), &[], "b1"));
        assert!(!owner_alive(&entry(), &[p(42, 42, 999)], "b1"));
        assert!(!owner_alive(&entry(), &alive, "b2"));
        // Another process on the same data dir (a CLI run beside the agent) leaves a live
        // agent's entries alone: nothing is stopped, nothing is run, the entry stays.
        let t = tempfile::tempdir().unwrap();
        let dir =
            cap_std::fs::Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let ledger = ProgramLedger::new(dir);
        let live = Entry {
            boot_id: boot_id(),
            owner: this_process(),
            recover: vec!["/bin/false".into()],
            ..entry()
        };
        ledger.record(&live).unwrap();
        assert!(ledger.sweep(Duration::from_millis(10)).is_empty());
        assert!(t.path().join("100.json").exists());
        let tokened = Entry {
            token: "t1".into(),
            ..live
        };
        ledger.record(&tokened).unwrap();
        assert!(t.path().join("t1.json").exists());
    }

    fn p(pid: i32, pgrp: i32, start: u64) -> ProcInfo {
        ProcInfo {
            pid,
            ppid: 1,
            pgrp,
            start,
            zombie: false,
            token: None,
        }
    }

    /// An agent killed between recording a program and learning its group leaves an entry
    /// without one: what carries its token is found, wherever it went (another group, a new
    /// session), and nothing else.
    #[test]
    fn an_entry_recorded_before_its_spawn_finds_its_programs_by_token() {
        let early = Entry {
            token: "tok".into(),
            pgid: 0,
            leader_start: 0,
            ..entry()
        };
        let carrying = |pid, pgrp| ProcInfo {
            token: Some("tok".into()),
            ..p(pid, pgrp, 7000)
        };
        let procs = [
            carrying(200, 200),
            carrying(201, 300),
            p(0, 0, 1),
            ProcInfo {
                token: Some("other".into()),
                ..p(202, 200, 7000)
            },
        ];
        assert_eq!(survivors(&early, &procs, "b1"), vec![200, 201]);
        // With its group known too, both ways count, each process once.
        let both = Entry {
            token: "tok".into(),
            ..entry()
        };
        let procs = [p(100, 100, 5000), carrying(101, 100), carrying(250, 250)];
        assert_eq!(survivors(&both, &procs, "b1"), vec![100, 101, 250]);
        assert_eq!(
            token_in_environ(b"PATH=/bin\0SANDSTEP_PROGRAM=abc\0LANG=C\0"),
            Some("abc".into())
        );
        assert_eq!(token_in_environ(b"PATH=/bin\0"), None);
    }

    #[test]
    fn the_group_members_are_survivors_with_or_without_their_leader() {
        let procs = [
            p(100, 100, 5000),
            p(101, 100, 5010),
            p(7, 7, 10),
            p(102, 55, 6000),
        ];
        assert_eq!(survivors(&entry(), &procs, "b1"), vec![100, 101]);
        // The leader died (killed with the agent); its background children did not.
        let orphans = [p(101, 100, 5010), p(103, 100, 5200)];
        assert_eq!(survivors(&entry(), &orphans, "b1"), vec![101, 103]);
        // A zombie (the killed leader, unreaped) has nothing left to stop or wait for.
        let zombie = ProcInfo {
            zombie: true,
            ..p(100, 100, 5000)
        };
        assert_eq!(
            survivors(&entry(), &[zombie.clone(), p(101, 100, 5010)], "b1"),
            vec![101]
        );
    }

    #[test]
    fn a_reused_group_number_another_boot_or_older_processes_are_never_ours() {
        // The number now belongs to a process that started later: our group is gone.
        let reused = [p(100, 100, 9000), p(104, 100, 9001)];
        assert!(survivors(&entry(), &reused, "b1").is_empty());
        // After a reboot nothing of it can be alive.
        let procs = [p(100, 100, 5000)];
        assert!(survivors(&entry(), &procs, "b2").is_empty());
        // A member older than the leader cannot have come from it.
        assert!(survivors(&entry(), &[p(99, 100, 4000)], "b1").is_empty());
    }

    #[test]
    fn stat_lines_parse_even_with_odd_program_names() {
        let line =
            "4242 (a) b) c) S 1 4240 4240 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 0";
        assert_eq!(
            parse_stat(4242, line),
            Some(ProcInfo {
                pid: 4242,
                ppid: 1,
                pgrp: 4240,
                start: 123456,
                zombie: false,
                token: None,
            })
        );
        assert_eq!(parse_stat(1, "1 (init"), None);
    }

    #[test]
    fn this_process_is_in_the_snapshot() {
        let me = std::process::id() as i32;
        assert!(snapshot().iter().any(|p| p.pid == me));
        assert!(!boot_id().is_empty());
    }
}
