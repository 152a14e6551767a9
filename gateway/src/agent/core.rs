//! The deployment core: which deployment runs, which waits to replace it, what a cancel does,
//! what is reported, and when the agent must reboot or restart. It knows no transport and does
//! no I/O: each input (desired state, a deployment's event, its end) yields [`Effect`]s as
//! values, which the runner carries out. Every transition is a row of the tests' tables.
//!
//! The rules follow ADU's agent where it has one (cited beside it); sources differ only in their
//! [`Profile`].

use super::refused::Refused;
use crate::workflow::events::{Event, UnitInfo};
use crate::workflow::{Outcome, Request, WorkflowError};
use sandstep_model::deployment::{action, Workflow};
use sandstep_model::journal::Status;
use sandstep_model::reported::{adu_state, Patch, Progress, ReportedWorkflow, Stage, AGENT_FIELDS};
use serde_json::{Map, Value};
use std::time::{Duration, Instant};

/// How a source's service expects deployments to be handled, where services differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Profile {
    /// A deployment replaced by a newer one has its (cancelled) end reported. ADU's agent goes
    /// on to the replacement "instead of going to idle and reporting the results as a cancel
    /// failure" (agent_workflow.c, `ADUC_Workflow_HandlePropertyUpdate`).
    pub report_replaced_end: bool,
    /// Desired state naming the deployment last finished (same retry timestamp) is ignored, not
    /// reported again: the service sends the whole desired document after every reconnection
    /// (agent_workflow.c: "Ignore duplicate deployment that can be caused by token expiry
    /// connection refresh").
    pub ignore_finished_duplicate: bool,
}

/// Desired state, decoded (by the runner, from what the source received).
#[derive(Debug)]
pub enum Desired {
    /// A deployment to run, or why it cannot (checked after whether it is one already known).
    Deploy(Workflow, Result<Box<Request>, Refused>),
    /// A cancel of `workflow` (ADU's action 255).
    Cancel(Workflow),
    /// A deployment that cannot run: reported with the workflow as received.
    Refused {
        workflow: Option<ReportedWorkflow>,
        why: String,
    },
    /// Desired fields that are no deployment (another protocol's message): refused, and
    /// reported back unapplied so a delta closes.
    Foreign(Map<String, Value>),
}

/// Why a deployment's task ended without an outcome.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    /// The task running it ended abnormally (its join error, said).
    #[error("deployment task failed: {0}")]
    Task(String),
}

/// What the runner must do.
#[derive(Debug)]
pub enum Effect {
    /// Queue a report.
    Report { patch: Box<Patch>, progress: bool },
    /// Start a deployment.
    Start(Workflow, Box<Request>),
    /// Stop the running deployment (its handler's cancel runs); its end comes as `finished`.
    CancelRunning,
    /// The running deployment ended: record it (persisted state, result file) and, when
    /// `report`, report its end under `workflow`.
    Record {
        workflow: Workflow,
        outcome: Box<Outcome>,
        report: bool,
    },
    /// Deliver what waits, then reboot (the journal resumes after it).
    Reboot,
    /// Deliver what waits, then exit for the service manager to restart the agent.
    Restart,
}

/// The deployment being run.
#[derive(Debug)]
struct Running {
    workflow: Workflow,
    /// The cancel request (action 255) that stopped it, reported instead of `workflow` so the
    /// delta empties.
    cancel_request: Option<Workflow>,
    units: Vec<UnitInfo>,
}

/// The core's state between inputs.
#[derive(Debug)]
pub struct Core {
    profile: Profile,
    running: Option<Running>,
    /// A deployment that replaces the running one once it has stopped.
    queued: Option<(Workflow, Box<Request>)>,
    /// The workflow last finished (persisted by the runner across restarts).
    last_finished: Option<Workflow>,
    progress_interval: Duration,
    last_progress: Option<Instant>,
    /// The stage last reported, so a stage's `<stage>At` time is when it began.
    last_stage: Option<Stage>,
}

impl Core {
    pub fn new(profile: Profile, progress_interval: Duration, last: Option<Workflow>) -> Core {
        Core {
            profile,
            running: None,
            queued: None,
            last_finished: last,
            progress_interval,
            last_progress: None,
            last_stage: None,
        }
    }

    /// The deployment running now.
    pub fn running(&self) -> Option<&Workflow> {
        self.running.as_ref().map(|r| &r.workflow)
    }

    /// Stamps a report: when its stage began, if it names a new one.
    pub fn stamp(&mut self, mut patch: Patch, now_ms: u64) -> Patch {
        if let Some(stage) = patch.status {
            if self.last_stage != Some(stage) {
                self.last_stage = Some(stage);
                patch.stage_began_at = Some(now_ms);
            }
        }
        patch
    }

    fn report(&mut self, patch: Patch, now_ms: u64) -> Effect {
        Effect::Report {
            patch: Box::new(self.stamp(patch, now_ms)),
            progress: false,
        }
    }

    /// At start: the first interrupted deployment resumes (the others wait for a later start,
    /// as the journal keeps them).
    pub fn resume(&mut self, mut runs: Vec<(Workflow, Request)>) -> Vec<Effect> {
        if runs.is_empty() {
            return Vec::new();
        }
        let (w, req) = runs.remove(0);
        for (later, _) in runs {
            tracing::warn!(workflow = %later.id, "another unfinished deployment waits; it resumes later");
        }
        tracing::info!(workflow = %w.id, "resuming the unfinished deployment");
        self.running = Some(Running {
            workflow: w.clone(),
            cancel_request: None,
            units: Vec::new(),
        });
        vec![Effect::Start(w, Box::new(req))]
    }

    /// Desired state arrived.
    pub fn desired(&mut self, d: Desired, now_ms: u64) -> Vec<Effect> {
        match d {
            Desired::Refused { workflow, why } => {
                tracing::warn!("desired state refused: {why}");
                vec![self.report(Patch::refusal(workflow, &why, now_ms), now_ms)]
            }
            Desired::Foreign(fields) => self.foreign(fields, now_ms),
            Desired::Cancel(w) => self.cancel(w, now_ms),
            Desired::Deploy(w, req) => self.deploy(w, req, now_ms),
        }
    }

    fn deploy(
        &mut self,
        w: Workflow,
        req: Result<Box<Request>, Refused>,
        now_ms: u64,
    ) -> Vec<Effect> {
        let same = self.running.as_ref().is_some_and(|r| r.workflow == w)
            || self.queued.as_ref().is_some_and(|(q, _)| *q == w);
        let finished_before = self.profile.ignore_finished_duplicate
            && w.action == action::PROCESS_DEPLOYMENT
            && self
                .last_finished
                .as_ref()
                .is_some_and(|l| l.id == w.id && l.retry_timestamp == w.retry_timestamp);
        if same || finished_before {
            return Vec::new();
        }
        let req = match req {
            Ok(req) => req,
            Err(why) => {
                let w = Some(ReportedWorkflow::Known(w));
                let why = why.to_string();
                return vec![self.report(Patch::refusal(w, &why, now_ms), now_ms)];
            }
        };
        // Acknowledge: reporting the workflow empties the delta; ADU's agent reports
        // DeploymentInProgress here (`ReportPreDeploymentProcessingState`).
        let ack = Patch {
            workflow: Some(ReportedWorkflow::Known(w.clone())),
            status: Some(Stage::Downloading),
            state: Some(adu_state::DEPLOYMENT_IN_PROGRESS),
            last_error: Some(None),
            ..Patch::default()
        };
        let mut out = vec![self.report(ack, now_ms)];
        match &self.running {
            Some(r) => {
                tracing::info!(old = %r.workflow.id, new = %w.id, "a new deployment replaces the running one");
                out.push(Effect::CancelRunning);
                self.queued = Some((w, req));
            }
            None => {
                tracing::info!(workflow = %w.id, "deployment starts");
                self.running = Some(Running {
                    workflow: w.clone(),
                    cancel_request: None,
                    units: Vec::new(),
                });
                out.push(Effect::Start(w, req));
            }
        }
        out
    }

    fn cancel(&mut self, w: Workflow, now_ms: u64) -> Vec<Effect> {
        let mut patch = Patch {
            workflow: Some(ReportedWorkflow::Known(w.clone())),
            ..Patch::default()
        };
        let mut out = Vec::new();
        match self.running.as_mut() {
            Some(r) => {
                tracing::info!(workflow = %r.workflow.id, "cancel requested");
                r.cancel_request = Some(w);
                out.push(Effect::CancelRunning);
            }
            None => {
                // ADU: "Cancel received with no operation in progress - returning to Idle".
                patch.status = Some(Stage::StandBy);
                patch.state = Some(adu_state::IDLE);
            }
        }
        self.queued = None;
        out.insert(0, self.report(patch, now_ms));
        out
    }

    /// Desired fields that carry no deployment (another protocol's message, such as the
    /// software-update pattern's `softwareURL`): refused as `lastError`, naming what sandstep
    /// expects, and acknowledged by reporting them back (not applied), so the delta closes
    /// instead of staying open forever. Fields the agent reports itself are never echoed.
    fn foreign(&mut self, fields: Map<String, Value>, now_ms: u64) -> Vec<Effect> {
        if fields.is_empty() {
            return Vec::new();
        }
        let names: Vec<&str> = fields.keys().map(String::as_str).collect();
        let why = format!(
            "desired state without a `workflow` is not a deployment; sandstep expects ADU's \
             deployment message (`workflow`, `updateManifest`, `updateManifestSignature`, \
             `fileUrls`); not applied: {}",
            names.join(", ")
        );
        tracing::warn!("desired state refused: {why}");
        let mut patch = Patch::refusal(None, &why, now_ms);
        patch.echo = fields
            .into_iter()
            .filter(|(k, _)| !AGENT_FIELDS.contains(&k.as_str()))
            .collect();
        vec![self.report(patch, now_ms)]
    }

    /// An event of the running deployment: reported at most every `progress-interval`, except
    /// the plan and each action's start.
    pub fn event(&mut self, ev: &Event, now: Instant, now_ms: u64) -> Vec<Effect> {
        let Some(r) = self.running.as_mut() else {
            return Vec::new();
        };
        if let Event::Planned { units, .. } = ev {
            r.units = units.clone();
        }
        let Some(mut patch) = patch_for_event(ev, &r.units) else {
            return Vec::new();
        };
        let urgent = matches!(
            ev,
            Event::Planned { .. } | Event::ActionStarted { .. } | Event::Waiting { .. }
        );
        let due = self
            .last_progress
            .is_none_or(|t| now.duration_since(t) >= self.progress_interval);
        if !(urgent || due) {
            return Vec::new();
        }
        self.last_progress = Some(now);
        patch.workflow = Some(ReportedWorkflow::Known(r.workflow.clone()));
        vec![Effect::Report {
            patch: Box::new(self.stamp(patch, now_ms)),
            progress: true,
        }]
    }

    /// The running deployment's task ended, with its outcome or why it could not run.
    pub fn finished(&mut self, result: Result<Outcome, RunError>, now_ms: u64) -> Vec<Effect> {
        let Some(r) = self.running.take() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match result {
            Ok(outcome) => {
                let reported = r.cancel_request.unwrap_or_else(|| r.workflow.clone());
                let replaced = self.queued.is_some() && outcome.status == Status::Cancelled;
                let status = outcome.status;
                self.last_finished = Some(reported.clone());
                out.push(Effect::Record {
                    workflow: reported,
                    outcome: Box::new(outcome),
                    report: self.profile.report_replaced_end || !replaced,
                });
                match status {
                    Status::RebootRequired => return self.then_stop(out, Effect::Reboot),
                    Status::RestartRequired => return self.then_stop(out, Effect::Restart),
                    _ => {}
                }
            }
            Err(why) => {
                let w = Some(ReportedWorkflow::Known(r.workflow));
                out.push(self.report(Patch::refusal(w, &why.to_string(), now_ms), now_ms));
            }
        }
        if let Some((w, req)) = self.queued.take() {
            tracing::info!(workflow = %w.id, "deployment starts");
            self.running = Some(Running {
                workflow: w.clone(),
                cancel_request: None,
                units: Vec::new(),
            });
            out.push(Effect::Start(w, req));
        }
        out
    }

    /// A reboot or restart ends the agent: what is queued is dropped (the service sends it
    /// again, its workflow never having been acknowledged as finished).
    fn then_stop(&mut self, mut out: Vec<Effect>, stop: Effect) -> Vec<Effect> {
        self.queued = None;
        out.push(stop);
        out
    }
}

/// A patch for an event of the running deployment; `None` when the event changes nothing worth
/// reporting.
pub fn patch_for_event(ev: &Event, units: &[UnitInfo]) -> Option<Patch> {
    let unit = |i: usize| units.get(i);
    let on_unit = |i: usize| Progress {
        unit: unit(i).map(|u| u.label.clone()),
        step: unit(i).map(|u| u.step),
        handler: unit(i).map(|u| u.handler.clone()),
        ..Progress::default()
    };
    let (status, state, progress) = match ev {
        Event::Planned { units, .. } => (
            Some(Stage::Downloading),
            Some(adu_state::DEPLOYMENT_IN_PROGRESS),
            Progress {
                units: Some(units.len()),
                ..Progress::default()
            },
        ),
        Event::FileProgress {
            unit: i,
            file,
            done,
            total,
        } => (
            Some(Stage::Downloading),
            Some(adu_state::DOWNLOAD_STARTED),
            Progress {
                unit: unit(*i).map(|u| u.label.clone()),
                file: Some(file.clone()),
                percent: Some(if *total == 0 { 100 } else { done * 100 / total }),
                ..Progress::default()
            },
        ),
        Event::Waiting { what, phrase, .. } => (
            None,
            None,
            Progress {
                action: Some(format!("waiting-{what}")),
                message: Some(phrase.clone()),
                ..Progress::default()
            },
        ),
        Event::ActionStarted { unit: i, action } => {
            let (stage, state) = Stage::of(*action);
            let progress = Progress {
                action: Some(action.name().to_owned()),
                percent: Some(0),
                ..on_unit(*i)
            };
            (Some(stage), Some(state), progress)
        }
        Event::Handler {
            unit: i,
            percent: Some(p),
            message,
            ..
        } => (
            None,
            None,
            Progress {
                percent: Some(u64::from(*p)),
                message: Some(message.clone()),
                ..on_unit(*i)
            },
        ),
        _ => return None,
    };
    Some(Patch {
        status,
        state,
        progress: Some(Some(progress)),
        ..Patch::default()
    })
}

#[cfg(test)]
mod tests;
