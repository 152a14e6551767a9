//! Health checks: what must hold after a reboot or agent restart a deployment asked for, before
//! sandstep commits it (RAUC's mark-good, Mender's ArtifactCommit scripts, SWUpdate's bootcount).
//!
//! The gateway's `[health]` table says which checks always run; a deployment may add its own in
//! a step's signed `handlerProperties.health` (programs its gateway allows, systemd units,
//! loopback URLs, a time limit and tries). This module holds the settings, their validation and
//! the checks' resolution, as pure functions; [`run`] carries the checks out.
//!
//! Programs (and `systemctl is-active` for units) run through the `process` capability's host
//! side, so a health program is held as a handler's program is: allow-listed by argument forms,
//! a cleared environment, its own control group, Landlock (writes only beneath the health
//! folder), killed with the agent and at its time limit.

use crate::capability::arg_grammar::ArgForm;
use crate::capability::process::{ProcessPolicy, ProgramRule};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

pub mod run;

/// `[health]` in the agent's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct HealthConfig {
    /// Programs (argument vectors, absolute paths) that must exit 0.
    pub programs: Vec<Vec<String>>,
    /// systemd units that must be active (`systemctl is-active`).
    pub units: Vec<String>,
    /// URLs that must answer a GET with a 2xx status.
    pub urls: Vec<String>,
    /// Time for one try of all checks together.
    pub time_limit_secs: u64,
    /// How many times the checks are tried before the deployment is rolled back.
    pub tries: u32,
    /// Pause between tries.
    pub interval_secs: u64,
    /// `systemctl`, for `units`.
    pub systemctl: String,
    /// The programs a deployment's own checks may run, as a handler's `process` policy says
    /// them (argument forms, limits). The programs of this table are allowed as written.
    pub process: ProcessPolicy,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            programs: Vec::new(),
            units: Vec::new(),
            urls: Vec::new(),
            time_limit_secs: 60,
            tries: 3,
            interval_secs: 5,
            systemctl: "/usr/bin/systemctl".into(),
            process: ProcessPolicy::default(),
        }
    }
}

/// The key of a step's `handlerProperties` that holds its checks: sandstep's, taken out of what
/// the handler is given (so a handler that refuses unknown properties is not troubled by it).
pub const PROPERTY: &str = "health";

/// A deployment's own checks: a step's `handlerProperties.health`, in the signed manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentHealth {
    #[serde(default)]
    pub programs: Vec<Vec<String>>,
    #[serde(default)]
    pub units: Vec<String>,
    #[serde(default)]
    pub urls: Vec<String>,
    pub time_limit_secs: Option<u64>,
    pub tries: Option<u32>,
}

/// A check's settings that do not hold; `field` names it as its author wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct HealthError {
    pub field: String,
    pub reason: String,
}

fn field_error(field: impl Into<String>, reason: impl Into<String>) -> HealthError {
    HealthError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Most tries, and longest time limit or pause, a setting may ask for.
pub const MAX_TRIES: u32 = 100;
pub const MAX_SECS: u64 = 24 * 3600;

/// One check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Program(Vec<String>),
    Unit(String),
    Url(String),
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Program(argv) => write!(f, "program `{}`", argv.join(" ")),
            Check::Unit(u) => write!(f, "unit `{u}`"),
            Check::Url(u) => write!(f, "url `{u}`"),
        }
    }
}

/// The checks a deployment must pass, with their timing and the programs' policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub checks: Vec<Check>,
    pub time_limit: Duration,
    pub tries: u32,
    pub interval: Duration,
    /// `systemctl`, for the unit checks.
    pub systemctl: String,
    /// Every program a check may run (the config's as written, `systemctl is-active` for each
    /// unit, and what `process` allows for a deployment's own).
    pub process: ProcessPolicy,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }
}

fn check_program(field: &str, argv: &[String]) -> Result<(), HealthError> {
    match argv.first() {
        None => Err(field_error(field, "an empty program")),
        Some(p) if !p.starts_with('/') => Err(field_error(
            field,
            format!("`{p}` must be an absolute path"),
        )),
        Some(_) => Ok(()),
    }
}

/// A systemd unit name: what `systemctl` takes as one, never an option.
fn check_unit(field: &str, unit: &str) -> Result<(), HealthError> {
    let ok = !unit.is_empty()
        && !unit.starts_with('-')
        && unit.len() <= 256
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c));
    if ok {
        Ok(())
    } else {
        Err(field_error(
            field,
            format!("`{unit}` is not a systemd unit name"),
        ))
    }
}

/// An http(s) URL; `loopback_only` for a deployment's (it may not make the gateway reach out).
fn check_url(field: &str, url: &str, loopback_only: bool) -> Result<(), HealthError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| field_error(field, format!("`{url}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(field_error(field, format!("`{url}` is not http or https")));
    }
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback_only && !loopback {
        return Err(field_error(
            field,
            format!("`{url}`: a deployment's health URLs must be on this device (localhost, 127.0.0.0/8 or ::1)"),
        ));
    }
    Ok(())
}

fn check_timing(prefix: &str, secs: Option<u64>, tries: Option<u32>) -> Result<(), HealthError> {
    if let Some(s) = secs {
        if s == 0 || s > MAX_SECS {
            return Err(field_error(
                format!("{prefix}time-limit"),
                format!("{s} seconds; between 1 and {MAX_SECS}"),
            ));
        }
    }
    if let Some(t) = tries {
        if t == 0 || t > MAX_TRIES {
            return Err(field_error(
                format!("{prefix}tries"),
                format!("{t}; between 1 and {MAX_TRIES}"),
            ));
        }
    }
    Ok(())
}

impl HealthConfig {
    /// Checks every field; the error names the first that does not hold (`health.urls[1]`).
    pub fn validate(&self) -> Result<(), HealthError> {
        for (i, p) in self.programs.iter().enumerate() {
            check_program(&format!("health.programs[{i}]"), p)?;
        }
        for (i, u) in self.units.iter().enumerate() {
            check_unit(&format!("health.units[{i}]"), u)?;
        }
        for (i, u) in self.urls.iter().enumerate() {
            check_url(&format!("health.urls[{i}]"), u, false)?;
        }
        check_timing("health.", Some(self.time_limit_secs), Some(self.tries))?;
        if self.interval_secs > MAX_SECS {
            return Err(field_error(
                "health.interval-secs",
                format!("{} seconds; at most {MAX_SECS}", self.interval_secs),
            ));
        }
        check_program("health.systemctl", std::slice::from_ref(&self.systemctl))?;
        for (i, r) in self.process.programs.iter().enumerate() {
            if !r.path.starts_with('/') {
                return Err(field_error(
                    format!("health.process.programs[{i}].path"),
                    format!("`{}` must be an absolute path", r.path),
                ));
            }
        }
        Ok(())
    }

    /// The argument vectors the config's own checks run.
    fn own_argvs(&self) -> Vec<Vec<String>> {
        let units = self.units.iter().map(|u| unit_argv(&self.systemctl, u));
        self.programs.iter().cloned().chain(units).collect()
    }
}

/// `systemctl is-active -- UNIT`: exits 0 only when the unit is active.
pub fn unit_argv(systemctl: &str, unit: &str) -> Vec<String> {
    vec![
        systemctl.into(),
        "is-active".into(),
        "--".into(),
        unit.into(),
    ]
}

/// Allows exactly `argv` (non-empty): a form of its program's rule (a later rule for the same
/// program would never be consulted), or a new rule.
fn allow(rules: &mut Vec<ProgramRule>, argv: &[String]) {
    let form = ArgForm {
        prefix: argv[1..].to_vec(),
        then: Vec::new(),
        rest: Vec::new(),
        max_args: argv.len() - 1,
    };
    match rules.iter_mut().find(|r| r.path == argv[0]) {
        Some(rule) => rule.forms.push(form),
        None => rules.push(ProgramRule::new(argv[0].clone(), vec![form])),
    }
}

/// A step's `handlerProperties.health`, checked (its programs against `[health.process]`, with
/// `dir` as their `/work`): `Ok(None)` when it has none.
pub fn deployment_health(
    properties: &serde_json::Map<String, Value>,
    config: &HealthConfig,
    dir: &std::path::Path,
) -> Result<Option<DeploymentHealth>, HealthError> {
    let Some(raw) = properties.get(PROPERTY) else {
        return Ok(None);
    };
    const AT: &str = "handlerProperties.health";
    let h: DeploymentHealth = serde_json::from_value(raw.clone()).map_err(|e| {
        field_error(
            AT,
            format!("{e} (fields: programs, units, urls, timeLimitSecs, tries)"),
        )
    })?;
    check_timing(&format!("{AT}."), h.time_limit_secs, h.tries)?;
    let allowed = run::process_ctx(config.process.clone(), dir, None);
    for (i, argv) in h.programs.iter().enumerate() {
        let field = format!("{AT}.programs[{i}]");
        check_program(&field, argv)?;
        let cmd = crate::bindings::process::Command {
            program: argv[0].clone(),
            args: argv[1..].to_vec(),
            cwd: None,
            timeout_ms: None,
        };
        allowed.check(&cmd).map_err(|r| {
            field_error(
                &field,
                format!("not allowed by the gateway's [health.process]: {r}"),
            )
        })?;
    }
    for (i, u) in h.units.iter().enumerate() {
        check_unit(&format!("{AT}.units[{i}]"), u)?;
    }
    for (i, u) in h.urls.iter().enumerate() {
        check_url(&format!("{AT}.urls[{i}]"), u, true)?;
    }
    Ok(Some(h))
}

/// The checks for a deployment: the gateway's, then each step's own, without repeats; the
/// longest time limit and the most tries any of them asks for.
pub fn plan(config: &HealthConfig, steps: &[DeploymentHealth]) -> Plan {
    let mut checks = Vec::new();
    let mut push = |c: Check| {
        if !checks.contains(&c) {
            checks.push(c);
        }
    };
    let mut process = config.process.clone();
    for argv in config.own_argvs() {
        allow(&mut process.programs, &argv);
    }
    config
        .programs
        .iter()
        .cloned()
        .for_each(|p| push(Check::Program(p)));
    config
        .units
        .iter()
        .cloned()
        .for_each(|u| push(Check::Unit(u)));
    config
        .urls
        .iter()
        .cloned()
        .for_each(|u| push(Check::Url(u)));
    let mut time_limit = config.time_limit_secs;
    let mut tries = config.tries;
    for s in steps {
        s.programs
            .iter()
            .cloned()
            .for_each(|p| push(Check::Program(p)));
        for u in &s.units {
            push(Check::Unit(u.clone()));
            allow(&mut process.programs, &unit_argv(&config.systemctl, u));
        }
        s.urls.iter().cloned().for_each(|u| push(Check::Url(u)));
        time_limit = time_limit.max(s.time_limit_secs.unwrap_or(0));
        tries = tries.max(s.tries.unwrap_or(0));
    }
    Plan {
        checks,
        time_limit: Duration::from_secs(time_limit),
        tries: tries.max(1),
        interval: Duration::from_secs(config.interval_secs),
        systemctl: config.systemctl.clone(),
        process,
    }
}

#[cfg(test)]
mod tests;
