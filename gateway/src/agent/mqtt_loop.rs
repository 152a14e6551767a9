//! The agent over MQTT: one loop that waits for the next input (a broker event, a deployment's
//! progress, its end, a confirmation timeout, shutdown) and hands it to its handler. What the
//! loop keeps between inputs is [`MqttLoop`]; every report goes through the durable outbox.

use super::hub::{self, HubInput, HubState};
use super::report::{Confirmations, Outbox, Outgoing};
use super::reported::{adu_state, Patch, ReportedWorkflow, Stage, AGENT_FIELDS};
use super::{deployment_of, desired_fields, Agent, AgentError, AgentExit, Running};
use crate::datadir::ensure_dir;
use crate::iothub::session::HubSession;
use crate::workflow::events::Event;
use crate::workflow::{Outcome, Request, WorkflowError};
use sandstep_model::deployment::{action, Workflow};
use sandstep_model::journal::Status;
use sandstep_model::shadow::Topics;
use sandstep_transport::mqtt::{Mqtt, MqttEvent, Transport};
use serde_json::{Map, Value};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How a deployment's task ended.
type Finished = Result<Result<Outcome, WorkflowError>, tokio::task::JoinError>;

/// Runs the agent over MQTT until shutdown, a reboot, or a restart request.
pub(super) async fn run(
    agent: Agent,
    shutdown: CancellationToken,
) -> Result<AgentExit, AgentError> {
    let settings = &agent.settings;
    if let Some((config, identity)) = &agent.hub {
        let conn = HubSession::connect(config, identity, &settings.mqtt)?;
        return run_over(&agent, conn, shutdown).await;
    }
    let client_id = settings
        .mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| agent.device.clone());
    let conn = Mqtt::connect(&settings.mqtt, &client_id)?;
    run_over(&agent, conn, shutdown).await
}

/// The loop over any transport.
async fn run_over<T: Transport>(
    agent: &Agent,
    conn: T,
    shutdown: CancellationToken,
) -> Result<AgentExit, AgentError> {
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let mut l = MqttLoop::start(agent, conn, ev_tx)?;
    loop {
        l.send_next().await;
        let deadline = l.deadline();
        let finished = async {
            match l.running.as_mut() {
                Some(r) => (&mut r.task).await,
                None => std::future::pending().await,
            }
        };
        let input = tokio::select! {
            _ = shutdown.cancelled() => Input::Shutdown,
            ev = l.conn.recv() => Input::Broker(ev),
            _ = sleep_until_some(deadline), if l.connected => Input::Unconfirmed,
            Some(ev) = ev_rx.recv() => Input::Progress(ev),
            result = finished => Input::Finished(result),
        };
        if let Some(exit) = l.dispatch(input).await? {
            return Ok(exit);
        }
    }
}

/// One input of the loop.
enum Input {
    /// SIGTERM or the service manager.
    Shutdown,
    /// A broker event (`None`: the connection task ended).
    Broker(Option<MqttEvent>),
    /// The shadow service did not confirm a report in time.
    Unconfirmed,
    /// An event of the running deployment.
    Progress(Event),
    /// The running deployment's task ended.
    Finished(Finished),
}

/// What the loop keeps between inputs.
struct MqttLoop<'a, T> {
    agent: &'a Agent,
    outbox: Outbox,
    conn: T,
    confirm: Confirmations,
    delta_topic: String,
    accepted_topic: String,
    connected: bool,
    running: Option<Running>,
    /// A deployment that replaces the running one once it has stopped.
    queued: Option<(Workflow, Request)>,
    last_progress: Instant,
    events: mpsc::UnboundedSender<Event>,
    /// Over IoT Hub: the twin protocol's part (`None` over the MQTT shadow).
    hub: Option<HubState>,
}

impl<'a, T: Transport> MqttLoop<'a, T> {
    /// Queues the installed state, and resumes what a crash, reboot or restart interrupted.
    fn start(
        agent: &'a Agent,
        conn: T,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Self, AgentError> {
        let settings = &agent.settings;
        let hub = agent.hub.as_ref().map(|(config, id)| {
            HubState::new(
                hub::device_properties(id, &settings.deploy.device.properties),
                Duration::from_millis(config.response_timeout_ms),
            )
        });
        // Over IoT Hub the hub's answers confirm each report; the shadow's confirmations are off.
        let confirm_ms = match hub {
            Some(_) => 0,
            None => settings.agent.confirm_timeout_ms,
        };
        let mut l = MqttLoop {
            agent,
            outbox: Outbox::open(ensure_dir(agent.data.root(), "outbox", 0o700)?)?,
            conn,
            confirm: Confirmations::new(Duration::from_millis(confirm_ms)),
            delta_topic: Topics::for_device(&agent.topics.delta, &agent.device),
            accepted_topic: Topics::for_device(&agent.topics.accepted, &agent.device),
            connected: false,
            running: None,
            queued: None,
            last_progress: Instant::now() - Duration::from_secs(3600),
            events,
            hub,
        };
        for o in l.hub.as_ref().map(HubState::startup).unwrap_or_default() {
            l.push(o)?;
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
        l.push(agent.reported(installed))?;
        for o in refusals {
            l.push(o)?;
        }
        for (w, req) in runs {
            if l.running.is_none() {
                tracing::info!(workflow = %w.id, "resuming the unfinished deployment");
                l.running = Some(agent.start(w, req, &l.events));
            } else {
                tracing::warn!(workflow = %w.id, "another unfinished deployment waits; it resumes later");
            }
        }
        Ok(l)
    }

    /// Queues a report (over IoT Hub, in ADU's shape, or not at all when ADU's agent would
    /// send nothing).
    fn push(&mut self, o: Outgoing) -> Result<(), AgentError> {
        let o = match self.hub.as_mut() {
            Some(h) => match h.shape(o) {
                Some(o) => o,
                None => return Ok(()),
            },
            None => o,
        };
        Ok(self.outbox.push(o)?)
    }

    /// When the loop must look again without an input: a shadow confirmation or a twin answer
    /// overdue.
    fn deadline(&self) -> Option<Instant> {
        match &self.hub {
            Some(h) => h.deadline(),
            None => self.confirm.deadline(),
        }
    }

    /// Hands `input` to its handler; `Some` when the agent must stop.
    async fn dispatch(&mut self, input: Input) -> Result<Option<AgentExit>, AgentError> {
        match input {
            Input::Shutdown => Ok(Some(self.shut_down().await)),
            Input::Broker(ev) => self.on_mqtt(ev).await,
            Input::Unconfirmed => self.on_unconfirmed().await,
            Input::Progress(ev) => self.on_progress(&ev),
            Input::Finished(result) => self.on_finished(result).await,
        }
    }

    /// Publishes the next waiting report, when connected.
    async fn send_next(&mut self) {
        if !self.connected || self.outbox.in_flight || self.outbox.is_empty() {
            return;
        }
        let topic = match self.hub.as_mut() {
            Some(h) => match h.send_report() {
                Some(t) => Some(t),
                None => return,
            },
            None => None,
        };
        if let Some(o) = self.outbox.next_to_send() {
            let payload = o.payload.to_string().into_bytes();
            let topic = topic.unwrap_or(o.topic);
            if let Err(e) = self.conn.publish(&topic, payload, false).await {
                tracing::warn!("publish failed: {e}");
                self.outbox.disconnected();
                if let Some(h) = self.hub.as_mut() {
                    h.disconnected();
                }
            }
        }
    }

    /// Shutdown: the running step may finish within the grace period, else the journal resumes
    /// it at the next start.
    async fn shut_down(&mut self) -> AgentExit {
        if let Some(r) = self.running.take() {
            let grace = Duration::from_secs(self.agent.settings.agent.shutdown_grace_secs);
            tracing::info!(workflow = %r.workflow.id, "shutting down: the step may finish within {grace:?}, else the journal resumes it at the next start");
            let mut task = r.task;
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                task.abort();
            }
        }
        AgentExit::Shutdown
    }

    async fn on_mqtt(&mut self, ev: Option<MqttEvent>) -> Result<Option<AgentExit>, AgentError> {
        match ev {
            None => return Err(AgentError::Config("the MQTT connection task ended".into())),
            Some(MqttEvent::Connected) => self.on_connected().await?,
            Some(MqttEvent::Disconnected(e)) => {
                if self.connected {
                    tracing::warn!("disconnected: {e}");
                }
                self.connected = false;
                self.outbox.disconnected();
                if let Some(h) = self.hub.as_mut() {
                    h.disconnected();
                }
            }
            // Over IoT Hub a report is delivered when the hub answers it, not at the PUBACK.
            Some(MqttEvent::PubAck { .. }) if self.hub.is_some() => {}
            Some(MqttEvent::PubAck { refused }) => {
                if let Some(why) = refused {
                    // Sending it again would be refused again: say so and go on.
                    tracing::error!("the broker refused a report ({why}): check its ACL for this device's account");
                }
                if let Some(o) = self.outbox.acked()? {
                    self.confirm.sent(&o.payload);
                }
            }
            Some(MqttEvent::Message { topic, payload, .. }) if self.hub.is_some() => {
                self.on_twin(&topic, &payload).await?
            }
            Some(MqttEvent::Message { topic, payload, .. }) if topic == self.accepted_topic => {
                self.confirm.accepted(&payload)
            }
            Some(MqttEvent::Message { topic, payload, .. }) if topic == self.delta_topic => {
                self.on_delta(&payload)?
            }
            Some(MqttEvent::Message { .. } | MqttEvent::SubAck) => {}
        }
        Ok(None)
    }

    /// (Re)connected: subscribe; over IoT Hub, ask for the whole twin (desired changes made
    /// while the device was away come only in it).
    async fn on_connected(&mut self) -> Result<(), AgentError> {
        self.connected = true;
        self.outbox.disconnected();
        match self.hub.as_mut() {
            Some(h) => {
                h.disconnected();
                for filter in crate::iothub::twin::SUBSCRIPTIONS {
                    self.conn.subscribe(filter).await?;
                }
                let get = h.send_get();
                self.conn.publish(&get, Vec::new(), false).await?;
                tracing::info!(pending = self.outbox.len(), "connected to IoT Hub");
            }
            None => {
                self.conn.subscribe(&self.delta_topic).await?;
                if self.agent.settings.agent.confirm_timeout_ms != 0 {
                    self.conn.subscribe(&self.accepted_topic).await?;
                }
                tracing::info!(topic = %self.delta_topic, pending = self.outbox.len(), "connected");
            }
        }
        Ok(())
    }

    /// A message on IoT Hub's twin topics.
    async fn on_twin(&mut self, topic: &str, payload: &[u8]) -> Result<(), AgentError> {
        let Some(h) = self.hub.as_mut() else {
            return Ok(());
        };
        match h.message(topic, payload) {
            HubInput::Delivered => {
                self.outbox.acked()?;
            }
            HubInput::Resend => self.outbox.disconnected(),
            HubInput::Service { value, version } => self.on_service(value, version)?,
            HubInput::Refused(why) => self.push(self.agent.rejection(None, &why))?,
            HubInput::Nothing => {}
        }
        Ok(())
    }

    /// The desired `deviceUpdate.service`: handled like a shadow delta, then acknowledged
    /// (adu_core_interface.c `OrchestratorUpdateCallback`). A workflow this agent already
    /// finished, with the same retry timestamp, is not run again: the whole twin brings it back
    /// after every reconnect (agent_workflow.c: "Ignore duplicate deployment that can be caused
    /// by token expiry connection refresh").
    fn on_service(&mut self, value: Value, version: u64) -> Result<(), AgentError> {
        match value.as_object() {
            Some(fields) if fields.get("workflow").is_some_and(|w| !w.is_null()) => {
                // The service nulls what a message does not use (a cancel's manifest, a
                // delivered signature): null is absent, as ADU's parser reads it.
                let mut fields = fields.clone();
                fields.retain(|_, v| !v.is_null());
                if !self.finished_already(&fields) {
                    self.on_desired(fields)?;
                }
            }
            Some(_) => {}
            None => tracing::error!("desired deviceUpdate.service is not an object: {value}"),
        }
        if let Some(ack) = self.hub.as_mut().and_then(|h| h.ack(&value, version)) {
            self.push(ack)?;
        }
        Ok(())
    }

    /// Whether `fields` carry the deployment this agent last finished, not running now.
    fn finished_already(&self, fields: &Map<String, Value>) -> bool {
        let Some(Ok(w)) = fields
            .get("workflow")
            .map(|w| serde_json::from_value::<Workflow>(w.clone()))
        else {
            return false;
        };
        let running = self.running.as_ref().is_some_and(|r| r.workflow.id == w.id);
        let last = self.agent.persisted().workflow;
        !running
            && w.action == action::PROCESS_DEPLOYMENT
            && last.is_some_and(|l| l.id == w.id && l.retry_timestamp == w.retry_timestamp)
    }

    /// A desired-state delta.
    fn on_delta(&mut self, payload: &[u8]) -> Result<(), AgentError> {
        match desired_fields(payload) {
            Ok(fields) => self.on_desired(fields),
            Err(why) => self.push(self.agent.rejection(None, &why)),
        }
    }

    /// Desired fields: a deployment to start (or queue), a cancel, or a refusal.
    fn on_desired(&mut self, fields: Map<String, Value>) -> Result<(), AgentError> {
        let agent = self.agent;
        let dep = match deployment_of(&fields) {
            None => return self.on_unknown(&fields),
            Some(Ok(d)) => d,
            Some(Err(why)) => {
                let w = fields
                    .get("workflow")
                    .cloned()
                    .map(ReportedWorkflow::AsReceived);
                return self.push(agent.rejection(w, &why));
            }
        };
        let w = dep.workflow.clone();
        if w.action == action::CANCEL {
            return self.on_cancel(w);
        }
        let same = self.running.as_ref().is_some_and(|r| r.workflow == w)
            || self.queued.as_ref().is_some_and(|(q, _)| *q == w);
        if same {
            return Ok(()); // the same deployment again
        }
        let req = match agent.request(&dep) {
            Ok(r) => r,
            Err(why) => {
                let w = fields
                    .get("workflow")
                    .cloned()
                    .map(ReportedWorkflow::AsReceived);
                return self.push(agent.rejection(w, &why));
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
        self.push(agent.reported(ack))?;
        match &self.running {
            Some(r) => {
                tracing::info!(old = %r.workflow.id, new = %w.id, "a new deployment replaces the running one");
                r.cancel.cancel();
                self.queued = Some((w, req));
            }
            None => self.running = Some(agent.start(w, req, &self.events)),
        }
        Ok(())
    }

    /// Desired fields that carry no deployment (another protocol's message, such as the
    /// software-update pattern's `softwareURL`): refused as `lastError`, naming what sandstep
    /// expects, and acknowledged by reporting them back (not applied), so the delta closes
    /// instead of staying open forever. Fields the agent reports itself are never echoed.
    fn on_unknown(&mut self, fields: &Map<String, Value>) -> Result<(), AgentError> {
        let foreign: Map<String, Value> = fields
            .iter()
            .filter(|(k, _)| !AGENT_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if fields.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = fields.keys().map(String::as_str).collect();
        let why = format!(
            "desired state without a `workflow` is not a deployment; sandstep expects ADU's \
             deployment message (`workflow`, `updateManifest`, `updateManifestSignature`, \
             `fileUrls`); not applied: {}",
            names.join(", ")
        );
        tracing::warn!("desired state refused: {why}");
        let mut patch = Patch::refusal(None, &why, crate::workflow::now_ms());
        patch.echo = foreign;
        self.push(self.agent.reported(patch))?;
        Ok(())
    }

    fn on_cancel(&mut self, w: Workflow) -> Result<(), AgentError> {
        let mut patch = Patch {
            workflow: Some(ReportedWorkflow::Known(w.clone())),
            ..Patch::default()
        };
        match self.running.as_mut() {
            Some(r) => {
                tracing::info!(workflow = %r.workflow.id, "cancel requested");
                r.cancel.cancel();
                r.cancel_request = Some(w);
            }
            None => {
                // ADU: "Cancel received with no operation in progress - returning to Idle".
                patch.status = Some(Stage::StandBy);
                patch.state = Some(adu_state::IDLE);
            }
        }
        self.queued = None;
        self.push(self.agent.reported(patch))?;
        Ok(())
    }

    /// The shadow service did not confirm a report in time: send the whole reported state.
    /// Over IoT Hub: send again what the hub did not answer.
    async fn on_unconfirmed(&mut self) -> Result<Option<AgentExit>, AgentError> {
        if let Some(h) = self.hub.as_mut() {
            let (report, get) = h.overdue();
            if report {
                self.outbox.disconnected();
            }
            if get {
                let topic = h.send_get();
                self.conn.publish(&topic, Vec::new(), false).await?;
            }
            return Ok(None);
        }
        if let Some(full) = self.confirm.resend() {
            tracing::info!("the shadow service did not confirm a report; sending the whole reported state again");
            self.push(self.agent.envelope(full))?;
        }
        Ok(None)
    }

    /// A deployment's progress: reported at most every `progress-interval-ms`, except the
    /// plan and each action's start.
    fn on_progress(&mut self, ev: &Event) -> Result<Option<AgentExit>, AgentError> {
        if let Event::Planned { units, .. } = ev {
            if let Some(r) = self.running.as_mut() {
                r.units = units.clone();
            }
        }
        let units = self
            .running
            .as_ref()
            .map(|r| r.units.clone())
            .unwrap_or_default();
        let Some(mut patch) = Patch::for_event(ev, &units) else {
            return Ok(None);
        };
        let interval = Duration::from_millis(self.agent.settings.agent.progress_interval_ms);
        let urgent = matches!(ev, Event::Planned { .. } | Event::ActionStarted { .. });
        if urgent || self.last_progress.elapsed() >= interval {
            self.last_progress = Instant::now();
            if let Some(r) = &self.running {
                patch.workflow = Some(ReportedWorkflow::Known(r.workflow.clone()));
            }
            let mut o = self.agent.reported(patch);
            o.progress = true;
            self.push(o)?;
        }
        Ok(None)
    }

    /// The running deployment ended: report it, reboot or restart when it asks, then start the
    /// queued one.
    async fn on_finished(&mut self, result: Finished) -> Result<Option<AgentExit>, AgentError> {
        let agent = self.agent;
        let r = self
            .running
            .take()
            .expect("a task finished, so one was running");
        match result {
            Ok(Ok(outcome)) => {
                let reported = r
                    .cancel_request
                    .clone()
                    .unwrap_or_else(|| r.workflow.clone());
                let reports = agent.finished(&reported, &outcome);
                // Over IoT Hub a replaced deployment's end is not reported: ADU's agent goes on
                // to the replacement "instead of going to idle and reporting the results as a
                // cancel failure" (agent_workflow.c, `ADUC_Workflow_HandlePropertyUpdate`).
                let replaced = self.hub.is_some()
                    && self.queued.is_some()
                    && outcome.status == Status::Cancelled;
                if !replaced {
                    for o in reports {
                        self.push(o)?;
                    }
                }
                match outcome.status {
                    Status::RebootRequired => {
                        self.flush().await;
                        return Ok(Some(agent.reboot_now()));
                    }
                    Status::RestartRequired => {
                        self.flush().await;
                        return Ok(Some(AgentExit::Restart));
                    }
                    _ => {}
                }
            }
            Ok(Err(e)) => self
                .push(agent.rejection(Some(ReportedWorkflow::Known(r.workflow)), &e.to_string()))?,
            Err(e) => tracing::error!("deployment task failed: {e}"),
        }
        if let Some((w, req)) = self.queued.take() {
            self.running = Some(agent.start(w, req, &self.events));
        }
        Ok(None)
    }
}

impl<T: Transport> MqttLoop<'_, T> {
    /// Delivers what waits, for up to a few seconds (before a reboot or restart); only
    /// deliveries are handled meanwhile.
    async fn flush(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.outbox.is_empty() && Instant::now() < deadline {
            self.send_next().await;
            let wait = deadline.saturating_duration_since(Instant::now());
            let ev = match tokio::time::timeout(wait, self.conn.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) | Err(_) => return,
            };
            let delivered = match (ev, self.hub.as_mut()) {
                (MqttEvent::PubAck { .. }, None) => true,
                (MqttEvent::Message { topic, payload, .. }, Some(h)) => {
                    match h.message(&topic, &payload) {
                        HubInput::Delivered => true,
                        HubInput::Resend => {
                            self.outbox.disconnected();
                            false
                        }
                        _ => false,
                    }
                }
                (MqttEvent::Disconnected(_), _) => return,
                _ => false,
            };
            if delivered {
                let _ = self.outbox.acked();
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
    //! The loop driven in process through a fake transport (the real-broker tier is
    //! `tests/all/fleet.rs`): what it reports for each input.
    use super::*;
    use crate::agent::{AgentConfig, Settings};
    use serde_json::json;

    /// A transport whose broker is the test: events in, publishes out; every publish is
    /// acknowledged (or refused, as the broker's ACL would).
    struct Fake {
        incoming: mpsc::UnboundedReceiver<MqttEvent>,
        acks: mpsc::UnboundedSender<MqttEvent>,
        published: mpsc::UnboundedSender<(String, Value)>,
        refuse: bool,
    }

    impl Transport for Fake {
        async fn recv(&mut self) -> Option<MqttEvent> {
            self.incoming.recv().await
        }
        async fn subscribe(&self, _: &str) -> Result<(), sandstep_transport::mqtt::MqttError> {
            Ok(())
        }
        async fn publish(
            &self,
            topic: &str,
            payload: Vec<u8>,
            _: bool,
        ) -> Result<(), sandstep_transport::mqtt::MqttError> {
            let doc = serde_json::from_slice(&payload).expect("reports are JSON");
            let _ = self.published.send((topic.to_owned(), doc));
            let refused = self.refuse.then(|| "NotAuthorized".to_owned());
            let _ = self.acks.send(MqttEvent::PubAck { refused });
            Ok(())
        }
    }

    /// An agent `gw-t` over a fake broker: send it events, read what it reports.
    struct Harness {
        to_agent: mpsc::UnboundedSender<MqttEvent>,
        reports: mpsc::UnboundedReceiver<(String, Value)>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<Result<AgentExit, AgentError>>,
        _data: tempfile::TempDir,
    }

    impl Harness {
        fn start(refuse: bool) -> Harness {
            let data = tempfile::tempdir().unwrap();
            let settings = Settings {
                agent: AgentConfig {
                    device_id: Some("gw-t".into()),
                    confirm_timeout_ms: 0,
                    progress_interval_ms: 0,
                    ..AgentConfig::default()
                },
                ..Settings::default()
            };
            let agent = Agent::new(settings, data.path()).unwrap();
            let (to_agent, incoming) = mpsc::unbounded_channel();
            let (published, reports) = mpsc::unbounded_channel();
            let fake = Fake {
                incoming,
                acks: to_agent.clone(),
                published,
                refuse,
            };
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            let task = tokio::spawn(async move { run_over(&agent, fake, stop).await });
            to_agent.send(MqttEvent::Connected).unwrap();
            Harness {
                to_agent,
                reports,
                shutdown,
                task,
                _data: data,
            }
        }

        fn delta(&self, doc: Value) {
            let payload = doc.to_string().into_bytes();
            self.to_agent
                .send(MqttEvent::Message {
                    topic: "state/gw-t/update/delta".into(),
                    payload,
                    retained: false,
                })
                .unwrap();
        }

        /// The next report whose `state.reported` satisfies `want`.
        async fn report_where(&mut self, want: impl Fn(&Value) -> bool) -> Value {
            let wait = Duration::from_secs(30);
            loop {
                let (topic, doc) = tokio::time::timeout(wait, self.reports.recv())
                    .await
                    .expect("a report in time")
                    .expect("the agent runs");
                assert_eq!(topic, "state/gw-t/update");
                let reported = doc["state"]["reported"].clone();
                if want(&reported) {
                    return reported;
                }
            }
        }

        async fn stop(self) -> AgentExit {
            self.shutdown.cancel();
            self.task.await.unwrap().unwrap()
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_deployment_is_acknowledged_then_its_end_is_reported() {
        let mut h = Harness::start(false);
        // Its installed state first.
        h.report_where(|r| r.get("deviceProperties").is_some() || r.get("handlers").is_some())
            .await;
        h.delta(json!({"state": {"workflow": {"action": 3, "id": "wf-1"}, "updateManifest": "{}", "fileUrls": {}}}));
        let ack = h.report_where(|r| r["workflow"]["id"] == "wf-1").await;
        assert_eq!(ack["status"], "downloading", "{ack}");
        // Each stage with when it began (the firmware-update pattern's vocabulary).
        assert!(ack["downloadingAt"].as_u64().is_some(), "{ack}");
        assert_eq!(ack["lastError"], Value::Null, "{ack}");
        // An unsigned, empty manifest cannot run: the end is reported, with the reason.
        let end = h
            .report_where(|r| r["workflow"]["id"] == "wf-1" && r["status"] == "failed")
            .await;
        assert!(end.get("lastInstallResult").is_some(), "{end}");
        assert!(end["failedAt"].as_u64().is_some(), "{end}");
        assert_eq!(h.stop().await, AgentExit::Shutdown);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_malformed_delta_is_refused_naming_the_problem() {
        let mut h = Harness::start(false);
        h.to_agent
            .send(MqttEvent::Message {
                topic: "state/gw-t/update/delta".into(),
                payload: b"{not json".to_vec(),
                retained: false,
            })
            .unwrap();
        let r = h
            .report_where(|r| r.get("lastError").is_some_and(|e| !e.is_null()))
            .await;
        let message = r["lastError"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("desired document is not JSON"),
            "{message}"
        );
        // A deployment naming a local file is refused too, with its workflow.
        h.delta(json!({"state": {"workflow": {"action": 3, "id": "wf-2"}, "updateManifest": "{}", "fileUrls": {"f": "file:///etc/shadow"}}}));
        let r = h.report_where(|r| r["workflow"]["id"] == "wf-2").await;
        let message = r["lastError"]["message"].as_str().unwrap();
        assert!(
            message.contains("`f`: a deployment from the network may only name http(s) URLs"),
            "{r}"
        );
        h.stop().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn desired_state_in_another_shape_is_refused_and_acknowledged() {
        let mut h = Harness::start(false);
        // The software-update pattern's own message, and a field the agent reports itself.
        h.delta(
            json!({"state": {"softwareURL": "http://example.invalid/fw-2.bin", "status": "x"}}),
        );
        let r = h
            .report_where(|r| r.get("lastError").is_some_and(|e| !e.is_null()))
            .await;
        let message = r["lastError"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("desired state without a `workflow` is not a deployment")
                && message.ends_with("not applied: softwareURL, status"),
            "{message}"
        );
        assert_eq!(r["softwareURL"], "http://example.invalid/fw-2.bin", "{r}");
        assert!(
            r.get("status").is_none(),
            "its own fields are not echoed: {r}"
        );
        h.stop().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_cancel_with_nothing_running_reports_standby() {
        let mut h = Harness::start(false);
        h.delta(json!({"state": {"workflow": {"action": 255, "id": "wf-c"}}}));
        let r = h.report_where(|r| r["workflow"]["id"] == "wf-c").await;
        assert_eq!(r["status"], "standBy", "{r}");
        h.stop().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn reports_the_broker_refuses_do_not_stall_the_ones_after_them() {
        let mut h = Harness::start(true);
        h.report_where(|r| r.get("handlers").is_some()).await;
        h.delta(json!({"state": {"workflow": {"action": 255, "id": "wf-r"}}}));
        let r = h.report_where(|r| r["workflow"]["id"] == "wf-r").await;
        assert_eq!(r["status"], "standBy", "{r}");
        h.stop().await;
    }
}
