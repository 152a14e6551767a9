//! The gateway agent (`sandstep agent`): desired state in, deployments run, reported state out.
//!
//! - [`reported`]: the reported-state document, typed: each report is a `Patch`.
//! - [`report`]: the persisted outbox and the shadow service's confirmations.
//! - `mqtt_loop`: the MQTT source, one handler per input; also runs the IoT Hub source.
//! - `hub`: the IoT Hub source's part of that loop (request ids, twin answers, ADU's shapes;
//!   the protocol itself is [`crate::iothub`]).
//! - [`poll`]: the HTTP-polling source (micropython-ota layout), for gateways without a broker.
//!
//! With MQTT, the agent subscribes to its delta topic; a delta carrying a `workflow` is a
//! deployment (ADU's deployment message). It reports on its update topic: at start the installed
//! state (update id, handlers, file-set digests), then per deployment the acknowledgement
//! (`workflow`), rate-limited progress, and the result (`lastInstallResult`, plus `{"jobId",
//! "status"}`). Reports go through the outbox, so none is lost while the broker is away.

mod file_sets;
mod hub;
mod mqtt_loop;
pub mod poll;
pub mod refused;
pub mod report;
pub mod reported;

use crate::capability::ledger::ProgramLedger;
use crate::datadir::{write_atomic, DataDir};
use crate::sandbox::{EngineOptions, Sandbox};
use crate::workflow::events::{Event, Observer, UnitInfo};
use crate::workflow::{now_ms, Deployer, Outcome, Request};
use refused::Refused;
use report::Outgoing;
use reported::{
    adu_state, AgentInfo, FileDigests, HandlerInfo, LastInstallResult, Patch, ReportedWorkflow,
    Stage,
};
use sandstep_model::deployment::{action, Deployment, Workflow, MAX_DEPLOYMENT_BYTES};
use sandstep_model::inventory::Inventory;
use sandstep_model::journal::{FileSource, Journal, Status};
use sandstep_model::shadow::{valid_device_id, TopicLayout, Topics};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
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
    /// Where deployments come from: `mqtt`, `http-poll` or `iothub`.
    pub source: SourceKind,
    /// Topic layout: `replica` (`state/<id>/update`, ...), `aws` (`$aws/things/<id>/shadow/...`).
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
            topics: TopicLayout::default(),
            reboot_command: vec!["/sbin/reboot".into()],
            restart_exit_code: 75,
            progress_interval_ms: 1000,
            shutdown_grace_secs: 5,
            confirm_timeout_ms: 10_000,
        }
    }
}

/// Why no device id could be found.
#[derive(Debug, thiserror::Error)]
pub enum DeviceIdError {
    #[error("[agent] device-id is not set and the host name is unreadable: {0}")]
    NoHostName(std::io::Error),
    #[error(
        "{from} `{device}` cannot be a device id: it must be non-empty, without `/`, `+` or `#`"
    )]
    Unusable { from: &'static str, device: String },
}

impl AgentConfig {
    /// The device id: `device-id`, else this machine's host name (so a packaged agent runs out
    /// of the box); either must be usable in a topic.
    pub fn resolved_device_id(&self) -> Result<String, DeviceIdError> {
        let (device, from) = match &self.device_id {
            Some(d) => (d.clone(), "device-id"),
            None => (
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .map_err(DeviceIdError::NoHostName)?,
                "the host name (device-id is not set)",
            ),
        };
        if device.is_empty() || !valid_device_id(&device) {
            return Err(DeviceIdError::Unusable { from, device });
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
    /// IoT Hub's device twin, as ADU's agent speaks it (`[iothub]`).
    Iothub,
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
    #[error(transparent)]
    DeviceId(#[from] DeviceIdError),
    #[error(transparent)]
    Workflow(#[from] crate::workflow::WorkflowError),
    #[error(transparent)]
    Mqtt(#[from] sandstep_transport::mqtt::MqttError),
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    #[error(transparent)]
    IotHub(#[from] crate::iothub::config::IotHubError),
    /// Its cause is in the message, not a `source` (printed once).
    #[error("agent outbox: {0}")]
    Outbox(std::io::Error),
}

impl From<std::io::Error> for AgentError {
    fn from(e: std::io::Error) -> Self {
        AgentError::Outbox(e)
    }
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
    /// Read leniently: a result this version cannot read is dropped, not the whole file (which
    /// would lose the installed update id).
    #[serde(default, deserialize_with = "lenient")]
    last_install_result: Option<LastInstallResult>,
    #[serde(default)]
    workflow: Option<Workflow>,
}

fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<LastInstallResult>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

/// What the agent is configured with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub agent: AgentConfig,
    pub mqtt: sandstep_transport::mqtt::MqttConfig,
    pub http_poll: Option<poll::HttpPollConfig>,
    pub iothub: Option<crate::iothub::config::IotHubConfig>,
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
    /// This run of the agent and its reports so far: each report's place, in its `clientToken`
    /// (`ReportOrder`), lets replicas that store reports out of order keep the newest fields.
    run: u32,
    reports: std::sync::atomic::AtomicU64,
    /// The stage last reported, so a stage's `<stage>At` time is when it began.
    last_stage: std::sync::Mutex<Option<Stage>>,
    /// With `source = "iothub"`: the `[iothub]` table (defaults filled in) and the device's
    /// identity there.
    hub: Option<(
        crate::iothub::config::IotHubConfig,
        crate::iothub::config::Identity,
    )>,
}

impl Agent {
    /// Sets up from its settings (a `Config` converts) and the data dir.
    pub fn new(
        settings: impl Into<Settings>,
        data_path: &std::path::Path,
    ) -> Result<Agent, AgentError> {
        let settings: Settings = settings.into();
        let hub = match settings.agent.source {
            SourceKind::Iothub => {
                let config = settings.iothub.clone().unwrap_or_default();
                let identity = config.identity()?;
                Some((config, identity))
            }
            _ => None,
        };
        // Over IoT Hub the device is the one its connection string names.
        let device = match &hub {
            Some((_, id)) => id.connection.device_id.clone(),
            None => settings.agent.resolved_device_id()?,
        };
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
            run: fastrand::u32(..),
            reports: Default::default(),
            last_stage: Default::default(),
            hub,
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
    /// The files present at the files handler's destinations; without mapped destinations,
    /// what it recorded installing (Degu reports MD5s at boot).
    fn file_sets(&self) -> std::collections::BTreeMap<String, FileDigests> {
        const FILES: &str = "sandstep/files:1";
        if let Some(p) = self.settings.deploy.policy.handler(FILES) {
            if !p.dirs.is_empty() {
                return file_sets::file_sets(&p.dirs);
            }
        }
        let Ok(state) = self.data.state() else {
            return Default::default();
        };
        let dir = crate::datadir::safe_name(FILES);
        crate::datadir::adopt_legacy(&state, &crate::datadir::legacy_safe_name(FILES), &dir);
        #[derive(Deserialize)]
        struct Recorded {
            digests: std::collections::BTreeMap<String, FileDigests>,
        }
        state
            .read(format!("{dir}/digests.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Recorded>(&b).ok())
            .map(|r| r.digests)
            .unwrap_or_default()
    }

    fn installed_state(&self) -> Patch {
        let p = self.persisted();
        let handlers = self
            .deployer
            .loader()
            .registry()
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|e| HandlerInfo {
                id: e.id,
                sha256: e.digest,
                signers: e.signers,
            })
            .collect();
        Patch {
            device_id: Some(self.device.clone()),
            groups: Some(self.settings.agent.groups.clone()),
            agent: Some(AgentInfo {
                version: env!("CARGO_PKG_VERSION"),
                started_at: now_ms(),
            }),
            status: Some(Stage::StandBy),
            state: Some(adu_state::IDLE),
            handlers: Some(handlers),
            file_sets: Some(self.file_sets()),
            installed_update_id: Some(p.installed_update_id),
            last_install_result: p.last_install_result,
            workflow: p.workflow.map(ReportedWorkflow::Known),
            ..Patch::default()
        }
    }

    /// The component inventory, when the gateway has one (without, reference steps run on the
    /// host, as in ADU without a component enumerator).
    fn inventory(&self) -> Result<Option<Inventory>, Refused> {
        let Some(p) = &self.settings.agent.inventory else {
            return Ok(None);
        };
        let err = |cause: String| Refused::Inventory {
            path: p.clone(),
            cause,
        };
        let text = std::fs::read_to_string(p).map_err(|e| err(e.to_string()))?;
        Inventory::parse(&text)
            .map(Some)
            .map_err(|e| err(e.to_string()))
    }

    /// A report of `patch`. The stage vocabulary of the firmware-update pattern comes with when
    /// each stage began (`<stage>At`), beside ADU's `state`.
    fn reported(&self, mut patch: Patch) -> Outgoing {
        if let Some(stage) = patch.status {
            let mut last = self.last_stage.lock().expect("stage lock");
            if *last != Some(stage) {
                *last = Some(stage);
                patch.stage_began_at = Some(now_ms());
            }
        }
        self.envelope(patch.to_map())
    }

    /// The update-topic message carrying `reported` (a patch, or the whole reported state sent
    /// again), with a `clientToken` unique to this report.
    fn envelope(&self, reported: Map<String, Value>) -> Outgoing {
        let order = sandstep_model::shadow::ReportOrder {
            run: self.run,
            seq: self
                .reports
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        Outgoing {
            topic: Topics::for_device(&self.topics.update, &self.device),
            payload: json!({"state": {"reported": reported}, "clientToken": order.token(&self.device)}),
            progress: false,
        }
    }

    fn request(&self, d: &Deployment) -> Result<Request, Refused> {
        Ok(Request {
            workflow_id: d.workflow.id.clone(),
            retry_timestamp: d.workflow.retry_timestamp.clone(),
            manifest: d.update_manifest.clone().ok_or(Refused::NoManifest)?,
            source: FileSource::Urls(d.file_urls.clone()),
            inventory: self.inventory()?,
            force: false,
            signature: d.update_manifest_signature.clone(),
            allow_unsigned: false,
        })
    }

    fn request_from_journal(&self, j: &Journal) -> Result<Request, Refused> {
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
        let mut patch = Patch::finished(outcome.status, &outcome.result);
        patch.workflow = Some(ReportedWorkflow::Known(workflow.clone()));
        patch.file_sets = Some(self.file_sets());
        let mut p = self.persisted();
        p.workflow = Some(workflow.clone());
        p.last_install_result = patch.last_install_result.clone();
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

    fn rejection(
        &self,
        workflow: Option<ReportedWorkflow>,
        why: &dyn std::fmt::Display,
    ) -> Outgoing {
        let why = why.to_string();
        tracing::warn!("desired state refused: {why}");
        self.reported(Patch::refusal(workflow, &why, now_ms()))
    }
}

/// The fields of a delta (or of a desired document, or a whole shadow document).
pub(crate) fn desired_fields(payload: &[u8]) -> Result<Map<String, Value>, Refused> {
    if payload.len() > MAX_DEPLOYMENT_BYTES {
        return Err(Refused::TooLarge {
            bytes: payload.len(),
            limit: MAX_DEPLOYMENT_BYTES,
        });
    }
    let v: Value = serde_json::from_slice(payload).map_err(|cause| Refused::NotJson { cause })?;
    let state = v
        .get("state")
        .and_then(Value::as_object)
        .ok_or(Refused::NoState)?;
    let fields = state
        .get("desired")
        .or_else(|| state.get("delta"))
        .and_then(Value::as_object)
        .unwrap_or(state);
    Ok(fields.clone())
}

/// Turns delta fields into a deployment, if they carry one.
pub(crate) fn deployment_of(fields: &Map<String, Value>) -> Option<Result<Deployment, Refused>> {
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
            .map_err(|cause| Refused::Malformed { cause })
            .and_then(|d| d.check_remote().map(|()| d).map_err(Refused::from)),
    )
}

/// Interrupted deployments to resume, and refusal reports for those that cannot be.
type Resumable = (Vec<(Workflow, Request)>, Vec<Outgoing>);

impl Agent {
    /// The deployments a crash, reboot or restart interrupted, oldest first, as workflows to
    /// resume, and a refusal report for each that cannot be (both sources resume through this).
    fn resumable(&self) -> Result<Resumable, AgentError> {
        let (mut runs, mut refusals) = (Vec::new(), Vec::new());
        for j in self.deployer.unfinished()? {
            match self.request_from_journal(&j) {
                Ok(req) => {
                    let w = Workflow {
                        action: action::PROCESS_DEPLOYMENT,
                        id: j.workflow_id.clone(),
                        retry_timestamp: j.retry_timestamp.clone(),
                    };
                    runs.push((w, req));
                }
                Err(e) => {
                    let why = format!("cannot resume workflow {}: {e}", j.workflow_id);
                    tracing::error!("{why}");
                    let w = ReportedWorkflow::AsReceived(json!({"id": j.workflow_id}));
                    refusals.push(self.rejection(Some(w), &why));
                }
            }
        }
        Ok((runs, refusals))
    }

    /// A step asked for a reboot, and the journal is persisted: runs `reboot-command`. Both
    /// sources (MQTT, HTTP polling) end this way; a failing command is logged, and the journal
    /// still waits for the reboot.
    fn reboot_now(&self) -> AgentExit {
        let cmd = &self.settings.agent.reboot_command;
        tracing::warn!(command = ?cmd, "a step asked for a reboot; the journal is persisted, rebooting");
        if let Some((program, args)) = cmd.split_first() {
            match std::process::Command::new(program).args(args).status() {
                Ok(s) if s.success() => {}
                Ok(s) => tracing::error!("reboot command exited with {s}"),
                Err(e) => tracing::error!("reboot command {program}: {e}"),
            }
        }
        AgentExit::Rebooting
    }
}

/// Runs the agent until shutdown, a reboot, or a restart request. IoT Hub runs in the MQTT
/// loop, over its own session.
pub async fn run(agent: Agent, shutdown: CancellationToken) -> Result<AgentExit, AgentError> {
    if agent.settings.agent.source == SourceKind::HttpPoll {
        return poll::run(agent, shutdown).await;
    }
    mqtt_loop::run(agent, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent-state file whose last result this version cannot read keeps the rest.
    #[test]
    fn an_unreadable_last_result_does_not_lose_the_installed_update() {
        let p: Persisted = serde_json::from_str(
            r#"{"installedUpdateId": "u-1", "lastInstallResult": {"resultCode": "odd"}}"#,
        )
        .unwrap();
        assert_eq!(p.installed_update_id.as_deref(), Some("u-1"));
        assert!(p.last_install_result.is_none());
    }
}
