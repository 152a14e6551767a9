//! The deployment journal: the persisted state machine of one deployment.
//!
//! The runtime writes it atomically before every side effect, so after a crash, a reboot or an
//! agent restart the deployment resumes exactly where it stood: completed units are never run
//! again, and the interrupted unit is re-checked with is-installed.
//!
//! On disk a journal is a header line `sandstep-journal 1 sha256=<hex>` and the JSON body; the
//! digest covers the body, so a torn or garbled file is detected rather than half-trusted.

use crate::context::{Component, UpdateId};
use crate::step::{Action, StepResult};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The journal format version.
pub const JOURNAL_VERSION: u32 = 1;
/// The first word of a journal file's header line.
pub const MAGIC: &str = "sandstep-journal";

/// Where step files come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum FileSource {
    /// A local directory holding the files by `fileName`.
    Directory(String),
    /// A URL prefix: file URL = base + `fileName`.
    BaseUrl(String),
    /// An explicit URL per file id (a deployment's `fileUrls`).
    Urls(BTreeMap<String, String>),
}

/// Where the deployment as a whole stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Child manifests are being fetched and the plan built.
    Planning,
    /// Units are running.
    Running,
    /// A handler asked for a reboot; the deployment continues after it.
    RebootRequired,
    /// A handler asked for an agent restart; the deployment continues after it.
    RestartRequired,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    /// Whether the deployment is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

/// What kind of work a unit is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitKind {
    /// An inline step of the deployed update, for the host.
    Inline,
    /// A step of a child update, for one selected component.
    Child,
    /// A reference step whose child update matched no component (504/604, not a failure).
    NoMatchingComponents,
}

/// Where a unit stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum UnitState {
    Pending,
    /// `next` is about to run, or was running when the process stopped.
    Running {
        next: Action,
    },
    /// `after` returned a reboot or restart code; after it, is-installed decides.
    AwaitingFollowup {
        after: Action,
    },
    Done,
}

/// One action's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRecord {
    pub action: Action,
    pub result: StepResult,
    pub started_at_ms: u64,
    pub duration_ms: u64,
}

/// How a step file was obtained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileRecord {
    pub id: String,
    pub file_name: String,
    /// 500 when fetched, 502 when already present with the right hash.
    pub result_code: i32,
    pub bytes: u64,
    pub duration_ms: u64,
}

/// One (component, step) to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unit {
    pub kind: UnitKind,
    /// Index of the step in the deployed update.
    pub step: u32,
    /// Index of the step in the child update, for child units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_step: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<Component>,
    /// Empty for a no-match unit.
    pub handler_id: String,
    pub state: UnitState,
    #[serde(default)]
    pub files: Vec<FileRecord>,
    #[serde(default)]
    pub actions: Vec<ActionRecord>,
    /// The unit's result once done (603 when skipped as installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<StepResult>,
    /// Its download phase is over (downloaded, or found installed then): ADU downloads every
    /// step before it installs any.
    #[serde(default)]
    pub downloaded: bool,
    /// A later step of the same handler failed, and its restore undid this one's changes too
    /// (the handler's policy says its restore covers the earlier steps): that step's key in
    /// the same `stepResults` (`step_<i>`; the child step's, for a child unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undone_by: Option<String>,
}

impl Unit {
    /// A short display form: `0`, `1/cam-1/2` (step, component, child step).
    pub fn label(&self) -> String {
        match (&self.component, self.child_step) {
            (Some(c), Some(cs)) => format!("{}/{}/{}", self.step, c.id, cs),
            (None, Some(cs)) => format!("{}/{HOST}/{}", self.step, cs),
            _ => self.step.to_string(),
        }
    }
}

/// A step's key in `stepResults`: `step_<index>`.
pub fn step_key(index: u32) -> String {
    format!("step_{index}")
}

/// How a child step run for the host (no component inventory) is named in labels and reports.
pub const HOST: &str = "(host)";

/// The persisted state of one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Journal {
    pub version: u32,
    pub workflow_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_timestamp: Option<String>,
    pub update_id: UpdateId,
    /// The deployed manifest, exactly as received.
    pub manifest: String,
    /// Its `updateManifestSignature`, as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Whether a missing signature was allowed (`--allow-unsigned`).
    #[serde(default)]
    pub unsigned_allowed: bool,
    /// The deployment's `rootKeyPackageUrl`, taken before the signature is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_key_package_url: Option<String>,
    /// Codes reported after the result's own, as ADU's `workflow_add_erc` adds them: what
    /// taking the root key package did (`A0000008` taken, `A0000FFF` unchanged), a download
    /// handler that is not there (`90000001`, the full file was downloaded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_ercs: Vec<i32>,
    /// Who signed the manifest (root kid and signing key thumbprint), once verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// Child manifests by parent step index, exactly as fetched (hash-checked).
    #[serde(default)]
    pub children: BTreeMap<u32, String>,
    /// When `manifest` is detached (top-level `detachedManifestFileId`): the manifest its file
    /// holds, which is the one that runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detached: Option<String>,
    pub source: FileSource,
    pub status: Status,
    pub units: Vec<Unit>,
    /// A reboot or restart asked for by a step that did not need it at once; done at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred_followup: Option<crate::codes::Followup>,
    /// The root result, once the deployment is over (or waiting for a reboot or restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<StepResult>,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// What the agent found of an interrupted run of this deployment before it resumed it (host
    /// programs stopped or waited for, repairs run); added to the final result's details.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<String>,
    /// The health checks failed after the reboot or restart this deployment asked for, and a
    /// slot on trial was rolled back: the reboot into the old slot is under way, and the
    /// deployment fails with this once it is back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_failure: Option<StepResult>,
    /// The deployment is past a reboot or restart it asked for: every resume from here runs the
    /// health checks before a step confirms, so a power cut during the checks or the commit
    /// cannot skip them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub past_followup: bool,
    /// Incremented by every write.
    pub seq: u64,
}

impl Journal {
    /// Unit `failing`'s restore undid the earlier units of its handler (for the same component)
    /// that changed something: they are marked undone by its step. A unit skipped as installed
    /// (603) or for no component (604) changed nothing and stays as it is.
    pub fn mark_undone(&mut self, failing: usize) {
        let Some(f) = self.units.get(failing) else {
            return;
        };
        let by = step_key(f.child_step.unwrap_or(f.step));
        let handler = f.handler_id.clone();
        let component = f.component.as_ref().map(|c| c.id.clone());
        for u in &mut self.units[..failing] {
            let changed = u.result.as_ref().is_some_and(|r| {
                r.is_success()
                    && r.result_code
                        != crate::codes::result::INSTALL_SKIPPED_UPDATE_ALREADY_INSTALLED
                    && r.result_code != crate::codes::result::INSTALL_SKIPPED_NO_MATCHING_COMPONENTS
            });
            if changed
                && u.handler_id == handler
                && u.component.as_ref().map(|c| &c.id) == component.as_ref()
            {
                u.undone_by = Some(by.clone());
            }
        }
    }

    /// Adds a code reported after the result's own (once).
    pub fn add_erc(&mut self, erc: crate::codes::ExtendedResultCode) {
        if !self.extra_ercs.contains(&erc.raw()) {
            self.extra_ercs.push(erc.raw());
        }
    }

    /// The manifest that runs: the detached one when the deployed manifest is detached.
    pub fn running_manifest(&self) -> &str {
        self.detached.as_deref().unwrap_or(&self.manifest)
    }
}

/// Why journal bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("not a sandstep journal (missing `{MAGIC}` header)")]
    NoHeader,
    #[error("journal format version {0} is not supported (this sandstep reads {JOURNAL_VERSION})")]
    Version(String),
    #[error("journal checksum mismatch: the file is torn or corrupted")]
    Checksum,
    #[error("journal body does not parse: {0}")]
    Body(String),
}

impl Journal {
    /// Encodes with the checksummed header.
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_vec_pretty(self).expect("a journal always serializes");
        let digest = hex(&Sha256::digest(&body));
        let mut out = format!("{MAGIC} {JOURNAL_VERSION} sha256={digest}\n").into_bytes();
        out.extend_from_slice(&body);
        out
    }

    /// Decodes and verifies journal bytes.
    pub fn decode(bytes: &[u8]) -> Result<Journal, JournalError> {
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(JournalError::NoHeader)?;
        let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| JournalError::NoHeader)?;
        let mut parts = header.split(' ');
        if parts.next() != Some(MAGIC) {
            return Err(JournalError::NoHeader);
        }
        let version = parts.next().unwrap_or("");
        if version != JOURNAL_VERSION.to_string() {
            return Err(JournalError::Version(version.to_owned()));
        }
        let digest = parts
            .next()
            .and_then(|d| d.strip_prefix("sha256="))
            .ok_or(JournalError::NoHeader)?;
        let body = &bytes[nl + 1..];
        if hex(&Sha256::digest(body)) != digest {
            return Err(JournalError::Checksum);
        }
        let j: Journal =
            serde_json::from_slice(body).map_err(|e| JournalError::Body(e.to_string()))?;
        if j.version != JOURNAL_VERSION {
            return Err(JournalError::Version(j.version.to_string()));
        }
        Ok(j)
    }

    /// Whether a step has begun to change the device (backup, install, apply or restore began,
    /// or the deployment is past a reboot or restart it asked for): from then on an install
    /// window does not hold it back.
    pub fn installs_begun(&self) -> bool {
        self.past_followup
            || self.units.iter().any(|u| {
                let changes = |a: Action| {
                    matches!(
                        a,
                        Action::Backup | Action::Install | Action::Apply | Action::Restore
                    )
                };
                // `Running { next }` is written before `next` runs: one cut short counts.
                matches!(u.state, UnitState::Running { next } if changes(next))
                    || u.actions.iter().any(|a| changes(a.action))
            })
    }

    /// The first unit not done.
    pub fn next_unit(&self) -> Option<usize> {
        self.units.iter().position(|u| u.state != UnitState::Done)
    }

    /// The next unit whose download phase is not over (a unit waiting for its reboot or restart
    /// is past it).
    pub fn next_to_download(&self) -> Option<usize> {
        self.units.iter().position(|u| {
            !u.downloaded && matches!(u.state, UnitState::Pending | UnitState::Running { .. })
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Journal {
        Journal {
            version: JOURNAL_VERSION,
            workflow_id: "wf".into(),
            retry_timestamp: None,
            update_id: UpdateId {
                provider: "p".into(),
                name: "n".into(),
                version: "1.0".into(),
            },
            manifest: "{}".into(),
            signature: None,
            unsigned_allowed: false,
            signed_by: None,
            root_key_package_url: None,
            extra_ercs: Vec::new(),
            children: BTreeMap::new(),
            detached: None,
            source: FileSource::Directory("/tmp/files".into()),
            status: Status::Running,
            units: vec![Unit {
                downloaded: false,
                undone_by: None,
                kind: UnitKind::Inline,
                step: 0,
                child_step: None,
                component: None,
                handler_id: "a/b:1".into(),
                state: UnitState::Running {
                    next: Action::Install,
                },
                files: vec![],
                actions: vec![],
                result: None,
            }],
            deferred_followup: None,
            result: None,
            started_at_ms: 1,
            updated_at_ms: 2,
            finished_at_ms: None,
            recovered: Vec::new(),
            health_failure: None,
            past_followup: false,
            seq: 3,
        }
    }

    #[test]
    fn journals_round_trip_through_the_checksummed_encoding() {
        let j = sample();
        assert_eq!(Journal::decode(&j.encode()).unwrap(), j);
    }

    #[test]
    fn a_flipped_byte_is_detected() {
        let mut bytes = sample().encode();
        let last = bytes.len() - 5;
        bytes[last] ^= 0x20;
        assert_eq!(Journal::decode(&bytes).unwrap_err(), JournalError::Checksum);
    }

    #[test]
    fn a_truncated_journal_is_detected() {
        let bytes = sample().encode();
        assert_eq!(
            Journal::decode(&bytes[..bytes.len() / 2]).unwrap_err(),
            JournalError::Checksum
        );
        assert_eq!(Journal::decode(b"").unwrap_err(), JournalError::NoHeader);
        assert_eq!(
            Journal::decode(b"{\"json\": true}\n{}").unwrap_err(),
            JournalError::NoHeader
        );
    }

    #[test]
    fn another_version_is_refused() {
        let bytes = sample().encode();
        let text = String::from_utf8(bytes).unwrap().replacen(
            "sandstep-journal 1",
            "sandstep-journal 9",
            1,
        );
        assert_eq!(
            Journal::decode(text.as_bytes()).unwrap_err(),
            JournalError::Version("9".into())
        );
    }
}
