//! The gateway agent (`sandstep agent`): desired state in, deployments run, reported state out.
//!
//! - [`core`]: the deployment core, a pure state machine: what runs, waits, is replaced or
//!   cancelled, what is reported, when to reboot. No transport, no I/O.
//! - [`source`]: one adapter per source of desired state (MQTT device shadow, IoT Hub, HTTP
//!   polling, hawkBit), behind one trait; the only code that knows a wire's JSON.
//! - `runner`: the one loop: inputs from the source and the running deployment to the core,
//!   its effects carried out.
//! - [`outbox`]: the persisted queue of what waits to be delivered.
//! - [`resident`]: the idle agent pages out the code only start-up and deployments ran.
//! - here: [`Agent`], the parts every source shares (the deployment engine, the data dir, the
//!   persisted state, the reports that need I/O: installed handlers, file sets).
//!
//! The reported document is typed in `sandstep_model::reported`.

pub mod core;
mod file_sets;
pub mod outbox;
pub mod refused;
pub mod resident;
mod runner;
pub mod source;

use crate::capability::ledger::ProgramLedger;
use crate::datadir::{write_atomic, DataDir};
use crate::sandbox::{EngineOptions, Sandbox};
use crate::workflow::{Deployer, Outcome, Request};
use core::Desired;
use refused::Refused;
use sandstep_model::deployment::{action, Deployment, Workflow};
use sandstep_model::inventory::Inventory;
use sandstep_model::journal::{FileSource, Journal};
use sandstep_model::reported::{
    adu_state, AgentInfo, FileDigests, HandlerInfo, LastInstallResult, Patch, ReportedWorkflow,
    Stage,
};
use sandstep_model::shadow::{valid_device_id, TopicLayout, Topics};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use source::SourceSettings;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The `[agent]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentConfig {
    /// This gateway's id (in topics; no `/`, `+`, `#`); default: the host name.
    pub device_id: Option<String>,
    /// Groups this gateway belongs to (reported, for `sandstep-fleet deploy --group`).
    pub groups: Vec<String>,
    /// The component inventory (JSON) for reference steps.
    pub inventory: Option<PathBuf>,
    /// Where deployments come from; the source's own table (`[http-poll]`, `[iothub]`,
    /// `[hawkbit]`) holds its settings.
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

/// `[agent] source`: which source runs (its settings are in its own table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// The MQTT device shadow.
    Mqtt,
    /// HTTP polling (`[http-poll]`).
    HttpPoll,
    /// IoT Hub's device twin, as ADU's agent speaks it (`[iothub]`).
    Iothub,
    /// hawkBit's Direct Device Integration API (`[hawkbit]`).
    Hawkbit,
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
    #[error(transparent)]
    BaseUrl(#[from] source::http::BaseUrlError),
    #[error(transparent)]
    Hawkbit(#[from] source::hawkbit::HawkbitConfigError),
    #[error("wasm engine: {0}")]
    Engine(String),
    #[error("the source's connection ended: {0}")]
    SourceClosed(String),
    /// Its cause is in the message, not a `source` (printed once).
    #[error("agent outbox: {0}")]
    Outbox(std::io::Error),
}

impl From<std::io::Error> for AgentError {
    fn from(e: std::io::Error) -> Self {
        AgentError::Outbox(e)
    }
}

/// Persisted between runs: what the agent last applied.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Persisted {
    #[serde(default)]
    installed_update_id: Option<String>,
    /// Read leniently: a result this version cannot read is dropped, not the whole file (which
    /// would lose the installed update id).
    #[serde(default, deserialize_with = "lenient")]
    last_install_result: Option<LastInstallResult>,
    #[serde(default)]
    pub(crate) workflow: Option<Workflow>,
}

fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<LastInstallResult>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

/// What the agent is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub agent: AgentConfig,
    pub mqtt: sandstep_transport::mqtt::MqttConfig,
    /// The source in effect and its settings.
    pub source: SourceSettings,
    /// The deployment engine's.
    pub deploy: crate::workflow::Settings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            agent: AgentConfig::default(),
            mqtt: Default::default(),
            source: SourceSettings::Shadow,
            deploy: Default::default(),
        }
    }
}

/// The agent's shared parts.
pub struct Agent {
    settings: Settings,
    device: String,
    deployer: Arc<Deployer>,
    data: DataDir,
    topics: Topics,
    /// With `source = "iothub"`: the device's identity there (with DPS, once assigned).
    hub_identity: Option<crate::iothub::config::Identity>,
    /// With `[iothub.dps]`: the registration.
    dps: Option<crate::iothub::dps::DpsSetup>,
}

impl Agent {
    /// Sets up from its settings (a `Config` converts) and the data dir.
    pub fn new(
        settings: impl Into<Settings>,
        data_path: &std::path::Path,
    ) -> Result<Agent, AgentError> {
        use crate::iothub::{config::Credentials, provision};
        let settings: Settings = settings.into();
        let data = DataDir::open(data_path)?;
        let (hub_identity, dps) = match &settings.source {
            SourceSettings::Iothub(config) => match config.credentials()? {
                Credentials::Connection(id) => (Some(id), None),
                // Registered before: the kept assignment; else `run` registers first.
                Credentials::Dps(setup) => (
                    provision::load(data.root(), &setup).map(|a| config.provisioned(&a, &setup)),
                    Some(setup),
                ),
            },
            _ => (None, None),
        };
        // Over IoT Hub the device is the one its connection string (or DPS) names; before
        // the first registration, its registration id.
        let device = match (&hub_identity, &dps) {
            (Some(id), _) => id.connection.device_id.clone(),
            (None, Some(setup)) => setup.registration_id.clone(),
            (None, None) => settings.agent.resolved_device_id()?,
        };
        let sandbox = Arc::new(
            Sandbox::new(&EngineOptions::default(), Some(data.component_cache()?))
                .map_err(|e| AgentError::Engine(e.to_string()))?
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
            hub_identity,
            dps,
        })
    }

    /// With `[iothub.dps]` and no assignment kept: registers (trying again until it succeeds);
    /// false if shut down first.
    async fn provision(&mut self, shutdown: &CancellationToken) -> bool {
        let (Some(setup), None, SourceSettings::Iothub(config)) =
            (&self.dps, &self.hub_identity, &self.settings.source)
        else {
            return true;
        };
        let tls = config.tls_files();
        let assignment = tokio::select! {
            a = crate::iothub::provision::provision(setup, &tls, self.data.root()) => a,
            _ = shutdown.cancelled() => return false,
        };
        self.device = assignment.device_id.clone();
        self.hub_identity = Some(config.provisioned(&assignment, setup));
        true
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
        let bytes = serde_json::to_vec_pretty(p).expect("serializes");
        if let Err(e) = write_atomic(self.data.root(), "agent-state.json", &bytes, 0o600) {
            tracing::error!("agent-state.json: {e}");
        }
    }

    /// The reported document the agent last kept (`reported.json`), to go on from.
    fn local_reported(&self) -> Map<String, Value> {
        self.data
            .root()
            .read("reported.json")
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|v| sandstep_model::reported::fields_of(&v))
            .unwrap_or_default()
    }

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

    /// The installed state reported at start: update id, handlers, file-set digests.
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
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_at: sandstep_transport::clock::now_ms(),
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
            root_key_package_url: d.root_key_package_url.clone(),
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
            root_key_package_url: j.root_key_package_url.clone(),
        })
    }

    /// Desired fields as the core takes them: a deployment (with its request, or why it cannot
    /// have one), a cancel, a refusal, or fields that are no deployment.
    fn decode(&self, fields: Map<String, Value>) -> Desired {
        let as_received = || {
            fields
                .get("workflow")
                .cloned()
                .map(ReportedWorkflow::AsReceived)
        };
        let d = match deployment_of(&fields) {
            None => return Desired::Foreign(fields),
            Some(Ok(d)) => d,
            Some(Err(why)) => {
                return Desired::Refused {
                    workflow: as_received(),
                    why: why.to_string(),
                }
            }
        };
        if d.workflow.action == action::CANCEL {
            return Desired::Cancel(d.workflow);
        }
        let req = self.request(&d).map(Box::new);
        Desired::Deploy(d.workflow, req)
    }

    /// Records a finished deployment (persisted state, result file) and returns its final
    /// report.
    fn record_finished(&self, workflow: &Workflow, outcome: &Outcome) -> Patch {
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
        if let Err(e) = self.deployer.journals().write_result(&outcome.result) {
            tracing::error!(workflow = %workflow.id, "result file: {e}");
        }
        patch
    }

    /// The deployments a crash, reboot or restart interrupted, oldest first, and the workflow
    /// and reason of each that cannot be resumed.
    #[allow(clippy::type_complexity)]
    fn resumable(
        &self,
    ) -> Result<(Vec<(Workflow, Request)>, Vec<(ReportedWorkflow, String)>), AgentError> {
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
                    let w = Workflow {
                        action: action::PROCESS_DEPLOYMENT,
                        id: j.workflow_id.clone(),
                        retry_timestamp: j.retry_timestamp.clone(),
                    };
                    refusals.push((ReportedWorkflow::Known(w), why));
                }
            }
        }
        Ok((runs, refusals))
    }

    /// A step asked for a reboot, and the journal is persisted: runs `reboot-command`. A failing
    /// command is logged, and the journal still waits for the reboot.
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

/// Turns desired fields into a deployment, if they carry one.
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

/// Runs the agent until shutdown, a reboot, or a restart request, over the source its settings
/// name: the one place that maps a source to its adapter.
pub async fn run(mut agent: Agent, shutdown: CancellationToken) -> Result<AgentExit, AgentError> {
    use source::{hawkbit, http_poll, iothub, shadow};
    if !agent.provision(&shutdown).await {
        return Ok(AgentExit::Shutdown);
    }
    let settings = &agent.settings;
    match &settings.source {
        SourceSettings::Shadow => {
            let client_id = settings
                .mqtt
                .client_id
                .clone()
                .unwrap_or_else(|| agent.device.clone());
            let conn = sandstep_transport::mqtt::Mqtt::connect(&settings.mqtt, &client_id)?;
            let confirm = Duration::from_millis(settings.agent.confirm_timeout_ms);
            let s = shadow::ShadowSource::new(conn, &agent.device, agent.topics.clone(), confirm);
            runner::run(&agent, s, shutdown).await
        }
        SourceSettings::Iothub(config) => {
            use crate::iothub::session::{HubSession, Reprovision};
            let identity = agent.hub_identity.clone().expect("resolved or provisioned");
            let mut conn = HubSession::connect(config, &identity, &settings.mqtt)?;
            if let Some(setup) = &agent.dps {
                let root = agent.data.root().try_clone()?;
                conn = conn.with_reprovision(Reprovision::new(setup.clone(), root));
            }
            let properties =
                iothub::device_properties(&identity, &settings.deploy.device.properties);
            let timeout = Duration::from_millis(config.response_timeout_ms);
            let s = iothub::HubSource::new(conn, iothub::HubState::new(properties, timeout));
            runner::run(&agent, s, shutdown).await
        }
        SourceSettings::HttpPoll(config) => {
            let s = http_poll::PollSource::new(config, agent.data.root().try_clone()?)?;
            runner::run(&agent, s, shutdown).await
        }
        SourceSettings::Hawkbit(config) => {
            let attributes = settings.deploy.device.properties.clone();
            let root = agent.data.root().try_clone()?;
            let s = hawkbit::HawkbitSource::new(config, &agent.device, attributes, root)?;
            runner::run(&agent, s, shutdown).await
        }
    }
}

#[cfg(test)]
mod tests;
