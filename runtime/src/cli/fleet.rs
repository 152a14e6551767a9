//! The fleet side: `sandstep agent`, `sandstep shadow` (the replica), and the operator commands
//! `deploy`, `status`, `cancel`.

use super::common::Common;
use super::deployment::{database, deployment, new_workflow_id, DeploymentArgs};
use anyhow::{bail, Context as _, Result};
use clap::Args;
use sandstep::agent::{self, Agent, AgentExit};
use sandstep::mqtt::{Mqtt, MqttEvent};
use sandstep::shadow::ReplicaOptions;
use sandstep_model::deployment::{action, Workflow};
use sandstep_model::shadow::{valid_device_id, Topics};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        t.cancel();
    });
    token
}

/// `sandstep agent`.
pub async fn agent(common: &Common) -> Result<ExitCode> {
    let config = common.load_config()?;
    let data_path = common
        .data_dir
        .clone()
        .or_else(|| config.data_dir.clone())
        .unwrap_or_else(sandstep::datadir::default_path);
    let restart_code = config.agent.restart_exit_code;
    let agent = Agent::new(config, &data_path)?;
    match agent::run(agent, shutdown_token()).await? {
        AgentExit::Shutdown | AgentExit::Rebooting => Ok(ExitCode::SUCCESS),
        AgentExit::Restart => {
            eprintln!("a step asked for an agent restart: exiting with status {restart_code} for the service manager");
            Ok(ExitCode::from(restart_code))
        }
    }
}

/// `sandstep shadow`.
pub async fn shadow(common: &Common) -> Result<ExitCode> {
    let config = common.load_config()?;
    let opts = ReplicaOptions {
        database: database(common, &config)?,
        share_group: Some(config.shadow.share_group.clone()).filter(|g| !g.is_empty()),
        rollout_interval: Duration::from_millis(config.shadow.rollout_interval_ms.max(50)),
    };
    let topics = config.agent.topics.topics();
    eprintln!(
        "replica: {} on {} ({})",
        opts.database.display(),
        config.mqtt.url,
        sandstep::shadow::subscription(&topics, opts.share_group.as_deref())
    );
    sandstep::shadow::run(&config.mqtt, &topics, &opts, shutdown_token()).await?;
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
                 (`sandstep shadow`) running, and may this account publish device updates (the \
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
            MqttEvent::PubAck { refused: None } => {}
        }
    }
    Ok(())
}

/// `sandstep deploy`.
pub async fn deploy(args: DeployArgs, common: &Common) -> Result<ExitCode> {
    let id = args
        .workflow_id
        .clone()
        .unwrap_or_else(|| new_workflow_id("wf"));
    let workflow = Workflow {
        action: action::PROCESS_DEPLOYMENT,
        id: id.clone(),
        retry_timestamp: args.retry.then(|| sandstep::workflow::now_ms().to_string()),
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

/// `sandstep cancel`.
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

fn row(device: &str, doc: &Value) -> Vec<String> {
    let r = |p: &str| {
        doc.pointer(&format!("/state/reported{p}"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let s = |v: Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s,
        other => other.to_string(),
    };
    let progress = match r("/progress") {
        Value::Object(p) => {
            let step = p.get("unit").and_then(Value::as_str).unwrap_or("");
            let action = p.get("action").and_then(Value::as_str).unwrap_or("");
            let pct = p
                .get("percent")
                .map(|v| format!("{v}%"))
                .unwrap_or_default();
            format!("{step} {action} {pct}").trim().to_owned()
        }
        _ => "-".to_owned(),
    };
    let last = match r("/lastInstallResult") {
        Value::Object(l) => format!(
            "{} {}",
            l.get("resultCode")
                .map(Value::to_string)
                .unwrap_or_default(),
            l.get("extendedResultCodes")
                .and_then(Value::as_str)
                .unwrap_or("")
        ),
        _ => "-".to_owned(),
    };
    let pending = doc
        .pointer("/state/delta/workflow/id")
        .and_then(Value::as_str)
        .map(|w| format!(" (pending {w})"))
        .unwrap_or_default();
    vec![
        device.to_owned(),
        s(r("/status")),
        s(r("/state")),
        format!("{}{pending}", s(r("/workflow/id"))),
        progress,
        last,
        s(r("/installedUpdateId")),
    ]
}

/// The documents `status` shows: every device's shadow from the broker, or, for an agent that
/// polls HTTP (no broker), this gateway's own reported state from its data dir.
async fn documents(common: &Common) -> Result<BTreeMap<String, Value>> {
    let config = common.load_config()?;
    if config.agent.source != sandstep::agent::SourceKind::HttpPoll {
        return shadows(common, Duration::from_secs(10)).await;
    }
    let data = common.data_dir(&config)?;
    let device = config.agent.resolved_device_id()?;
    let doc = match data.root().read("reported.json") {
        Ok(bytes) => serde_json::from_slice(&bytes).context("reported.json")?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({"state": {"reported": {}}}),
        Err(e) => return Err(e).context("reported.json"),
    };
    Ok(BTreeMap::from([(device, doc)]))
}

/// How long ago, in words (`12s`, `5m`, `3h`, `2d`).
fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// When the device last reported, by the replica's record (`None`: not known).
fn last_reported(doc: &Value) -> Option<u64> {
    doc.get("lastReportedMs")
        .and_then(Value::as_u64)
        .filter(|&t| t > 0)
}

/// Whether a device is shown: heard from within `stale_ms`, or not known (then it is shown).
fn is_current(doc: &Value, now_ms: u64, stale_ms: u64) -> bool {
    last_reported(doc).is_none_or(|t| now_ms.saturating_sub(t) <= stale_ms)
}

/// `sandstep status`.
pub async fn status(args: StatusArgs, common: &Common) -> Result<ExitCode> {
    if let Some(id) = &args.rollout {
        let mut store = super::rollout::open_store(common).await?;
        return super::rollout::status(&mut store, id, args.json).await;
    }
    loop {
        let mut all = documents(common).await?;
        if let Some(d) = &args.device {
            all.retain(|k, _| k == d);
        }
        let now = sandstep::clock::now_ms();
        let stale_ms = args.stale_after.saturating_mul(1000);
        let before = all.len();
        if !args.all {
            all.retain(|_, doc| is_current(doc, now, stale_ms));
        }
        let hidden = before - all.len();
        if args.json {
            println!("{}", serde_json::to_string(&all)?);
        } else {
            if args.watch {
                print!("\x1b[2J\x1b[H");
            }
            print_table(&all, now);
            if hidden > 0 {
                println!(
                    "{hidden} device(s) not heard from within {}s hidden (--all shows them)",
                    args.stale_after
                );
            }
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn print_table(all: &BTreeMap<String, Value>, now: u64) {
    let mut rows = vec![[
        "DEVICE",
        "STATUS",
        "STATE",
        "WORKFLOW",
        "PROGRESS",
        "LAST RESULT",
        "INSTALLED",
        "LAST SEEN",
    ]
    .map(String::from)
    .to_vec()];
    rows.extend(all.iter().map(|(d, doc)| {
        let mut r = row(d, doc);
        r.push(last_reported(doc).map_or("-".to_owned(), |t| ago(now.saturating_sub(t))));
        r
    }));
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// `sandstep status` options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this device.
    #[arg(long)]
    device: Option<String>,
    /// Refresh every second.
    #[arg(long)]
    watch: bool,
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

/// `sandstep fleet-sim` options.
#[cfg(feature = "dev-tools")]
#[derive(Debug, Args)]
pub struct FleetSimArgs {
    /// Numbers of devices to simulate, one run each (e.g. 1000,10000).
    #[arg(long, value_delimiter = ',', default_value = "100")]
    devices: Vec<usize>,
    /// The replicas' store: a PostgreSQL URL, or (default) a fresh SQLite file per run.
    #[arg(long)]
    database: Option<String>,
    /// Replica processes.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Kill one replica once half the results are stored (needs --replicas 2 or more).
    #[arg(long)]
    kill_one: bool,
    /// The rollout's phases.
    #[arg(long, default_value = "1%,10%,50%,100%")]
    phases: String,
    /// The rollout's failure limit.
    #[arg(long, default_value = "5%")]
    max_failure_rate: String,
    /// Share of the simulated devices whose install fails.
    #[arg(long, default_value = "1%")]
    failing: String,
    /// Give up after this many seconds per run.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// `sandstep fleet-sim`.
#[cfg(feature = "dev-tools")]
pub async fn fleet_sim(args: FleetSimArgs, common: &Common) -> Result<ExitCode> {
    use sandstep::shadow::rollout::{parse_percent, parse_phases};
    use sandstep::shadow::store::Database;
    let config = common.load_config()?;
    let dir = tempfile::tempdir()?;
    println!("{}", sandstep::fleet_sim::SimReport::HEADER);
    for n in args.devices.iter().copied() {
        let opts = sandstep::fleet_sim::SimOptions {
            devices: n,
            database: match &args.database {
                Some(d) => Database::parse(d, config.shadow.tls()),
                None => Database::Sqlite(dir.path().join(format!("fleet-{n}.sqlite"))),
            },
            replicas: args.replicas,
            replica_exe: std::env::current_exe()?,
            phases: parse_phases(&args.phases)?,
            max_failure_rate: Some(parse_percent("--max-failure-rate", &args.max_failure_rate)?),
            failing: parse_percent("--failing", &args.failing)?,
            kill_one: args.kill_one,
            timeout: Duration::from_secs(args.timeout),
            work_dir: dir.path().join(format!("run-{n}")),
        };
        let r = sandstep::fleet_sim::run(&config.mqtt, &opts)
            .await
            .map_err(|e| anyhow::anyhow!("fleet-sim with {n} devices: {e}"))?;
        println!("{}", r.row());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_devices_are_told_apart_by_when_they_last_reported() {
        let day = 86_400_000;
        let doc = |t: u64| json!({"lastReportedMs": t});
        assert!(is_current(&doc(10 * day), 10 * day + 5_000, day));
        assert!(!is_current(&doc(10 * day), 12 * day, day));
        // A replica from before the field, or a device that never reported: shown.
        assert!(is_current(&json!({}), 12 * day, day));
        assert!(is_current(&doc(0), 12 * day, day));
        assert_eq!(ago(5_000), "5s ago");
        assert_eq!(ago(600_000), "10m ago");
        assert_eq!(ago(3 * 3_600_000), "3h ago");
        assert_eq!(ago(3 * day), "3d ago");
    }
}
