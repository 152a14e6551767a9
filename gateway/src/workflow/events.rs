//! What a running deployment reports: the CLI shows it, the agent publishes it.

use crate::sandbox::HandlerEvent;
use sandstep_model::journal::Status;
use sandstep_model::{Action, StepResult};
use serde::Serialize;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The plan is known (or was loaded from the journal).
    Planned {
        workflow_id: String,
        units: Vec<UnitInfo>,
        resumed: bool,
    },
    /// A unit starts (or resumes).
    UnitStarted {
        unit: usize,
        label: String,
        handler: String,
    },
    /// A file of the unit is being fetched.
    FileProgress {
        unit: usize,
        file: String,
        done: u64,
        total: u64,
    },
    /// A file is in place (500 fetched, 502 already present).
    FileReady {
        unit: usize,
        file: String,
        result_code: i32,
    },
    /// An action starts.
    ActionStarted { unit: usize, action: Action },
    /// An action finished.
    ActionFinished {
        unit: usize,
        action: Action,
        result: StepResult,
        duration_ms: u64,
    },
    /// The handler logged or reported progress.
    Handler {
        unit: usize,
        #[serde(skip)]
        event: HandlerEvent,
        percent: Option<u8>,
        message: String,
    },
    /// A unit is done.
    UnitFinished {
        unit: usize,
        result: StepResult,
        duration_ms: u64,
    },
    /// The deployment waits for a maintenance window: `what` is `download` (before the
    /// download phase, or a transfer the window's closing paused) or `install`; `phrase` is
    /// how the operator reads it: `waiting for the window (opens <time>)`.
    Waiting {
        what: &'static str,
        opens: String,
        opens_at_ms: i64,
        phrase: String,
    },
    /// Before it ran, the agent dealt with a host program a killed agent left (stopped it,
    /// waited for it, repaired what it interrupted).
    Recovered { message: String },
    /// The deployment stopped: finished, failed, cancelled, or waiting for a reboot/restart.
    Finished { status: Status, result: StepResult },
}

/// A unit as shown to observers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitInfo {
    pub label: String,
    pub handler: String,
    pub step: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
}

/// Receives events; must be quick (it runs on the deployment's task).
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event);
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &Event) {}
}
