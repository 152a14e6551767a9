//! `sandstep:handler/process`: run an allow-listed host program.
//!
//! The program runs outside the sandbox, so every invocation is checked against the handler's
//! policy first: the program must be listed by absolute path and its arguments must fit one of
//! its forms ([`super::arg_grammar`]: a literal option prefix, then typed slots, path slots
//! resolved beneath their directory by the kernel). Refusals name the rule. A program runs with a
//! cleared environment, no stdin, its own process group (stopped as a whole at the time limit or
//! when the call is dropped: SIGTERM, then SIGKILL after a grace period; programs marked
//! `finish-on-cancel` are left to finish when the call is dropped; what it leaves in its group is
//! stopped when it exits), SIGKILL when the agent dies, a [`super::ledger`] entry while it runs
//! (so the next agent finds what a killed one left), and output captured up to a cap, keeping the
//! end.

use super::arg_grammar::{ArgForm, FormError, StepDirs};
use super::cgroup::{self, RunGroup};
use super::landlock::{self, Boundary, Ruleset};
use super::ledger::{self, Entry, ProgramLedger};
use crate::bindings::process::{self, Command, Error as WitError, Output};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use wasmtime::component::{HasData, Linker};

/// Policy for the process capability of one handler id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProcessPolicy {
    /// The programs the handler may run.
    pub programs: Vec<ProgramRule>,
    /// Bytes of stdout and of stderr kept per run (the end is kept).
    pub max_output_bytes: usize,
    /// Upper bound on a run's time limit, in seconds.
    pub timeout_secs: u64,
    /// Most processes one program run may have at once, everything it starts included (the
    /// run's control group's `pids.max`: a fork bomb stops there).
    pub pids_max: u32,
    /// Most descriptors each process of a run may hold open (`RLIMIT_NOFILE`, set before exec
    /// and inherited by all it starts).
    pub open_files_max: u64,
    /// What to do on a kernel without Landlock ([`super::landlock`]): refuse to run the
    /// program (the default), or run it with the argument grammar alone and say so in its
    /// output.
    pub without_landlock: WithoutLandlock,
}

impl Default for ProcessPolicy {
    fn default() -> Self {
        ProcessPolicy {
            programs: Vec::new(),
            max_output_bytes: 64 * 1024,
            timeout_secs: 3600,
            pids_max: 1024,
            open_files_max: 1024,
            without_landlock: WithoutLandlock::Refuse,
        }
    }
}

/// `without-landlock`: a host program on a kernel that cannot hold it to its grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WithoutLandlock {
    #[default]
    Refuse,
    GrammarOnly,
}

/// One allowed program and the shapes its arguments may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProgramRule {
    /// Absolute path of the program.
    pub path: String,
    /// The argument forms it accepts (see [`super::arg_grammar`]): a fixed option prefix, then
    /// typed slots. An invocation must fit one of them.
    #[serde(default)]
    pub forms: Vec<ArgForm>,
    /// Environment variables set for this program (the policy's, never the handler's), on top
    /// of `PATH` and `LANG=C`; e.g. `DEBIAN_FRONTEND = "noninteractive"` for apt-get.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// When the call is abandoned (cancel, replacement, shutdown), let the program finish
    /// instead of stopping it: for apt-get and dpkg, whose transactions must not be cut short.
    /// The action's time limit still stops it.
    #[serde(default)]
    pub finish_on_cancel: bool,
    /// Run at the next start when a run of this program was interrupted (the agent was killed
    /// or the power cut while it ran): program and arguments, e.g. dpkg's own repair
    /// `["/usr/bin/dpkg", "--configure", "-a"]` for apt-get and dpkg. See [`super::ledger`].
    #[serde(default)]
    pub recover: Vec<String>,
    /// Directories whose entries mean a run was interrupted, whoever started it: at start,
    /// `recover` runs when one holds entries (see [`super::repair`]); e.g. dpkg's
    /// `/var/lib/dpkg/updates`.
    #[serde(default)]
    pub recover_if_nonempty: Vec<PathBuf>,
    /// Lock files the program (or its front end) holds while it runs (apt's
    /// `/var/lib/dpkg/lock-frontend`, dpkg's `/var/lib/dpkg/lock`): while a live process holds
    /// one, the run is not interrupted and no repair is due.
    #[serde(default)]
    pub recover_unless_locked: Vec<PathBuf>,
    /// Host paths the program may write beneath besides the step's `/work` and `/state` and
    /// the handler's writable mapped dirs (the kernel holds it there: [`super::landlock`]);
    /// e.g. the package system's paths for apt-get.
    #[serde(default)]
    pub writable: Vec<PathBuf>,
    /// Host paths the program may read and run programs from, besides the step's
    /// directories; empty: reads are not restricted.
    #[serde(default)]
    pub readable: Vec<PathBuf>,
    /// Arguments the host puts first, before the handler's (which the forms check): the
    /// gateway's own settings for the program, never the handler's, e.g. the key SWUpdate
    /// verifies images with (`["-k", "/etc/sandstep/swupdate-public.pem"]`).
    #[serde(default)]
    pub host_args: Vec<String>,
}

impl ProgramRule {
    /// A rule for `path` with these argument forms, and nothing else set.
    pub fn new(path: impl Into<String>, forms: Vec<ArgForm>) -> Self {
        ProgramRule {
            path: path.into(),
            forms,
            env: Default::default(),
            finish_on_cancel: false,
            recover: Vec::new(),
            recover_if_nonempty: Vec::new(),
            recover_unless_locked: Vec::new(),
            writable: Vec::new(),
            readable: Vec::new(),
            host_args: Vec::new(),
        }
    }
}

/// A directory the guest was given, as the process capability sees it.
#[derive(Debug, Clone)]
pub struct MappedDir {
    pub guest: String,
    pub host: PathBuf,
    /// Whether the handler (and so its programs) may write there.
    pub writable: bool,
}

/// Per-store state of the capability.
#[derive(Debug, Clone)]
pub struct ProcessCtx {
    pub policy: ProcessPolicy,
    pub handler_id: String,
    /// The step's directories, `/payload`, `/work`, `/state` first.
    pub dirs: Vec<MappedDir>,
    /// Where running programs are recorded, so the next agent finds what a killed one left.
    pub ledger: Option<Arc<ProgramLedger>>,
    /// Host directories the programs may also write (the selected component's, by policy).
    pub program_writable: Vec<PathBuf>,
    /// The handler's A/B slots, when it is granted them: `inactive-slot` arguments are checked
    /// against the slot not running.
    pub slots: Option<super::slot::SlotPolicy>,
}

/// Why the policy refused an invocation; the text names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("program `{program}` is not on the allow list of handler `{handler}` (policy: process.programs)")]
    ProgramNotAllowed { program: String, handler: String },
    #[error("program `{0}` must be an absolute path")]
    ProgramNotAbsolute(String),
    #[error(
        "the arguments of `{program}` fit none of its forms (policy: process.programs.forms): {}",
        numbered(forms)
    )]
    NoFormFits {
        program: String,
        forms: Vec<FormError>,
    },
    #[error("program `{0}` has no argument forms (policy: process.programs.forms)")]
    NoForms(String),
    #[error("the step has no /payload, /work and /state for `{0}`")]
    NoStepDirs(String),
    #[error("working directory `{0}` is not one of the step's directories")]
    BadCwd(String),
    #[error("the program path is {0} bytes; at most {MAX_PROGRAM_BYTES} are allowed")]
    ProgramTooLong(usize),
    #[error("argument {index} of `{program}` is {len} bytes; at most {MAX_ARG_BYTES} are allowed")]
    ArgTooLong {
        program: String,
        index: usize,
        len: usize,
    },
    #[error(
        "the arguments of `{program}` total {len} bytes; at most {MAX_TOTAL_ARG_BYTES} are allowed"
    )]
    ArgsTooLong { program: String, len: usize },
    #[error("argument {index} of `{program}` contains a NUL byte")]
    NulInArg { program: String, index: usize },
    #[error("`{program}` cannot be held to its grant: {why} (policy: process.without-landlock = \"refuse\")")]
    NoKernelBoundary { program: String, why: String },
}

/// Each form's reason, numbered.
fn numbered(forms: &[FormError]) -> String {
    forms
        .iter()
        .enumerate()
        .map(|(i, e)| format!("form {i}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Longest program path accepted (PATH_MAX).
pub const MAX_PROGRAM_BYTES: usize = 4096;
/// Longest single argument accepted (well under Linux's 128 KiB MAX_ARG_STRLEN).
pub const MAX_ARG_BYTES: usize = 32 << 10;
/// Most argument bytes one invocation may carry.
pub const MAX_TOTAL_ARG_BYTES: usize = 256 << 10;

impl ProcessCtx {
    /// The capability's state for one step of `handler_id`: its policy, the step's directories
    /// (`/payload`, `/work`, `/state` first) and the ledger running programs are recorded in.
    pub fn for_step(
        policy: ProcessPolicy,
        handler_id: &str,
        dirs: Vec<MappedDir>,
        ledger: Option<Arc<ProgramLedger>>,
    ) -> Self {
        ProcessCtx {
            policy,
            handler_id: handler_id.to_owned(),
            dirs,
            ledger,
            program_writable: Vec::new(),
            slots: None,
        }
    }

    /// Checks `inactive-slot` arguments against these slots (see [`super::arg_grammar`]).
    pub fn with_slots(mut self, slots: Option<super::slot::SlotPolicy>) -> Self {
        self.slots = slots;
        self
    }

    /// Lets the programs also write beneath `dirs` (see `component-writable`).
    pub fn writing_also(mut self, dirs: Vec<PathBuf>) -> Self {
        self.program_writable = dirs;
        self
    }

    fn dirs_list(&self) -> String {
        self.dirs
            .iter()
            .map(|d| d.guest.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks an invocation against the policy; the program's rule when it passes.
    pub fn check(&self, cmd: &Command) -> Result<&ProgramRule, Refusal> {
        // Sizes first: a refusal echoes what it refuses, and patterns are matched per byte.
        if cmd.program.len() > MAX_PROGRAM_BYTES {
            return Err(Refusal::ProgramTooLong(cmd.program.len()));
        }
        let mut total = 0usize;
        for (index, arg) in cmd.args.iter().enumerate() {
            if arg.len() > MAX_ARG_BYTES {
                return Err(Refusal::ArgTooLong {
                    program: cmd.program.clone(),
                    index,
                    len: arg.len(),
                });
            }
            if arg.contains('\0') {
                return Err(Refusal::NulInArg {
                    program: cmd.program.clone(),
                    index,
                });
            }
            total += arg.len();
        }
        if total > MAX_TOTAL_ARG_BYTES {
            return Err(Refusal::ArgsTooLong {
                program: cmd.program.clone(),
                len: total,
            });
        }
        if !cmd.program.starts_with('/') {
            return Err(Refusal::ProgramNotAbsolute(cmd.program.clone()));
        }
        let rule = self
            .policy
            .programs
            .iter()
            .find(|r| r.path == cmd.program)
            .ok_or_else(|| Refusal::ProgramNotAllowed {
                program: cmd.program.clone(),
                handler: self.handler_id.clone(),
            })?;
        let names_a_slot = rule.forms.iter().any(ArgForm::names_a_slot);
        let dirs = self
            .step_dirs(names_a_slot)
            .ok_or_else(|| Refusal::NoStepDirs(cmd.program.clone()))?;
        if rule.forms.is_empty() {
            return Err(Refusal::NoForms(cmd.program.clone()));
        }
        let mut forms = Vec::new();
        for form in &rule.forms {
            match form.check(&cmd.args, dirs) {
                Ok(()) => return Ok(rule),
                Err(e) => forms.push(e),
            }
        }
        Err(Refusal::NoFormFits {
            program: cmd.program.clone(),
            forms,
        })
    }

    /// The host paths of `/payload`, `/work` and `/state`, and, when `with_slot` (a form names
    /// an `inactive-slot`), the slot not running: read from the boot control at each call.
    fn step_dirs(&self, with_slot: bool) -> Option<StepDirs<'_>> {
        let host = |guest: &str| {
            self.dirs
                .iter()
                .find(|d| d.guest == guest)
                .map(|d| d.host.as_path())
        };
        let inactive_slot = match &self.slots {
            _ if !with_slot => Err("no form names a slot"),
            None => Err("the handler is granted no slots (policy: slot)"),
            Some(p) => match p.state() {
                Ok(st) => Ok(match st.booted {
                    crate::bindings::slot::SlotName::A => 'b',
                    crate::bindings::slot::SlotName::B => 'a',
                }),
                Err(_) => Err("the slot policy cannot say which slot is running"),
            },
        };
        Some(StepDirs {
            payload: host("/payload")?,
            work: host("/work")?,
            state: host("/state")?,
            inactive_slot,
        })
    }

    /// What a run of `rule`'s program may touch: the step's writable directories and the
    /// rule's own paths written, the rest of the step's directories read.
    pub fn boundary(&self, rule: &ProgramRule) -> Boundary {
        let (writable, read_only): (Vec<&MappedDir>, Vec<&MappedDir>) =
            self.dirs.iter().partition(|d| d.writable);
        let hosts = |ds: Vec<&MappedDir>| ds.into_iter().map(|d| d.host.clone()).collect();
        let mut b = Boundary {
            writable: hosts(writable),
            read_only: hosts(read_only),
            readable: rule.readable.clone(),
        };
        b.writable.extend(rule.writable.iter().cloned());
        b.writable.extend(self.program_writable.iter().cloned());
        b
    }

    /// How the kernel will hold a run of `rule`'s program, or why it may not run.
    fn kernel_boundary(&self, program: &str, rule: &ProgramRule) -> Result<Held, Refusal> {
        let boundary = self.boundary(rule);
        let built = Ruleset::build(&boundary);
        held(built, &boundary, self.policy.without_landlock, program)
    }

    /// The host path for a guest path inside one of the step's directories.
    pub fn host_path(&self, guest: &str) -> Option<PathBuf> {
        let d = self
            .dirs
            .iter()
            .filter(|d| {
                guest == d.guest
                    || guest
                        .strip_prefix(d.guest.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            })
            .max_by_key(|d| d.guest.len())?;
        let mut out = d.host.clone();
        for part in guest[d.guest.len()..].split('/') {
            match part {
                "" | "." => {}
                ".." => return None,
                p => out.push(p),
            }
        }
        Some(out)
    }
}

/// How a run is held, given whether its ruleset could be built and what the policy says when
/// it could not.
fn held(
    built: Result<Ruleset, landlock::LandlockError>,
    boundary: &Boundary,
    without: WithoutLandlock,
    program: &str,
) -> Result<Held, Refusal> {
    match (built, without) {
        (Ok(ruleset), _) => Ok(Held::Landlock {
            ruleset,
            writable: boundary.describe(),
        }),
        (Err(e), WithoutLandlock::GrammarOnly) => Ok(Held::GrammarOnly(e.to_string())),
        (Err(e), WithoutLandlock::Refuse) => Err(Refusal::NoKernelBoundary {
            program: program.to_owned(),
            why: e.to_string(),
        }),
    }
}

/// How the kernel holds a program run.
enum Held {
    /// Under a Landlock ruleset; writes only beneath these paths.
    Landlock { ruleset: Ruleset, writable: String },
    /// With the argument grammar alone (the kernel has no Landlock; the policy allows it).
    GrammarOnly(String),
}

impl Held {
    /// Enters the ruleset in the child, before exec.
    fn apply(&self, command: &mut tokio::process::Command) {
        if let Held::Landlock { ruleset, .. } = self {
            let fd = ruleset.raw_fd();
            // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
            // calls (prctl, syscall); the descriptor stays open in the parent until spawn returns.
            unsafe { command.pre_exec(move || landlock::enter(fd)) };
        }
    }

    /// What the program's output is told about the boundary: where a program that failed on
    /// a refused access (EACCES or EPERM in its output, which runs in the C locale) was allowed
    /// to write, or that only the argument grammar held it.
    fn note(&self, exit_code: Option<i32>, output: &[&[u8]]) -> Option<String> {
        let refused = |o: &&[u8]| {
            let text = String::from_utf8_lossy(o);
            text.contains("Permission denied") || text.contains("Operation not permitted")
        };
        match self {
            Held::Landlock { writable, .. } if exit_code != Some(0) && output.iter().any(refused) => {
                Some(format!(
                    "sandstep: the program ran under Landlock; the kernel refused writes outside: {writable}"
                ))
            }
            Held::Landlock { .. } => None,
            Held::GrammarOnly(why) => Some(format!(
                "sandstep: the kernel did not hold this program to its grant ({why}); it ran with the argument grammar alone (policy: process.without-landlock = \"grammar-only\")"
            )),
        }
    }
}

/// Reads a pipe to the end, keeping at most `cap` bytes from its end.
async fn read_tail(mut pipe: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&chunk[..n]);
                if kept.len() > cap.saturating_mul(2).max(64 * 1024) {
                    let cut = kept.len() - cap;
                    kept.drain(..cut);
                    truncated = true;
                }
            }
        }
    }
    if kept.len() > cap {
        kept.drain(..kept.len() - cap);
        truncated = true;
    }
    (kept, truncated)
}

/// How long a stopped program gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Signals a program's whole process group.
fn signal_group(pgid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) with a negative pid signals the process group we created.
    unsafe { libc::kill(-pgid, signal) == 0 }
}

/// A running program's process group, from spawn until nothing of it is left. When the guest
/// call is dropped (the deployment was cancelled or replaced, the agent shuts down) it stops the
/// group: SIGTERM, then SIGKILL after the grace period; a program that must finish
/// (`finish-on-cancel`: apt-get, dpkg) is left to, up to its time limit. Its ledger entry goes
/// once the group is gone, so only a killed agent leaves entries behind.
struct RunningGroup {
    entry: Entry,
    ledger: Option<Arc<ProgramLedger>>,
    grace: Duration,
    /// Cleared once the leader was reaped and the rest of its group dealt with.
    armed: bool,
}

impl RunningGroup {
    /// The leader was reaped: what it left in its group is stopped (unless it must finish: a
    /// daemon a package's postinst started stays), and the entry goes.
    fn reaped(mut self) {
        self.armed = false;
        let mut wait = Duration::ZERO;
        if !self.entry.finish_on_cancel {
            // By start time, not by group id alone: the leader is reaped, its number is free.
            let left = ledger::survivors(&self.entry, &ledger::snapshot(), &self.entry.boot_id);
            for pid in left {
                // SAFETY: kill(2) on members of the group this call started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            // And whatever left the group: it is still in the run's control group.
            cgroup::kill(&self.entry.cgroups);
            wait = Duration::from_secs(1);
        }
        cgroup::remove(&self.entry.cgroups, wait);
        super::reaper::disown(self.entry.pgid);
        if let Some(l) = &self.ledger {
            l.remove(&self.entry);
        }
    }
}

impl Drop for RunningGroup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (pgid, finish, grace) = (self.entry.pgid, self.entry.finish_on_cancel, self.grace);
        let ledger = self.ledger.take();
        let entry = self.entry.clone();
        let until = if finish {
            let left = self
                .entry
                .deadline_ms
                .saturating_sub(sandstep_transport::clock::now_ms());
            std::time::Instant::now() + Duration::from_millis(left)
        } else {
            signal_group(pgid, libc::SIGTERM);
            std::time::Instant::now() + grace
        };
        // Not on the async runtime: this runs while a future is dropped.
        std::thread::spawn(move || {
            let gone = || !signal_group(pgid, 0);
            while std::time::Instant::now() < until && !gone() {
                std::thread::sleep(Duration::from_millis(50));
            }
            if !gone() {
                if finish {
                    signal_group(pgid, libc::SIGTERM);
                    std::thread::sleep(grace);
                }
                signal_group(pgid, libc::SIGKILL);
            }
            cgroup::kill(&entry.cgroups);
            cgroup::remove(&entry.cgroups, Duration::from_secs(1));
            super::reaper::disown(pgid);
            if let Some(l) = ledger {
                l.remove(&entry);
            }
        });
    }
}

/// Stops a program at its time limit: SIGTERM to the group, then SIGKILL after `grace` unless
/// it exited; returns its status.
async fn stop_at_time_limit(
    child: &mut tokio::process::Child,
    entry: &Entry,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    signal_group(entry.pgid, libc::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        // The leader is gone; whatever it left in its group is not.
        Ok(status) => status.ok(),
        Err(_) => None,
    };
    signal_group(entry.pgid, libc::SIGKILL);
    cgroup::kill(&entry.cgroups);
    match status {
        Some(s) => Some(s),
        None => child.wait().await.ok(),
    }
}

/// Caps the descriptors the program (and what it starts) may hold. Async-signal-safe.
fn limit_open_files(max: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: max,
        rlim_max: max,
    };
    // SAFETY: setrlimit with a valid rlimit.
    match unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The program gets SIGKILL when the agent dies (`PR_SET_PDEATHSIG`), so a killed agent does not
/// leave it running beside the step the restarted agent runs again. The signal follows the
/// *thread* that spawned it: programs are spawned from the async runtime's worker threads, which
/// live as long as the agent (never from the blocking pool, whose threads come and go).
fn die_with_the_agent(command: &mut tokio::process::Command) {
    // SAFETY: getpid is async-signal-safe.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The agent may have died before prctl took effect. (No allocation here: another
            // thread of the agent may have held the allocator's lock at fork.)
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

impl ProcessCtx {
    /// The ledger entry of a program about to start, recorded before it does (fail closed: a
    /// program the next agent could not find does not run).
    fn announce(
        &self,
        program: &str,
        rule: &ProgramRule,
        limit: Duration,
        run: (String, Option<&RunGroup>),
    ) -> Result<Entry, WitError> {
        let (token, group) = run;
        let entry = Entry {
            token,
            cgroups: group.map(|g| g.dirs().to_vec()).unwrap_or_default(),
            pgid: 0,
            leader_start: 0,
            boot_id: ledger::boot_id(),
            program: program.to_owned(),
            handler: self.handler_id.clone(),
            finish_on_cancel: rule.finish_on_cancel,
            deadline_ms: sandstep_transport::clock::now_ms() + limit.as_millis() as u64,
            recover: rule.recover.clone(),
            env: rule.env.clone(),
            owner: ledger::this_process(),
        };
        if let Some(l) = &self.ledger {
            l.record(&entry).map_err(|e| {
                WitError::SpawnFailed(format!(
                    "{program}: cannot record it in the program ledger: {e}"
                ))
            })?;
        }
        Ok(entry)
    }

    /// Starts tracking a spawned program: its group in the ledger entry, and the guard that
    /// stops it.
    fn track(&self, pid: Option<u32>, mut entry: Entry) -> Result<RunningGroup, WitError> {
        let program = entry.program.clone();
        let no_pid = || WitError::SpawnFailed(format!("{program}: the program has no pid"));
        let pgid = pid.ok_or_else(no_pid)? as i32;
        let leader_start = std::fs::read_to_string(format!("/proc/{pgid}/stat"))
            .ok()
            .and_then(|s| ledger::parse_stat(pgid, &s))
            .map(|p| p.start);
        entry.pgid = pgid;
        entry.leader_start = leader_start.unwrap_or(0);
        let mut group = RunningGroup {
            entry,
            ledger: self.ledger.clone(),
            grace: STOP_GRACE,
            armed: true,
        };
        // Fail closed: a program whose group cannot be known does not run. The guard stops it as
        // it drops, even one that must otherwise finish: it has only just started.
        let recorded = match (leader_start, &self.ledger) {
            (None, _) => Err(format!("cannot read /proc/{pgid}/stat")),
            (Some(_), Some(l)) => l
                .record(&group.entry)
                .map_err(|e| format!("cannot record it in the program ledger: {e}")),
            (Some(_), None) => Ok(()),
        }
        .map_err(|why| WitError::SpawnFailed(format!("{program}: {why}")));
        if let Err(e) = recorded {
            group.entry.finish_on_cancel = false;
            return Err(e);
        }
        Ok(group)
    }

    /// The program's command: its arguments, a cleared environment, its own process group, and
    /// (before exec) the agent's death signal and its descriptor limit.
    fn command(
        &self,
        cmd: &Command,
        rule: &ProgramRule,
        cwd: &std::path::Path,
        entry: &Entry,
    ) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&cmd.program);
        command
            .args(&rule.host_args)
            .args(&cmd.args)
            .env_clear()
            .env("PATH", super::PROGRAM_PATH)
            .env("LANG", "C")
            // Temporary files go where the program may write: the step's /work.
            .env("TMPDIR", self.host_path("/work").as_deref().unwrap_or(cwd))
            .envs(&rule.env)
            .env(ledger::TOKEN_VAR, &entry.token)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if !rule.finish_on_cancel {
            die_with_the_agent(&mut command);
        }
        let open_files = self.policy.open_files_max;
        // SAFETY: the closure runs between fork and exec and only calls setrlimit(2).
        unsafe { command.pre_exec(move || limit_open_files(open_files)) };
        command
    }

    /// Checks `cmd` against the policy and runs it held to its grant (health checks run
    /// their programs here too).
    pub async fn run(&self, cmd: Command) -> Result<Output, WitError> {
        let rule = self
            .check(&cmd)
            .map_err(|r| WitError::Denied(r.to_string()))?;
        let cwd_guest = cmd.cwd.clone().unwrap_or_else(|| "/work".to_owned());
        let cwd = self
            .dirs
            .iter()
            .find(|d| d.guest == cwd_guest)
            .map(|d| d.host.clone())
            .ok_or_else(|| WitError::Denied(Refusal::BadCwd(cwd_guest.clone()).to_string()))?;
        let policy_limit = Duration::from_secs(self.policy.timeout_secs);
        let limit = cmd
            .timeout_ms
            .map(Duration::from_millis)
            .map_or(policy_limit, |t| t.min(policy_limit));

        let held = self
            .kernel_boundary(&cmd.program, rule)
            .map_err(|r| WitError::Denied(r.to_string()))?;
        let token = ledger::new_token();
        let run_group = RunGroup::create(&token, self.policy.pids_max).map_err(|e| {
            WitError::SpawnFailed(format!(
                "{}: cannot make its control group: {e}",
                cmd.program
            ))
        })?;
        let entry = self.announce(&cmd.program, rule, limit, (token, run_group.as_ref()))?;
        let mut command = self.command(&cmd, rule, &cwd, &entry);
        // The control group first: Landlock then holds the program away from /sys/fs/cgroup.
        if let Some(g) = &run_group {
            let fds = g.procs_fds();
            // SAFETY: the closure runs between fork and exec and only calls write(2).
            unsafe { command.pre_exec(move || cgroup::enter(&fds)) };
        }
        held.apply(&mut command);
        let mut child = match super::reaper::spawn_owned(|| command.spawn(), |c| c.id()) {
            Ok(child) => child,
            Err(e) => {
                if let Some(l) = &self.ledger {
                    l.remove(&entry);
                }
                cgroup::remove(&entry.cgroups, Duration::ZERO);
                return Err(WitError::SpawnFailed(format!("{}: {e}", cmd.program)));
            }
        };
        let group = self.track(child.id(), entry)?;
        tracing::info!(target: "sandstep::process", handler = %self.handler_id, program = %cmd.program, args = ?cmd.args, "running host program");

        let cap = self.policy.max_output_bytes;
        let stdout = read_tail(child.stdout.take().expect("stdout is piped"), cap);
        let stderr = read_tail(child.stderr.take().expect("stderr is piped"), cap);
        let work = async { tokio::join!(child.wait(), stdout, stderr) };
        let (status, timed_out, out, err) = match tokio::time::timeout(limit, work).await {
            Ok((status, out, err)) => (status.ok(), false, out, err),
            Err(_) => {
                let status = stop_at_time_limit(&mut child, &group.entry, STOP_GRACE).await;
                (status, true, (Vec::new(), false), (Vec::new(), false))
            }
        };
        group.reaped();
        use std::os::unix::process::ExitStatusExt;
        let exit_code = status.and_then(|s| s.code());
        let note = held.note(exit_code, &[&out.0, &err.0]);
        let mut stderr = String::from_utf8_lossy(&err.0).into_owned();
        if let Some(note) = note {
            if !stderr.is_empty() && !stderr.ends_with('\n') {
                stderr.push('\n');
            }
            stderr.push_str(&note);
            stderr.push('\n');
        }
        Ok(Output {
            exit_code,
            signal: status.and_then(|s| s.signal()),
            timed_out,
            stdout: String::from_utf8_lossy(&out.0).into_owned(),
            stderr,
            truncated: out.1 || err.1,
        })
    }
}

/// The view the generated bindings call into.
pub struct ProcessView<'a>(pub &'a mut ProcessCtx);

impl process::Host for ProcessView<'_> {
    async fn run(&mut self, cmd: Command) -> wasmtime::Result<Result<Output, WitError>> {
        Ok(self.0.run(cmd).await)
    }

    async fn host_path(
        &mut self,
        sandbox_path: String,
    ) -> wasmtime::Result<Result<String, WitError>> {
        Ok(self
            .0
            .host_path(&sandbox_path)
            .map(|p| p.to_string_lossy().into_owned())
            .ok_or_else(|| {
                WitError::BadPath(format!(
                    "`{sandbox_path}` is not inside the step's directories ({})",
                    self.0.dirs_list()
                ))
            }))
    }
}

struct HasProcess;

impl HasData for HasProcess {
    type Data<'a> = ProcessView<'a>;
}

/// Links `process`; only called for handlers granted it. `get` finds the capability's state in
/// the store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> ProcessView<'_>,
) -> wasmtime::Result<()> {
    process::add_to_linker::<T, HasProcess>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::arg_grammar::Slot;

    /// A process context over real step directories in `t` (paths are resolved on disk).
    fn ctx_in(t: &std::path::Path) -> ProcessCtx {
        let dir = |name: &str| {
            let p = t.join(name);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let form = |prefix: &[&str]| ArgForm {
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
            then: vec![],
            rest: vec![
                Slot::PayloadFile {
                    suffix: Some(".deb".into()),
                },
                Slot::DebianPackage,
            ],
            max_args: 8,
        };
        ProcessCtx {
            policy: ProcessPolicy {
                programs: vec![ProgramRule::new(
                    "/usr/bin/apt-get",
                    vec![
                        form(&["-y", "install"]),
                        form(&["-y", "--download-only", "install"]),
                    ],
                )],
                ..ProcessPolicy::default()
            },
            handler_id: "microsoft/apt:1".into(),
            dirs: ["payload", "work", "state"]
                .into_iter()
                .map(|n| MappedDir {
                    guest: format!("/{n}"),
                    host: dir(n),
                    writable: n != "payload",
                })
                .collect(),
            ledger: None,
            program_writable: vec![],
            slots: None,
        }
    }

    fn cmd(program: &str, args: &[&str]) -> Command {
        Command {
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            timeout_ms: None,
        }
    }

    #[test]
    fn a_program_not_on_the_list_is_refused_naming_the_rule() {
        let t = tempfile::tempdir().unwrap();
        let err = ctx_in(t.path())
            .check(&cmd("/bin/rm", &["-rf", "/"]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "program `/bin/rm` is not on the allow list of handler `microsoft/apt:1` (policy: process.programs)"
        );
    }

    #[test]
    fn apt_options_that_re_root_its_configuration_fit_no_form() {
        // `-o Dir=.` would have apt read sources and lists the handler wrote in /work.
        let t = tempfile::tempdir().unwrap();
        let c = ctx_in(t.path());
        for args in [
            &["-y", "-o", "dir=.", "install", "tree"][..],
            &["-y", "install", "-o", "dir=."],
            &["-y", "install", "dir=."],
            &["-y", "install", "--allow-unauthenticated", "tree"],
        ] {
            let err = c.check(&cmd("/usr/bin/apt-get", args)).unwrap_err();
            assert!(matches!(err, Refusal::NoFormFits { .. }), "{args:?}: {err}");
        }
    }

    #[test]
    fn payload_files_must_be_real_files_beneath_the_payload() {
        let t = tempfile::tempdir().unwrap();
        let c = ctx_in(t.path());
        let payload = t.path().join("payload");
        std::fs::write(payload.join("t_1.0_all.deb"), b"x").unwrap();
        // A symlink the handler planted in /work, and one in /payload, lead nowhere.
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("work/evil.deb")).unwrap();
        std::os::unix::fs::symlink(payload.join("t_1.0_all.deb"), payload.join("l.deb")).unwrap();
        let deb = payload.join("t_1.0_all.deb").display().to_string();
        c.check(&cmd(
            "/usr/bin/apt-get",
            &["-y", "install", &deb, "tree=1.8"],
        ))
        .unwrap();
        for bad in [
            t.path().join("work/evil.deb").display().to_string(),
            payload.join("l.deb").display().to_string(),
            format!("{}/../work/evil.deb", payload.display()),
            "t_1.0_all.deb".into(),
            "./t_1.0_all.deb".into(),
        ] {
            let err = c
                .check(&cmd("/usr/bin/apt-get", &["-y", "install", &bad]))
                .unwrap_err();
            assert!(matches!(err, Refusal::NoFormFits { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn a_script_interpreter_runs_only_a_payload_file_as_its_entry_point() {
        let t = tempfile::tempdir().unwrap();
        let mut c = ctx_in(t.path());
        c.policy.programs.push(ProgramRule::new(
            "/bin/sh",
            vec![ArgForm {
                prefix: vec![],
                then: vec![Slot::PayloadFile { suffix: None }],
                rest: vec![Slot::Any],
                max_args: 8,
            }],
        ));
        let script = t.path().join("payload/install.sh");
        std::fs::write(&script, b"true").unwrap();
        let script = script.display().to_string();
        c.check(&cmd("/bin/sh", &[&script, "--x", "/usr/local/devices/cam"]))
            .unwrap();
        let written = t.path().join("work/mine.sh");
        std::fs::write(&written, b"id").unwrap();
        for bad in [
            vec!["-c", "rm -rf /"],
            vec![written.to_str().unwrap()],
            vec![],
        ] {
            let err = c.check(&cmd("/bin/sh", &bad)).unwrap_err();
            assert!(matches!(err, Refusal::NoFormFits { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn too_many_arguments_fit_no_form() {
        let t = tempfile::tempdir().unwrap();
        let err = ctx_in(t.path())
            .check(&cmd(
                "/usr/bin/apt-get",
                &["-y", "install", "a1", "a2", "a3", "a4", "a5", "a6", "a7"],
            ))
            .unwrap_err();
        assert!(err.to_string().contains("9 arguments, at most 8"), "{err}");
    }

    #[test]
    fn huge_and_nul_arguments_and_program_paths_are_refused_before_matching() {
        let t = tempfile::tempdir().unwrap();
        let c = ctx_in(t.path());
        let long = "a".repeat(MAX_ARG_BYTES + 1);
        assert_eq!(
            c.check(&cmd("/usr/bin/apt-get", &["install", &long]))
                .unwrap_err(),
            Refusal::ArgTooLong {
                program: "/usr/bin/apt-get".into(),
                index: 1,
                len: MAX_ARG_BYTES + 1
            }
        );
        let chunk = "a".repeat(MAX_ARG_BYTES);
        let many: Vec<&str> = std::iter::repeat_n(chunk.as_str(), 9).collect();
        assert_eq!(
            c.check(&cmd("/usr/bin/apt-get", &many)).unwrap_err(),
            Refusal::ArgsTooLong {
                program: "/usr/bin/apt-get".into(),
                len: 9 * MAX_ARG_BYTES
            }
        );
        assert_eq!(
            c.check(&cmd("/usr/bin/apt-get", &["-y", "a\0b"]))
                .unwrap_err(),
            Refusal::NulInArg {
                program: "/usr/bin/apt-get".into(),
                index: 1
            }
        );
        let program = format!("/{}", "p".repeat(MAX_PROGRAM_BYTES));
        assert_eq!(
            c.check(&cmd(&program, &[])).unwrap_err(),
            Refusal::ProgramTooLong(MAX_PROGRAM_BYTES + 1)
        );
    }

    #[test]
    fn without_landlock_a_program_is_refused_unless_the_policy_accepts_the_grammar_alone() {
        let none = || {
            Err(landlock::LandlockError::Unavailable(
                std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            ))
        };
        let b = Boundary::default();
        let refused = held(none(), &b, WithoutLandlock::Refuse, "/bin/sh")
            .err()
            .unwrap();
        assert!(
            refused
                .to_string()
                .starts_with("`/bin/sh` cannot be held to its grant: the kernel has no Landlock")
                && refused
                    .to_string()
                    .ends_with("(policy: process.without-landlock = \"refuse\")"),
            "{refused}"
        );
        let Ok(h) = held(none(), &b, WithoutLandlock::GrammarOnly, "/bin/sh") else {
            panic!("grammar-only runs it")
        };
        // Said in its output, whatever its exit status.
        for code in [Some(0), Some(1)] {
            let note = h.note(code, &[]).unwrap();
            assert!(note.contains("argument grammar alone"), "{note}");
        }
        assert_eq!(WithoutLandlock::default(), WithoutLandlock::Refuse);
    }

    #[test]
    fn host_paths_resolve_inside_dirs_only() {
        let c = ProcessCtx {
            policy: ProcessPolicy::default(),
            handler_id: "t/t:1".into(),
            dirs: vec![
                MappedDir {
                    guest: "/payload".into(),
                    host: "/data/p".into(),
                    writable: false,
                },
                MappedDir {
                    guest: "/work".into(),
                    host: "/data/w".into(),
                    writable: true,
                },
            ],
            ledger: None,
            program_writable: vec![],
            slots: None,
        };
        assert_eq!(
            c.host_path("/payload/a.deb"),
            Some(PathBuf::from("/data/p/a.deb"))
        );
        assert_eq!(c.host_path("/work"), Some(PathBuf::from("/data/w")));
        assert_eq!(c.host_path("/work/../payload/x"), None);
        assert_eq!(c.host_path("/workshop/x"), None);
        assert_eq!(c.host_path("/etc/passwd"), None);
    }
}
