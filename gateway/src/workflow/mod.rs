//! Deployments: plan, journal, run each (component, step) in its sandbox, write results.
//!
//! A deployment is a persisted state machine (the [`Journal`]): it is written atomically before
//! every side effect, so killing the process at any point and starting again finishes the
//! deployment without redoing completed units. Per unit:
//!
//! ```text
//! is-installed -- 900 --> 603, done
//!      | anything else (901, a failure)
//! fetch files -> download -> backup -> install -> apply -> done (apply's result)
//!                    |          |         | 603/604 -> done
//!                    +----------+---------+---------+-- failure -> restore (install/apply) -> abort
//!                                          reboot/restart codes -> stop; after it, is-installed decides
//! ```
//!
//! This module runs a deployment from start to end (journal, signature, plan, the download
//! phase, the install phase, the end); its rooms:
//!
//! - [`admission`] decides whether a signed update may run here at all (compatibility,
//!   downgrade); `installed` keeps the record it decides with.
//! - [`plan`] turns the manifest (and child manifests, and the inventory) into units;
//!   `manifests` holds what it read, each manifest read once per run of a deployment.
//! - `unit` runs one unit through a phase: its handler instance and its actions;
//!   [`lifecycle`] decides, without I/O, what each handler answer leads to (ADU's rules).
//! - `files` gives a unit its context, directories and files (fetched, linked or streamed).
//! - [`store`] keeps journals and result files in the data dir; [`release`] gives back what a
//!   finished deployment held.
//! - `root_keys` takes the root key package a deployment names before its signature is checked
//!   (decisions in [`crate::trust::rotation`]).
//! - [`events`] is what observers (CLI, agent) see.
//! - `windows` holds a deployment to its maintenance windows and bandwidth cap (the gateway's
//!   and its signed own).

pub mod admission;
pub mod events;
mod files;
mod health;
mod installed;
pub mod lifecycle;
mod manifests;
pub mod plan;
pub mod release;
mod root_keys;
pub mod store;
mod unit;
mod windows;

use crate::datadir::{DataDir, DataDirError};
use crate::download::Downloader;
use crate::loader::Loader;
use crate::policy::Policy;
use crate::registry::{Registry, RegistryError};
use crate::sandbox::{HandlerComponent, Sandbox};
use crate::trust::manifest_sig::{self, SignatureRefusal};
use crate::trust::{TrustError, TrustStore};
use events::{Event, Observer};
use lifecycle::Phase;
use manifests::Manifests;
use sandstep_model::codes::{erc, result, Followup};
use sandstep_model::inventory::Inventory;
use sandstep_model::journal::{FileSource, Journal, Status, UnitState, JOURNAL_VERSION};
use sandstep_model::manifest::{Manifest, TopLevel};
use sandstep_model::results::{result_file, ResultFile};
use sandstep_model::{StepResult, UpdateId};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;
use store::JournalStore;
use tokio_util::sync::CancellationToken;
use unit::UnitOutcome;

pub(crate) use files::resolve_source;

/// Files up to this size are fetched before is-installed (manifests, scripts); the rest before
/// download, so an already-installed step never pulls a large image.
pub const EARLY_FETCH_LIMIT: u64 = 4 << 20;

pub use sandstep_transport::clock::now_ms;

/// A deployment to run.
#[derive(Debug, Clone)]
pub struct Request {
    pub workflow_id: String,
    pub retry_timestamp: Option<String>,
    /// The manifest text exactly as received.
    pub manifest: String,
    pub source: FileSource,
    /// The component inventory; `None` when the gateway has none (reference steps then run
    /// once on the host, as ADU's steps handler does without a component enumerator).
    pub inventory: Option<Inventory>,
    /// Run again even if this workflow id already finished.
    pub force: bool,
    /// `updateManifestSignature`: a compact JWS over the manifest's sha256.
    pub signature: Option<String>,
    /// Run without a manifest signature (development; warned about on every use).
    pub allow_unsigned: bool,
    /// ADU's `rootKeyPackageUrl`: a root key package taken before the signature is checked
    /// (see [`crate::trust::rotation`]).
    pub root_key_package_url: Option<String>,
}

/// How `run` ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: Status,
    pub result: ResultFile,
    /// True when the workflow had already finished and was only reported.
    pub already_done: bool,
}

/// Why a deployment could not be run at all (before or outside any step).
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("journal for workflow `{workflow}`: {reason}")]
    Journal { workflow: String, reason: String },
    #[error("journal for workflow `{workflow}`: {cause}")]
    Stored {
        workflow: String,
        cause: store::StoreError,
    },
    #[error("journals: {0}")]
    Journals(store::StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("cannot start downloads: {0}")]
    Http(String),
    #[error("workflow `{workflow}` is already in the journal with a different manifest; use a new workflow id, or --force to start it over")]
    ManifestChanged { workflow: String },
}

/// Runs deployments against one data dir.
/// What the deployment engine is configured with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub download: crate::download::DownloadConfig,
    /// Maintenance windows (checked when the config was read).
    pub windows: crate::window::WindowsConfig,
    pub trust: crate::trust::TrustConfig,
    pub policy: Policy,
    /// What this device is (updates' compatibility is checked against it).
    pub device: admission::DeviceConfig,
    /// Checks after a reboot or restart, before the deployment commits.
    pub health: crate::health::HealthConfig,
}

pub struct Deployer {
    sandbox: Arc<Sandbox>,
    data: DataDir,
    settings: Settings,
    loader: Loader,
    downloader: Arc<Downloader>,
    journals: JournalStore,
    /// What a previous agent left running, dealt with before this one runs its first step.
    recovered: tokio::sync::OnceCell<Vec<String>>,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer")
            .field("data", &self.data)
            .finish()
    }
}

/// Context for one run of `execute`.
struct Run<'a> {
    observer: Arc<dyn Observer>,
    cancel: &'a CancellationToken,
    manifests: &'a Manifests,
    /// Files verified in this process, by (unit, file id): verified again only after a restart.
    verified: &'a std::sync::Mutex<BTreeSet<(usize, String)>>,
}

impl Deployer {
    /// Opens the data dir's journals, registry, trusted keys and stores.
    pub fn new(
        sandbox: Arc<Sandbox>,
        data: DataDir,
        settings: impl Into<Settings>,
    ) -> Result<Self, WorkflowError> {
        let settings = settings.into();
        let registry = Registry::open(data.handlers()?)?;
        let trust = TrustStore::load(&data, &settings.trust)?;
        let loader = Loader::new(registry, trust, sandbox.clone());
        let downloader = Downloader::new(data.downloads()?, settings.download.clone())
            .map(Arc::new)
            .map_err(|e| WorkflowError::Http(e.to_string()))?;
        let journals = JournalStore::new(data.journals()?, data.results()?);
        Ok(Deployer {
            sandbox,
            data,
            settings,
            loader,
            downloader,
            journals,
            recovered: Default::default(),
        })
    }

    /// Once per process, before any step runs: stops or waits for the host programs a killed
    /// agent left, and runs their repair (see [`crate::capability::ledger`]), then the repairs
    /// due for what shows an interrupted run itself (dpkg's journal:
    /// [`crate::capability::repair`]); what it did.
    async fn recover_programs(&self) -> &[String] {
        self.recovered
            .get_or_init(|| async {
                let sandbox = self.sandbox.clone();
                let policy = self.settings.policy.clone();
                tokio::task::spawn_blocking(move || {
                    let swept = sandbox.recover_programs();
                    let ran: Vec<String> = swept
                        .iter()
                        .filter_map(|r| r.recover.as_ref().map(|(cmd, _)| cmd.clone()))
                        .collect();
                    let repaired = crate::capability::repair::run(crate::capability::repair::due(
                        policy.program_rules(),
                        &ran,
                    ));
                    let swept = swept.iter().map(ToString::to_string);
                    swept
                        .chain(repaired.iter().map(ToString::to_string))
                        .collect()
                })
                .await
                .unwrap_or_default()
            })
            .await
    }

    /// The journal store.
    pub fn journals(&self) -> &JournalStore {
        &self.journals
    }

    /// The handler loader (registry and trusted keys).
    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Runs (or resumes, or reports) a deployment.
    pub async fn run(
        &self,
        req: Request,
        observer: Arc<dyn Observer>,
        cancel: &CancellationToken,
    ) -> Result<Outcome, WorkflowError> {
        let recovered = self.recover_programs().await;
        let existing =
            self.journals
                .load(&req.workflow_id)
                .map_err(|cause| WorkflowError::Stored {
                    workflow: req.workflow_id.clone(),
                    cause,
                })?;
        // A new deployment's manifest is read here, once; a resumed one's from its journal.
        let (mut journal, top) = match existing {
            Some(j) if !req.force && j.manifest != req.manifest && !j.status.is_terminal() => {
                return Err(WorkflowError::ManifestChanged {
                    workflow: req.workflow_id,
                })
            }
            Some(j)
                if j.status.is_terminal()
                    && !req.force
                    && j.retry_timestamp == req.retry_timestamp =>
            {
                let result = result_file(&j);
                observer.event(&Event::Finished {
                    status: j.status,
                    result: j
                        .result
                        .clone()
                        .unwrap_or_else(|| StepResult::new(result::FAILURE)),
                });
                return Ok(Outcome {
                    status: j.status,
                    result,
                    already_done: true,
                });
            }
            Some(j) if !j.status.is_terminal() && !req.force => (j, None),
            _ => {
                let top = Manifest::top_level(&req.manifest);
                let update_id = top.manifest.as_ref().ok().map(|m| m.update_id.clone());
                (new_journal(&req, update_id), Some(top))
            }
        };
        // Said once, in the first deployment this agent runs (the interrupted one, resumed).
        if !recovered.is_empty() && journal.recovered.is_empty() {
            journal.recovered = recovered.to_vec();
            for message in recovered {
                observer.event(&Event::Recovered {
                    message: message.clone(),
                });
            }
        }
        self.execute(&mut journal, top, req.inventory.as_ref(), observer, cancel)
            .await?;
        let result = result_file(&journal);
        Ok(Outcome {
            status: journal.status,
            result,
            already_done: false,
        })
    }

    /// Finds unfinished deployments (for the agent at start-up).
    pub fn unfinished(&self) -> Result<Vec<Journal>, WorkflowError> {
        self.journals.unfinished().map_err(WorkflowError::Journals)
    }

    pub(super) fn save(&self, j: &mut Journal) -> Result<(), WorkflowError> {
        self.journals.save(j).map_err(|e| WorkflowError::Journal {
            workflow: j.workflow_id.clone(),
            reason: format!(
                "cannot record {}: {e}; the journal on disk is left as it was and the next run goes on from there",
                recording(j)
            ),
        })
    }

    /// Records how the deployment ended (or stopped for a reboot or restart); a finished one
    /// gives back what its manifests held in the store.
    fn finish(
        &self,
        j: &mut Journal,
        status: Status,
        result: StepResult,
        held: &Manifests,
        observer: &dyn Observer,
    ) -> Result<(), WorkflowError> {
        let (status, mut result) = match &j.health_failure {
            Some(failure) if status.is_terminal() => {
                health::with_health_failure(status, result, failure)
            }
            _ => (status, result),
        };
        if status.is_terminal() && !j.recovered.is_empty() {
            let sep = if result.result_details.is_empty() {
                ""
            } else {
                "; "
            };
            result.result_details = format!(
                "{}{sep}after the agent restarted: {}",
                result.result_details,
                j.recovered.join("; ")
            );
        }
        j.status = status;
        j.result = Some(result.clone());
        if status.is_terminal() {
            j.finished_at_ms = Some(now_ms());
        }
        self.save(j)?;
        if status.is_terminal() {
            match self.journals.unfinished() {
                Ok(unfinished) => release::release(&self.data, j, held.store_keys(), &unfinished),
                // Without the list, a store entry another deployment wants could go: keep all.
                Err(e) => tracing::warn!("finished deployment's files kept: {e}"),
            }
        }
        observer.event(&Event::Finished { status, result });
        Ok(())
    }

    async fn execute(
        &self,
        j: &mut Journal,
        top: Option<TopLevel>,
        inventory: Option<&Inventory>,
        observer: Arc<dyn Observer>,
        cancel: &CancellationToken,
    ) -> Result<(), WorkflowError> {
        let observer_ref: &dyn Observer = &*observer;
        let resumed = j.seq > 0;
        let back = matches!(j.status, Status::RebootRequired | Status::RestartRequired);
        let manifests = if j.status == Status::Planning {
            match self.start(j, top, inventory, cancel, observer_ref).await? {
                Some(m) => m,
                None => return Ok(()),
            }
        } else {
            if back {
                // We are past the reboot or restart the deployment waited for.
                j.status = Status::Running;
                j.result = None;
                j.past_followup = true;
                self.save(j)?;
            }
            Manifests::from_journal(j).map_err(|reason| WorkflowError::Journal {
                workflow: j.workflow_id.clone(),
                reason: reason.to_string(),
            })?
        };
        // Checks the deployment brings are refused before anything runs, and all of them run
        // before a step confirms what it did across a reboot or restart.
        let gate = if j.past_followup {
            self.health_gate(j, &manifests, cancel).await?
        } else {
            self.deployment_health(j, &manifests)
                .err()
                .map(|r| (Status::Failed, r))
        };
        if let Some((status, r)) = gate {
            return self.finish(j, status, r, &manifests, observer_ref);
        }
        observer_ref.event(&Event::Planned {
            workflow_id: j.workflow_id.clone(),
            units: j.units.iter().map(plan::unit_info).collect(),
            resumed,
        });
        let windows = match self
            .windows(&manifests)
            .and_then(|w| w.check(j).map(|()| w))
        {
            Ok(w) => w,
            Err(r) => return self.finish(j, Status::Failed, r, &manifests, observer_ref),
        };
        let verified = std::sync::Mutex::default();
        let run = Run {
            observer: observer.clone(),
            cancel,
            manifests: &manifests,
            verified: &verified,
        };
        let _paced = self.downloader.paced(windows.pace(&run));
        // ADU downloads every step before it installs any (steps_handler.cpp).
        for phase in [Phase::Download, Phase::Install] {
            if let Err(r) = self.wait_for_window(j, phase, &windows, &run).await {
                let index = j.next_unit().unwrap_or(0);
                let outcome = if r.result_code == result::FAILURE_CANCELLED {
                    UnitOutcome::Cancelled(r)
                } else {
                    UnitOutcome::Failed(r)
                };
                return self.end_with(j, index, outcome, &manifests, observer_ref);
            }
            if let Some((index, outcome)) = self.run_phase(j, phase, &run).await? {
                return self.end_with(j, index, outcome, &manifests, observer_ref);
            }
            if phase == Phase::Download {
                self.save(j)?;
            }
        }
        let (status, r) = match j.deferred_followup.take() {
            Some(Followup::Reboot | Followup::ImmediateReboot) => {
                (Status::RebootRequired, result::APPLY_REQUIRED_REBOOT)
            }
            Some(_) => (
                Status::RestartRequired,
                result::APPLY_REQUIRED_AGENT_RESTART,
            ),
            None => {
                self.record_installed(&j.update_id);
                (Status::Succeeded, result::APPLY_SUCCESS)
            }
        };
        let mut r = StepResult::new(r);
        if status != Status::Succeeded {
            r = r.with_details("all steps done; a step asked for it");
        }
        self.finish(j, status, r, &manifests, observer_ref)
    }

    /// A new deployment's start: its signature checked and its units planned, from `top` (its
    /// manifest as read on arrival; read from the journal when planning was cut short). `None`:
    /// the deployment ended there, refused or cancelled.
    async fn start(
        &self,
        j: &mut Journal,
        top: Option<TopLevel>,
        inventory: Option<&Inventory>,
        cancel: &CancellationToken,
        observer: &dyn Observer,
    ) -> Result<Option<Manifests>, WorkflowError> {
        self.save(j)?;
        let mut manifests = Manifests::default();
        if let Err(r) = self.take_root_key_package(j, cancel).await {
            self.finish(j, Status::Failed, r, &manifests, observer)?;
            return Ok(None);
        }
        if let Err(refusal) = self.check_signature(j) {
            let r = StepResult::failure(refusal.erc(), refusal.to_string());
            self.finish(j, Status::Failed, r, &manifests, observer)?;
            return Ok(None);
        }
        let top = top.unwrap_or_else(|| Manifest::top_level(&j.manifest));
        if let Err(failure) = plan::plan(self, j, top, inventory, cancel, &mut manifests).await {
            let status = if failure.result_code == result::FAILURE_CANCELLED {
                Status::Cancelled
            } else {
                Status::Failed
            };
            self.finish(j, status, failure, &manifests, observer)?;
            return Ok(None);
        }
        j.status = Status::Running;
        self.save(j)?;
        Ok(Some(manifests))
    }

    /// Before `phase`: waits for its window when it has work left (the install window only
    /// until an install has begun).
    async fn wait_for_window(
        &self,
        j: &Journal,
        phase: Phase,
        windows: &windows::Windows,
        run: &Run<'_>,
    ) -> Result<(), StepResult> {
        let which = match phase {
            Phase::Download if j.next_to_download().is_some() => windows::Which::Download,
            Phase::Install if j.next_unit().is_some() && !j.installs_begun() => {
                windows::Which::Install
            }
            _ => return Ok(()),
        };
        windows.wait(which, run).await
    }

    /// Runs `phase` over every unit it still has to do, in order; the unit and how it ended the
    /// deployment, when one did (a failure, a cancel, a reboot or restart).
    async fn run_phase(
        &self,
        j: &mut Journal,
        phase: Phase,
        run: &Run<'_>,
    ) -> Result<Option<(usize, UnitOutcome)>, WorkflowError> {
        loop {
            let next = match phase {
                Phase::Download => j.next_to_download(),
                Phase::Install => j.next_unit(),
            };
            let Some(index) = next else {
                return Ok(None);
            };
            if run.cancel.is_cancelled() {
                let r = StepResult::failure(erc::WORKFLOW_CANCELLED, "deployment cancelled")
                    .with_code(result::FAILURE_CANCELLED);
                return Ok(Some((index, UnitOutcome::Cancelled(r))));
            }
            let started = Instant::now();
            let outcome = self.run_unit(j, index, phase, run).await?;
            if let Some(r) = j.units[index].result.clone() {
                run.observer.event(&Event::UnitFinished {
                    unit: index,
                    result: r,
                    duration_ms: started.elapsed().as_millis() as u64,
                });
            }
            if !matches!(outcome, UnitOutcome::Continue) {
                return Ok(Some((index, outcome)));
            }
        }
    }

    /// Ends the deployment as unit `index` ended it.
    fn end_with(
        &self,
        j: &mut Journal,
        index: usize,
        outcome: UnitOutcome,
        held: &Manifests,
        observer: &dyn Observer,
    ) -> Result<(), WorkflowError> {
        let (status, r) = match outcome {
            UnitOutcome::Continue => unreachable!("only an ending outcome ends the deployment"),
            UnitOutcome::Failed(r) => (Status::Failed, r),
            UnitOutcome::Cancelled(r) => (Status::Cancelled, r),
            UnitOutcome::Followup(f, r) => match f {
                Followup::ImmediateReboot | Followup::Reboot => (Status::RebootRequired, r),
                _ => (Status::RestartRequired, r),
            },
        };
        tracing::debug!(unit = index, ?status, "the deployment ends here");
        self.finish(j, status, r, held, observer)
    }

    /// Verifies the manifest signature (or accepts its absence when allowed).
    fn check_signature(&self, j: &mut Journal) -> Result<(), SignatureRefusal> {
        match &j.signature {
            Some(sig) => {
                let v = manifest_sig::verify(&j.manifest, sig, &self.loader.trust())?;
                j.signed_by = Some(format!(
                    "root {} / signing key {}",
                    v.root_kid, v.signing_key
                ));
                Ok(())
            }
            None if j.unsigned_allowed || !self.settings.trust.require_manifest_signature => {
                tracing::warn!(workflow = %j.workflow_id, "running an UNSIGNED manifest: its origin is not verified");
                Ok(())
            }
            None => Err(SignatureRefusal::Missing),
        }
    }

    /// The component for a handler id: signature and policy checked on every load.
    pub(super) async fn handler(&self, id: &str) -> Result<HandlerComponent, StepResult> {
        self.loader
            .load(id, &self.settings.policy)
            .await
            .map_err(|e| e.to_step_result())
    }
}

/// The journal of a deployment about to start: `update_id` is known once the manifest parses;
/// until then the journal still records the attempt, so the failure is reported like any other.
fn new_journal(req: &Request, update_id: Option<UpdateId>) -> Journal {
    let now = now_ms();
    let update_id = update_id.unwrap_or_else(|| UpdateId {
        provider: "unknown".into(),
        name: "unknown".into(),
        version: "0.0".into(),
    });
    Journal {
        version: JOURNAL_VERSION,
        workflow_id: req.workflow_id.clone(),
        retry_timestamp: req.retry_timestamp.clone(),
        update_id,
        manifest: req.manifest.clone(),
        signature: req.signature.clone(),
        unsigned_allowed: req.allow_unsigned,
        root_key_package_url: req.root_key_package_url.clone(),
        extra_ercs: Vec::new(),
        signed_by: None,
        children: Default::default(),
        detached: None,
        source: req.source.clone(),
        status: Status::Planning,
        units: Vec::new(),
        deferred_followup: None,
        result: None,
        started_at_ms: now,
        updated_at_ms: now,
        finished_at_ms: None,
        recovered: Vec::new(),
        health_failure: None,
        past_followup: false,
        seq: 0,
    }
}

/// What a journal write was about to record, for the error when it cannot: the step being
/// worked on, and its failure when that is what was being recorded.
fn recording(j: &Journal) -> String {
    let current = j
        .units
        .iter()
        .rfind(|u| u.state != UnitState::Pending)
        .or_else(|| j.units.first());
    let Some(u) = current else {
        return "the deployment's start".into();
    };
    match (&u.result, &u.state) {
        (Some(r), _) if !r.is_success() => format!(
            "step {}'s failure ({} {:08X}: {})",
            u.label(),
            r.result_code,
            r.extended_result_code as u32,
            r.result_details
        ),
        (_, UnitState::Running { next }) => format!("step {} before {next}", u.label()),
        (_, UnitState::Done) => format!("the end of step {}", u.label()),
        _ => format!("step {}", u.label()),
    }
}
