//! The agent's one loop, the same for every source: it waits for the next [`Input`] (the
//! source's, a deployment's event, its end, the source's deadline, shutdown), hands it to the
//! deployment core, and carries out the [`Effect`]s the core returns. Every report goes through
//! the durable outbox to the source, and into the agent's own reported document
//! (`<data-dir>/reported.json`, which `sandstep status` reads).

use super::core::{Core, Desired, Effect, RunError};
use super::outbox::{Outbox, Queued};
use super::source::{Ending, Sent, Source, SourceInput};
use super::{Agent, AgentError, AgentExit};
use crate::datadir::{ensure_dir, replace};
use crate::workflow::events::{Event, Observer};
use crate::workflow::{Outcome, WorkflowError};
use sandstep_model::deployment::{Deployment, Workflow};
use sandstep_model::reported::{adu_state, JobStatus, Patch, ReportedWorkflow, Stage};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How a deployment's task ended.
type Finished = Result<Result<Outcome, WorkflowError>, tokio::task::JoinError>;

/// One input of the loop.
enum Input {
    /// SIGTERM or the service manager.
    Shutdown,
    /// What the source received.
    Source(Vec<SourceInput>),
    /// The source's deadline passed (a poll, an answer overdue).
    Due,
    /// An event of the running deployment.
    Progress(Event),
    /// The running deployment's task ended.
    Finished(Finished),
    /// The agent has been idle a while ([`super::resident`]).
    Idle,
}

/// Forwards deployment events to the loop.
struct Forward(mpsc::UnboundedSender<Event>);

impl Observer for Forward {
    fn event(&self, e: &Event) {
        let _ = self.0.send(e.clone());
    }
}

/// The deployment task running now.
struct Task {
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<Result<Outcome, WorkflowError>>,
}

/// What the loop keeps between inputs.
struct Runner<'a, S> {
    agent: &'a Agent,
    source: S,
    core: Core,
    outbox: Outbox,
    task: Option<Task>,
    events: mpsc::UnboundedSender<Event>,
    /// The reported document as the agent last reported it, kept in `reported.json`.
    reported: Map<String, Value>,
    /// When to page the code out, if idle by then: after start-up and after each deployment.
    trim_at: Option<Instant>,
}

/// Runs the agent over `source` until shutdown, a reboot, or a restart request.
pub(super) async fn run<S: Source>(
    agent: &Agent,
    source: S,
    shutdown: CancellationToken,
) -> Result<AgentExit, AgentError> {
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let mut r = Runner::start(agent, source, ev_tx)?;
    loop {
        r.send_next().await?;
        let deadline = r.source.deadline();
        let trim_at = r.trim_at.filter(|_| r.task.is_none());
        let finished = async {
            match r.task.as_mut() {
                Some(t) => (&mut t.handle).await,
                None => std::future::pending().await,
            }
        };
        let input = tokio::select! {
            _ = shutdown.cancelled() => Input::Shutdown,
            inputs = r.source.recv() => Input::Source(inputs),
            _ = sleep_until_some(deadline) => Input::Due,
            Some(ev) = ev_rx.recv() => Input::Progress(ev),
            result = finished => Input::Finished(result),
            _ = sleep_until_some(trim_at) => Input::Idle,
        };
        for input in in_order(input, &mut ev_rx) {
            if let Some(exit) = r.dispatch(input).await? {
                return Ok(exit);
            }
        }
    }
}

/// The inputs to hand on for `input`, in order. A task sends its events before it ends, but
/// `select!` may pick its end first: the events still queued go first, so its last stages are
/// reported before its end instead of being dropped with it.
fn in_order(input: Input, events: &mut mpsc::UnboundedReceiver<Event>) -> Vec<Input> {
    let mut inputs = Vec::new();
    if matches!(input, Input::Finished(_)) {
        while let Ok(ev) = events.try_recv() {
            inputs.push(Input::Progress(ev));
        }
    }
    inputs.push(input);
    inputs
}

impl<'a, S: Source> Runner<'a, S> {
    /// Queues the source's start-up messages and the installed state, and resumes what a crash,
    /// reboot or restart interrupted.
    fn start(
        agent: &'a Agent,
        source: S,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Self, AgentError> {
        let persisted = agent.persisted();
        let core = Core::new(
            source.profile(),
            Duration::from_millis(agent.settings.agent.progress_interval_ms),
            persisted.workflow.clone(),
        );
        let mut r = Runner {
            agent,
            outbox: Outbox::open(ensure_dir(agent.data.root(), "outbox", 0o700)?)?,
            reported: agent.local_reported(),
            trim_at: Some(Instant::now() + super::resident::IDLE_BEFORE_TRIM),
            source,
            core,
            task: None,
            events,
        };
        for item in r.source.startup() {
            r.outbox.push(item)?;
        }
        let (runs, refusals) = agent.resumable()?;
        let mut installed = agent.installed_state();
        if let Some((w, _)) = runs.first() {
            // A deployment resumes (after its reboot, say): it is in progress, not idle, and
            // the result it stopped with is not its end.
            installed.state = Some(adu_state::DEPLOYMENT_IN_PROGRESS);
            installed.status = Some(Stage::Applying);
            installed.last_install_result = None;
            installed.workflow = Some(ReportedWorkflow::Known(w.clone()));
        }
        let now = sandstep_transport::clock::now_ms();
        let installed = r.core.stamp(installed, now);
        r.report(installed, false)?;
        for (workflow, why) in refusals {
            r.report(Patch::refusal(Some(workflow), &why, now), false)?;
        }
        let effects = r.core.resume(runs);
        r.apply_sync(effects)?;
        Ok(r)
    }

    /// Queues a report and records it in the agent's own reported document.
    fn report(&mut self, patch: Patch, progress: bool) -> Result<(), AgentError> {
        let fields = patch.to_map();
        self.record_locally(&fields);
        self.outbox.push(Queued::Report { fields, progress })?;
        Ok(())
    }

    /// The agent's own reported document: each report's fields replace its own (a `null` is
    /// kept: `retry: null` says the tag succeeded, `lastError: null` that nothing is wrong).
    fn record_locally(&mut self, fields: &Map<String, Value>) {
        for (k, v) in fields {
            self.reported.insert(k.clone(), v.clone());
        }
        let doc = sandstep_model::reported::local_document(&self.reported);
        let bytes = serde_json::to_vec_pretty(&doc).expect("serializes");
        // A view, not the record (the outbox is): replaced atomically, not synced.
        if let Err(e) = replace(self.agent.data.root(), "reported.json", &bytes, 0o644) {
            tracing::error!("reported.json: {e}");
        }
    }

    /// Sends the outbox's front item, when the source may take one.
    async fn send_next(&mut self) -> Result<(), AgentError> {
        while self.source.can_send() && !self.outbox.is_in_flight() {
            let Some(item) = self.outbox.next_to_send() else {
                return Ok(());
            };
            match self.source.send(&item).await {
                Sent::InFlight => return Ok(()),
                Sent::Done => {
                    self.outbox.delivered()?;
                }
                Sent::Failed => {
                    self.outbox.resend();
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Hands `input` to its handler; `Some` when the agent must stop.
    async fn dispatch(&mut self, input: Input) -> Result<Option<AgentExit>, AgentError> {
        let effects = match input {
            Input::Shutdown => return Ok(Some(self.shut_down().await)),
            Input::Source(inputs) => self.on_source(inputs)?,
            Input::Due => {
                let inputs = self.source.due().await;
                self.on_source(inputs)?
            }
            Input::Progress(ev) => {
                let now_ms = sandstep_transport::clock::now_ms();
                self.core.event(&ev, Instant::now(), now_ms)
            }
            Input::Finished(result) => {
                self.trim_at = Some(Instant::now() + super::resident::IDLE_BEFORE_TRIM);
                self.on_finished(result)
            }
            Input::Idle => {
                self.trim_at = None;
                match super::resident::page_out_code() {
                    Ok(bytes) => tracing::debug!(bytes, "idle: the code start-up ran is paged out"),
                    Err(e) => tracing::debug!("idle: the code stays resident: {e}"),
                }
                Vec::new()
            }
        };
        self.apply(effects).await
    }

    /// What the source received: desired state to the core, deliveries to the outbox.
    fn on_source(&mut self, inputs: Vec<SourceInput>) -> Result<Vec<Effect>, AgentError> {
        let now_ms = sandstep_transport::clock::now_ms();
        let mut effects = Vec::new();
        for input in inputs {
            match input {
                SourceInput::Desired(fields) => {
                    let d = self.agent.decode(fields);
                    effects.extend(self.core.desired(d, now_ms));
                }
                SourceInput::Deployment(d) => {
                    let d = self.deployment(d);
                    effects.extend(self.core.desired(d, now_ms));
                }
                SourceInput::Refused { workflow, why } => {
                    let d = Desired::Refused { workflow, why };
                    effects.extend(self.core.desired(d, now_ms));
                }
                SourceInput::Report(patch) => {
                    let patch = self.core.stamp(*patch, now_ms);
                    self.report(patch, false)?;
                }
                SourceInput::Queue(item) => self.outbox.push(item)?,
                SourceInput::Delivered => {
                    self.outbox.delivered()?;
                }
                SourceInput::Resend => self.outbox.resend(),
                SourceInput::ResendWhole => {
                    let fields = self.reported.clone();
                    self.outbox.push(Queued::Whole { fields })?;
                }
                SourceInput::Closed(why) => return Err(AgentError::SourceClosed(why)),
            }
        }
        Ok(effects)
    }

    /// A deployment the source fetched: to run, or refused (and the source told, so it can
    /// count the attempt).
    fn deployment(&mut self, d: Deployment) -> Desired {
        let w = d.workflow.clone();
        let req = self.agent.request(&d);
        if let Err(e) = &req {
            // A document without a manifest stays so; the inventory may be mended.
            let ending = match e {
                super::refused::Refused::Inventory { .. } => Ending::Failed,
                _ => Ending::Refused,
            };
            let _ = self.source.finished(&w, ending);
        }
        Desired::Deploy(w, req.map(Box::new))
    }

    fn on_finished(&mut self, result: Finished) -> Vec<Effect> {
        self.task = None;
        let now_ms = sandstep_transport::clock::now_ms();
        let result = match result {
            Ok(r) => r.map_err(RunError::from),
            Err(e) => {
                tracing::error!("deployment task failed: {e}");
                Err(RunError::Task(e.to_string()))
            }
        };
        self.core.finished(result, now_ms)
    }

    /// Carries out the core's effects; `Some` when the agent must stop.
    async fn apply(&mut self, effects: Vec<Effect>) -> Result<Option<AgentExit>, AgentError> {
        for e in effects {
            match e {
                Effect::Reboot => {
                    self.flush().await;
                    return Ok(Some(self.agent.reboot_now()));
                }
                Effect::Restart => {
                    self.flush().await;
                    return Ok(Some(AgentExit::Restart));
                }
                other => self.apply_sync(vec![other])?,
            }
        }
        Ok(None)
    }

    /// The effects that need no waiting.
    fn apply_sync(&mut self, effects: Vec<Effect>) -> Result<(), AgentError> {
        for e in effects {
            match e {
                Effect::Report { patch, progress } => self.report(*patch, progress)?,
                Effect::Start(w, req) => self.start_task(w, *req),
                Effect::CancelRunning => {
                    if let Some(t) = &self.task {
                        t.cancel.cancel();
                    }
                }
                Effect::Record {
                    workflow,
                    outcome,
                    report,
                } => self.record(&workflow, &outcome, report)?,
                Effect::Reboot | Effect::Restart => {
                    unreachable!("handled by apply, which waits for the outbox")
                }
            }
        }
        Ok(())
    }

    fn start_task(&mut self, w: Workflow, req: crate::workflow::Request) {
        let cancel = CancellationToken::new();
        let deployer = self.agent.deployer.clone();
        let observer: Arc<dyn Observer> = Arc::new(Forward(self.events.clone()));
        let c = cancel.clone();
        self.source.started(&w);
        let handle = tokio::spawn(async move { deployer.run(req, observer, &c).await });
        self.task = Some(Task { cancel, handle });
    }

    /// A deployment ended: recorded (persisted state, result file), reported when the core says
    /// so, and the source told.
    fn record(&mut self, w: &Workflow, outcome: &Outcome, report: bool) -> Result<(), AgentError> {
        let mut patch = self.agent.record_finished(w, outcome);
        tracing::info!(workflow = %w.id, status = ?outcome.status, "deployment finished");
        let ending = Ending::of(outcome.status, outcome.result.extended_result_code);
        let mut inputs = self.source.finished(w, ending);
        if report {
            // The source's `retry` goes out in the same document as the ending: no reader sees
            // a completed deployment beside the retry of the tag before it.
            for input in &mut inputs {
                if let SourceInput::Report(p) = input {
                    if let Some(retry) = p.retry.take() {
                        patch.retry = Some(retry);
                    }
                }
            }
            inputs.retain(|i| !matches!(i, SourceInput::Report(p) if **p == Patch::default()));
            let patch = self.core.stamp(patch, sandstep_transport::clock::now_ms());
            self.report(patch, false)?;
            if let Some(job) = JobStatus::of(&w.id, outcome.status) {
                self.record_locally(&Map::from_iter([job.as_field()]));
                self.outbox.push(Queued::Job(job))?;
            }
        }
        let effects = self.on_source(inputs)?;
        self.apply_sync(effects)
    }

    /// Shutdown: the running step may finish within the grace period, else the journal resumes
    /// it at the next start.
    async fn shut_down(&mut self) -> AgentExit {
        if let Some(mut t) = self.task.take() {
            let grace = Duration::from_secs(self.agent.settings.agent.shutdown_grace_secs);
            tracing::info!("shutting down: the step may finish within {grace:?}, else the journal resumes it at the next start");
            if tokio::time::timeout(grace, &mut t.handle).await.is_err() {
                t.handle.abort();
            }
        }
        AgentExit::Shutdown
    }

    /// Delivers what waits, for up to a few seconds (before a reboot or restart); only
    /// deliveries are handled meanwhile.
    async fn flush(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.outbox.is_empty() && Instant::now() < deadline {
            if self.send_next().await.is_err() {
                return;
            }
            if self.outbox.is_empty() {
                return;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            let Ok(inputs) = tokio::time::timeout(wait, self.source.recv()).await else {
                return;
            };
            for input in inputs {
                match input {
                    SourceInput::Delivered => {
                        let _ = self.outbox.delivered();
                    }
                    SourceInput::Resend => self.outbox.resend(),
                    SourceInput::Closed(_) => return,
                    _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use sandstep_model::Action;

    #[test]
    fn a_finished_task_s_queued_events_are_handed_on_before_its_end() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for action in [Action::Install, Action::Apply] {
            tx.send(Event::ActionStarted { unit: 0, action }).unwrap();
        }
        let ended: Finished = Ok(Err(WorkflowError::ManifestChanged {
            workflow: "wf".into(),
        }));
        let order: Vec<String> = in_order(Input::Finished(ended), &mut rx)
            .into_iter()
            .map(|i| match i {
                Input::Progress(Event::ActionStarted { action, .. }) => action.name().to_owned(),
                Input::Finished(_) => "end".to_owned(),
                _ => "other".to_owned(),
            })
            .collect();
        assert_eq!(order, ["install", "apply", "end"]);
        // Other inputs leave the queue alone: the loop takes events one at a time.
        tx.send(Event::ActionStarted {
            unit: 0,
            action: Action::Backup,
        })
        .unwrap();
        assert_eq!(in_order(Input::Due, &mut rx).len(), 1);
        assert!(rx.try_recv().is_ok());
    }
}
