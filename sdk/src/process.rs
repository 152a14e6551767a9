//! The `process` capability: run an allow-listed host program.
//!
//! Only components whose handler id the gateway's policy grants `process` may use this; the
//! policy also lists the programs and the argument shapes allowed. The program runs on the host
//! with a cleared environment (`PATH` and `LANG=C` only), no stdin, captured output and a time limit.

use crate::__bindings::sandstep::handler::process as wit;
use crate::failure::Failure;
use sandstep_model::codes::erc;
use std::path::Path;
use std::time::Duration;

/// A program invocation, built step by step and run with [`Command::run`].
///
/// ```no_run
/// use sandstep_sdk::process::Command;
/// let out = Command::new("/usr/bin/dpkg-query")
///     .args(["-W", "-f", "${Version}", "tree"])
///     .timeout(std::time::Duration::from_secs(30))
///     .run()?;
/// if out.success() {
///     sandstep_sdk::log::info(&format!("tree {}", out.stdout));
/// }
/// # Ok::<(), sandstep_sdk::process::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    program: String,
    args: Vec<String>,
    cwd: Option<String>,
    timeout: Option<Duration>,
}

impl Command {
    /// A command for the program at this absolute host path.
    ///
    /// ```
    /// let cmd = sandstep_sdk::process::Command::new("/usr/bin/apt-get");
    /// ```
    pub fn new(program: impl Into<String>) -> Self {
        Command {
            program: program.into(),
            args: Vec::new(),
            cwd: None,
            timeout: None,
        }
    }

    /// Adds an argument.
    ///
    /// ```
    /// let cmd = sandstep_sdk::process::Command::new("/bin/echo").arg("hello");
    /// ```
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    ///
    /// ```
    /// let cmd = sandstep_sdk::process::Command::new("/bin/echo").args(["a", "b"]);
    /// ```
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs in this sandbox directory (`/work`, `/payload` or `/state`); the default is `/work`.
    ///
    /// ```
    /// let cmd = sandstep_sdk::process::Command::new("/bin/ls").cwd("/payload");
    /// ```
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Asks for a shorter time limit than the policy's.
    ///
    /// ```
    /// let cmd = sandstep_sdk::process::Command::new("/bin/true").timeout(std::time::Duration::from_secs(5));
    /// ```
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Runs the program to completion.
    ///
    /// ```no_run
    /// let out = sandstep_sdk::process::Command::new("/bin/true").run()?;
    /// assert!(out.success());
    /// # Ok::<(), sandstep_sdk::process::Error>(())
    /// ```
    pub fn run(&self) -> Result<Output, Error> {
        let cmd = wit::Command {
            program: self.program.clone(),
            args: self.args.clone(),
            cwd: self.cwd.clone(),
            timeout_ms: self
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        };
        let out = wit::run(&cmd).map_err(Error::from)?;
        Ok(Output {
            exit_code: out.exit_code,
            signal: out.signal,
            timed_out: out.timed_out,
            stdout: out.stdout,
            stderr: out.stderr,
            truncated: out.truncated,
        })
    }
}

/// What a finished program left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit status, or `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// True when the host killed it at its time limit.
    pub timed_out: bool,
    /// Captured standard output (the end of it, when truncated).
    pub stdout: String,
    /// Captured standard error (the end of it, when truncated).
    pub stderr: String,
    /// True when output was cut to the policy's cap.
    pub truncated: bool,
}

impl Output {
    /// Exit status 0 and not timed out.
    ///
    /// ```
    /// let out = sandstep_sdk::process::Output { exit_code: Some(0), signal: None, timed_out: false,
    ///     stdout: String::new(), stderr: String::new(), truncated: false };
    /// assert!(out.success());
    /// ```
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }

    /// Up to `n` of the last non-blank lines, stderr's first (errors matter most), then stdout's
    /// for what room is left; each in the order the program wrote them.
    ///
    /// ```
    /// let out = sandstep_sdk::process::Output { exit_code: Some(1), signal: None, timed_out: false,
    ///     stdout: "a\nb\n".into(), stderr: "E: one\nE: two\n".into(), truncated: false };
    /// assert_eq!(out.tail(3), "E: one\nE: two\nb");
    /// assert_eq!(out.tail(1), "E: two");
    /// ```
    pub fn tail(&self, n: usize) -> String {
        let last = |text: &str, n: usize| -> Vec<String> {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            lines[lines.len().saturating_sub(n)..]
                .iter()
                .map(|l| l.to_string())
                .collect()
        };
        let mut lines = last(&self.stderr, n);
        lines.extend(last(&self.stdout, n - lines.len()));
        lines.join("\n")
    }
}

/// Why a program did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The policy refused it; the text names the rule.
    Denied(String),
    /// The program could not be started.
    SpawnFailed(String),
    /// A sandbox path could not be mapped to a host path.
    BadPath(String),
}

impl From<wit::Error> for Error {
    fn from(e: wit::Error) -> Self {
        match e {
            wit::Error::Denied(s) => Error::Denied(s),
            wit::Error::SpawnFailed(s) => Error::SpawnFailed(s),
            wit::Error::BadPath(s) => Error::BadPath(s),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Denied(s) => write!(f, "denied by policy: {s}"),
            Error::SpawnFailed(s) => write!(f, "could not start: {s}"),
            Error::BadPath(s) => write!(f, "bad path: {s}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for Failure {
    /// A capability error becomes a failure with extended code `SDK_CAPABILITY_FAILED`.
    fn from(e: Error) -> Failure {
        Failure::new(erc::SDK_CAPABILITY_FAILED, format!("process: {e}"))
    }
}

/// The host path behind a sandbox path (`/payload/...`, `/work/...`, `/state/...`), to pass to a
/// program as an argument.
///
/// ```no_run
/// let deb = sandstep_sdk::process::host_path("/payload/tool_1.0_all.deb")?;
/// # Ok::<(), sandstep_sdk::process::Error>(())
/// ```
pub fn host_path(sandbox_path: impl AsRef<Path>) -> Result<String, Error> {
    let p = sandbox_path.as_ref().to_string_lossy();
    wit::host_path(&p).map_err(Error::from)
}
