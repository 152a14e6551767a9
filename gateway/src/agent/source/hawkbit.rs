//! Eclipse hawkBit's Direct Device Integration API (`source = "hawkbit"`): the agent polls its
//! controller resource, `GET <base>/<tenant>/controller/v1/<controller-id>`, every
//! `poll-interval-secs` (else the server's `config.polling.sleep`). A `deploymentBase` link is an
//! update action; a `cancelAction` link asks to stop one; a `configData` link asks for the
//! device's attributes (`PUT .../configData`). Progress and results go back as the action's
//! feedback (`POST .../deploymentBase/<id>/feedback`: `proceeding`, then `closed` with
//! `success` or `failure` and the details), a cancel's as `POST .../cancelAction/<id>/feedback`.
//!
//! What an action deploys: its software modules (chunks) carry an artifact whose name ends in
//! `deployment.json`: the signed deployment document `sandstep manifest sign --out` writes (the
//! update manifest and its signature). The manifest's files are the action's artifacts of the
//! same names, fetched from their download links and checked against the signed manifest's
//! hashes, as every deployment's are; the deployment runs as workflow `hawkbit-<action id>`.
//! So hawkBit only carries updates, it cannot make one: an artifact it adds or changes runs
//! nowhere, as the manifest's signature does not cover it.
//!
//! The token (`Authorization: TargetToken ...` or `GatewayToken ...`) goes only to the
//! configured server: API links (deploymentBase, cancelAction, configData, feedback) on another
//! origin are refused; artifacts may come from elsewhere (a CDN), without the token.

use super::http::{client, get_text, text_of, BaseUrlError};
use super::{Ending, Sent, Source, SourceInput};
use crate::agent::core::Profile;
use crate::agent::outbox::Queued;
use crate::agent::refused::ServerError;
use crate::datadir::write_atomic;
use cap_std::fs::Dir;
use sandstep_model::deployment::{action, Deployment, Workflow, MAX_DEPLOYMENT_BYTES};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The `[hawkbit]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HawkbitConfig {
    /// The server, e.g. `https://hawkbit.example`.
    pub base_url: String,
    /// The tenant (`DEFAULT` on a fresh server).
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// The controller id; default: the device id.
    pub controller_id: Option<String>,
    /// The target's security token (`Authorization: TargetToken <token>`).
    pub target_token: Option<String>,
    /// Or the tenant's gateway token (`Authorization: GatewayToken <token>`).
    pub gateway_token: Option<String>,
    /// A file holding the token instead (read at start; the token kind as set above, target by
    /// default).
    pub token_file: Option<std::path::PathBuf>,
    /// Seconds between polls; default: what the server says (`config.polling.sleep`), else 300.
    pub poll_interval_secs: Option<u64>,
}

fn default_tenant() -> String {
    "DEFAULT".into()
}

/// Why the `[hawkbit]` table cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HawkbitConfigError {
    #[error(transparent)]
    BaseUrl(#[from] BaseUrlError),
    #[error("[hawkbit]: give target-token, gateway-token or token-file, one of them")]
    Token,
    #[error("[hawkbit] token-file {path}: {cause}")]
    TokenFile { path: String, cause: std::io::Error },
    #[error("[hawkbit] {setting} `{value}`: only letters, digits, '-', '_', '.' and ':'")]
    BadName {
        setting: &'static str,
        value: String,
    },
}

/// Why an update action cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("the action has {0} artifacts named *deployment.json; sandstep needs exactly one (a signed deployment document, `sandstep manifest sign --out`)")]
    DeploymentDocuments(usize),
    #[error(transparent)]
    Fetch(#[from] ServerError),
    #[error("{artifact}: {cause}")]
    Document {
        artifact: String,
        cause: sandstep_model::deployment::DeploymentError,
    },
    #[error("{artifact}: no updateManifest")]
    NoManifest { artifact: String },
    #[error("{artifact}: updateManifest: {cause}")]
    Manifest {
        artifact: String,
        cause: sandstep_model::manifest::ManifestError,
    },
    #[error("file `{0}` of the manifest is not an artifact of the action")]
    NotAnArtifact(String),
    #[error("{artifact}: sha256 {actual}, the action says {declared}")]
    Hash {
        artifact: String,
        actual: String,
        declared: String,
    },
    #[error("{0}: the action gives no sha256")]
    NoHash(String),
    #[error(transparent)]
    Unfit(sandstep_model::deployment::DeploymentError),
}

/// Most bytes read of a controller resource or an action.
const MAX_RESOURCE_BYTES: usize = 1 << 20;
/// Each action's workflow id starts so.
const WORKFLOW_PREFIX: &str = "hawkbit-";

/// What the source keeps between polls (and, for the actions closed, across restarts).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Kept {
    /// Actions whose closing feedback was sent: never run again.
    closed: Vec<String>,
}

/// The source.
pub struct HawkbitSource {
    client: reqwest::Client,
    /// `<base>/<tenant>/controller/v1/<controller-id>`.
    controller: String,
    origin: reqwest::Url,
    authorization: String,
    interval: Option<Duration>,
    server_sleep: Duration,
    next_poll: Instant,
    root: Dir,
    /// The action running now, and the cancel action that stops it, if any.
    running: Option<String>,
    cancel: BTreeMap<String, String>,
    /// The device's attributes, sent when the server asks.
    attributes: BTreeMap<String, String>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
}

impl HawkbitSource {
    pub fn new(
        cfg: &HawkbitConfig,
        device: &str,
        attributes: BTreeMap<String, String>,
        root: Dir,
    ) -> Result<HawkbitSource, HawkbitConfigError> {
        let client = client("[hawkbit] base-url", &cfg.base_url)?;
        let controller_id = cfg
            .controller_id
            .clone()
            .unwrap_or_else(|| device.to_owned());
        for (setting, value) in [("tenant", &cfg.tenant), ("controller-id", &controller_id)] {
            if !valid_name(value) {
                let value = value.clone();
                return Err(HawkbitConfigError::BadName { setting, value });
            }
        }
        let authorization = authorization(cfg)?;
        let base = cfg.base_url.trim_end_matches('/');
        let origin = reqwest::Url::parse(base).expect("checked by client()");
        Ok(HawkbitSource {
            client,
            controller: format!("{base}/{}/controller/v1/{controller_id}", cfg.tenant),
            origin,
            authorization,
            interval: cfg
                .poll_interval_secs
                .map(|s| Duration::from_secs(s.max(1))),
            server_sleep: Duration::from_secs(300),
            next_poll: Instant::now(),
            root,
            running: None,
            cancel: BTreeMap::new(),
            attributes,
        })
    }

    fn kept(&self) -> Kept {
        self.root
            .read("hawkbit-state.json")
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn close(&self, action_id: &str) {
        let mut k = self.kept();
        if !k.closed.iter().any(|c| c == action_id) {
            k.closed.push(action_id.to_owned());
            // The newest are what the server may still offer.
            let excess = k.closed.len().saturating_sub(64);
            k.closed.drain(..excess);
            let bytes = serde_json::to_vec(&k).expect("serializes");
            if let Err(e) = write_atomic(&self.root, "hawkbit-state.json", &bytes, 0o600) {
                tracing::error!("hawkbit-state.json: {e}");
            }
        }
    }

    /// An API link of the server's (absolute, as hawkBit writes them, or relative to the
    /// server): on its origin only, as the token goes with it.
    fn api_link(&self, href: &str) -> Result<String, ServerError> {
        let url = self
            .origin
            .join(href)
            .map_err(|e| ServerError::Unreachable {
                url: href.to_owned(),
                cause: e.to_string(),
            })?;
        if url.origin() != self.origin.origin() {
            return Err(ServerError::Unreachable {
                url: href.to_owned(),
                cause: format!(
                    "a link to another server than {} refused (the token would go there)",
                    self.origin
                ),
            });
        }
        Ok(url.to_string())
    }

    async fn get_json(&self, url: &str) -> Result<Value, ServerError> {
        let req = self
            .client
            .get(url)
            .header("Authorization", &self.authorization)
            .header("Accept", "application/json");
        let text = text_of(req, url, MAX_RESOURCE_BYTES).await?;
        serde_json::from_str(&text).map_err(|e| ServerError::Unreachable {
            url: url.to_owned(),
            cause: format!("not JSON: {e}"),
        })
    }

    async fn send_json(
        &self,
        method: reqwest::Method,
        url: &str,
        body: &Value,
    ) -> Result<(), ServerError> {
        let req = self
            .client
            .request(method, url)
            .header("Authorization", &self.authorization)
            .header("Content-Type", "application/json")
            .body(body.to_string());
        text_of(req, url, MAX_RESOURCE_BYTES).await.map(drop)
    }

    /// Whether the server answers the controller resource with this token (`sandstep doctor`):
    /// the resource's URL.
    pub async fn probe(&self) -> Result<String, ServerError> {
        self.get_json(&self.controller).await?;
        Ok(self.controller.clone())
    }

    /// One poll of the controller resource: what it offers.
    async fn poll(&mut self) -> Result<Vec<SourceInput>, ServerError> {
        let base = self.get_json(&self.controller.clone()).await?;
        if let Some(sleep) = base
            .pointer("/config/polling/sleep")
            .and_then(Value::as_str)
            .and_then(parse_sleep)
        {
            self.server_sleep = sleep;
        }
        let link = |name: &str| {
            base.pointer(&format!("/_links/{name}/href"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let mut out = Vec::new();
        if let Some(href) = link("configData") {
            self.send_config(&self.api_link(&href)?).await?;
        }
        if let Some(href) = link("cancelAction") {
            out.extend(self.cancel_action(&self.api_link(&href)?).await?);
        }
        if let Some(href) = link("deploymentBase") {
            out.extend(self.deployment_base(&self.api_link(&href)?).await?);
        }
        Ok(out)
    }

    /// The device's attributes, merged into the target's.
    async fn send_config(&self, url: &str) -> Result<(), ServerError> {
        let mut data: Map<String, Value> = self
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        data.insert("sandstep".into(), Value::from(env!("CARGO_PKG_VERSION")));
        let body = json!({"mode": "merge", "data": data});
        self.send_json(reqwest::Method::PUT, url, &body).await
    }

    /// A cancel of the action running: stopped like any deployment's cancel; its feedback
    /// goes to the cancel action once the deployment has stopped. A cancel of an action not
    /// running here is confirmed at once.
    async fn cancel_action(&mut self, url: &str) -> Result<Vec<SourceInput>, ServerError> {
        let c = self.get_json(url).await?;
        let (Some(id), Some(stop)) = (
            json_id(c.get("id")),
            json_id(c.pointer("/cancelAction/stopId")),
        ) else {
            return Err(ServerError::Unreachable {
                url: url.to_owned(),
                cause: "a cancel action without `id` or `cancelAction.stopId`".into(),
            });
        };
        if self.cancel.get(&stop) == Some(&id) {
            return Ok(Vec::new()); // asked again while it stops
        }
        self.cancel.insert(stop.clone(), id.clone());
        if self.running.as_deref() != Some(stop.as_str()) {
            self.close(&stop);
            let feedback = self.cancel_feedback(&id, "closed", "success", "nothing ran");
            self.post(&feedback.0, &feedback.1).await?;
            self.cancel.remove(&stop);
            return Ok(Vec::new());
        }
        let mut fields = Map::new();
        let w = json!({"action": action::CANCEL, "id": format!("{WORKFLOW_PREFIX}{stop}")});
        fields.insert("workflow".into(), w);
        Ok(vec![SourceInput::Desired(fields)])
    }

    async fn post(&self, url: &str, body: &Value) -> Result<(), ServerError> {
        self.send_json(reqwest::Method::POST, url, body).await
    }

    /// An update action: its signed deployment document and the links of its files.
    async fn deployment_base(&mut self, url: &str) -> Result<Vec<SourceInput>, ServerError> {
        let base = self.get_json(url).await?;
        let Some(id) = json_id(base.get("id")) else {
            return Err(ServerError::Unreachable {
                url: url.to_owned(),
                cause: "an action without `id`".into(),
            });
        };
        if self.kept().closed.contains(&id) || self.running.as_deref() == Some(id.as_str()) {
            return Ok(Vec::new());
        }
        let workflow = Workflow {
            action: action::PROCESS_DEPLOYMENT,
            id: format!("{WORKFLOW_PREFIX}{id}"),
            retry_timestamp: None,
        };
        match self.deployment(&base).await {
            Ok(mut d) => {
                d.workflow = workflow;
                self.running = Some(id);
                Ok(vec![SourceInput::Deployment(d)])
            }
            Err(why) => {
                // The action cannot run: closed as failed, so the server stops offering it.
                let why = why.to_string();
                tracing::error!(action = %id, "{why}");
                let (url, body) =
                    self.feedback(&id, "closed", "failure", std::slice::from_ref(&why));
                self.post(&url, &body).await?;
                self.close(&id);
                let workflow = Some(sandstep_model::reported::ReportedWorkflow::Known(workflow));
                Ok(vec![SourceInput::Refused { workflow, why }])
            }
        }
    }

    /// The deployment document among the action's artifacts, with `fileUrls` from the others.
    async fn deployment(&self, base: &Value) -> Result<Deployment, ActionError> {
        let artifacts = artifacts(base);
        let docs: Vec<&Artifact> = artifacts
            .iter()
            .filter(|a| a.filename.ends_with("deployment.json"))
            .collect();
        let [doc] = docs.as_slice() else {
            return Err(ActionError::DeploymentDocuments(docs.len()));
        };
        let text = self.artifact_text(doc).await?;
        let artifact = || doc.filename.clone();
        let mut d = Deployment::parse(&text).map_err(|cause| ActionError::Document {
            artifact: artifact(),
            cause,
        })?;
        let manifest = d
            .update_manifest
            .as_deref()
            .ok_or_else(|| ActionError::NoManifest {
                artifact: artifact(),
            })?;
        let parsed = sandstep_model::manifest::Manifest::parse(manifest).map_err(|cause| {
            ActionError::Manifest {
                artifact: artifact(),
                cause,
            }
        })?;
        d.file_urls.clear();
        for (file_id, f) in &parsed.files {
            let a = artifacts
                .iter()
                .find(|a| a.filename == f.file_name)
                .ok_or_else(|| ActionError::NotAnArtifact(f.file_name.clone()))?;
            d.file_urls.insert(file_id.clone(), a.href.clone());
        }
        d.check_remote().map_err(ActionError::Unfit)?;
        Ok(d)
    }

    /// An artifact's bytes as text, checked against the hash the action gives for it.
    async fn artifact_text(&self, a: &Artifact) -> Result<String, ActionError> {
        let text = get_text(&self.client, &a.href, MAX_DEPLOYMENT_BYTES).await?;
        let actual = hex::encode(Sha256::digest(text.as_bytes()));
        match &a.sha256 {
            Some(want) if want.eq_ignore_ascii_case(&actual) => Ok(text),
            Some(want) => Err(ActionError::Hash {
                artifact: a.filename.clone(),
                actual,
                declared: want.clone(),
            }),
            None => Err(ActionError::NoHash(a.filename.clone())),
        }
    }

    /// `(url, body)` of a deployment action's feedback.
    fn feedback(
        &self,
        id: &str,
        execution: &str,
        finished: &str,
        details: &[String],
    ) -> (String, Value) {
        let url = format!("{}/deploymentBase/{id}/feedback", self.controller);
        (url, status(execution, finished, details))
    }

    /// `(url, body)` of a cancel action's feedback.
    fn cancel_feedback(
        &self,
        id: &str,
        execution: &str,
        finished: &str,
        detail: &str,
    ) -> (String, Value) {
        let url = format!("{}/cancelAction/{id}/feedback", self.controller);
        (url, status(execution, finished, &[detail.to_owned()]))
    }

    /// The feedback a report gives, if any, and the action it closes.
    fn feedback_of(&self, fields: &Map<String, Value>) -> Option<(String, Value, Option<String>)> {
        let w = fields.get("workflow")?;
        let id = w
            .get("id")?
            .as_str()?
            .strip_prefix(WORKFLOW_PREFIX)?
            .to_owned();
        if self.kept().closed.contains(&id) {
            return None; // told already (the report at start names the last action, too)
        }
        if w.get("action").and_then(Value::as_i64) == Some(i64::from(action::CANCEL)) {
            let cancel_id = self.cancel.get(&id)?;
            let (url, body) = self.cancel_feedback(cancel_id, "closed", "success", "stopped");
            return Some((url, body, Some(id)));
        }
        let details = details(fields);
        let (execution, finished, closes) = match fields.get("status").and_then(Value::as_str) {
            _ if fields.get("lastError").is_some_and(|e| !e.is_null()) => {
                ("closed", "failure", true)
            }
            Some("completed") => ("closed", "success", true),
            Some("failed") => ("closed", "failure", true),
            Some("standBy") => ("closed", "failure", true), // cancelled by another way
            _ => ("proceeding", "none", false),
        };
        let (url, body) = self.feedback(&id, execution, finished, &details);
        Some((url, body, closes.then_some(id)))
    }
}

/// `Authorization` from the table: exactly one token.
fn authorization(cfg: &HawkbitConfig) -> Result<String, HawkbitConfigError> {
    let from_file = match &cfg.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|cause| HawkbitConfigError::TokenFile {
                    path: p.display().to_string(),
                    cause,
                })?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    match (&cfg.target_token, &cfg.gateway_token, from_file) {
        (Some(t), None, None) => Ok(format!("TargetToken {t}")),
        (None, Some(t), None) => Ok(format!("GatewayToken {t}")),
        (None, None, Some(t)) if !t.is_empty() => Ok(format!("TargetToken {t}")),
        _ => Err(HawkbitConfigError::Token),
    }
}

/// DDI's status body.
fn status(execution: &str, finished: &str, details: &[String]) -> Value {
    json!({"status": {"execution": execution, "result": {"finished": finished}, "details": details}})
}

/// What a report says, in a feedback's details: the stage, the action, the result.
fn details(fields: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(s) = fields.get("status").and_then(Value::as_str) {
        out.push(format!("sandstep: {s}"));
    }
    if let Some(p) = fields.get("progress").filter(|p| p.is_object()) {
        let part = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("");
        let line = format!("{} {} {}", part("unit"), part("handler"), part("action"));
        if !line.trim().is_empty() {
            out.push(line.trim().to_owned());
        }
    }
    if let Some(r) = fields.get("lastInstallResult").filter(|r| r.is_object()) {
        out.push(format!(
            "resultCode {} extendedResultCodes {} {}",
            r["resultCode"],
            r["extendedResultCodes"].as_str().unwrap_or(""),
            r["resultDetails"].as_str().unwrap_or("")
        ));
    }
    if let Some(m) = fields
        .get("lastError")
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
    {
        out.push(m.to_owned());
    }
    out
}

/// An artifact of an action: its name, where to fetch it, its sha256.
#[derive(Debug)]
struct Artifact {
    filename: String,
    href: String,
    sha256: Option<String>,
}

/// Every artifact of every chunk; its `download` link, else `download-http`.
fn artifacts(base: &Value) -> Vec<Artifact> {
    let chunks = base
        .pointer("/deployment/chunks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    chunks
        .iter()
        .filter_map(|c| c.get("artifacts")?.as_array().cloned())
        .flatten()
        .filter_map(|a| {
            let href = a
                .pointer("/_links/download/href")
                .or_else(|| a.pointer("/_links/download-http/href"))?
                .as_str()?
                .to_owned();
            Some(Artifact {
                filename: a.get("filename")?.as_str()?.to_owned(),
                href,
                sha256: a
                    .pointer("/hashes/sha256")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            })
        })
        .collect()
}

/// An id as DDI writes it: a string, or a number.
fn json_id(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if valid_name(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `HH:MM:SS`, as `config.polling.sleep` says it.
fn parse_sleep(s: &str) -> Option<Duration> {
    let parts: Vec<u64> = s
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = parts.as_slice() else {
        return None;
    };
    (*m < 60 && *sec < 60).then(|| Duration::from_secs(h * 3600 + m * 60 + sec))
}

impl Source for HawkbitSource {
    async fn recv(&mut self) -> Vec<SourceInput> {
        std::future::pending().await
    }

    fn can_send(&self) -> bool {
        true
    }

    async fn send(&mut self, item: &Queued) -> Sent {
        let Queued::Report { fields, .. } = item else {
            return Sent::Done;
        };
        let Some((url, body, closes)) = self.feedback_of(fields) else {
            return Sent::Done;
        };
        match self.post(&url, &body).await {
            Ok(()) => {
                if let Some(id) = closes {
                    self.close(&id);
                    self.cancel.remove(&id);
                    if self.running.as_deref() == Some(id.as_str()) {
                        self.running = None;
                    }
                }
                Sent::Done
            }
            // The action is over on the server's side (410 Gone): nothing to tell any more.
            Err(ServerError::Status { status: 410, .. }) => Sent::Done,
            Err(e) => {
                tracing::warn!("hawkBit feedback: {e}");
                self.next_poll = Instant::now() + Duration::from_secs(5);
                Sent::Failed
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.next_poll)
    }

    async fn due(&mut self) -> Vec<SourceInput> {
        let out = match self.poll().await {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!("{e}");
                vec![SourceInput::Refused {
                    workflow: None,
                    why: e.to_string(),
                }]
            }
        };
        self.next_poll = Instant::now() + self.interval.unwrap_or(self.server_sleep);
        out
    }

    fn finished(&mut self, workflow: &Workflow, _ending: Ending) -> Vec<SourceInput> {
        // The closing feedback goes out with the final report (or the refusal's); from here on
        // a new action may be taken.
        if let Some(id) = workflow.id.strip_prefix(WORKFLOW_PREFIX) {
            if self.running.as_deref() == Some(id) {
                self.running = None;
            }
        }
        Vec::new()
    }

    fn profile(&self) -> Profile {
        Profile {
            report_replaced_end: true,
            ignore_finished_duplicate: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_polling_sleep_reads_as_hawkbit_writes_it() {
        assert_eq!(parse_sleep("00:05:00"), Some(Duration::from_secs(300)));
        assert_eq!(parse_sleep("12:00:00"), Some(Duration::from_secs(43_200)));
        assert_eq!(parse_sleep("00:61:00"), None);
        assert_eq!(parse_sleep("5m"), None);
    }

    #[test]
    fn exactly_one_token_is_configured() {
        let cfg = |t: Option<&str>, g: Option<&str>| HawkbitConfig {
            base_url: "http://h".into(),
            tenant: "DEFAULT".into(),
            controller_id: None,
            target_token: t.map(str::to_owned),
            gateway_token: g.map(str::to_owned),
            token_file: None,
            poll_interval_secs: None,
        };
        assert_eq!(
            authorization(&cfg(Some("a"), None)).unwrap(),
            "TargetToken a"
        );
        assert_eq!(
            authorization(&cfg(None, Some("g"))).unwrap(),
            "GatewayToken g"
        );
        assert!(matches!(
            authorization(&cfg(None, None)),
            Err(HawkbitConfigError::Token)
        ));
        assert!(matches!(
            authorization(&cfg(Some("a"), Some("g"))),
            Err(HawkbitConfigError::Token)
        ));
    }

    #[test]
    fn reports_become_feedback_for_their_action_only() {
        let t = tempfile::tempdir().unwrap();
        let root = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let cfg = HawkbitConfig {
            base_url: "http://h:1".into(),
            tenant: "T".into(),
            controller_id: Some("c1".into()),
            target_token: Some("x".into()),
            gateway_token: None,
            token_file: None,
            poll_interval_secs: None,
        };
        let s = HawkbitSource::new(&cfg, "gw", BTreeMap::new(), root).unwrap();
        let fields = |v: Value| v.as_object().unwrap().clone();
        let (url, body, closes) = s
            .feedback_of(&fields(
                json!({"workflow": {"action": 3, "id": "hawkbit-7"}, "status": "downloading"}),
            ))
            .unwrap();
        assert_eq!(
            url,
            "http://h:1/T/controller/v1/c1/deploymentBase/7/feedback"
        );
        assert_eq!(body["status"]["execution"], "proceeding");
        assert_eq!(closes, None);
        let (_, body, closes) = s
            .feedback_of(&fields(json!({"workflow": {"action": 3, "id": "hawkbit-7"}, "status": "completed",
                "lastInstallResult": {"resultCode": 700, "extendedResultCodes": "00000000", "resultDetails": ""}})))
            .unwrap();
        assert_eq!(body["status"]["result"]["finished"], "success");
        assert_eq!(closes.as_deref(), Some("7"));
        assert!(s
            .feedback_of(&fields(json!({"workflow": {"action": 3, "id": "wf-1"}})))
            .is_none());
        assert!(s
            .feedback_of(&fields(json!({"status": "standBy"})))
            .is_none());
        // A link to another origin would carry the token there.
        assert!(s
            .api_link("http://elsewhere:1/T/controller/v1/c1/deploymentBase/7")
            .is_err());
        assert!(s
            .api_link("http://h:1/T/controller/v1/c1/deploymentBase/7?c=1")
            .is_ok());
    }
}
