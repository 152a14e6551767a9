//! Carries a [`Plan`] out: each try runs every check in order within the plan's time limit; a
//! try passes when all of them pass; a failed try is followed by a pause and the next, until the
//! tries run out. The failure names the check, the try, and what the check said.

use super::{Check, Plan};
use crate::capability::ledger::ProgramLedger;
use crate::capability::process::{MappedDir, ProcessCtx, ProcessPolicy};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How much of a failing check's output a report keeps (the end).
const OUTPUT_KEPT: usize = 512;

/// Why the checks did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("health check {check} failed (try {attempt} of {tries}): {said}")]
pub struct Failure {
    pub check: String,
    pub attempt: u32,
    pub tries: u32,
    /// What the check said: its exit status and the end of its output, the HTTP status, or
    /// why it could not run.
    pub said: String,
}

/// The `process` capability's host side for health programs: `dir` is their `/work` (and
/// `/payload`, read-only, and `/state`).
pub fn process_ctx(
    policy: ProcessPolicy,
    dir: &Path,
    ledger: Option<Arc<ProgramLedger>>,
) -> ProcessCtx {
    let mapped = ["/payload", "/work", "/state"]
        .into_iter()
        .map(|guest| MappedDir {
            guest: guest.into(),
            host: dir.to_path_buf(),
            writable: guest != "/payload",
        })
        .collect();
    ProcessCtx::for_step(policy, "health", mapped, ledger)
}

/// What a failing check said.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Said(String);

/// Where checks run: programs with `dir` as their `/work` (and `/payload`, `/state`), recorded
/// in `ledger`.
pub struct Runner {
    process: ProcessCtx,
    client: reqwest::Client,
    systemctl: String,
}

impl Runner {
    pub fn new(plan: &Plan, dir: &Path, ledger: Option<Arc<ProgramLedger>>) -> Runner {
        Runner {
            process: process_ctx(plan.process.clone(), dir, ledger),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap_or_default(),
            systemctl: plan.systemctl.clone(),
        }
    }

    /// Runs the plan: `Ok` once a try passes; the last try's failure otherwise. A cancel ends
    /// it as a failure.
    pub async fn run(&self, plan: &Plan, cancel: &CancellationToken) -> Result<(), Failure> {
        let mut attempt = 1;
        loop {
            let failed = tokio::select! {
                r = self.try_once(plan) => r,
                _ = cancel.cancelled() => Some((String::from("(all)"), "cancelled".into())),
            };
            let Some((check, said)) = failed else {
                tracing::info!(attempt, "health checks passed");
                return Ok(());
            };
            tracing::warn!(attempt, tries = plan.tries, %check, %said, "a health check failed");
            if attempt >= plan.tries || cancel.is_cancelled() {
                return Err(Failure {
                    check,
                    attempt,
                    tries: plan.tries,
                    said,
                });
            }
            attempt += 1;
            tokio::select! {
                _ = tokio::time::sleep(plan.interval) => {}
                _ = cancel.cancelled() => {}
            }
        }
    }

    /// One try: the first failing check and what it said, or `None`.
    async fn try_once(&self, plan: &Plan) -> Option<(String, String)> {
        let deadline = Instant::now() + plan.time_limit;
        for check in &plan.checks {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Some((
                    check.to_string(),
                    format!(
                        "the time limit ({} s) was reached before it ran",
                        plan.time_limit.as_secs()
                    ),
                ));
            }
            if let Err(Said(said)) = self.one(check, left).await {
                return Some((check.to_string(), said));
            }
        }
        None
    }

    async fn one(&self, check: &Check, left: Duration) -> Result<(), Said> {
        match check {
            Check::Program(argv) => self.program(argv, left).await,
            Check::Unit(unit) => {
                let argv = super::unit_argv(&self.systemctl, unit);
                self.program(&argv, left).await
            }
            Check::Url(url) => self.url(url, left).await,
        }
    }

    async fn program(&self, argv: &[String], left: Duration) -> Result<(), Said> {
        let cmd = crate::bindings::process::Command {
            program: argv[0].clone(),
            args: argv[1..].to_vec(),
            cwd: None,
            timeout_ms: Some(left.as_millis() as u64),
        };
        let out = self
            .process
            .run(cmd)
            .await
            .map_err(|e| Said(format!("{e:?}")))?;
        if out.exit_code == Some(0) {
            return Ok(());
        }
        let status = match (out.exit_code, out.signal, out.timed_out) {
            (_, _, true) => "stopped at the time limit".to_string(),
            (Some(code), _, _) => format!("exit status {code}"),
            (None, Some(sig), _) => format!("killed by signal {sig}"),
            (None, None, _) => "no exit status".to_string(),
        };
        let output = format!("{}{}", out.stdout, out.stderr);
        Err(Said(format!("{status}; output: {}", tail(output.trim()))))
    }

    async fn url(&self, url: &str, left: Duration) -> Result<(), Said> {
        let answer = self.client.get(url).timeout(left).send().await;
        match answer {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                Err(Said(format!("HTTP {status}; body: {}", tail(body.trim()))))
            }
            Err(e) => Err(Said(format!("no answer: {e}"))),
        }
    }
}

/// The end of `s`, at most [`OUTPUT_KEPT`] bytes, on a character boundary.
fn tail(s: &str) -> String {
    if s.len() <= OUTPUT_KEPT {
        return s.to_owned();
    }
    let mut start = s.len() - OUTPUT_KEPT;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}
