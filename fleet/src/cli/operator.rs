//! The replica (`sandstep-fleet shadow`) and the operator commands `deploy`, `status`,
//! `cancel`, over the broker (or, for `status --rollout`, the replica's store).

use super::common::Common;
use super::deployment::{deployment, new_workflow_id, DeploymentArgs};
use anyhow::{bail, Context as _, Result};
use clap::Args;
use sandstep_fleet::replica::{self, ReplicaOptions};
use sandstep_model::deployment::{action, Workflow};
use sandstep_model::shadow::{valid_device_id, Topics};
use sandstep_model::status;
use sandstep_transport::mqtt::{Mqtt, MqttEvent};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `sandstep-fleet shadow`.
pub async fn shadow(common: &Common) -> Result<ExitCode> {
    let config = common.load_config()?;
    let opts = ReplicaOptions {
        database: common.database()?,
        share_group: Some(config.shadow.share_group.clone()).filter(|g| !g.is_empty()),
        rollout_interval: Duration::from_millis(config.shadow.rollout_interval_ms.max(50)),
    };
    let topics = config.agent.topics.topics();
    eprintln!(
        "replica: {} on {} ({})",
        opts.database.display(),
        config.mqtt.url,
        replica::subscription(&topics, opts.share_group.as_deref())
    );
    replica::run(
        &config.mqtt,
        &topics,
        &opts,
        sandstep_transport::shutdown::on_signal(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Target device (repeatable).
    #[arg(long = "device")]
    devices: Vec<String>,
    /// Target every device reporting this group.
    #[arg(long)]
    group: Option<String>,
    #[command(flatten)]
    deployment: DeploymentArgs,
    /// Workflow id (default: generated).
    #[arg(long)]
    workflow_id: Option<String>,
    /// Retry a deployment that already ran (a new retryTimestamp).
    #[arg(long)]
    retry: bool,
    /// Seconds to wait for the shadow service to confirm it stored the desired state.
    #[arg(long, default_value_t = 15)]
    confirm_timeout: u64,
}

/// Reads the retained shadows (`<shadow topic>` of every device) for a short while.
async fn shadows(common: &Common, wait: Duration) -> Result<BTreeMap<String, Value>> {
    let config = common.load_config()?;
    let topics = config.agent.topics.topics();
    let mut conn = Mqtt::connect(
        &config.mqtt,
        &format!("sandstep-op-{:08x}", fastrand::u32(..)),
    )?;
    let filter = Topics::filter(&topics.shadow);
    let mut out = BTreeMap::new();
    // Retained documents arrive right after the SUBACK; a short quiet spell after the last one
    // ends the wait, `wait` bounds it on a slow or absent broker.
    let deadline = Instant::now() + wait;
    let mut quiet = deadline;
    loop {
        let until = deadline.min(quiet);
        match tokio::time::timeout(until.saturating_duration_since(Instant::now()), conn.recv())
            .await
        {
            Err(_) | Ok(None) => break,
            Ok(Some(MqttEvent::Connected)) => conn.subscribe(&filter).await?,
            Ok(Some(MqttEvent::SubAck)) => {
                quiet = Instant::now() + Duration::from_millis(300);
            }
            Ok(Some(MqttEvent::Message { topic, payload, .. })) => {
                if let Some(d) = Topics::device_of(&topics.shadow, &topic) {
                    if let Ok(v) = serde_json::from_slice::<Value>(&payload) {
                        out.insert(d, v);
                    }
                }
                quiet = Instant::now() + Duration::from_millis(300);
            }
            Ok(Some(MqttEvent::Disconnected(e))) => bail!("broker {}: {e}", config.mqtt.url),
            Ok(Some(_)) => {}
        }
    }
    Ok(out)
}

/// Publishes `desired` to each device and waits until the shadow service (the replica, or a
/// cloud shadow) confirms it stored each one on `.../accepted`, matched by a `clientToken`: a
/// publish alone proves only that the broker took it, not that anyone keeps it. Fails naming
/// the devices not confirmed within `wait`, or the service's refusal.
async fn publish_desired(
    common: &Common,
    devices: &[String],
    desired: Value,
    wait: Duration,
) -> Result<()> {
    let config = common.load_config()?;
    let topics = config.agent.topics.topics();
    let op = format!("sandstep-op-{:08x}", fastrand::u32(..));
    let mut conn = Mqtt::connect(&config.mqtt, &op)?;
    let url = &config.mqtt.url;
    let payload = json!({"state": {"desired": desired}, "clientToken": op})
        .to_string()
        .into_bytes();
    let mut unconfirmed: BTreeSet<&str> = devices.iter().map(String::as_str).collect();
    let (mut subscribed, mut sent) = (0, false);
    let deadline = Instant::now() + wait;
    while !unconfirmed.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = match tokio::time::timeout(left, conn.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => bail!("broker {url}: the connection ended"),
            Err(_) if !sent => bail!("broker {url}: no connection within {}s", wait.as_secs()),
            Err(_) => bail!(
                "no shadow service confirmed the desired state of {} within {}s: is the replica \
                 (`sandstep-fleet shadow`) running, and may this account publish device updates (the \
                 broker's ACL)? Nothing confirmed storing it",
                unconfirmed.into_iter().collect::<Vec<_>>().join(", "),
                wait.as_secs()
            ),
        };
        match ev {
            MqttEvent::Connected => {
                // Listen before speaking, so no confirmation is missed.
                conn.subscribe(&Topics::filter(&topics.accepted)).await?;
                conn.subscribe(&Topics::filter(&topics.rejected)).await?;
            }
            MqttEvent::SubAck => {
                subscribed += 1;
                if subscribed == 2 && !sent {
                    for d in devices {
                        let topic = Topics::for_device(&topics.update, d);
                        conn.publish(&topic, payload.clone(), false).await?;
                    }
                    sent = true;
                }
            }
            MqttEvent::PubAck { refused: Some(why) } => {
                bail!(
                    "broker {url}: it refused the publish ({why}); check its ACL for this account"
                )
            }
            MqttEvent::Message { topic, payload, .. } => {
                let Ok(v) = serde_json::from_slice::<Value>(&payload) else {
                    continue;
                };
                if v.get("clientToken").and_then(Value::as_str) != Some(op.as_str()) {
                    continue;
                }
                if let Some(d) = Topics::device_of(&topics.rejected, &topic) {
                    bail!("the shadow service refused the desired state of {d}: {v}");
                }
                if let Some(d) = Topics::device_of(&topics.accepted, &topic) {
                    unconfirmed.remove(d.as_str());
                }
            }
            MqttEvent::Disconnected(e) => bail!("broker {url}: {e}"),
            // A refusal is followed by its Disconnected, which says why.
            MqttEvent::PubAck { refused: None } | MqttEvent::Refused => {}
        }
    }
    Ok(())
}

/// `sandstep-fleet deploy`.
pub async fn deploy(args: DeployArgs, common: &Common) -> Result<ExitCode> {
    let id = args
        .workflow_id
        .clone()
        .unwrap_or_else(|| new_workflow_id("wf"));
    let workflow = Workflow {
        action: action::PROCESS_DEPLOYMENT,
        id: id.clone(),
        retry_timestamp: args
            .retry
            .then(|| sandstep_transport::clock::now_ms().to_string()),
    };
    let (doc, update_id) = deployment(&args.deployment, workflow)?;
    let mut devices = args.devices.clone();
    if let Some(g) = &args.group {
        let all = shadows(common, Duration::from_secs(10)).await?;
        for (id, doc) in all {
            let groups = doc
                .pointer("/state/reported/groups")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if groups.iter().any(|x| x.as_str() == Some(g)) {
                devices.push(id);
            }
        }
        if devices.is_empty() {
            bail!("no device reports group `{g}`");
        }
    }
    if devices.is_empty() {
        bail!("give --device ID (repeatable) or --group NAME");
    }
    for d in &devices {
        if !valid_device_id(d) {
            bail!("`{d}` is not a device id");
        }
    }
    let wait = Duration::from_secs(args.confirm_timeout);
    publish_desired(common, &devices, serde_json::to_value(&doc)?, wait).await?;
    println!(
        "deployed {id} ({update_id}) to {} (stored by the shadow service)",
        devices.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// `sandstep-fleet cancel`.
pub async fn cancel(device: String, common: &Common) -> Result<ExitCode> {
    let all = shadows(common, Duration::from_secs(10)).await?;
    let doc = all
        .get(&device)
        .with_context(|| format!("no shadow for device `{device}`"))?;
    let workflow = doc
        .pointer("/state/reported/workflow")
        .or_else(|| doc.pointer("/state/desired/workflow"))
        .and_then(|w| w.get("id"))
        .and_then(Value::as_str)
        .with_context(|| format!("device `{device}` has no deployment to cancel"))?
        .to_owned();
    publish_desired(
        common,
        std::slice::from_ref(&device),
        json!({"workflow": {"action": action::CANCEL, "id": workflow}}),
        Duration::from_secs(15),
    )
    .await?;
    println!("cancel of {workflow} sent to {device}");
    Ok(ExitCode::SUCCESS)
}

/// `sandstep-fleet status`.
pub async fn status(args: StatusArgs, common: &Common) -> Result<ExitCode> {
    if let Some(id) = &args.rollout {
        let mut store = super::rollout::open_store(common).await?;
        return super::rollout::status(&mut store, id, args.json).await;
    }
    if args.wait {
        return wait(&args, common).await;
    }
    loop {
        let all = shown(&args, common).await?;
        if args.watch {
            print!("\x1b[2J\x1b[H");
        }
        print_status(&args, &all)?;
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The shadows `status` shows: `--device`'s, and, without `--all`, only those heard from within
/// `--stale-after`; with how many were hidden.
async fn shown(args: &StatusArgs, common: &Common) -> Result<(BTreeMap<String, Value>, usize)> {
    let mut all = shadows(common, Duration::from_secs(10)).await?;
    if let Some(d) = &args.device {
        all.retain(|k, _| k == d);
    }
    let now = sandstep_transport::clock::now_ms();
    let stale_ms = args.stale_after.saturating_mul(1000);
    let before = all.len();
    if !args.all {
        all.retain(|_, doc| status::is_current(doc, now, stale_ms));
    }
    let hidden = before - all.len();
    Ok((all, hidden))
}

fn print_status(args: &StatusArgs, (all, hidden): &(BTreeMap<String, Value>, usize)) -> Result<()> {
    if args.json {
        println!("{}", serde_json::to_string(all)?);
        return Ok(());
    }
    print!(
        "{}",
        status::table(all, sandstep_transport::clock::now_ms())
    );
    if *hidden > 0 {
        println!(
            "{hidden} device(s) not heard from within {}s hidden (--all shows them)",
            args.stale_after
        );
    }
    Ok(())
}

/// `status --wait`: until every shown device reported the end of the deployment it was asked
/// for; then the table once, and exit 1 when any of them failed.
async fn wait(args: &StatusArgs, common: &Common) -> Result<ExitCode> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let shown = shown(args, common).await?;
        let ends: Vec<(&String, Option<status::Settled>)> = shown
            .0
            .iter()
            .map(|(d, doc)| (d, status::settled(doc)))
            .collect();
        let missing = args.device.as_ref().filter(|d| !shown.0.contains_key(*d));
        let pending: Vec<&str> = ends
            .iter()
            .filter(|(_, e)| e.is_none())
            .map(|(d, _)| d.as_str())
            .chain(missing.map(String::as_str))
            .collect();
        if pending.is_empty() {
            print_status(args, &shown)?;
            let failed = ends
                .iter()
                .any(|(_, e)| *e == Some(status::Settled::Failed));
            return Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        if Instant::now() >= deadline {
            print_status(args, &shown)?;
            bail!(
                "after {}s (--timeout), still running or not yet reported: {}",
                args.timeout,
                pending.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `sandstep-fleet status` options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this device.
    #[arg(long)]
    device: Option<String>,
    /// Refresh every second.
    #[arg(long, conflicts_with = "wait")]
    watch: bool,
    /// Wait until each device shown reported the end (`completed` or `failed`) of the
    /// deployment it was asked for, then show them once; exit status 1 when any failed.
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits, in seconds, before it gives up naming the devices still running.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Print the shadows as JSON.
    #[arg(long)]
    json: bool,
    /// Devices not heard from for this many seconds are hidden (`--all` shows them).
    #[arg(long, default_value_t = 86_400)]
    stale_after: u64,
    /// Show every device, however long ago it last reported.
    #[arg(long)]
    all: bool,
    /// A rollout's per-phase counts instead (from the replica's store, `[shadow] database`).
    #[arg(long)]
    rollout: Option<String>,
}
