//! `sandstep dev run`: a handler under development, signed with a throwaway key, installed into
//! a throwaway data directory, and run on a manifest, in one command. Each stage is this binary's
//! own command (trust add, handler install, run), so what passes here passes on a gateway with
//! the same config. `--twice` checks the handler's idempotency (the second run finds every step
//! installed), `--cancel-during` its cancel path; compiled components are kept across runs
//! (dev_cache), so an unchanged handler is not compiled again.

use super::dev_cache::DevCache;
use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use sandstep::trust::handler_sig;
use sandstep_model::codes::result;
use sandstep_model::journal::Status;
use sandstep_model::results::ResultFile;
use sandstep_model::Action;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Sign COMPONENT with a throwaway key, install it for its handler id in a throwaway data
    /// directory, and run MANIFEST there (unsigned manifests allowed); prints each step's result.
    Run(DevRunArgs),
}

#[derive(Debug, Args)]
pub struct DevRunArgs {
    /// The update manifest (or deployment document) to run.
    manifest: PathBuf,
    /// The handler component (.wasm; signed or not: it is signed again with the throwaway key).
    #[arg(long)]
    handler: PathBuf,
    /// The handler id to install it as (default: the manifest's first step's handler).
    #[arg(long)]
    id: Option<String>,
    /// Where the manifest's files are (a directory or a base URL).
    #[arg(long, default_value = ".")]
    files: String,
    /// A gateway configuration to run under (grants, `dirs`, slots, program allow-lists; a
    /// relative `dirs` host path is relative to the file); default: the embedded defaults (no
    /// capability granted).
    #[arg(long = "with-config")]
    with_config: Option<PathBuf>,
    /// Run the manifest a second time in the same data directory, as a new deployment of the
    /// same update: every step should be found installed (603). Fails when one runs again.
    #[arg(long, conflicts_with = "cancel_during")]
    twice: bool,
    /// Cancel when the first step's ACTION call begins (is-installed, download, backup,
    /// install, apply): the call is stopped and the handler's `cancel` runs, as on a gateway.
    /// Succeeds when the deployment ends cancelled.
    #[arg(long, value_name = "ACTION")]
    cancel_during: Option<Action>,
    /// Compile the component afresh instead of reusing (and keeping) the compiled copy in
    /// $XDG_CACHE_HOME/sandstep/dev.
    #[arg(long)]
    no_cache: bool,
    /// Keep the data directory (its path is printed) instead of removing it.
    #[arg(long)]
    keep: bool,
}

pub fn run(cmd: DevCommand) -> Result<ExitCode> {
    let DevCommand::Run(args) = cmd;
    let id = match &args.id {
        Some(id) => id.clone(),
        None => first_handler(&args.manifest)?,
    };
    let dir = tempfile::Builder::new().prefix("sandstep-dev.").tempdir()?;
    let data = dir.path().join("data");
    let config: Vec<&Path> = args.with_config.iter().map(PathBuf::as_path).collect();
    install(&args, &id, dir.path(), &config)?;

    let code = if let Some(action) = args.cancel_during {
        cancelled_run(&args, action, dir.path(), &config)?
    } else {
        let first = run_once(&args, &data, "dev-1", None, &config)?;
        match first {
            0 if args.twice => second_run(&args, dir.path(), &config)?,
            0 => 0,
            failed => {
                if args.twice {
                    eprintln!("--twice: the first run failed; no second run");
                }
                failed
            }
        }
    };
    if args.keep {
        eprintln!("data directory kept: {}", dir.keep().join("data").display());
    } else {
        eprintln!("(the data directory and its result file are removed; --keep keeps them)");
    }
    Ok(ExitCode::from(code))
}

/// Signs the component with the dev key (a throwaway one with --no-cache), trusts the key and
/// installs the handler in the data directory, compiled components coming from (and going to)
/// the dev cache.
fn install(args: &DevRunArgs, id: &str, dir: &Path, config: &[&Path]) -> Result<()> {
    let data = dir.join("data");
    let cache = if args.no_cache {
        None
    } else {
        DevCache::open()
    };
    let kp = match &cache {
        Some(c) => c
            .signing_key()
            .with_context(|| format!("dev cache {}", c.path().display()))?,
        None => wasmsign2::KeyPair::generate(),
    };
    let signed = dir.join("handler.wasm");
    let bytes = std::fs::read(&args.handler)
        .with_context(|| format!("--handler {}", args.handler.display()))?;
    std::fs::write(&signed, handler_sig::sign(&bytes, &kp.sk, &kp.pk)?)?;
    let key = dir.join("dev.pub");
    std::fs::write(&key, kp.pk.to_bytes())?;
    if let Some(c) = &cache {
        c.lend(&data)
            .with_context(|| format!("dev cache {}", c.path().display()))?;
    }
    stage(&["trust", "add", "handler"], &[&key], &data, config)?;
    stage(
        &["handler", "install"],
        &[&signed, Path::new("--id"), Path::new(id)],
        &data,
        config,
    )?;
    if let Some(c) = &cache {
        // A cache that cannot be written costs the next run its compile, nothing else.
        match c.keep(&data) {
            Ok(0) => eprintln!("dev cache: the compiled component was reused (unchanged)"),
            Ok(_) => eprintln!(
                "dev cache: compiled; kept in {} for the next run",
                c.path().display()
            ),
            Err(e) => eprintln!("dev cache {}: {e:#}", c.path().display()),
        }
    }
    Ok(())
}

/// `sandstep run` of the manifest in the data directory; its exit code.
fn run_once(
    args: &DevRunArgs,
    data: &Path,
    workflow_id: &str,
    extra: Option<(&str, &Path)>,
    config: &[&Path],
) -> Result<u8> {
    let mut run = Command::new(std::env::current_exe()?);
    run.arg("run")
        .arg(&args.manifest)
        .args(["--allow-unsigned", "--files", &args.files])
        .args(["--workflow-id", workflow_id])
        .arg("--data-dir")
        .arg(data);
    if let Some((flag, value)) = extra {
        run.arg(flag).arg(value);
    }
    for c in config {
        run.arg("--config").arg(c);
    }
    let status = run.status().context("cannot run sandstep run")?;
    Ok(status.code().unwrap_or(1).clamp(0, 255) as u8)
}

/// The second run of `--twice`: every step must be found installed.
fn second_run(args: &DevRunArgs, dir: &Path, config: &[&Path]) -> Result<u8> {
    eprintln!("\n--twice: the same update again, in the same data directory (a new deployment)");
    let result_file = dir.join("second.json");
    let extra = Some(("--result-file", result_file.as_path()));
    let code = run_once(args, &dir.join("data"), "dev-2", extra, config)?;
    let result: ResultFile = serde_json::from_slice(
        &std::fs::read(&result_file).context("the second run wrote no result file")?,
    )?;
    let ran_again = steps_that_ran_again(&result);
    if code != 0 || !ran_again.is_empty() {
        eprintln!(
            "--twice: not idempotent: {} ran again (its is-installed did not recognise what the first run installed)",
            if ran_again.is_empty() { "the update".to_owned() } else { ran_again.join(", ") }
        );
        return Ok(1);
    }
    eprintln!("--twice: already installed: every step was skipped (603) the second time");
    Ok(0)
}

/// The steps of a second run that were not skipped as already installed.
fn steps_that_ran_again(r: &ResultFile) -> Vec<String> {
    r.step_results
        .iter()
        .filter(|(_, s)| s.result_code != result::INSTALL_SKIPPED_UPDATE_ALREADY_INSTALLED)
        .map(|(key, s)| format!("{key} ({})", s.result_code))
        .collect()
}

/// A run cancelled as ACTION begins: succeeds when the deployment ended cancelled.
fn cancelled_run(args: &DevRunArgs, action: Action, dir: &Path, config: &[&Path]) -> Result<u8> {
    let result_file = dir.join("cancelled.json");
    let mut run = Command::new(std::env::current_exe()?);
    run.arg("run")
        .arg(&args.manifest)
        .args(["--allow-unsigned", "--files", &args.files])
        .args([
            "--workflow-id",
            "dev-cancel",
            "--cancel-during",
            action.name(),
        ])
        .arg("--result-file")
        .arg(&result_file)
        .arg("--data-dir")
        .arg(dir.join("data"));
    for c in config {
        run.arg("--config").arg(c);
    }
    run.status().context("cannot run sandstep run")?;
    let result: ResultFile = serde_json::from_slice(
        &std::fs::read(&result_file).context("the run wrote no result file")?,
    )?;
    if result.status != Status::Cancelled {
        eprintln!(
            "--cancel-during {action}: nothing was cancelled: the deployment ended {:?} before any step's {action} began",
            result.status
        );
        return Ok(1);
    }
    eprintln!(
        "--cancel-during {action}: the deployment was cancelled as {action} began (the handler's `cancel` call, when the step had begun far enough for one, is above)"
    );
    Ok(0)
}

/// Runs `sandstep <what> <args> --data-dir DATA [--config C]`; fails with its output.
fn stage(what: &[&str], args: &[&Path], data: &Path, config: &[&Path]) -> Result<()> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(what).args(args).arg("--data-dir").arg(data);
    for c in config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run sandstep {}", what.join(" ")))?;
    if !out.status.success() {
        bail!(
            "sandstep {} failed:\n{}{}",
            what.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The handler of the manifest's first inline step.
fn first_handler(manifest: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(manifest).with_context(|| format!("{}", manifest.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}", manifest.display()))?;
    doc.pointer("/instructions/steps")
        .and_then(|s| s.as_array())
        .and_then(|steps| steps.iter().find_map(|s| s.get("handler")?.as_str()))
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "{}: no inline step names a handler; say which with --id",
                manifest.display()
            )
        })
}
