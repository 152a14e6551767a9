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
//! - [`admission`] decides whether a signed update may run here at all (compatibility,
//!   downgrade).
//! - [`lifecycle`] decides, without I/O, what each handler answer leads to (ADU's rules).
//! - [`plan`] turns the manifest (and child manifests, and the inventory) into units.
//! - [`store`] keeps journals and result files in the data dir.
//! - [`events`] is what observers (CLI, agent) see.

pub mod admission;
pub mod events;
pub mod lifecycle;
pub mod plan;
pub mod release;
pub mod store;

use crate::capability::slot::Streams;
use crate::datadir::{safe_name, DataDir, DataDirError};
use crate::download::{Downloader, Fetched, OwnedSource, Wanted};
use crate::loader::Loader;
use crate::policy::Policy;
use crate::registry::{Registry, RegistryError};
use crate::sandbox::{
    CallTags, EventSink, HandlerComponent, Sandbox, Session, SessionSetup, StepDirs,
};
use crate::trust::manifest_sig::{self, SignatureRefusal};
use crate::trust::{TrustError, TrustStore};
use cap_std::fs::Dir;
use events::{Event, Observer};
use lifecycle::{Next, Phase};
use sandstep_model::codes::{erc, result, Followup};
use sandstep_model::inventory::Inventory;
use sandstep_model::journal::{
    ActionRecord, FileRecord, FileSource, Journal, Status, UnitKind, UnitState, JOURNAL_VERSION,
};
use sandstep_model::manifest::{Manifest, Step};
use sandstep_model::results::{result_file, ResultFile};
use sandstep_model::{Action, StepContext, StepFile, StepResult};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;
use store::JournalStore;
use tokio_util::sync::CancellationToken;

/// Where the versions installed here are recorded, in the data dir.
const INSTALLED_UPDATES: &str = "installed-updates.json";

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
    pub trust: crate::trust::TrustConfig,
    pub policy: Policy,
    /// What this device is (updates' compatibility is checked against it).
    pub device: admission::DeviceConfig,
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

/// A unit ready for its actions (see `Deployer::prepare_unit`).
struct Prepared {
    cur: Current,
    session: Session,
    /// Every file of the step the workflow fetches into the store.
    wanted: Vec<Wanted>,
    /// The step's files the slot capability streams from their source instead, with their
    /// sources.
    streams: Option<Arc<Streams>>,
    payload: Dir,
    /// Policy `payload-in-work`: copies of the files in the work folder.
    payload_in_work: bool,
}

/// The unit being run: its index, context, work dir and handler.
struct Current {
    index: usize,
    ctx: StepContext,
    work: Dir,
    handler: HandlerComponent,
}

/// The parent manifest and the children, parsed once from the journal's texts.
struct Manifests {
    parent: Manifest,
    children: HashMap<u32, Manifest>,
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
    /// agent left, and runs their repair (see [`crate::capability::ledger`]); what it did.
    async fn recover_programs(&self) -> &[String] {
        self.recovered
            .get_or_init(|| async {
                let sandbox = self.sandbox.clone();
                tokio::task::spawn_blocking(move || sandbox.recover_programs())
                    .await
                    .unwrap_or_default()
                    .iter()
                    .map(ToString::to_string)
                    .collect()
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
        let mut journal = match existing {
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
            Some(j) if !j.status.is_terminal() && !req.force => j,
            _ => self.new_journal(&req),
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
        self.execute(&mut journal, req.inventory.as_ref(), observer, cancel)
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

    fn new_journal(&self, req: &Request) -> Journal {
        let now = now_ms();
        // The update id is known once the manifest parses; until then the journal still records
        // the attempt, so the failure is reported like any other.
        let update_id = Manifest::parse(&req.manifest)
            .map(|m| m.update_id)
            .unwrap_or_else(|_| sandstep_model::UpdateId {
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
            seq: 0,
        }
    }

    fn save(&self, j: &mut Journal) -> Result<(), WorkflowError> {
        self.journals.save(j).map_err(|e| WorkflowError::Journal {
            workflow: j.workflow_id.clone(),
            reason: format!(
                "cannot record {}: {e}; the journal on disk is left as it was and the next run goes on from there",
                recording(j)
            ),
        })
    }

    fn finish(
        &self,
        j: &mut Journal,
        status: Status,
        result: StepResult,
        observer: &dyn Observer,
    ) -> Result<(), WorkflowError> {
        let mut result = result;
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
                Ok(unfinished) => release::release(&self.data, j, &unfinished),
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
        inventory: Option<&Inventory>,
        observer: Arc<dyn Observer>,
        cancel: &CancellationToken,
    ) -> Result<(), WorkflowError> {
        let observer_ref: &dyn Observer = &*observer;
        let resumed = j.seq > 0;
        if j.status == Status::Planning {
            self.save(j)?;
            if let Err(refusal) = self.check_signature(j) {
                let r = StepResult::failure(refusal.erc(), refusal.to_string());
                return self.finish(j, Status::Failed, r, observer_ref);
            }
            if let Err(failure) = plan::plan(self, j, inventory, cancel).await {
                let status = if failure.result_code == result::FAILURE_CANCELLED {
                    Status::Cancelled
                } else {
                    Status::Failed
                };
                return self.finish(j, status, failure, observer_ref);
            }
            j.status = Status::Running;
            self.save(j)?;
        } else if matches!(j.status, Status::RebootRequired | Status::RestartRequired) {
            // We are past the reboot or restart the deployment waited for.
            j.status = Status::Running;
            j.result = None;
            self.save(j)?;
        }
        let manifests = Manifests::from_journal(j).map_err(|reason| WorkflowError::Journal {
            workflow: j.workflow_id.clone(),
            reason: reason.to_string(),
        })?;
        observer_ref.event(&Event::Planned {
            workflow_id: j.workflow_id.clone(),
            units: j.units.iter().map(plan::unit_info).collect(),
            resumed,
        });
        let verified = std::sync::Mutex::default();
        let run = Run {
            observer: observer.clone(),
            cancel,
            manifests: &manifests,
            verified: &verified,
        };

        // ADU downloads every step before it installs any (steps_handler.cpp).
        for phase in [Phase::Download, Phase::Install] {
            if let Some((index, outcome)) = self.run_phase(j, phase, &run).await? {
                return self.end_with(j, index, outcome, observer_ref);
            }
        }
        if let Some(f) = j.deferred_followup.take() {
            let (status, code) = match f {
                Followup::Reboot | Followup::ImmediateReboot => {
                    (Status::RebootRequired, result::APPLY_REQUIRED_REBOOT)
                }
                _ => (
                    Status::RestartRequired,
                    result::APPLY_REQUIRED_AGENT_RESTART,
                ),
            };
            return self.finish(
                j,
                status,
                StepResult::new(code).with_details("all steps done; a step asked for it"),
                observer_ref,
            );
        }
        self.record_installed(&j.update_id);
        self.finish(
            j,
            Status::Succeeded,
            StepResult::new(result::APPLY_SUCCESS),
            observer_ref,
        )
    }

    /// The versions installed here, by provider and name (for [`admission`]).
    fn installed_versions(&self) -> BTreeMap<String, String> {
        self.data
            .root()
            .read(INSTALLED_UPDATES)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records a finished update's version; a failure to record weakens only the downgrade
    /// check, so it is logged, not fatal.
    fn record_installed(&self, update: &sandstep_model::UpdateId) {
        let mut versions = self.installed_versions();
        versions.insert(admission::record_key(update), update.version.clone());
        let bytes = serde_json::to_vec_pretty(&versions).expect("a map serializes");
        if let Err(e) =
            crate::datadir::write_atomic(self.data.root(), INSTALLED_UPDATES, &bytes, 0o600)
        {
            tracing::error!(update = %update, "cannot record the installed version: {e}");
        }
    }

    /// Whether `manifest` (the one that runs) may run here.
    pub(crate) fn admit(&self, j: &Journal, manifest: &Manifest) -> Result<(), StepResult> {
        let installed = self
            .installed_versions()
            .remove(&admission::record_key(&manifest.update_id));
        admission::admit(
            &manifest.update_id,
            &manifest.compatibility,
            admission::allows_downgrade(j.running_manifest()),
            &self.settings.device.properties,
            installed.as_deref(),
        )
        .map_err(|refusal| {
            let code = match refusal {
                admission::Refusal::Incompatible { .. } => erc::WORKFLOW_INCOMPATIBLE,
                admission::Refusal::Downgrade { .. } => erc::WORKFLOW_DOWNGRADE,
            };
            StepResult::failure(code, refusal.to_string())
        })
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
        self.finish(j, status, r, observer)
    }

    /// Verifies the manifest signature (or accepts its absence when allowed).
    fn check_signature(&self, j: &mut Journal) -> Result<(), SignatureRefusal> {
        match &j.signature {
            Some(sig) => {
                let v = manifest_sig::verify(&j.manifest, sig, self.loader.trust())?;
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
    async fn handler(&self, id: &str) -> Result<HandlerComponent, StepResult> {
        self.loader
            .load(id, &self.settings.policy)
            .await
            .map_err(|e| e.to_step_result())
    }

    /// The step context and the files of unit `index`.
    fn unit_context(&self, j: &Journal, index: usize, m: &Manifests) -> (StepContext, Vec<Wanted>) {
        let u = &j.units[index];
        let (manifest, step_index, level) = match u.child_step {
            Some(cs) => (&m.children[&u.step], cs, 1),
            None => (&m.parent, u.step, 0),
        };
        let Step::Inline(step) = &manifest.steps[step_index as usize] else {
            unreachable!("units are only planned for inline steps")
        };
        let wanted: Vec<Wanted> = step
            .files
            .iter()
            .map(|id| {
                let f = manifest
                    .file(id)
                    .expect("validated: step files are in `files`");
                Wanted {
                    id: id.clone(),
                    file_name: f.file_name.clone(),
                    size: f.size_in_bytes,
                    sha256: f.sha256,
                }
            })
            .collect();
        let ctx = StepContext {
            workflow_id: j.workflow_id.clone(),
            update_id: manifest.update_id.clone(),
            handler_id: step.handler.clone(),
            step_index,
            level,
            handler_properties: step.handler_properties.clone(),
            files: wanted
                .iter()
                .map(|w| StepFile {
                    id: w.id.clone(),
                    name: w.file_name.clone(),
                    size: w.size,
                    sha256: w.key(),
                })
                .collect(),
            component: u.component.clone(),
        };
        (ctx, wanted)
    }

    /// `payload/<wf>/<unit>`, `work/<wf>/<unit>`, `state/<handler>` for a unit.
    fn unit_dirs(&self, j: &Journal, index: usize) -> Result<(Dir, Dir, Dir), DataDirError> {
        let u = &j.units[index];
        let key = match (&u.component, u.child_step) {
            (Some(c), Some(cs)) => format!("step-{}-{}-{}", u.step, safe_name(&c.id), cs),
            (None, Some(cs)) => format!("step-{}-host-{}", u.step, cs),
            _ => format!("step-{}", u.step),
        };
        let wf = safe_name(&j.workflow_id);
        let handler_dir = safe_name(&u.handler_id);
        let (payloads, works, states) =
            (self.data.payloads()?, self.data.work()?, self.data.state()?);
        let legacy_wf = crate::datadir::legacy_safe_name(&j.workflow_id);
        crate::datadir::adopt_legacy(&payloads, &legacy_wf, &wf);
        crate::datadir::adopt_legacy(&works, &legacy_wf, &wf);
        let legacy_handler = crate::datadir::legacy_safe_name(&u.handler_id);
        crate::datadir::adopt_legacy(&states, &legacy_handler, &handler_dir);
        let err = |what: &str, source| DataDirError {
            path: self.data.path().display().to_string(),
            what: what.to_owned(),
            cause: source,
        };
        let payload = crate::datadir::ensure_dir(&payloads, format!("{wf}/{key}"), 0o755)
            .map_err(|e| err("payload dir", e))?;
        let work = crate::datadir::ensure_dir(&works, format!("{wf}/{key}"), 0o755)
            .map_err(|e| err("work dir", e))?;
        let state = crate::datadir::ensure_dir(&states, handler_dir, 0o755)
            .map_err(|e| err("state dir", e))?;
        Ok((payload, work, state))
    }

    /// Fetches files into the store and links them into the unit's payload dir by file name.
    async fn fetch_files(
        &self,
        j: &mut Journal,
        index: usize,
        files: &[Wanted],
        payload: &Dir,
        work: Option<&Dir>,
        run: &Run<'_>,
    ) -> Result<(), StepResult> {
        // A file the journal says was fetched by an earlier process is checked again: store files
        // are not synced, so after a crash only their hash says they are whole.
        for w in files {
            let key = (index, w.id.clone());
            if payload.exists(&w.file_name)
                && run.verified.lock().expect("never poisoned").contains(&key)
            {
                continue;
            }
            let started = Instant::now();
            let observer = run.observer.clone();
            let name = w.file_name.clone();
            let progress = move |done: u64, total: u64| {
                observer.event(&Event::FileProgress {
                    unit: index,
                    file: name.clone(),
                    done,
                    total,
                })
            };
            let source = resolve_source(&j.source, w)?;
            let fetched = tokio::select! {
                r = self.downloader.fetch(w, source.as_source(), &progress) => r,
                _ = run.cancel.cancelled() => {
                    return Err(StepResult::failure(erc::WORKFLOW_CANCELLED, format!("download of `{}` cancelled", w.file_name)).with_code(result::FAILURE_CANCELLED));
                }
            };
            let fetched = fetched.map_err(|e| StepResult::failure(e.erc(), e.to_string()))?;
            // Link the verified file into /payload under its name (replacing a stale link).
            let _ = payload.remove_file(&w.file_name);
            self.downloader
                .store()
                .hard_link(w.key(), payload, &w.file_name)
                .map_err(|e| {
                    StepResult::failure(
                        erc::SANDBOX_SETUP_FAILED,
                        format!("`{}`: cannot place it in /payload: {e}", w.file_name),
                    )
                })?;
            if let Some(work) = work {
                copy_into_work(payload, work, &w.file_name).await?;
            }
            let result_code = match fetched {
                Fetched::Downloaded { .. } => result::DOWNLOAD_SUCCESS,
                Fetched::AlreadyPresent => result::DOWNLOAD_SKIPPED_FILE_EXISTS,
            };
            crate::fault::point("after-file");
            run.observer.event(&Event::FileReady {
                unit: index,
                file: w.file_name.clone(),
                result_code,
            });
            let record = FileRecord {
                id: w.id.clone(),
                file_name: w.file_name.clone(),
                result_code,
                bytes: w.size,
                duration_ms: started.elapsed().as_millis() as u64,
            };
            let files = &mut j.units[index].files;
            // Checked again after a restart: the record of the first fetch stands.
            let recorded = files.iter().any(|f| f.id == w.id);
            if !(recorded && matches!(fetched, Fetched::AlreadyPresent)) {
                files.retain(|f| f.id != w.id);
                files.push(record);
            }
            run.verified.lock().expect("never poisoned").insert(key);
        }
        Ok(())
    }

    async fn open_session(
        &self,
        j: &Journal,
        index: usize,
        handler: &HandlerComponent,
        dirs: (Dir, Dir, Dir),
        streams: Option<Arc<Streams>>,
        run: &Run<'_>,
    ) -> Result<Session, StepResult> {
        let u = &j.units[index];
        let (payload, work, state) = dirs;
        let tags = CallTags {
            workflow_id: j.workflow_id.clone(),
            step: u.label(),
            handler_id: u.handler_id.clone(),
        };
        let sink = forwarding_sink(run.observer.clone(), index);
        let mut step_dirs = StepDirs::new(payload, work, state);
        let policy = &self.settings.policy;
        step_dirs.extra = policy
            .extra_preopens(&u.handler_id, u.component.as_ref())
            .map_err(|reason| StepResult::failure(erc::SANDBOX_SETUP_FAILED, reason.to_string()))?;
        let setup = SessionSetup {
            handler_id: u.handler_id.clone(),
            tags,
            dirs: step_dirs,
            grants: policy.grants(&u.handler_id),
            limits: policy.limits(&u.handler_id),
            events: Some(sink),
            streams,
        };
        self.sandbox
            .session(handler, setup)
            .await
            .map_err(|e| e.to_step_result())
    }

    /// Sees that each file the slot capability will stream is there with its size.
    async fn probe_streamed(&self, streams: Option<&Streams>) -> Result<(), StepResult> {
        for (w, source) in streams.iter().flat_map(|s| s.files.values()) {
            self.downloader
                .probe(w, source.as_source())
                .await
                .map_err(|e| StepResult::failure(e.erc(), e.to_string()))?;
        }
        Ok(())
    }

    /// The sources of the files a unit's slot capability streams (`None`: there are none).
    fn streams(
        &self,
        j: &Journal,
        streamed: &[Wanted],
    ) -> Result<Option<Arc<Streams>>, StepResult> {
        if streamed.is_empty() {
            return Ok(None);
        }
        let mut files = BTreeMap::new();
        for w in streamed {
            files.insert(
                w.file_name.clone(),
                (w.clone(), resolve_source(&j.source, w)?),
            );
        }
        let records = self
            .data
            .streams()
            .map_err(|e| StepResult::failure(erc::SANDBOX_SETUP_FAILED, e.to_string()))?;
        Ok(Some(Arc::new(Streams {
            downloader: self.downloader.clone(),
            files,
            records,
        })))
    }

    /// Runs one action and records it in the journal (in memory: the journal is written when the
    /// unit's state changes for good, not before each action; a run cut short starts the unit
    /// over with is-installed, as ADU's agent does after a restart).
    async fn call(
        &self,
        j: &mut Journal,
        cur: &Current,
        session: &mut Session,
        action: Action,
        run: &Run<'_>,
    ) -> Result<StepResult, WorkflowError> {
        let (index, ctx, work) = (cur.index, &cur.ctx, &cur.work);
        j.units[index].state = UnitState::Running { next: action };
        run.observer.event(&Event::ActionStarted {
            unit: index,
            action,
        });
        let started_at_ms = now_ms();
        let started = Instant::now();
        let r = session.call(action, ctx, run.cancel).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        // ADU leaves each action's result in the work folder: a courtesy copy (the journal has the
        // result), so it is replaced atomically but not synced.
        let name = format!("action_{}_aduc_result.json", action.file_stem());
        let _ = crate::datadir::replace(
            work,
            &name,
            &serde_json::to_vec_pretty(&r).expect("serializes"),
            0o644,
        );
        j.units[index].actions.push(ActionRecord {
            action,
            result: r.clone(),
            started_at_ms,
            duration_ms,
        });
        run.observer.event(&Event::ActionFinished {
            unit: index,
            action,
            result: r.clone(),
            duration_ms,
        });
        crate::fault::point("after-action");
        Ok(r)
    }

    fn done(&self, j: &mut Journal, index: usize, r: StepResult) -> Result<(), WorkflowError> {
        j.units[index].state = UnitState::Done;
        j.units[index].result = Some(r);
        self.save(j)
    }

    /// Everything a unit's actions need: its handler instance, context, files and directories,
    /// with the small files fetched. `Err` is how the unit ended when it could not be prepared.
    async fn prepare_unit(
        &self,
        j: &mut Journal,
        index: usize,
        run: &Run<'_>,
    ) -> Result<Result<Prepared, UnitOutcome>, WorkflowError> {
        let handler_id = j.units[index].handler_id.clone();
        let handler = match self.handler(&handler_id).await {
            Ok(h) => h,
            Err(r) => return self.fail_unit(j, index, r).map(Err),
        };
        let (ctx, all) = self.unit_context(j, index, run.manifests);
        let streamed = streamed_files(
            self.settings.policy.grants(&handler_id).slot.is_some(),
            &all,
        );
        let wanted: Vec<Wanted> = all.into_iter().filter(|w| !streamed.contains(w)).collect();
        let dirs = self.unit_dirs(j, index).map_err(WorkflowError::DataDir)?;
        let payload = dirs.0.try_clone().map_err(|e| setup_error(&self.data, e))?;
        let work = dirs.1.try_clone().map_err(|e| setup_error(&self.data, e))?;
        let cur = Current {
            index,
            ctx,
            work,
            handler: handler.clone(),
        };
        let policy = self.settings.policy.handler(&handler_id);
        let payload_in_work = policy.is_some_and(|p| p.payload_in_work);
        let late = policy.is_some_and(|p| p.fetch_after_is_installed);
        // Small files first: is-installed may need them (an apt manifest, a script), unless the
        // policy says it does not.
        let early: Vec<Wanted> = wanted
            .iter()
            .filter(|w| !late && w.size <= EARLY_FETCH_LIMIT)
            .cloned()
            .collect();
        let work_copy = payload_in_work.then_some(&cur.work);
        if let Err(r) = self
            .fetch_files(j, index, &early, &payload, work_copy, run)
            .await
        {
            if r.result_code == result::FAILURE_CANCELLED {
                // No handler instance yet: nothing to ask to clean up.
                self.done(j, index, r.clone())?;
                return Ok(Err(UnitOutcome::Cancelled(r)));
            }
            return self.fail_unit(j, index, r).map(Err);
        }
        let streams = match self.streams(j, &streamed) {
            Ok(s) => s,
            Err(r) => return self.fail_unit(j, index, r).map(Err),
        };
        let session = match self
            .open_session(j, index, &handler, dirs, streams.clone(), run)
            .await
        {
            Ok(s) => s,
            Err(r) => return self.fail_unit(j, index, r).map(Err),
        };
        Ok(Ok(Prepared {
            cur,
            session,
            wanted,
            streams,
            payload,
            payload_in_work,
        }))
    }

    /// One phase of a unit: is-installed, then what the lifecycle decides.
    async fn run_unit(
        &self,
        j: &mut Journal,
        index: usize,
        phase: Phase,
        run: &Run<'_>,
    ) -> Result<UnitOutcome, WorkflowError> {
        let unit = j.units[index].clone();
        if unit.kind == UnitKind::NoMatchingComponents {
            // Planned as done; nothing to run.
            return Ok(UnitOutcome::Continue);
        }
        if phase == Phase::Install {
            run.observer.event(&Event::UnitStarted {
                unit: index,
                label: unit.label(),
                handler: unit.handler_id.clone(),
            });
        }
        // Not written yet: until the unit's state changes for good, a run cut short starts it over.
        j.units[index].state = UnitState::Running {
            next: Action::IsInstalled,
        };
        let mut p = match self.prepare_unit(j, index, run).await? {
            Ok(p) => p,
            Err(outcome) => return Ok(outcome),
        };
        let installed = self
            .call(j, &p.cur, &mut p.session, Action::IsInstalled, run)
            .await?;
        let resumed_after = match unit.state {
            UnitState::AwaitingFollowup { after } => Some(after),
            _ => None,
        };
        let decision =
            lifecycle::after_is_installed(&installed, resumed_after, &unit.handler_id, phase);
        if let Next::Call(next) = decision.next {
            // The rest of the files, before the first action that may use them.
            j.units[index].state = UnitState::Running { next };
            let work_copy = p.payload_in_work.then_some(&p.cur.work);
            let fetched = self
                .fetch_files(j, index, &p.wanted, &p.payload, work_copy, run)
                .await;
            let probed = match fetched {
                Ok(()) if phase == Phase::Download => {
                    self.probe_streamed(p.streams.as_deref()).await
                }
                other => other,
            };
            if let Err(r) = probed {
                if r.result_code == result::FAILURE_CANCELLED {
                    return self.cancel_unit(j, &p.cur, r, run).await;
                }
                return self.fail_unit(j, index, r);
            }
        }
        self.carry_out(j, &mut p, decision, run).await
    }

    /// Carries out the lifecycle's decisions for a unit until it is done with its phase.
    async fn carry_out(
        &self,
        j: &mut Journal,
        p: &mut Prepared,
        mut decision: lifecycle::Decision,
        run: &Run<'_>,
    ) -> Result<UnitOutcome, WorkflowError> {
        let index = p.cur.index;
        loop {
            if let Some(f) = decision.defer {
                j.deferred_followup = Some(lifecycle::merge_deferred(j.deferred_followup, f));
            }
            match decision.next {
                Next::Call(action) => {
                    let r = self.call(j, &p.cur, &mut p.session, action, run).await?;
                    if r.result_code == result::FAILURE_CANCELLED || run.cancel.is_cancelled() {
                        return self.cancel_unit(j, &p.cur, r, run).await;
                    }
                    decision = lifecycle::after(action, &r);
                }
                Next::Downloaded => {
                    let u = &mut j.units[index];
                    u.downloaded = true;
                    u.state = UnitState::Pending;
                    self.save(j)?;
                    return Ok(UnitOutcome::Continue);
                }
                Next::Done(r) => {
                    self.done(j, index, r)?;
                    return Ok(UnitOutcome::Continue);
                }
                Next::Fail { result, restore } => {
                    if restore {
                        self.restore(j, &p.cur, &mut p.session, run).await?;
                    }
                    return self.fail_unit(j, index, result);
                }
                Next::Stop(followup, r) => {
                    let after = j.units[index]
                        .actions
                        .last()
                        .map(|a| a.action)
                        .expect("an action asked for it");
                    j.units[index].state = UnitState::AwaitingFollowup { after };
                    self.save(j)?;
                    return Ok(UnitOutcome::Followup(followup, r));
                }
            }
        }
    }

    fn fail_unit(
        &self,
        j: &mut Journal,
        index: usize,
        r: StepResult,
    ) -> Result<UnitOutcome, WorkflowError> {
        self.done(j, index, r.clone())?;
        Ok(UnitOutcome::Failed(r))
    }

    async fn restore(
        &self,
        j: &mut Journal,
        cur: &Current,
        session: &mut Session,
        run: &Run<'_>,
    ) -> Result<(), WorkflowError> {
        // A trapped instance cannot run restore: give it a fresh one.
        if session.is_broken() {
            let fresh = match self.unit_dirs(j, cur.index) {
                Ok(dirs) => {
                    self.open_session(j, cur.index, &cur.handler, dirs, None, run)
                        .await
                }
                Err(e) => Err(StepResult::failure(
                    erc::SANDBOX_SETUP_FAILED,
                    e.to_string(),
                )),
            };
            match fresh {
                Ok(s) => *session = s,
                Err(r) => {
                    j.units[cur.index].actions.push(ActionRecord {
                        action: Action::Restore,
                        result: r,
                        started_at_ms: now_ms(),
                        duration_ms: 0,
                    });
                    return Ok(());
                }
            }
        }
        self.call(j, cur, session, Action::Restore, run).await?;
        Ok(())
    }

    /// The running call was stopped: let the handler clean up in a fresh instance.
    async fn cancel_unit(
        &self,
        j: &mut Journal,
        cur: &Current,
        stopped: StepResult,
        run: &Run<'_>,
    ) -> Result<UnitOutcome, WorkflowError> {
        let not_cancelled = CancellationToken::new();
        let cleanup = Run {
            observer: run.observer.clone(),
            cancel: &not_cancelled,
            manifests: run.manifests,
            verified: run.verified,
        };
        if let Ok(dirs) = self.unit_dirs(j, cur.index) {
            if let Ok(mut s) = self
                .open_session(j, cur.index, &cur.handler, dirs, None, &cleanup)
                .await
            {
                self.call(j, cur, &mut s, Action::Cancel, &cleanup).await?;
            }
        }
        let r = StepResult::failure(
            erc::WORKFLOW_CANCELLED,
            format!("deployment cancelled: {}", stopped.result_details),
        )
        .with_code(result::FAILURE_CANCELLED);
        self.done(j, cur.index, r.clone())?;
        Ok(UnitOutcome::Cancelled(r))
    }
}

/// The files a step's slot capability streams straight into a slot instead of the workflow
/// fetching them into the store: with the `slot` capability granted, those over the early-fetch
/// size (firmware images), never a block index: the slot capability reads that from `/payload`,
/// and a large image's index is itself over the early-fetch size.
fn streamed_files(slot_granted: bool, files: &[Wanted]) -> Vec<Wanted> {
    files
        .iter()
        .filter(|w| {
            slot_granted
                && w.size > EARLY_FETCH_LIMIT
                && !w.file_name.ends_with(crate::blockindex::FILE_SUFFIX)
        })
        .cloned()
        .collect()
}

/// Where file `w` comes from, per the deployment's file source.
pub(crate) fn resolve_source(source: &FileSource, w: &Wanted) -> Result<OwnedSource, StepResult> {
    match source {
        FileSource::Directory(p) => Dir::open_ambient_dir(p, cap_std::ambient_authority())
            .map(OwnedSource::Directory)
            .map_err(|e| {
                StepResult::failure(
                    erc::WORKFLOW_DOWNLOAD_FAILED,
                    format!("files directory {p}: {e}"),
                )
            }),
        FileSource::BaseUrl(base) => Ok(OwnedSource::Url(format!("{base}{}", w.file_name))),
        // A file the deployment does not list (a child update's, typically) is fetched from beside
        // the listed ones: the digest from the signed manifest still decides what is accepted.
        FileSource::Urls(map) => map
            .get(&w.id)
            .cloned()
            .or_else(|| {
                let any = map.values().next()?;
                let (dir, _) = any.rsplit_once('/')?;
                Some(format!("{dir}/{}", w.file_name))
            })
            .map(OwnedSource::Url)
            .ok_or_else(|| {
                StepResult::failure(
                    erc::WORKFLOW_DOWNLOAD_FAILED,
                    format!(
                        "`{}`: the deployment has no URL for file id `{}`",
                        w.file_name, w.id
                    ),
                )
            }),
    }
}

/// Copies payload file `name` into the work folder (policy `payload-in-work`), replacing whatever
/// a program left there under that name (a file, a symlink, a directory) without following it.
/// On a blocking thread: the file may be large.
async fn copy_into_work(payload: &Dir, work: &Dir, name: &str) -> Result<(), StepResult> {
    let failed = |e: std::io::Error| {
        StepResult::failure(
            erc::SANDBOX_SETUP_FAILED,
            format!("`{name}`: cannot place a copy in the work folder: {e}"),
        )
    };
    let (from, to) = (
        payload.try_clone().map_err(failed)?,
        work.try_clone().map_err(failed)?,
    );
    let owned = name.to_owned();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        match to.symlink_metadata(&owned) {
            Ok(m) if m.is_dir() => to.remove_dir_all(&owned)?,
            Ok(_) => to.remove_file(&owned)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut src = from.open(&owned)?.into_std();
        let mut opts = cap_std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        let mut dst = to.open_with(&owned, &opts)?.into_std();
        std::io::copy(&mut src, &mut dst)?;
        Ok(())
    })
    .await
    .map_err(|e| failed(std::io::Error::other(e)))?
    .map_err(failed)
}

fn setup_error(data: &DataDir, e: std::io::Error) -> WorkflowError {
    WorkflowError::DataDir(DataDirError {
        path: data.path().display().to_string(),
        what: "open unit directories".into(),
        cause: e,
    })
}

/// Handler events become workflow events for unit `index`.
fn forwarding_sink(observer: Arc<dyn Observer>, index: usize) -> EventSink {
    Arc::new(move |_tags: &CallTags, ev: &crate::sandbox::HandlerEvent| {
        let (percent, message) = match ev {
            crate::sandbox::HandlerEvent::Progress { percent, message } => {
                (Some(*percent), message.clone())
            }
            crate::sandbox::HandlerEvent::Log { message, .. } => (None, message.clone()),
        };
        observer.event(&Event::Handler {
            unit: index,
            event: ev.clone(),
            percent,
            message,
        });
    })
}

/// What a unit left the deployment to do.
enum UnitOutcome {
    Continue,
    Failed(StepResult),
    Cancelled(StepResult),
    Followup(Followup, StepResult),
}

/// A manifest a journal holds that no longer parses (a newer sandstep's stricter rule).
#[derive(Debug, thiserror::Error)]
enum StoredManifestError {
    #[error("stored manifest no longer parses: {0}")]
    Parent(sandstep_model::manifest::ManifestError),
    #[error("stored child manifest of step {step}: {cause}")]
    Child {
        step: u32,
        cause: sandstep_model::manifest::ManifestError,
    },
}

impl Manifests {
    fn from_journal(j: &Journal) -> Result<Manifests, StoredManifestError> {
        let parent = Manifest::parse(j.running_manifest()).map_err(StoredManifestError::Parent)?;
        let mut children = HashMap::new();
        for (step, text) in &j.children {
            let child = Manifest::parse_child(text)
                .map_err(|cause| StoredManifestError::Child { step: *step, cause })?;
            children.insert(*step, child);
        }
        Ok(Manifests { parent, children })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(name: &str, size: u64) -> Wanted {
        Wanted {
            id: name.into(),
            file_name: name.into(),
            size,
            sha256: [0; 32],
        }
    }

    #[test]
    fn only_large_images_of_slot_granted_steps_stream_and_never_their_block_index() {
        let big = EARLY_FETCH_LIMIT + 1;
        let files = [
            wanted("fw.img", big),
            // A 1 GiB image's index at 8 KiB blocks is 4 MiB: over the limit, still fetched.
            wanted("fw.img.blockindex", big),
            wanted("small.cfg", 10),
        ];
        let names = |v: Vec<Wanted>| v.into_iter().map(|w| w.file_name).collect::<Vec<_>>();
        assert_eq!(names(streamed_files(true, &files)), ["fw.img"]);
        assert!(streamed_files(false, &files).is_empty());
    }
}
