//! `sandstep step call`: run one action of one component against directories (development).

use anyhow::{bail, Context as _, Result};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use clap::{Args, Subcommand};
use sandstep::capability::process::ProcessPolicy;
use sandstep::capability::Grants;
use sandstep::sandbox::{
    CallTags, EngineOptions, Limits, Preopen, Sandbox, SessionSetup, StepDirs,
};
use sandstep_model::{Action, StepContext, StepFile, UpdateId};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Subcommand)]
pub enum StepCommand {
    /// Run one lifecycle action of a handler component and print the step result as JSON.
    ///
    /// The component is not signature-checked: this is a development command.
    Call(CallArgs),
}

#[derive(Debug, Args)]
pub struct CallArgs {
    /// The handler component (.wasm).
    component: PathBuf,
    /// The action: is-installed, download, backup, install, apply, cancel or restore.
    action: Action,
    /// Directory mounted read-only at /payload; its regular files become the step's files.
    #[arg(long)]
    payload: Option<PathBuf>,
    /// Directory mounted read-write at /work (default: a new temporary directory).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Directory mounted read-write at /state (default: a new temporary directory).
    #[arg(long)]
    state: Option<PathBuf>,
    /// handlerProperties, as a JSON object.
    #[arg(long, default_value = "{}")]
    properties: String,
    /// The handler id the step names.
    #[arg(long, default_value = "dev/handler:1")]
    handler_id: String,
    /// Time limit for the call, in seconds (default: the action's default limit).
    #[arg(long)]
    timeout: Option<f64>,
    /// Memory cap in MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// Grant the process capability with the policy in this TOML file ([[programs]] tables).
    #[arg(long)]
    process_policy: Option<PathBuf>,
}

pub async fn run(cmd: StepCommand, common: &super::common::Common) -> Result<ExitCode> {
    match cmd {
        StepCommand::Call(args) => call(args, &common.load_config()?.policy()).await,
    }
}

fn open_dir(path: &Path, what: &str) -> Result<Dir> {
    Dir::open_ambient_dir(path, ambient_authority())
        .with_context(|| format!("cannot open {what} directory {}", path.display()))
}

fn dir_or_temp(path: Option<PathBuf>, what: &str) -> Result<(Dir, PathBuf)> {
    let path = match path {
        Some(p) => p,
        None => {
            let t = tempfile::Builder::new()
                .prefix(&format!("sandstep-{what}-"))
                .tempdir()
                .context("cannot create a temporary directory")?;
            t.keep()
        }
    };
    Ok((open_dir(&path, what)?, path))
}

/// The regular files of the payload directory, as step files (id = name).
fn payload_files(dir: &Dir) -> Result<Vec<StepFile>> {
    let mut files = Vec::new();
    for entry in dir.entries()? {
        let entry = entry?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|n| anyhow::anyhow!("payload file name {n:?} is not UTF-8"))?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let mut f = dir.open(&name)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        files.push(StepFile {
            id: name.clone(),
            name,
            size,
            sha256: hex::encode(hasher.finalize()),
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// What the gateway's policy grants the handler id (capabilities, and its `dirs` mapped in),
/// with `--process-policy` in place of the config's program rules when given.
fn policy_grants(
    args: &CallArgs,
    policy: &sandstep::policy::Policy,
) -> Result<(Grants, Vec<Preopen>)> {
    let mut grants = policy.grants(&args.handler_id);
    if let Some(p) = &args.process_policy {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        let rules: ProcessPolicy = toml::from_str(&text)
            .with_context(|| format!("{}: invalid process policy", p.display()))?;
        grants.process = Some(rules);
    }
    let extra = policy.extra_preopens(&args.handler_id, None)?;
    for d in &extra {
        eprintln!(
            "{} = {} ({}, granted to {} by the config's dirs)",
            d.guest_path(),
            d.host_path()?.display(),
            if d.writable() {
                "read-write"
            } else {
                "read-only"
            },
            args.handler_id
        );
    }
    Ok((grants, extra))
}

async fn call(args: CallArgs, policy: &sandstep::policy::Policy) -> Result<ExitCode> {
    eprintln!(
        "warning: `step call` runs the component without checking its signature (development only)"
    );
    let properties: serde_json::Value =
        serde_json::from_str(&args.properties).context("--properties is not valid JSON")?;
    let serde_json::Value::Object(handler_properties) = properties else {
        bail!("--properties must be a JSON object");
    };
    let bytes: Arc<[u8]> = std::fs::read(&args.component)
        .with_context(|| format!("cannot read {}", args.component.display()))?
        .into();

    let (grants, extra) = policy_grants(&args, policy)?;
    let (payload, payload_path) = dir_or_temp(args.payload, "payload")?;
    let (work, work_path) = dir_or_temp(args.work, "work")?;
    let (state, state_path) = dir_or_temp(args.state, "state")?;
    let files = payload_files(&payload)?;
    eprintln!(
        "/payload = {} ({} files), /work = {}, /state = {}",
        payload_path.display(),
        files.len(),
        work_path.display(),
        state_path.display()
    );

    let mut limits = Limits {
        memory_bytes: args.memory_mib << 20,
        ..Limits::default()
    };
    if let Some(t) = args.timeout {
        limits = limits.with_all_time_limits(Duration::try_from_secs_f64(t).context("--timeout")?);
    }

    let sandbox = Sandbox::new(&EngineOptions::default(), None)?;
    let handler = sandbox
        .load(&args.component.display().to_string(), bytes)
        .await?;
    let ctx = StepContext {
        workflow_id: "dev".into(),
        update_id: UpdateId {
            provider: "dev".into(),
            name: "step".into(),
            version: "1.0".into(),
        },
        handler_id: args.handler_id.clone(),
        step_index: 0,
        level: 0,
        handler_properties,
        files,
        component: None,
    };
    let setup = SessionSetup {
        handler_id: args.handler_id.clone(),
        tags: CallTags {
            workflow_id: "dev".into(),
            step: "0".into(),
            handler_id: args.handler_id.clone(),
        },
        dirs: StepDirs {
            extra,
            ..StepDirs::new(payload, work, state)
        },
        grants,
        limits,
        events: None,
        streams: None,
    };
    let result = match sandbox.session(&handler, setup).await {
        Ok(mut session) => {
            let cancel = CancellationToken::new();
            let c = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    c.cancel();
                }
            });
            session.call(args.action, &ctx, &cancel).await
        }
        Err(e) => e.to_step_result(),
    };
    // Extended codes in hex, as result files, `status` and the README write them.
    let shown = serde_json::json!({
        "resultCode": result.result_code,
        "extendedResultCode": format!("{:08X}", result.extended_result_code as u32),
        "resultDetails": result.result_details,
    });
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(if result.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
