//! `sandstep:handler/process`: run an allow-listed host program.
//!
//! The program runs outside the sandbox, so every invocation is checked against the handler's
//! policy first: the program must be listed by absolute path, each argument must match one of that
//! program's patterns, and any argument that is an absolute path must lie inside a directory the
//! step was given. Refusals name the rule. A program runs with a cleared environment, no stdin,
//! its own process group (stopped as a whole at the time limit or when the call is dropped:
//! SIGTERM, then SIGKILL after a grace period; programs marked `finish-on-cancel` are left to
//! finish when the call is dropped), SIGKILL when the agent dies, and output captured up to a cap,
//! keeping the end.

use crate::bindings::process::{self, Command, Error as WitError, Output};
use crate::sandbox::store::HostState;
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use wasmtime::component::{HasData, Linker};

/// The environment every program gets (the rest is cleared).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
}

impl Default for ProcessPolicy {
    fn default() -> Self {
        ProcessPolicy {
            programs: Vec::new(),
            max_output_bytes: 64 * 1024,
            timeout_secs: 3600,
        }
    }
}

/// One allowed program and the shapes its arguments may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProgramRule {
    /// Absolute path of the program.
    pub path: String,
    /// Each argument must match one of these patterns. `*` matches any run of characters;
    /// `{payload}`, `{work}` and `{state}` stand for the host paths of the step's directories; a
    /// pattern starting with `re:` is a regular expression that must match the whole argument.
    #[serde(default)]
    pub args: Vec<String>,
    /// Most arguments allowed.
    #[serde(default = "default_max_args")]
    pub max_args: usize,
    /// When given, the first argument must match one of these (e.g. a script interpreter may
    /// only be handed a script from the payload: `["{payload}/*"]`).
    #[serde(default)]
    pub first: Vec<String>,
    /// Let arguments name absolute paths outside the step's directories. Only for programs that
    /// run step content anyway (a script interpreter), where arguments decide nothing.
    #[serde(default)]
    pub any_path: bool,
    /// Environment variables set for this program (the policy's, never the handler's), on top
    /// of `PATH` and `LANG=C`; e.g. `DEBIAN_FRONTEND = "noninteractive"` for apt-get.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// When the call is abandoned (cancel, replacement, shutdown), let the program finish
    /// instead of stopping it: for apt-get and dpkg, whose transactions must not be cut short.
    /// The action's time limit still stops it.
    #[serde(default)]
    pub finish_on_cancel: bool,
}

fn default_max_args() -> usize {
    256
}

/// A directory the guest was given, as the process capability sees it.
#[derive(Debug, Clone)]
pub struct MappedDir {
    pub guest: String,
    pub host: PathBuf,
}

/// Per-store state of the capability.
#[derive(Debug, Clone)]
pub struct ProcessCtx {
    pub policy: ProcessPolicy,
    pub handler_id: String,
    /// The step's directories, `/payload`, `/work`, `/state` first.
    pub dirs: Vec<MappedDir>,
}

/// Why the policy refused an invocation; the text names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("program `{program}` is not on the allow list of handler `{handler}` (policy: process.programs)")]
    ProgramNotAllowed { program: String, handler: String },
    #[error("program `{0}` must be an absolute path")]
    ProgramNotAbsolute(String),
    #[error(
        "`{program}` takes at most {max} arguments (policy: process.programs.max-args), got {got}"
    )]
    TooManyArgs {
        program: String,
        max: usize,
        got: usize,
    },
    #[error("argument {index} `{arg}` of `{program}` matches none of its allowed patterns (policy: process.programs.args)")]
    ArgNotAllowed {
        program: String,
        index: usize,
        arg: String,
    },
    #[error(
        "argument {index} `{arg}` of `{program}` is a path outside the step's directories ({dirs})"
    )]
    PathOutside {
        program: String,
        index: usize,
        arg: String,
        dirs: String,
    },
    #[error("the first argument of `{program}` must be one of its allowed entry points, not `{arg}` (policy: process.programs.first)")]
    FirstArgNotAllowed { program: String, arg: String },
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
}

/// Longest program path accepted (PATH_MAX).
pub const MAX_PROGRAM_BYTES: usize = 4096;
/// Longest single argument accepted (well under Linux's 128 KiB MAX_ARG_STRLEN).
pub const MAX_ARG_BYTES: usize = 32 << 10;
/// Most argument bytes one invocation may carry.
pub const MAX_TOTAL_ARG_BYTES: usize = 256 << 10;

impl ProcessCtx {
    fn dirs_list(&self) -> String {
        self.dirs
            .iter()
            .map(|d| d.guest.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn expand(&self, pattern: &str) -> String {
        let mut out = pattern.to_owned();
        for d in &self.dirs {
            let key = format!("{{{}}}", d.guest.trim_start_matches('/'));
            out = out.replace(&key, &d.host.to_string_lossy());
        }
        out
    }

    /// Whether `path` (absolute, host) lies inside one of the step's directories.
    fn inside_dirs(&self, path: &str) -> bool {
        let p = Path::new(path);
        if p.components().any(|c| matches!(c, Component::ParentDir)) {
            return false;
        }
        self.dirs.iter().any(|d| p.starts_with(&d.host))
    }

    /// Whether `arg` (or the value of a `key=value` argument) is not an absolute path, or is one
    /// inside the step's directories.
    fn inside_dirs_or_plain(&self, arg: &str) -> bool {
        let path_part = arg.split_once('=').map_or(arg, |(_, v)| v);
        let path = if arg.starts_with('/') { arg } else { path_part };
        !path.starts_with('/') || self.inside_dirs(path)
    }

    /// Checks an invocation against the policy.
    pub fn check(&self, cmd: &Command) -> Result<(), Refusal> {
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
        if cmd.args.len() > rule.max_args {
            return Err(Refusal::TooManyArgs {
                program: cmd.program.clone(),
                max: rule.max_args,
                got: cmd.args.len(),
            });
        }
        if !rule.first.is_empty() {
            let first: Vec<String> = rule.first.iter().map(|p| self.expand(p)).collect();
            let arg = cmd.args.first().map(String::as_str).unwrap_or("");
            if !first.iter().any(|p| pattern_match(p, arg)) || !self.inside_dirs_or_plain(arg) {
                return Err(Refusal::FirstArgNotAllowed {
                    program: cmd.program.clone(),
                    arg: arg.to_owned(),
                });
            }
        }
        let patterns: Vec<String> = rule.args.iter().map(|p| self.expand(p)).collect();
        for (index, arg) in cmd.args.iter().enumerate() {
            if !patterns.iter().any(|p| pattern_match(p, arg)) {
                return Err(Refusal::ArgNotAllowed {
                    program: cmd.program.clone(),
                    index,
                    arg: arg.clone(),
                });
            }
            // Whatever the patterns say, a path argument stays inside the step's directories.
            if !rule.any_path && !self.inside_dirs_or_plain(arg) {
                return Err(Refusal::PathOutside {
                    program: cmd.program.clone(),
                    index,
                    arg: arg.clone(),
                    dirs: self.dirs_list(),
                });
            }
        }
        Ok(())
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

/// A pattern of a program rule: `re:<regex>` (whole argument), or a wildcard pattern.
pub fn pattern_match(pattern: &str, text: &str) -> bool {
    match pattern.strip_prefix("re:") {
        Some(re) => regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(text)),
        None => wildcard_match(pattern, text),
    }
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
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

/// Stops a program's process group when the guest call is dropped (the deployment was
/// cancelled or replaced, the agent shuts down): SIGTERM, then SIGKILL after [`STOP_GRACE`] if
/// anything of it is left. Disarmed once the program was reaped, or for a program that must
/// finish (`finish-on-cancel`: apt-get, dpkg).
struct GroupStopper {
    pgid: Option<i32>,
    grace: Duration,
}

impl Drop for GroupStopper {
    fn drop(&mut self) {
        let Some(pgid) = self.pgid.take() else {
            return;
        };
        if !signal_group(pgid, libc::SIGTERM) {
            return; // already gone
        }
        let grace = self.grace;
        // Not on the async runtime: this runs while a future is dropped.
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + grace;
            while std::time::Instant::now() < deadline {
                if !signal_group(pgid, 0) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            signal_group(pgid, libc::SIGKILL);
        });
    }
}

/// Stops a program at its time limit: SIGTERM to the group, then SIGKILL after `grace` unless
/// it exited; returns its status.
async fn stop_at_time_limit(
    child: &mut tokio::process::Child,
    pgid: i32,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    signal_group(pgid, libc::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            // The leader is gone; whatever it left in its group is not.
            signal_group(pgid, libc::SIGKILL);
            status.ok()
        }
        Err(_) => {
            signal_group(pgid, libc::SIGKILL);
            child.wait().await.ok()
        }
    }
}

/// The program gets SIGKILL when the agent dies (`PR_SET_PDEATHSIG`), so a killed agent does not
/// leave it running beside the step the restarted agent runs again.
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
            // The agent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::other(
                    "the agent exited before the program started",
                ));
            }
            Ok(())
        });
    }
}

impl ProcessCtx {
    async fn run(&self, cmd: Command) -> Result<Output, WitError> {
        self.check(&cmd)
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

        let rule = self.policy.programs.iter().find(|r| r.path == cmd.program);
        let rule_env = rule.map(|r| r.env.clone()).unwrap_or_default();
        let finish_on_cancel = rule.is_some_and(|r| r.finish_on_cancel);
        let mut command = tokio::process::Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .env_clear()
            .env("PATH", PATH)
            .env("LANG", "C")
            .envs(rule_env)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if !finish_on_cancel {
            die_with_the_agent(&mut command);
        }
        let mut child = command
            .spawn()
            .map_err(|e| WitError::SpawnFailed(format!("{}: {e}", cmd.program)))?;
        let pgid = child.id().map(|id| id as i32);
        let mut stopper = GroupStopper {
            pgid: pgid.filter(|_| !finish_on_cancel),
            grace: STOP_GRACE,
        };
        tracing::info!(target: "sandstep::process", handler = %self.handler_id, program = %cmd.program, args = ?cmd.args, "running host program");

        let cap = self.policy.max_output_bytes;
        let stdout = read_tail(child.stdout.take().expect("stdout is piped"), cap);
        let stderr = read_tail(child.stderr.take().expect("stderr is piped"), cap);
        let work = async { tokio::join!(child.wait(), stdout, stderr) };
        let (status, timed_out, out, err) = match tokio::time::timeout(limit, work).await {
            Ok((status, out, err)) => (status.ok(), false, out, err),
            Err(_) => {
                let status = match pgid {
                    Some(pgid) => stop_at_time_limit(&mut child, pgid, STOP_GRACE).await,
                    None => child.wait().await.ok(),
                };
                (status, true, (Vec::new(), false), (Vec::new(), false))
            }
        };
        stopper.pgid = None; // reaped: the group id may be reused
        use std::os::unix::process::ExitStatusExt;
        Ok(Output {
            exit_code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            timed_out,
            stdout: String::from_utf8_lossy(&out.0).into_owned(),
            stderr: String::from_utf8_lossy(&err.0).into_owned(),
            truncated: out.1 || err.1,
        })
    }
}

/// The view the generated bindings call into.
pub struct ProcessView<'a>(&'a mut ProcessCtx);

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

/// Links `process`; only called for handlers granted it.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    process::add_to_linker::<HostState, HasProcess>(linker, |s| {
        ProcessView(
            s.process
                .as_mut()
                .expect("process is linked only into stores that were granted it"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ProcessCtx {
        ProcessCtx {
            policy: ProcessPolicy {
                programs: vec![ProgramRule {
                    path: "/usr/bin/apt-get".into(),
                    args: vec![
                        "-y".into(),
                        "install".into(),
                        "{payload}/*.deb".into(),
                        "*=*".into(),
                        "[a-z]*".into(),
                    ],
                    max_args: 4,
                    first: vec![],
                    any_path: false,
                    env: Default::default(),
                    finish_on_cancel: false,
                }],
                ..ProcessPolicy::default()
            },
            handler_id: "microsoft/apt:1".into(),
            dirs: vec![
                MappedDir {
                    guest: "/payload".into(),
                    host: "/data/p".into(),
                },
                MappedDir {
                    guest: "/work".into(),
                    host: "/data/w".into(),
                },
            ],
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
    fn wildcards_match_runs_of_any_characters() {
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*c", "abbbc"));
        assert!(wildcard_match("/p/*.deb", "/p/x_1.0.deb"));
        assert!(!wildcard_match("/p/*.deb", "/p/x.debx"));
        assert!(!wildcard_match("-y", "-yes"));
    }

    #[test]
    fn a_program_not_on_the_list_is_refused_naming_the_rule() {
        let err = ctx().check(&cmd("/bin/rm", &["-rf", "/"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "program `/bin/rm` is not on the allow list of handler `microsoft/apt:1` (policy: process.programs)"
        );
    }

    #[test]
    fn an_argument_matching_no_pattern_is_refused_naming_the_rule() {
        let err = ctx()
            .check(&cmd("/usr/bin/apt-get", &["-y", "--purge"]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "argument 1 `--purge` of `/usr/bin/apt-get` matches none of its allowed patterns (policy: process.programs.args)"
        );
    }

    #[test]
    fn a_path_outside_the_step_dirs_is_refused_even_if_a_pattern_matches() {
        let err = ctx()
            .check(&cmd("/usr/bin/apt-get", &["x=/etc/shadow"]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "argument 0 `x=/etc/shadow` of `/usr/bin/apt-get` is a path outside the step's directories (/payload, /work)"
        );
        let err = ctx()
            .check(&cmd("/usr/bin/apt-get", &["/data/p/../../etc/x.deb"]))
            .unwrap_err();
        assert!(
            matches!(
                err,
                Refusal::ArgNotAllowed { .. } | Refusal::PathOutside { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn allowed_invocations_pass() {
        ctx()
            .check(&cmd(
                "/usr/bin/apt-get",
                &["-y", "install", "/data/p/t_1.0_all.deb", "tree=1.8"],
            ))
            .unwrap();
    }

    #[test]
    fn regex_patterns_match_whole_arguments() {
        let pkg = "re:[a-z0-9][a-z0-9+.-]*(=[A-Za-z0-9.+~:-]+)?";
        assert!(pattern_match(pkg, "tree"));
        assert!(pattern_match(pkg, "tree=1.8.0-1"));
        assert!(!pattern_match(pkg, "-oAPT::Update::Pre-Invoke::=sh"));
        assert!(!pattern_match(pkg, "tree;rm"));
        assert!(
            !pattern_match("re:(", "("),
            "an invalid regex matches nothing"
        );
    }

    #[test]
    fn the_first_argument_rule_pins_the_entry_point() {
        let mut c = ctx();
        c.policy.programs.push(ProgramRule {
            path: "/bin/sh".into(),
            args: vec!["*".into()],
            max_args: 8,
            first: vec!["{payload}/*".into()],
            any_path: true,
            env: Default::default(),
            finish_on_cancel: false,
        });
        c.check(&cmd(
            "/bin/sh",
            &["/data/p/install.sh", "--x", "/usr/local/devices/cam"],
        ))
        .unwrap();
        let err = c.check(&cmd("/bin/sh", &["-c", "rm -rf /"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the first argument of `/bin/sh` must be one of its allowed entry points, not `-c` (policy: process.programs.first)"
        );
        let err = c
            .check(&cmd("/bin/sh", &["/data/p/../../etc/x.sh"]))
            .unwrap_err();
        assert!(matches!(err, Refusal::FirstArgNotAllowed { .. }), "{err}");
        assert!(matches!(
            c.check(&cmd("/bin/sh", &[])).unwrap_err(),
            Refusal::FirstArgNotAllowed { .. }
        ));
    }

    #[test]
    fn too_many_arguments_are_refused() {
        let err = ctx()
            .check(&cmd("/usr/bin/apt-get", &["-y", "-y", "-y", "-y", "-y"]))
            .unwrap_err();
        assert!(
            matches!(err, Refusal::TooManyArgs { max: 4, got: 5, .. }),
            "{err}"
        );
    }

    #[test]
    fn huge_and_nul_arguments_and_program_paths_are_refused_before_matching() {
        let c = ctx();
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
    fn host_paths_resolve_inside_dirs_only() {
        let c = ctx();
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
