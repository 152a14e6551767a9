//! The gateway agent (`sandstep agent`): desired state in, deployments run, reported state out.
//!
//! - [`report`]: the reported-state patches and the persisted outbox.
//! - [`poll`]: the HTTP-polling source (micropython-ota layout), for gateways without a broker.
//!
//! With MQTT, the agent subscribes to its delta topic; a delta carrying a `workflow` is a
//! deployment (ADU's deployment message). It reports on its update topic: at start the installed
//! state (update id, handlers, file-set digests), then per deployment the acknowledgement
//! (`workflow`), rate-limited progress, and the result (`lastInstallResult`, plus `{"jobId",
//! "status"}`). Reports go through the outbox, so none is lost while the broker is away.

pub mod poll;
pub mod report;

use crate::capability::ledger::ProgramLedger;
use crate::datadir::{ensure_dir, write_atomic, DataDir};
use crate::mqtt::{Mqtt, MqttEvent};
use crate::sandbox::{EngineOptions, Sandbox};
use crate::workflow::events::{Event, Observer, UnitInfo};
use crate::workflow::{now_ms, Deployer, Outcome, Request};
use report::{final_patch, progress_patch, Confirmations, Outbox, Outgoing};
use sandstep_model::deployment::{action, Deployment, Workflow, MAX_DEPLOYMENT_BYTES};
use sandstep_model::inventory::Inventory;
use sandstep_model::journal::{FileSource, Journal, Status};
use sandstep_model::shadow::{valid_device_id, Topics};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The `[agent]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentConfig {
    /// This gateway's id (in topics; no `/`, `+`, `#`); default: the host name.
    pub device_id: Option<String>,
    /// Groups this gateway belongs to (reported, for `sandstep deploy --group`).
    pub groups: Vec<String>,
    /// The component inventory (JSON) for reference steps.
    pub inventory: Option<PathBuf>,
    /// Where deployments come from: `mqtt` or `http-poll`.
    pub source: SourceKind,
    /// Topic layout: `replica` (state/<id>/update, ...), `aws` ($aws/things/<id>/shadow/...).
    pub topics: TopicLayout,
    /// Run to reboot the gateway when a step asks for it (after the journal is persisted).
    pub reboot_command: Vec<String>,
    /// Exit status to restart the agent with (the service manager starts it again).
    pub restart_exit_code: u8,
    /// Least time between two progress reports, in milliseconds.
    pub progress_interval_ms: u64,
    /// On SIGTERM, how long the running step may take to finish before it is stopped (the
    /// journal resumes it at the next start), in seconds.
    pub shutdown_grace_secs: u64,
    /// How long a report may wait for the shadow service's `accepted` before the whole reported
    /// document is sent again (doubling while nobody answers), in milliseconds; 0 when no shadow
    /// service stands behind the broker.
    pub confirm_timeout_ms: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            device_id: None,
            groups: Vec::new(),
            inventory: None,
            source: SourceKind::Mqtt,
            topics: TopicLayout::Preset(Preset::Replica),
            reboot_command: vec!["/sbin/reboot".into()],
            restart_exit_code: 75,
            progress_interval_ms: 1000,
            shutdown_grace_secs: 5,
            confirm_timeout_ms: 10_000,
        }
    }
}

impl AgentConfig {
    /// The device id: `device-id`, else this machine's host name (so a packaged agent runs out
    /// of the box); either must be usable in a topic.
    pub fn resolved_device_id(&self) -> Result<String, String> {
        let (device, from) = match &self.device_id {
            Some(d) => (d.clone(), "device-id"),
            None => (
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .map_err(|e| {
                        format!("[agent] device-id is not set and the host name is unreadable: {e}")
                    })?,
                "the host name (device-id is not set)",
            ),
        };
        if device.is_empty() || !valid_device_id(&device) {
            return Err(format!(
                "{from} `{device}` cannot be a device id: it must be non-empty, without `/`, `+` or `#`"
            ));
        }
        Ok(device)
    }
}

/// Where deployments come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Mqtt,
    HttpPoll,
}

/// A preset or explicit topic templates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TopicLayout {
    Preset(Preset),
    Custom(Topics),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    Replica,
    Aws,
}

impl TopicLayout {
    pub fn topics(&self) -> Topics {
        match self {
            TopicLayout::Preset(Preset::Replica) => Topics::replica(),
            TopicLayout::Preset(Preset::Aws) => Topics::aws(),
            TopicLayout::Custom(t) => t.clone(),
        }
    }
}

/// Why the agent stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentExit {
    /// SIGTERM or similar.
    Shutdown,
    /// The reboot command ran; the system is going down.
    Rebooting,
    /// A step asked for an agent restart.
    Restart,
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent: {0}")]
    Config(String),
    #[error("{0}")]
    Workflow(#[from] crate::workflow::WorkflowError),
    #[error("{0}")]
    Mqtt(#[from] crate::mqtt::MqttError),
    #[error("{0}")]
    DataDir(#[from] crate::datadir::DataDirError),
    #[error("agent outbox: {0}")]
    Outbox(#[from] std::io::Error),
}

/// Forwards deployment events to the agent loop.
struct Forward(mpsc::UnboundedSender<Event>);

impl Observer for Forward {
    fn event(&self, e: &Event) {
        let _ = self.0.send(e.clone());
    }
}

/// The deployment being run.
struct Running {
    workflow: Workflow,
    /// The cancel request (action 255) that stopped it, reported instead of `workflow` so the
    /// delta empties.
    cancel_request: Option<Workflow>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<Outcome, crate::workflow::WorkflowError>>,
    units: Vec<UnitInfo>,
}

/// Persisted between runs: what the agent last applied.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Persisted {
    #[serde(default)]
    installed_update_id: Option<String>,
    #[serde(default)]
    last_install_result: Option<Value>,
    #[serde(default)]
    workflow: Option<Workflow>,
}

/// What the agent is configured with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub agent: AgentConfig,
    pub mqtt: crate::mqtt::MqttConfig,
    pub http_poll: Option<poll::HttpPollConfig>,
    /// The deployment engine's.
    pub deploy: crate::workflow::Settings,
}

/// The agent's shared parts.
pub struct Agent {
    settings: Settings,
    device: String,
    deployer: Arc<Deployer>,
    data: DataDir,
    topics: Topics,
    /// Makes each report's `clientToken` unique within a millisecond too.
    reports: std::sync::atomic::AtomicU64,
}

impl Agent {
    /// Sets up from its settings (a `Config` converts) and the data dir.
    pub fn new(
        settings: impl Into<Settings>,
        data_path: &std::path::Path,
    ) -> Result<Agent, AgentError> {
        let settings = settings.into();
        let device = settings
            .agent
            .resolved_device_id()
            .map_err(AgentError::Config)?;
        let data = DataDir::open(data_path)?;
        let sandbox = Arc::new(
            Sandbox::new(&EngineOptions::default(), Some(data.component_cache()?))
                .map_err(|e| AgentError::Config(e.to_string()))?
                .with_ledger(ProgramLedger::new(data.programs()?)),
        );
        let deployer = Arc::new(Deployer::new(
            sandbox,
            DataDir::open(data_path)?,
            settings.deploy.clone(),
        )?);
        let topics = settings.agent.topics.topics();
        Ok(Agent {
            settings,
            device,
            deployer,
            data,
            topics,
            reports: Default::default(),
        })
    }

    fn persisted(&self) -> Persisted {
        self.data
            .root()
            .read("agent-state.json")
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_persisted(&self, p: &Persisted) {
        let _ = write_atomic(
            self.data.root(),
            "agent-state.json",
            &serde_json::to_vec_pretty(p).expect("serializes"),
            0o600,
        );
    }

    /// The installed state reported at start: update id, handlers, file-set digests.
    fn installed_state(&self) -> Map<String, Value> {
        let p = self.persisted();
        let handlers: Vec<Value> = self
            .deployer
            .loader()
            .registry()
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|e| json!({"id": e.id, "sha256": e.digest, "signers": e.signers}))
            .collect();
        // Installed file sets: what the files handler recorded (Degu reports MD5s at boot).
        let mut file_sets = Map::new();
        if let Ok(state) = self.data.state() {
            let id = "sandstep/files:1";
            let dir = crate::datadir::safe_name(id);
            crate::datadir::adopt_legacy(&state, &crate::datadir::legacy_safe_name(id), &dir);
            if let Ok(b) = state.read(format!("{dir}/digests.json")) {
                if let Ok(v) = serde_json::from_slice::<Value>(&b) {
                    if let Some(d) = v.get("digests").and_then(Value::as_object) {
                        file_sets = d.clone();
                    }
                }
            }
        }
        let mut m = Map::new();
        m.insert("deviceId".into(), json!(self.device));
        m.insert("groups".into(), json!(self.settings.agent.groups));
        m.insert(
            "agent".into(),
            json!({"version": env!("CARGO_PKG_VERSION"), "startedAt": now_ms()}),
        );
        m.insert("status".into(), json!("standBy"));
        m.insert("state".into(), json!(report::adu_state::IDLE));
        m.insert("handlers".into(), Value::Array(handlers));
        m.insert("fileSets".into(), Value::Object(file_sets));
        m.insert(
            "installedUpdateId".into(),
            p.installed_update_id
                .map(Value::from)
                .unwrap_or(Value::Null),
        );
        if let Some(r) = p.last_install_result {
            m.insert("lastInstallResult".into(), r);
        }
        if let Some(w) = p.workflow {
            m.insert("workflow".into(), json!(w));
        }
        m
    }

    /// The component inventory, when the gateway has one (without, reference steps run on the
    /// host, as in ADU without a component enumerator).
    fn inventory(&self) -> Result<Option<Inventory>, String> {
        match &self.settings.agent.inventory {
            None => Ok(None),
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("inventory {}: {e}", p.display()))
                .and_then(|t| Inventory::parse(&t).map_err(|e| format!("{}: {e}", p.display())))
                .map(Some),
        }
    }

    fn reported(&self, patch: Map<String, Value>) -> Outgoing {
        Outgoing {
            topic: Topics::for_device(&self.topics.update, &self.device),
            payload: json!({"state": {"reported": patch}, "clientToken": format!("{}-{}-{}", self.device, now_ms(), self.reports.fetch_add(1, std::sync::atomic::Ordering::Relaxed))}),
            progress: false,
        }
    }

    fn request(&self, d: &Deployment) -> Result<Request, String> {
        Ok(Request {
            workflow_id: d.workflow.id.clone(),
            retry_timestamp: d.workflow.retry_timestamp.clone(),
            manifest: d
                .update_manifest
                .clone()
                .ok_or("updateManifest is missing")?,
            source: FileSource::Urls(d.file_urls.clone()),
            inventory: self.inventory()?,
            force: false,
            signature: d.update_manifest_signature.clone(),
            allow_unsigned: false,
        })
    }

    fn request_from_journal(&self, j: &Journal) -> Result<Request, String> {
        Ok(Request {
            workflow_id: j.workflow_id.clone(),
            retry_timestamp: j.retry_timestamp.clone(),
            manifest: j.manifest.clone(),
            source: j.source.clone(),
            inventory: self.inventory()?,
            force: false,
            signature: j.signature.clone(),
            allow_unsigned: j.unsigned_allowed,
        })
    }

    fn start(
        &self,
        workflow: Workflow,
        req: Request,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Running {
        let cancel = CancellationToken::new();
        let deployer = self.deployer.clone();
        let observer: Arc<dyn Observer> = Arc::new(Forward(events.clone()));
        let c = cancel.clone();
        tracing::info!(workflow = %workflow.id, "deployment starts");
        let task = tokio::spawn(async move { deployer.run(req, observer, &c).await });
        Running {
            workflow,
            cancel_request: None,
            cancel,
            task,
            units: Vec::new(),
        }
    }

    /// Records a finished deployment and returns its reports.
    fn finished(&self, workflow: &Workflow, outcome: &Outcome) -> Vec<Outgoing> {
        let mut patch = final_patch(outcome.status, &outcome.result);
        patch.insert("workflow".into(), json!(workflow));
        let mut p = self.persisted();
        p.workflow = Some(workflow.clone());
        p.last_install_result = patch.get("lastInstallResult").cloned();
        if let Some(id) = &outcome.result.installed_update_id {
            p.installed_update_id = Some(id.clone());
        }
        self.save_persisted(&p);
        let _ = self.deployer.journals().write_result(&outcome.result);
        let mut out = vec![self.reported(patch)];
        if outcome.status.is_terminal() {
            let status = if outcome.status == Status::Succeeded {
                "SUCCESS"
            } else {
                "FAILURE"
            };
            out.push(Outgoing {
                topic: Topics::for_device(&self.topics.update, &self.device),
                payload: json!({"jobId": workflow.id, "status": status}),
                progress: false,
            });
        }
        out
    }

    fn rejection(&self, workflow: Option<&Value>, why: &str) -> Outgoing {
        let mut patch = Map::new();
        patch.insert("lastError".into(), json!({"message": why, "at": now_ms()}));
        if let Some(w) = workflow {
            patch.insert("workflow".into(), w.clone());
        }
        tracing::warn!("desired state refused: {why}");
        self.reported(patch)
    }
}

/// The fields of a delta (or of a desired document, or a whole shadow document).
pub(crate) fn desired_fields(payload: &[u8]) -> Result<Map<String, Value>, String> {
    if payload.len() > MAX_DEPLOYMENT_BYTES {
        return Err(format!(
            "desired document is {} bytes; the limit is {MAX_DEPLOYMENT_BYTES}",
            payload.len()
        ));
    }
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| format!("desired document is not JSON: {e}"))?;
    let state = v
        .get("state")
        .and_then(Value::as_object)
        .ok_or("desired document has no `state` object")?;
    let fields = state
        .get("desired")
        .or_else(|| state.get("delta"))
        .and_then(Value::as_object)
        .unwrap_or(state);
    Ok(fields.clone())
}

/// Turns delta fields into a deployment, if they carry one.
pub(crate) fn deployment_of(fields: &Map<String, Value>) -> Option<Result<Deployment, String>> {
    fields.get("workflow")?;
    let doc = Value::Object(
        fields
            .iter()
            .filter(|(k, _)| {
                [
                    "workflow",
                    "updateManifest",
                    "updateManifestSignature",
                    "fileUrls",
                ]
                .contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    Some(
        serde_json::from_value::<Deployment>(doc)
            .map_err(|e| format!("deployment: {e}"))
            .and_then(|d| d.check_remote().map(|()| d).map_err(|e| e.to_string())),
    )
}

/// Runs the agent until shutdown, a reboot, or a restart request.
pub async fn run(agent: Agent, shutdown: CancellationToken) -> Result<AgentExit, AgentError> {
    if agent.settings.agent.source == SourceKind::HttpPoll {
        return poll::run(agent, shutdown).await;
    }
    let mut outbox = Outbox::open(ensure_dir(agent.data.root(), "outbox", 0o700)?)?;
    let client_id = agent
        .settings
        .mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| agent.device.clone());
    let mut conn = Mqtt::connect(&agent.settings.mqtt, &client_id)?;
    let delta_topic = Topics::for_device(&agent.topics.delta, &agent.device);
    let accepted_topic = Topics::for_device(&agent.topics.accepted, &agent.device);
    let mut confirm = Confirmations::new(Duration::from_millis(
        agent.settings.agent.confirm_timeout_ms,
    ));
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let mut connected = false;
    let mut running: Option<Running> = None;
    let mut queued: Option<(Workflow, Request)> = None;
    let last_progress = Mutex::new(Instant::now() - Duration::from_secs(3600));
    let interval = Duration::from_millis(agent.settings.agent.progress_interval_ms);

    outbox.push(agent.reported(agent.installed_state()))?;
    // Resume what a crash, reboot or restart interrupted.
    for j in agent.deployer.unfinished()? {
        match agent.request_from_journal(&j) {
            Ok(req) if running.is_none() => {
                tracing::info!(workflow = %j.workflow_id, "resuming the unfinished deployment");
                let w = Workflow {
                    action: action::PROCESS_DEPLOYMENT,
                    id: j.workflow_id.clone(),
                    retry_timestamp: j.retry_timestamp.clone(),
                };
                running = Some(agent.start(w, req, &ev_tx));
            }
            Ok(_) => {
                tracing::warn!(workflow = %j.workflow_id, "another unfinished deployment waits; it resumes later")
            }
            Err(e) => tracing::error!(workflow = %j.workflow_id, "cannot resume: {e}"),
        }
    }

    loop {
        if connected {
            if let Some(o) = outbox.next_to_send() {
                if let Err(e) = conn
                    .publish(&o.topic, o.payload.to_string().into_bytes(), false)
                    .await
                {
                    tracing::warn!("publish failed: {e}");
                    outbox.disconnected();
                }
            }
        }
        let finished = async {
            match running.as_mut() {
                Some(r) => (&mut r.task).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {
                if let Some(r) = running.take() {
                    let grace = Duration::from_secs(agent.settings.agent.shutdown_grace_secs);
                    tracing::info!(workflow = %r.workflow.id, "shutting down: the step may finish within {grace:?}, else the journal resumes it at the next start");
                    let mut task = r.task;
                    if tokio::time::timeout(grace, &mut task).await.is_err() {
                        task.abort();
                    }
                }
                return Ok(AgentExit::Shutdown);
            }
            ev = conn.recv() => match ev {
                None => return Err(AgentError::Config("the MQTT connection task ended".into())),
                Some(MqttEvent::Connected) => {
                    connected = true;
                    outbox.disconnected();
                    conn.subscribe(&delta_topic).await?;
                    if agent.settings.agent.confirm_timeout_ms != 0 {
                        conn.subscribe(&accepted_topic).await?;
                    }
                    tracing::info!(topic = %delta_topic, pending = outbox.len(), "connected");
                }
                Some(MqttEvent::Disconnected(e)) => {
                    if connected {
                        tracing::warn!("disconnected: {e}");
                    }
                    connected = false;
                    outbox.disconnected();
                }
                Some(MqttEvent::PubAck { refused }) => {
                    if let Some(why) = refused {
                        // Sending it again would be refused again: say so and go on.
                        tracing::error!("the broker refused a report ({why}): check its ACL for this device's account");
                    }
                    if let Some(o) = outbox.acked()? { confirm.sent(&o.payload); }
                }
                Some(MqttEvent::Message { topic, payload, .. }) if topic == accepted_topic => confirm.accepted(&payload),
                Some(MqttEvent::Message { topic, payload, .. }) if topic == delta_topic => {
                    let fields = match desired_fields(&payload) {
                        Ok(f) => f,
                        Err(why) => { outbox.push(agent.rejection(None, &why))?; continue; }
                    };
                    let Some(dep) = deployment_of(&fields) else { continue };
                    let dep = match dep {
                        Ok(d) => d,
                        Err(why) => { outbox.push(agent.rejection(fields.get("workflow"), &why))?; continue; }
                    };
                    let w = dep.workflow.clone();
                    if w.action == action::CANCEL {
                        let mut patch = Map::new();
                        patch.insert("workflow".into(), json!(w));
                        match running.as_mut() {
                            Some(r) => {
                                tracing::info!(workflow = %r.workflow.id, "cancel requested");
                                r.cancel.cancel();
                                r.cancel_request = Some(w.clone());
                            }
                            None => { patch.insert("status".into(), json!("standBy")); }
                        }
                        queued = None;
                        outbox.push(agent.reported(patch))?;
                        continue;
                    }
                    if running.as_ref().is_some_and(|r| r.workflow == w) || queued.as_ref().is_some_and(|(q, _)| *q == w) {
                        continue; // the same deployment again
                    }
                    let req = match agent.request(&dep) {
                        Ok(r) => r,
                        Err(why) => { outbox.push(agent.rejection(fields.get("workflow"), &why))?; continue; }
                    };
                    // Acknowledge: reporting the workflow empties the delta.
                    let mut ack = Map::new();
                    ack.insert("workflow".into(), json!(w));
                    ack.insert("status".into(), json!("downloading"));
                    ack.insert("lastError".into(), Value::Null);
                    outbox.push(agent.reported(ack))?;
                    match &running {
                        Some(r) => {
                            tracing::info!(old = %r.workflow.id, new = %w.id, "a new deployment replaces the running one");
                            r.cancel.cancel();
                            queued = Some((w, req));
                        }
                        None => running = Some(agent.start(w, req, &ev_tx)),
                    }
                }
                Some(MqttEvent::Message { .. } | MqttEvent::SubAck) => {}
            },
            _ = sleep_until_some(confirm.deadline()), if connected => {
                if let Some(full) = confirm.resend() {
                    tracing::info!("the shadow service did not confirm a report; sending the whole reported state again");
                    outbox.push(agent.reported(full))?;
                }
            }
            Some(ev) = ev_rx.recv() => {
                if let Event::Planned { units, .. } = &ev {
                    if let Some(r) = running.as_mut() { r.units = units.clone(); }
                }
                let units = running.as_ref().map(|r| r.units.clone()).unwrap_or_default();
                if let Some(mut patch) = progress_patch(&ev, &units) {
                    let mut last = last_progress.lock().expect("progress lock");
                    let urgent = matches!(ev, Event::Planned { .. } | Event::ActionStarted { .. });
                    if urgent || last.elapsed() >= interval {
                        *last = Instant::now();
                        if let Some(r) = &running { patch.insert("workflow".into(), json!(r.workflow)); }
                        let mut o = agent.reported(patch);
                        o.progress = true;
                        outbox.push(o)?;
                    }
                }
            }
            result = finished => {
                let r = running.take().expect("a task finished, so one was running");
                match result {
                    Ok(Ok(outcome)) => {
                        let reported = r.cancel_request.clone().unwrap_or_else(|| r.workflow.clone());
                        for o in agent.finished(&reported, &outcome) { outbox.push(o)?; }
                        match outcome.status {
                            Status::RebootRequired => return reboot(&agent, &mut outbox, &mut conn).await,
                            Status::RestartRequired => { flush(&mut outbox, &mut conn).await; return Ok(AgentExit::Restart); }
                            _ => {}
                        }
                    }
                    Ok(Err(e)) => outbox.push(agent.rejection(Some(&json!(r.workflow)), &e.to_string()))?,
                    Err(e) => tracing::error!("deployment task failed: {e}"),
                }
                if let Some((w, req)) = queued.take() {
                    running = Some(agent.start(w, req, &ev_tx));
                }
            }
        }
    }
}

/// Sleeps until `t`, or forever when there is none.
async fn sleep_until_some(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Delivers what waits, for up to a few seconds (before a reboot or restart).
async fn flush(outbox: &mut Outbox, conn: &mut Mqtt) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !outbox.is_empty() && Instant::now() < deadline {
        if let Some(o) = outbox.next_to_send() {
            if conn
                .publish(&o.topic, o.payload.to_string().into_bytes(), false)
                .await
                .is_err()
            {
                return;
            }
        }
        match tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            conn.recv(),
        )
        .await
        {
            Ok(Some(MqttEvent::PubAck { .. })) => {
                let _ = outbox.acked();
            }
            Ok(Some(MqttEvent::Disconnected(_))) | Ok(None) | Err(_) => return,
            Ok(Some(_)) => {}
        }
    }
}

async fn reboot(
    agent: &Agent,
    outbox: &mut Outbox,
    conn: &mut Mqtt,
) -> Result<AgentExit, AgentError> {
    flush(outbox, conn).await;
    let cmd = &agent.settings.agent.reboot_command;
    tracing::warn!(command = ?cmd, "a step asked for a reboot; the journal is persisted, rebooting");
    if let Some((program, args)) = cmd.split_first() {
        match std::process::Command::new(program).args(args).status() {
            Ok(s) if s.success() => {}
            Ok(s) => tracing::error!("reboot command exited with {s}"),
            Err(e) => tracing::error!("reboot command {program}: {e}"),
        }
    }
    Ok(AgentExit::Rebooting)
}
