//! `sandstep dev run`: a handler under development, signed with a throwaway key, installed into
//! a throwaway data directory, and run on a manifest, in one command. Each stage is this binary's
//! own command (trust add, handler install, run), so what passes here passes on a gateway with
//! the same config.

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use sandstep::trust::handler_sig;
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
    /// A gateway configuration to run under (grants, slots, program allow-lists); default: the
    /// embedded defaults (no capability granted).
    #[arg(long = "with-config")]
    with_config: Option<PathBuf>,
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
    let signed = dir.path().join("handler.wasm");
    let kp = wasmsign2::KeyPair::generate();
    let bytes = std::fs::read(&args.handler)
        .with_context(|| format!("--handler {}", args.handler.display()))?;
    std::fs::write(&signed, handler_sig::sign(&bytes, &kp.sk, &kp.pk)?)?;
    let key = dir.path().join("dev.pub");
    std::fs::write(&key, kp.pk.to_bytes())?;

    let config: Vec<&Path> = args.with_config.iter().map(PathBuf::as_path).collect();
    stage(&["trust", "add", "handler"], &[&key], &data, &config)?;
    stage(
        &["handler", "install"],
        &[&signed, Path::new("--id"), Path::new(&id)],
        &data,
        &config,
    )?;
    let exe = std::env::current_exe()?;
    let mut run = Command::new(exe);
    run.arg("run")
        .arg(&args.manifest)
        .args(["--allow-unsigned", "--files", &args.files])
        .arg("--data-dir")
        .arg(&data);
    for c in &config {
        run.arg("--config").arg(c);
    }
    let status = run.status().context("cannot run sandstep run")?;
    if args.keep {
        eprintln!("data directory kept: {}", dir.keep().join("data").display());
    } else {
        eprintln!("(the data directory and its result file are removed; --keep keeps them)");
    }
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
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
