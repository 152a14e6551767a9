//! The reported-state document: every field the agent reports, typed, and serialised only here
//! ([`Patch::to_map`]). A report is a [`Patch`]: the fields it sets (a `Some(None)` clears one,
//! as `null`); whoever keeps the device's reported state (a shadow service, the agent's own
//! `reported.json`) merges patches into it. Its JSON form is the device-shadow document the
//! MQTT source sends as is; the other sources translate it to their wire (IoT Hub's
//! `deviceUpdate` component, hawkBit's feedback) from this form.

use crate::deployment::Workflow;
use crate::journal::Status;
use crate::results::ResultFile;
use crate::Action;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// ADU's reported `state` values.
pub mod adu_state {
    pub const IDLE: i32 = 0;
    pub const DOWNLOAD_STARTED: i32 = 1;
    pub const INSTALL_STARTED: i32 = 3;
    pub const APPLY_STARTED: i32 = 5;
    pub const DEPLOYMENT_IN_PROGRESS: i32 = 6;
    pub const BACKUP_STARTED: i32 = 7;
    pub const RESTORE_STARTED: i32 = 9;
    pub const FAILED: i32 = 255;
}

/// The simple `status`, `firmwareStatus`-style: the firmware-update pattern's stages; ADU's
/// `state` gives the detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    StandBy,
    Downloading,
    Applying,
    Rebooting,
    Completed,
    Failed,
}

impl Stage {
    /// The name reported, also the prefix of `<stage>At`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::StandBy => "standBy",
            Stage::Downloading => "downloading",
            Stage::Applying => "applying",
            Stage::Rebooting => "rebooting",
            Stage::Completed => "completed",
            Stage::Failed => "failed",
        }
    }

    /// The stage and ADU state while `action` runs.
    pub fn of(action: Action) -> (Stage, i32) {
        match action {
            Action::IsInstalled => (Stage::Downloading, adu_state::DEPLOYMENT_IN_PROGRESS),
            Action::Download => (Stage::Downloading, adu_state::DOWNLOAD_STARTED),
            Action::Backup => (Stage::Applying, adu_state::BACKUP_STARTED),
            Action::Install => (Stage::Applying, adu_state::INSTALL_STARTED),
            Action::Apply => (Stage::Applying, adu_state::APPLY_STARTED),
            Action::Cancel => (Stage::Applying, adu_state::DEPLOYMENT_IN_PROGRESS),
            Action::Restore => (Stage::Applying, adu_state::RESTORE_STARTED),
        }
    }
}

/// `agent`: which sandstep reports, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentInfo {
    pub version: String,
    pub started_at: u64,
}

/// One registered handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerInfo {
    pub id: String,
    pub sha256: String,
    pub signers: Vec<String>,
}

/// One file of `fileSets`: its digests, or its size and why it was not hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FileDigests {
    Hashed { md5: String, sha256: String },
    NotHashed { size: u64, note: String },
}

/// `progress`: where the running deployment is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `lastInstallResult`, in ADU's shape (plus what restore did, per step).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastInstallResult {
    pub result_code: i32,
    pub extended_result_codes: String,
    pub result_details: String,
    pub step_results: BTreeMap<String, StepReport>,
}

/// One step's result in `lastInstallResult.stepResults`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub result_code: i32,
    pub extended_result_codes: String,
    pub result_details: String,
    /// sandstep: what restore put back after a failed install or apply (ADU discards it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreReport>,
    /// sandstep: this step succeeded, but a later step's restore (that step's key) undid it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undone_by: Option<String>,
    /// sandstep: a reference step's outcome per selected component id (ADU reports only the
    /// step's folded result; which camera failed is here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, ComponentOutcome>,
}

/// One component's outcome of a reference step: its folded result, and which of the child
/// update's steps were undone, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentOutcome {
    pub result_code: i32,
    pub extended_result_codes: String,
    pub result_details: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreReport {
    pub result_code: i32,
    pub result_details: String,
}

/// `pending`: what the deployment waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pending {
    Reboot,
    Restart,
}

/// `lastError`: a refused desired document or an unreachable server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub message: String,
    pub at: u64,
}

/// `retry` (HTTP polling): when a failed tag is tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    pub tag: String,
    pub attempts: u32,
    /// `None` once no more attempts are made until the server's version changes.
    pub next_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The `workflow` reported: the deployment's, or, for a refused document, what it carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReportedWorkflow {
    Known(Workflow),
    AsReceived(Value),
}

/// A report: the fields it sets. `Option<Option<T>>` fields clear with `Some(None)` (`null`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Patch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Stage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Option<Progress>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handlers: Option<Vec<HandlerInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_sets: Option<BTreeMap<String, FileDigests>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<ReportedWorkflow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_install_result: Option<LastInstallResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_update_id: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<Option<Pending>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Option<LastError>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Option<Retry>>,
    /// When `status` names a stage that just began: reported as `<stage>At`.
    #[serde(skip)]
    pub stage_began_at: Option<u64>,
    /// Desired fields reported back unapplied, so the replica's delta closes.
    #[serde(flatten)]
    pub echo: Map<String, Value>,
}

/// The fields the agent reports itself (desired values for them are never echoed).
pub const AGENT_FIELDS: &[&str] = &[
    "deviceId",
    "groups",
    "agent",
    "status",
    "state",
    "progress",
    "handlers",
    "fileSets",
    "workflow",
    "lastInstallResult",
    "installedUpdateId",
    "pending",
    "lastError",
    "retry",
    "ack",
    "standByAt",
    "downloadingAt",
    "applyingAt",
    "rebootingAt",
    "completedAt",
    "failedAt",
];

impl Patch {
    /// The JSON object sent as `state.reported`.
    pub fn to_map(&self) -> Map<String, Value> {
        let Ok(Value::Object(mut m)) = serde_json::to_value(self) else {
            unreachable!("a struct serialises to an object")
        };
        if let (Some(stage), Some(at)) = (self.status, self.stage_began_at) {
            m.insert(format!("{}At", stage.name()), Value::from(at));
        }
        m
    }

    /// A refusal: `lastError`, and the workflow it came with.
    pub fn refusal(workflow: Option<ReportedWorkflow>, why: &str, at: u64) -> Patch {
        Patch {
            last_error: Some(Some(LastError {
                message: why.to_owned(),
                at,
            })),
            workflow,
            ..Patch::default()
        }
    }

    /// The final patch of a deployment: stage, ADU state, `lastInstallResult`,
    /// `installedUpdateId`, what it waits for.
    pub fn finished(status: Status, result: &ResultFile) -> Patch {
        let (stage, state) = match status {
            Status::Succeeded => (Stage::Completed, adu_state::IDLE),
            Status::RebootRequired => (Stage::Rebooting, adu_state::APPLY_STARTED),
            Status::RestartRequired => (Stage::Applying, adu_state::APPLY_STARTED),
            Status::Cancelled => (Stage::StandBy, adu_state::IDLE),
            _ => (Stage::Failed, adu_state::FAILED),
        };
        let pending = match status {
            Status::RebootRequired => Some(Pending::Reboot),
            Status::RestartRequired => Some(Pending::Restart),
            _ => None,
        };
        Patch {
            status: Some(stage),
            state: Some(state),
            progress: Some(None),
            last_install_result: Some(LastInstallResult::of(result)),
            installed_update_id: result.installed_update_id.clone().map(Some),
            pending: Some(pending),
            ..Patch::default()
        }
    }
}

impl LastInstallResult {
    pub fn of(result: &ResultFile) -> LastInstallResult {
        let step_results = result
            .step_results
            .iter()
            .map(|(k, s)| {
                let restore = s.actions.iter().rev().find(|a| a.action == Action::Restore);
                let components = s
                    .components
                    .iter()
                    .map(|(id, c)| {
                        let outcome = ComponentOutcome {
                            result_code: c.result_code,
                            extended_result_codes: format!("{:08X}", c.extended_result_code),
                            result_details: c.result_details.clone(),
                        };
                        (id.clone(), outcome)
                    })
                    .collect();
                let report = StepReport {
                    result_code: s.result_code,
                    extended_result_codes: s.extended_result_codes.clone(),
                    result_details: s.result_details.clone(),
                    restore: restore.map(|r| RestoreReport {
                        result_code: r.result.result_code,
                        result_details: r.result.result_details.clone(),
                    }),
                    undone_by: s.undone_by.clone(),
                    components,
                };
                (k.clone(), report)
            })
            .collect();
        LastInstallResult {
            result_code: result.result_code,
            extended_result_codes: result.extended_result_codes.clone(),
            result_details: result.result_details.clone(),
            step_results,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reference step reports each component's outcome (which camera failed) and an undone
    /// step says by which step, in fields beside ADU's.
    #[test]
    fn components_and_undone_steps_reach_last_install_result() {
        let file: ResultFile = serde_json::from_value(serde_json::json!({
            "workflowId": "w", "updateId": {"provider": "p", "name": "n", "version": "1"},
            "status": "failed", "resultCode": 0, "extendedResultCode": 0,
            "extendedResultCodes": "00000000", "resultDetails": "", "startedAtMs": 0, "durationMs": 0,
            "stepResults": {
                "step_0": {"resultCode": 700, "extendedResultCode": 0, "extendedResultCodes": "00000000",
                           "resultDetails": "", "undoneBy": "step_1"},
                "step_1": {"resultCode": 0, "extendedResultCode": 0, "extendedResultCodes": "30000001",
                           "resultDetails": "cam-1 failed", "components": {
                    "cam-0": {"resultCode": 700, "extendedResultCode": 0, "resultDetails": "", "stepResults": {}},
                    "cam-1": {"resultCode": 0, "extendedResultCode": -1610612735_i32, "resultDetails": "no space", "stepResults": {}}}}}
        }))
        .unwrap();
        let r = LastInstallResult::of(&file);
        assert_eq!(
            r.step_results["step_0"].undone_by.as_deref(),
            Some("step_1")
        );
        let cams = &r.step_results["step_1"].components;
        assert_eq!(cams["cam-0"].result_code, 700);
        assert_eq!(cams["cam-1"].extended_result_codes, "A0000001");
        assert_eq!(cams["cam-1"].result_details, "no space");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["stepResults"]["step_0"]["undoneBy"], "step_1");
        assert!(json["stepResults"]["step_0"].get("components").is_none());
    }

    /// Every field a patch can carry is one the agent owns, so a desired value for it is never
    /// echoed back as if foreign.
    #[test]
    fn every_reported_field_is_listed_as_the_agents_own() {
        let p = Patch {
            device_id: Some("d".into()),
            groups: Some(vec![]),
            agent: Some(AgentInfo {
                version: "0".into(),
                started_at: 1,
            }),
            status: Some(Stage::Rebooting),
            state: Some(0),
            progress: Some(Some(Progress::default())),
            handlers: Some(vec![]),
            file_sets: Some(BTreeMap::new()),
            workflow: Some(ReportedWorkflow::AsReceived(Value::Null)),
            last_install_result: Some(LastInstallResult {
                result_code: 0,
                extended_result_codes: String::new(),
                result_details: String::new(),
                step_results: BTreeMap::new(),
            }),
            installed_update_id: Some(None),
            pending: Some(Some(Pending::Reboot)),
            last_error: Some(None),
            retry: Some(None),
            stage_began_at: Some(5),
            echo: Map::new(),
        };
        let m = p.to_map();
        assert_eq!(m.len(), 15);
        for k in m.keys() {
            assert!(AGENT_FIELDS.contains(&k.as_str()), "{k}");
        }
        assert_eq!(m["rebootingAt"], 5);
        assert_eq!(m["pending"], "reboot");
        assert!(m["installedUpdateId"].is_null());
    }

    #[test]
    fn a_patch_sets_only_its_fields_and_echoes_foreign_ones() {
        let mut p = Patch::refusal(None, "no", 7);
        p.echo.insert("softwareURL".into(), Value::from("http://x"));
        let m = p.to_map();
        assert_eq!(
            Value::Object(m),
            serde_json::json!({"lastError": {"message": "no", "at": 7}, "softwareURL": "http://x"})
        );
    }
}

/// The device's own copy of its reported state (`reported.json`, which `sandstep status`
/// reads): a device-shadow document holding the reported fields, in the shape a shadow service
/// keeps.
pub fn local_document(fields: &Map<String, Value>) -> Value {
    serde_json::json!({"state": {"reported": fields}})
}

/// The reported fields of a [`local_document`] (none when it is not one).
pub fn fields_of(doc: &Value) -> Map<String, Value> {
    doc.pointer("/state/reported")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// The field a job status is kept under in the reported document (the replica keeps it so).
pub const JOB_FIELD: &str = "ack";

/// The end of a job in the software-update pattern's words: `{"jobId", "status"}`, sent beside
/// the reported patch that ends a deployment (the replica keeps it as reported `ack`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub job_id: String,
    pub status: JobOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum JobOutcome {
    Success,
    Failure,
}

impl JobStatus {
    /// This status as the reported field [`JOB_FIELD`] holds it.
    pub fn as_field(&self) -> (String, Value) {
        let v = serde_json::to_value(self).expect("a job status serializes");
        (JOB_FIELD.to_owned(), v)
    }

    /// The job status of a deployment that ended with `status`; `None` while it waits (for a
    /// reboot, a restart).
    pub fn of(job_id: &str, status: Status) -> Option<JobStatus> {
        let status = match status {
            Status::Succeeded => JobOutcome::Success,
            s if s.is_terminal() => JobOutcome::Failure,
            _ => return None,
        };
        Some(JobStatus {
            job_id: job_id.to_owned(),
            status,
        })
    }
}
