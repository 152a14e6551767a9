//! `sandstep-fleet rollout create|list|status|pause|resume|abort`: phased rollouts, kept in the
//! replica's store (`[shadow] database`); the replicas carry them out ([`crate::rollout`]).

use super::common::Common;
use super::deployment::{deployment, new_workflow_id, DeploymentArgs};
use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use sandstep_fleet::operate::{self, Control, NewRollout};
use sandstep_fleet::rollout::{self, PhaseCounts, Rollout};
use sandstep_fleet::store::Store;
use sandstep_model::deployment::{action, Workflow};
use serde_json::{json, Value};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a phased rollout of a signed deployment to a group.
    Create(Box<CreateArgs>),
    /// List rollouts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Per-phase counts of a rollout (as `sandstep-fleet status --rollout ID`).
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop deploying to further devices (those deployed to carry on).
    Pause { id: String },
    /// Carry on a paused rollout; failures so far are accepted, the limit counts afresh.
    Resume { id: String },
    /// End a rollout for good: no further device gets it.
    Abort { id: String },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The group (devices reporting it in `groups`).
    #[arg(long)]
    group: String,
    #[command(flatten)]
    deployment: DeploymentArgs,
    /// Cumulative share of the group per phase.
    #[arg(long, default_value = "1%,10%,50%,100%")]
    phases: String,
    /// Pause when more than this share of the finished devices failed.
    #[arg(long)]
    max_failure_rate: Option<String>,
    /// Judge the failure rate once at least this many devices finished.
    #[arg(long, default_value_t = 1)]
    min_devices: u64,
    /// How long a finished phase is watched before the next one starts (90s, 10m, 2h).
    #[arg(long, default_value = "10m")]
    soak: String,
    /// Rollout id (default: generated); also the deployment's workflow id.
    #[arg(long)]
    id: Option<String>,
}

/// The replica's store as the config names it (`[shadow] database`, or the data dir's file).
pub async fn open_store(common: &Common) -> Result<Store> {
    let db = common.database()?;
    Store::open(&db)
        .await
        .with_context(|| format!("opening the replica's store {}", db.display()))
}

pub async fn run(cmd: RolloutCommand, common: &Common) -> Result<ExitCode> {
    let mut store = open_store(common).await?;
    match cmd {
        RolloutCommand::Create(args) => create(*args, &mut store).await,
        RolloutCommand::List { json } => list(&mut store, json).await,
        RolloutCommand::Status { id, json } => status(&mut store, &id, json).await,
        RolloutCommand::Pause { id } => control(&mut store, &id, Control::Pause).await,
        RolloutCommand::Resume { id } => control(&mut store, &id, Control::Resume).await,
        RolloutCommand::Abort { id } => control(&mut store, &id, Control::Abort).await,
    }
}

async fn create(args: CreateArgs, store: &mut Store) -> Result<ExitCode> {
    let phases = rollout::parse_phases(&args.phases)?;
    let max_failure_rate = args
        .max_failure_rate
        .as_deref()
        .map(|t| rollout::parse_percent("--max-failure-rate", t))
        .transpose()?;
    let soak_ms = rollout::parse_duration("--soak", &args.soak)?;
    let id = args.id.clone().unwrap_or_else(|| new_workflow_id("ro"));
    let workflow = Workflow {
        action: action::PROCESS_DEPLOYMENT,
        id: id.clone(),
        retry_timestamp: None,
    };
    let (doc, _) = deployment(&args.deployment, workflow)?;
    let new = NewRollout {
        id,
        group: args.group.clone(),
        deployment: doc,
        phases,
        max_failure_rate,
        min_devices: args.min_devices,
        soak_ms,
    };
    let (r, members) = operate::create(store, new, &cli_user()).await?;
    println!(
        "rollout {} of {} to group `{}` ({members} device(s) now) created; the replicas \
         start phase 1 within a second",
        r.id, r.update_id, r.group,
    );
    Ok(ExitCode::SUCCESS)
}

/// Who the audit log names for a command: `cli:<login name>`.
fn cli_user() -> String {
    let name = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }));
    format!("cli:{name}")
}

/// A rollout without its bulky deployment, for listings.
fn brief(r: &Rollout) -> Value {
    json!({
        "id": r.id, "group": r.group, "updateId": r.update_id, "state": r.progress.state.name(),
        "phase": r.progress.phase + 1, "phases": r.phases.iter().map(|p| f64::from(*p) / 100.0).collect::<Vec<_>>(),
        "maxFailureRate": r.max_failure_rate.map(|p| f64::from(p) / 100.0),
        "minDevices": r.min_devices, "soakMs": r.soak_ms, "reason": r.progress.reason,
        "createdMs": r.created_ms, "updatedMs": r.progress.updated_ms,
    })
}

async fn list(store: &mut Store, as_json: bool) -> Result<ExitCode> {
    let all = store.rollouts().await?;
    if as_json {
        let v: Vec<Value> = all.iter().map(|(r, _)| brief(r)).collect();
        println!("{}", serde_json::to_string(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<28}  {:<12}  {:<9}  {:<7}  UPDATE",
        "ROLLOUT", "GROUP", "STATE", "PHASE"
    );
    for (r, _) in all {
        println!(
            "{:<28}  {:<12}  {:<9}  {:<7}  {}",
            r.id,
            r.group,
            r.progress.state.name(),
            format!("{}/{}", r.progress.phase + 1, r.phases.len()),
            r.update_id
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How many audit entries `rollout status` shows, newest first.
const AUDIT_SHOWN: u32 = 20;

/// `rollout status ID` and `status --rollout ID`.
pub async fn status(store: &mut Store, id: &str, as_json: bool) -> Result<ExitCode> {
    let (r, _) = store
        .rollout(id)
        .await?
        .with_context(|| format!("no rollout `{id}`"))?;
    let members = store.members(&r).await?;
    let phases = rollout::summary(&r, &members);
    let audit = store.audit(Some(id), AUDIT_SHOWN).await?;
    if as_json {
        let mut v = brief(&r);
        v["phaseCounts"] = serde_json::to_value(&phases)?;
        v["audit"] = serde_json::to_value(&audit)?;
        println!("{}", serde_json::to_string(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_status(&r, &phases);
    if !audit.is_empty() {
        println!("WHEN                  WHO  ACTION  DETAIL");
    }
    for e in &audit {
        println!(
            "{}  {}  {}  {}",
            sandstep_transport::clock::iso8601_utc(e.at_ms / 1000),
            e.who,
            e.action,
            e.detail
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(r: &Rollout, phases: &[PhaseCounts]) {
    println!(
        "rollout {} of {} to group `{}`: {} (phase {} of {})",
        r.id,
        r.update_id,
        r.group,
        r.progress.state.name(),
        r.progress.phase + 1,
        r.phases.len()
    );
    if let Some(why) = &r.progress.reason {
        println!("  {why}");
    }
    println!("PHASE  SHARE  DEVICES  WAITING  PENDING  RUNNING  SUCCEEDED  CANCELLED  FAILED");
    for p in phases {
        let failed: Vec<String> = p.failed.iter().map(|(c, n)| format!("{n} ({c})")).collect();
        println!(
            "{:<5}  {:>4}%  {:>7}  {:>7}  {:>7}  {:>7}  {:>9}  {:>9}  {}",
            p.phase + 1,
            p.share_percent,
            p.devices,
            p.waiting,
            p.pending,
            p.running,
            p.succeeded,
            p.cancelled,
            if failed.is_empty() {
                "0".into()
            } else {
                failed.join(", ")
            }
        );
    }
}

/// Pause, resume or abort ([`operate::control`]).
async fn control(store: &mut Store, id: &str, what: Control) -> Result<ExitCode> {
    let r = operate::control(store, id, what, &cli_user()).await?;
    println!("rollout {id}: {}", r.progress.state.name());
    Ok(ExitCode::SUCCESS)
}
