//! The agent over MQTT: one loop that waits for the next input (a broker event, a deployment's
//! progress, its end, a confirmation timeout, shutdown) and hands it to its handler. What the
//! loop keeps between inputs is [`MqttLoop`]; every report goes through the durable outbox.

use super::report::{Confirmations, Outbox};
use super::reported::{Patch, ReportedWorkflow, Stage, AGENT_FIELDS};
use super::{deployment_of, desired_fields, Agent, AgentError, AgentExit, Running};
use crate::datadir::ensure_dir;
use crate::mqtt::{Mqtt, MqttEvent, Transport};
use crate::workflow::events::Event;
use crate::workflow::{Outcome, Request, WorkflowError};
use sandstep_model::deployment::{action, Workflow};
use sandstep_model::journal::Status;
use sandstep_model::shadow::Topics;
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
        let finished = async {
            match l.running.as_mut() {
                Some(r) => (&mut r.task).await,
                None => std::future::pending().await,
            }
        };
        let input = tokio::select! {
            _ = shutdown.cancelled() => Input::Shutdown,
            ev = l.conn.recv() => Input::Broker(ev),
            _ = sleep_until_some(l.confirm.deadline()), if l.connected => Input::Unconfirmed,
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
}

impl<'a, T: Transport> MqttLoop<'a, T> {
    /// Queues the installed state, and resumes what a crash, reboot or restart interrupted.
    fn start(
        agent: &'a Agent,
        conn: T,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Self, AgentError> {
        let settings = &agent.settings;
        let mut l = MqttLoop {
            agent,
            outbox: Outbox::open(ensure_dir(agent.data.root(), "outbox", 0o700)?)?,
            conn,
            confirm: Confirmations::new(Duration::from_millis(settings.agent.confirm_timeout_ms)),
            delta_topic: Topics::for_device(&agent.topics.delta, &agent.device),
            accepted_topic: Topics::for_device(&agent.topics.accepted, &agent.device),
            connected: false,
            running: None,
            queued: None,
            last_progress: Instant::now() - Duration::from_secs(3600),
            events,
        };
        l.outbox.push(agent.reported(agent.installed_state()))?;
        let (runs, refusals) = agent.resumable()?;
        for o in refusals {
            l.outbox.push(o)?;
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

    /// Hands `input` to its handler; `Some` when the agent must stop.
    async fn dispatch(&mut self, input: Input) -> Result<Option<AgentExit>, AgentError> {
        match input {
            Input::Shutdown => Ok(Some(self.shut_down().await)),
            Input::Broker(ev) => self.on_mqtt(ev).await,
            Input::Unconfirmed => self.on_unconfirmed(),
            Input::Progress(ev) => self.on_progress(&ev),
            Input::Finished(result) => self.on_finished(result).await,
        }
    }

    /// Publishes the next waiting report, when connected.
    async fn send_next(&mut self) {
        if !self.connected {
            return;
        }
        if let Some(o) = self.outbox.next_to_send() {
            let payload = o.payload.to_string().into_bytes();
            if let Err(e) = self.conn.publish(&o.topic, payload, false).await {
                tracing::warn!("publish failed: {e}");
                self.outbox.disconnected();
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
            Some(MqttEvent::Connected) => {
                self.connected = true;
                self.outbox.disconnected();
                self.conn.subscribe(&self.delta_topic).await?;
                if self.agent.settings.agent.confirm_timeout_ms != 0 {
                    self.conn.subscribe(&self.accepted_topic).await?;
                }
                tracing::info!(topic = %self.delta_topic, pending = self.outbox.len(), "connected");
            }
            Some(MqttEvent::Disconnected(e)) => {
                if self.connected {
                    tracing::warn!("disconnected: {e}");
                }
                self.connected = false;
                self.outbox.disconnected();
            }
            Some(MqttEvent::PubAck { refused }) => {
                if let Some(why) = refused {
                    // Sending it again would be refused again: say so and go on.
                    tracing::error!("the broker refused a report ({why}): check its ACL for this device's account");
                }
                if let Some(o) = self.outbox.acked()? {
                    self.confirm.sent(&o.payload);
                }
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

    /// A desired-state delta: a deployment to start (or queue), a cancel, or a refusal.
    fn on_delta(&mut self, payload: &[u8]) -> Result<(), AgentError> {
        let agent = self.agent;
        let fields = match desired_fields(payload) {
            Ok(f) => f,
            Err(why) => return Ok(self.outbox.push(agent.rejection(None, &why))?),
        };
        let dep = match deployment_of(&fields) {
            None => return self.on_unknown(&fields),
            Some(Ok(d)) => d,
            Some(Err(why)) => {
                let w = fields
                    .get("workflow")
                    .cloned()
                    .map(ReportedWorkflow::AsReceived);
                return Ok(self.outbox.push(agent.rejection(w, &why))?);
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
                return Ok(self.outbox.push(agent.rejection(w, &why))?);
            }
        };
        // Acknowledge: reporting the workflow empties the delta.
        let ack = Patch {
            workflow: Some(ReportedWorkflow::Known(w.clone())),
            status: Some(Stage::Downloading),
            last_error: Some(None),
            ..Patch::default()
        };
        self.outbox.push(agent.reported(ack))?;
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
        self.outbox.push(self.agent.reported(patch))?;
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
            None => patch.status = Some(Stage::StandBy),
        }
        self.queued = None;
        self.outbox.push(self.agent.reported(patch))?;
        Ok(())
    }

    /// The shadow service did not confirm a report in time: send the whole reported state.
    fn on_unconfirmed(&mut self) -> Result<Option<AgentExit>, AgentError> {
        if let Some(full) = self.confirm.resend() {
            tracing::info!("the shadow service did not confirm a report; sending the whole reported state again");
            self.outbox.push(self.agent.envelope(full))?;
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
            self.outbox.push(o)?;
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
                for o in agent.finished(&reported, &outcome) {
                    self.outbox.push(o)?;
                }
                match outcome.status {
                    Status::RebootRequired => {
                        return reboot(agent, &mut self.outbox, &mut self.conn)
                            .await
                            .map(Some)
                    }
                    Status::RestartRequired => {
                        flush(&mut self.outbox, &mut self.conn).await;
                        return Ok(Some(AgentExit::Restart));
                    }
                    _ => {}
                }
            }
            Ok(Err(e)) => self
                .outbox
                .push(agent.rejection(Some(ReportedWorkflow::Known(r.workflow)), &e.to_string()))?,
            Err(e) => tracing::error!("deployment task failed: {e}"),
        }
        if let Some((w, req)) = self.queued.take() {
            self.running = Some(agent.start(w, req, &self.events));
        }
        Ok(None)
    }
}

/// Sleeps until `t`, or forever when there is none.
async fn sleep_until_some(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Delivers what waits, for up to a few seconds (before a reboot or restart).
async fn flush(outbox: &mut Outbox, conn: &mut impl Transport) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !outbox.is_empty() && Instant::now() < deadline {
        if let Some(o) = outbox.next_to_send() {
            if conn
                .publish(&o.topic, o.payload.to_string().into_bytes(), false)
                .await
                .is_err()
            {
                return;
            }
        }
        match tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            conn.recv(),
        )
        .await
        {
            Ok(Some(MqttEvent::PubAck { .. })) => {
                let _ = outbox.acked();
            }
            Ok(Some(MqttEvent::Disconnected(_))) | Ok(None) | Err(_) => return,
            Ok(Some(_)) => {}
        }
    }
}

async fn reboot(
    agent: &Agent,
    outbox: &mut Outbox,
    conn: &mut impl Transport,
) -> Result<AgentExit, AgentError> {
    flush(outbox, conn).await;
    Ok(agent.reboot_now())
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
        async fn subscribe(&self, _: &str) -> Result<(), crate::mqtt::MqttError> {
            Ok(())
        }
        async fn publish(
            &self,
            topic: &str,
            payload: Vec<u8>,
            _: bool,
        ) -> Result<(), crate::mqtt::MqttError> {
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
