//! The agent driven in process through a fake broker (the real-broker tier is
//! `tests/all/fleet.rs`): what it reports for each input; and its persisted state.

use super::source::shadow::ShadowSource;
use super::*;
use sandstep_transport::mqtt::{MqttEvent, Transport};
use serde_json::json;
use std::time::Duration;
use tokio::sync::mpsc;

/// An agent-state file whose last result this version cannot read keeps the rest.
#[test]
fn an_unreadable_last_result_does_not_lose_the_installed_update() {
    let p: Persisted = serde_json::from_str(
        r#"{"installedUpdateId": "u-1", "lastInstallResult": {"resultCode": "odd"}}"#,
    )
    .unwrap();
    assert_eq!(p.installed_update_id.as_deref(), Some("u-1"));
    assert!(p.last_install_result.is_none());
}

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
        let task = tokio::spawn(async move {
            let source = ShadowSource::new(fake, "gw-t", Topics::replica(), Duration::ZERO);
            runner::run(&agent, source, stop).await
        });
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
            if topic == "state/gw-t/get" {
                // Its request for the whole document, on every connection.
                continue;
            }
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
async fn on_connecting_the_whole_document_is_asked_for_before_any_report_and_its_delta_runs() {
    let mut h = Harness::start(false);
    let (topic, _) = h.reports.recv().await.unwrap();
    assert_eq!(topic, "state/gw-t/get", "asked first");
    // The answer (the retained document) carries a deployment the agent never saw as a delta.
    let doc = json!({"state": {"desired": {}, "reported": {},
        "delta": {"workflow": {"action": 3, "id": "wf-missed"}, "updateManifest": "{}", "fileUrls": {}}},
        "version": 4});
    h.to_agent
        .send(MqttEvent::Message {
            topic: "state/gw-t/shadow".into(),
            payload: doc.to_string().into_bytes(),
            retained: true,
        })
        .unwrap();
    let ack = h.report_where(|r| r["workflow"]["id"] == "wf-missed").await;
    assert_eq!(ack["status"], "downloading", "{ack}");
    assert_eq!(h.stop().await, AgentExit::Shutdown);
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
    h.delta(json!({"state": {"softwareURL": "http://example.invalid/fw-2.bin", "status": "x"}}));
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
