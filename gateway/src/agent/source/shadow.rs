//! The MQTT device shadow (the software-update pattern, or a cloud shadow's topic layout):
//! desired state arrives as deltas on `.../update/delta`; reports go out as `{"state":
//! {"reported": ...}, "clientToken"}` on `.../update`, each a delivery at the broker's PUBACK; the
//! shadow service confirms what it stored on `.../accepted`, and when it misses reports the whole
//! reported document is sent again ([`Confirmations`]). On every (re)connection the agent asks
//! for its whole document (`.../get`, answered on `.../shadow`, which the replica also keeps
//! retained) and takes the delta it carries: a delta published while the agent was away (a
//! broker restarted without persistence drops it) is not missed. A document no newer than the
//! last delta or document read (by its `version`) is ignored.

use super::{Sent, Source, SourceInput};
use crate::agent::core::Profile;
use crate::agent::outbox::Queued;
use crate::agent::refused::Refused;
use sandstep_model::deployment::MAX_DEPLOYMENT_BYTES;
use sandstep_model::shadow::{ReportOrder, Topics};
use sandstep_transport::mqtt::{MqttEvent, Transport};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The source over a connection (`T`: the broker, or a test's fake).
pub struct ShadowSource<T> {
    conn: T,
    device: String,
    topics: Topics,
    delta: String,
    accepted: String,
    /// Where the whole document is answered (and kept retained).
    shadow: String,
    /// Where it is asked for.
    get: Option<String>,
    /// The newest `version` of a delta or whole document read.
    last_version: Option<u64>,
    /// The request for the whole document awaits its PUBACK (which comes before any report's:
    /// the broker acknowledges in order, and no report is sent meanwhile).
    asking: bool,
    connected: bool,
    in_flight: bool,
    /// This run of the agent and its reports so far: each report's place, in its `clientToken`
    /// ([`ReportOrder`]), lets replicas that store reports out of order keep the newest fields.
    run: u32,
    seq: u64,
    /// The token of the report in flight, confirmed once delivered.
    sent_token: Option<String>,
    confirm: Confirmations,
    confirm_on: bool,
}

impl<T: Transport> ShadowSource<T> {
    /// `confirm_timeout` zero: no shadow service confirms reports.
    pub fn new(conn: T, device: &str, topics: Topics, confirm_timeout: Duration) -> Self {
        ShadowSource {
            conn,
            device: device.to_owned(),
            delta: Topics::for_device(&topics.delta, device),
            accepted: Topics::for_device(&topics.accepted, device),
            shadow: Topics::for_device(&topics.shadow, device),
            get: topics.get.as_deref().map(|t| Topics::for_device(t, device)),
            last_version: None,
            asking: false,
            topics,
            connected: false,
            in_flight: false,
            run: fastrand::u32(..),
            seq: 0,
            sent_token: None,
            confirm: Confirmations::new(confirm_timeout),
            confirm_on: !confirm_timeout.is_zero(),
        }
    }

    async fn on_event(&mut self, ev: Option<MqttEvent>) -> Vec<SourceInput> {
        match ev {
            None => vec![SourceInput::Closed("the MQTT connection task ended".into())],
            Some(MqttEvent::Connected) => {
                self.connected = true;
                self.in_flight = false;
                self.subscribe_and_ask().await;
                tracing::info!(topic = %self.delta, "connected");
                vec![SourceInput::Resend]
            }
            Some(MqttEvent::Disconnected(e)) => {
                if self.connected {
                    tracing::warn!("disconnected: {e}");
                }
                self.connected = false;
                self.in_flight = false;
                self.asking = false;
                vec![SourceInput::Resend]
            }
            Some(MqttEvent::PubAck { refused }) if self.asking => {
                // The request's acknowledgement, not a report's.
                self.asking = false;
                self.in_flight = false;
                if let Some(why) = refused {
                    tracing::error!("the broker refused the request for the whole document ({why}): check its ACL for this device's account (`get`)");
                }
                Vec::new()
            }
            Some(MqttEvent::PubAck { refused }) => {
                if let Some(why) = refused {
                    // Sending it again would be refused again: say so and go on.
                    tracing::error!("the broker refused a report ({why}): check its ACL for this device's account");
                }
                self.in_flight = false;
                if let Some(t) = self.sent_token.take() {
                    self.confirm.sent(t);
                }
                vec![SourceInput::Delivered]
            }
            Some(MqttEvent::Message { topic, payload, .. }) if topic == self.accepted => {
                self.confirm.accepted(&payload);
                Vec::new()
            }
            Some(MqttEvent::Message { topic, payload, .. }) if topic == self.delta => {
                self.last_version = self.last_version.max(version_of(&payload));
                vec![match desired_fields(&payload) {
                    Ok(fields) => SourceInput::Desired(fields),
                    Err(why) => SourceInput::Refused {
                        workflow: None,
                        why: why.to_string(),
                    },
                }]
            }
            Some(MqttEvent::Message { topic, payload, .. }) if topic == self.shadow => {
                match pending_in_document(&payload, self.last_version) {
                    Pending::Nothing => Vec::new(),
                    Pending::Delta { fields, version } => {
                        self.last_version = self.last_version.max(version);
                        tracing::info!("the whole document carries a delta; taking it");
                        vec![SourceInput::Desired(fields)]
                    }
                }
            }
            // A refusal is followed by its Disconnected.
            Some(MqttEvent::Message { .. } | MqttEvent::SubAck | MqttEvent::Refused) => Vec::new(),
        }
    }

    /// Subscribes (the whole document's topic first, so nothing published meanwhile falls
    /// between the subscriptions) and asks for the whole document.
    async fn subscribe_and_ask(&mut self) {
        let mut filters = vec![self.shadow.clone(), self.delta.clone()];
        if self.confirm_on {
            filters.push(self.accepted.clone());
        }
        for f in filters {
            if let Err(e) = self.conn.subscribe(&f).await {
                tracing::warn!("subscribe {f}: {e}");
            }
        }
        if let Some(get) = &self.get {
            match self.conn.publish(get, b"{}".to_vec(), false).await {
                Ok(()) => {
                    self.asking = true;
                    self.in_flight = true;
                }
                Err(e) => tracing::warn!("asking for the whole document on {get}: {e}"),
            }
        }
    }

    /// The update-topic message for `item`, and its `clientToken` when it has one.
    fn wire(&mut self, item: &Queued) -> (String, Value, Option<String>) {
        let update = Topics::for_device(&self.topics.update, &self.device);
        let mut enveloped = |reported: &Map<String, Value>| {
            let order = ReportOrder {
                run: self.run,
                seq: self.seq,
            };
            self.seq += 1;
            let token = order.token(&self.device);
            let doc = json!({"state": {"reported": reported}, "clientToken": token});
            (doc, Some(token))
        };
        let (payload, token) = match item {
            Queued::Report { fields, .. } | Queued::Whole { fields } => enveloped(fields),
            Queued::Job(job) => (json!(job), None),
            Queued::Wire { topic, payload } => return (topic.clone(), payload.clone(), None),
        };
        (update, payload, token)
    }
}

impl<T: Transport> Source for ShadowSource<T> {
    async fn recv(&mut self) -> Vec<SourceInput> {
        let ev = self.conn.recv().await;
        self.on_event(ev).await
    }

    fn can_send(&self) -> bool {
        self.connected && !self.in_flight
    }

    async fn send(&mut self, item: &Queued) -> Sent {
        let (topic, payload, token) = self.wire(item);
        match self
            .conn
            .publish(&topic, payload.to_string().into_bytes(), false)
            .await
        {
            Ok(()) => {
                self.in_flight = true;
                self.sent_token = token;
                Sent::InFlight
            }
            Err(e) => {
                tracing::warn!("publish failed: {e}");
                Sent::Failed
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.connected.then(|| self.confirm.deadline()).flatten()
    }

    async fn due(&mut self) -> Vec<SourceInput> {
        if self.confirm.resend() {
            tracing::info!("the shadow service did not confirm a report; sending the whole reported state again");
            return vec![SourceInput::ResendWhole];
        }
        Vec::new()
    }

    fn profile(&self) -> Profile {
        Profile {
            report_replaced_end: true,
            ignore_finished_duplicate: false,
        }
    }
}

/// What a whole document (a `get` answer, or the retained one) leaves to do.
#[derive(Debug, PartialEq)]
pub(crate) enum Pending {
    /// No delta, one already read (not newer than `last_version`), or no document at all.
    Nothing,
    /// Desired fields the reported state does not have yet.
    Delta {
        fields: Map<String, Value>,
        version: Option<u64>,
    },
}

/// The delta a whole document carries, unless it is no newer than the last one read. A
/// document that cannot be read is nothing to act on (the delta topic's own refusals report
/// bad desired state; this is only a catch-up).
pub(crate) fn pending_in_document(payload: &[u8], last_version: Option<u64>) -> Pending {
    if payload.len() > MAX_DEPLOYMENT_BYTES {
        return Pending::Nothing;
    }
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        return Pending::Nothing;
    };
    let version = v.get("version").and_then(Value::as_u64);
    if let (Some(last), Some(this)) = (last_version, version) {
        if this <= last {
            return Pending::Nothing;
        }
    }
    match v.pointer("/state/delta").and_then(Value::as_object) {
        Some(delta) if !delta.is_empty() => Pending::Delta {
            fields: delta.clone(),
            version,
        },
        _ => Pending::Nothing,
    }
}

/// The `version` of a delta, when it carries one.
fn version_of(payload: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        version: Option<u64>,
    }
    serde_json::from_slice::<Versioned>(payload)
        .ok()
        .and_then(|v| v.version)
}

/// The fields of a delta (or of a desired document, or a whole shadow document).
pub(crate) fn desired_fields(payload: &[u8]) -> Result<Map<String, Value>, Refused> {
    if payload.len() > MAX_DEPLOYMENT_BYTES {
        return Err(Refused::TooLarge {
            bytes: payload.len(),
            limit: MAX_DEPLOYMENT_BYTES,
        });
    }
    let v: Value = serde_json::from_slice(payload).map_err(|cause| Refused::NotJson { cause })?;
    let state = v
        .get("state")
        .and_then(Value::as_object)
        .ok_or(Refused::NoState)?;
    let fields = state
        .get("desired")
        .or_else(|| state.get("delta"))
        .and_then(Value::as_object)
        .unwrap_or(state);
    Ok(fields.clone())
}

/// Whether the shadow service has the reports the broker took.
///
/// The broker acknowledges a publish even when nobody subscribes, so a report sent while the
/// shadow service was away (it started after the agent, or restarted) is gone. The service
/// confirms each report on `.../accepted`, echoing its `clientToken`; confirmations arrive in the
/// order reports were sent. So: a confirmation that skips an earlier token, or a token left
/// unconfirmed past the timeout, means something was lost, and the agent sends its whole
/// reported document again (merging is idempotent on the service side). Retries back off
/// (doubling, to `MAX_BACKOFF`) while no service answers.
pub struct Confirmations {
    waiting: VecDeque<String>,
    since: Option<Instant>,
    timeout: Duration,
    backoff: Duration,
    lost: bool,
}

/// The longest wait between two resends while no shadow service answers.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Tokens remembered; older ones count as lost.
const MAX_WAITING: usize = 256;

impl Confirmations {
    /// `timeout` zero turns confirmation off (a broker with no shadow service behind it).
    pub fn new(timeout: Duration) -> Confirmations {
        Confirmations {
            waiting: VecDeque::new(),
            since: None,
            timeout,
            backoff: timeout,
            lost: false,
        }
    }

    /// The report with `token` reached the broker.
    pub fn sent(&mut self, token: String) {
        if self.timeout.is_zero() {
            return;
        }
        if self.waiting.len() == MAX_WAITING {
            self.waiting.pop_front();
            self.lost = true;
        }
        self.waiting.push_back(token);
        self.since.get_or_insert_with(Instant::now);
    }

    /// A message on the device's `.../accepted` topic.
    pub fn accepted(&mut self, payload: &[u8]) {
        let Some(token) = serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|v| v.get("clientToken")?.as_str().map(str::to_owned))
        else {
            return;
        };
        let Some(i) = self.waiting.iter().position(|t| *t == token) else {
            return;
        };
        if i > 0 {
            self.lost = true;
        }
        self.waiting.drain(..=i);
        self.backoff = self.timeout;
        self.since = (!self.waiting.is_empty()).then(Instant::now);
    }

    /// When to resend if nothing else happens.
    pub fn deadline(&self) -> Option<Instant> {
        if self.lost {
            return Some(Instant::now());
        }
        self.since.map(|s| s + self.backoff)
    }

    /// Whether the whole reported document is to be sent again now: a report was lost, or the
    /// deadline passed.
    pub fn resend(&mut self) -> bool {
        let due = self.lost || self.deadline().is_some_and(|d| d <= Instant::now());
        if !due {
            return false;
        }
        if !self.lost {
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
        self.lost = false;
        self.waiting.clear();
        self.since = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_document_gives_its_delta_unless_no_newer_than_the_last_read() {
        let doc = br#"{"state":{"desired":{"workflow":{"id":"w"}},"reported":{},"delta":{"workflow":{"id":"w"}}},"version":7}"#;
        let Pending::Delta { fields, version } = pending_in_document(doc, None) else {
            panic!("a delta")
        };
        assert_eq!(fields["workflow"]["id"], "w");
        assert_eq!(version, Some(7));
        assert!(matches!(
            pending_in_document(doc, Some(6)),
            Pending::Delta { .. }
        ));
        assert_eq!(pending_in_document(doc, Some(7)), Pending::Nothing);
        assert_eq!(pending_in_document(doc, Some(9)), Pending::Nothing);
        for nothing in [
            &br#"{"state":{"desired":{"a":1},"reported":{"a":1},"delta":{}},"version":8}"#[..],
            br#"{"state":{"desired":{"a":1}},"version":8}"#,
            b"",
            b"not json",
        ] {
            assert_eq!(pending_in_document(nothing, None), Pending::Nothing);
        }
    }

    #[test]
    fn confirmed_reports_are_not_sent_again() {
        let mut c = Confirmations::new(Duration::from_secs(60));
        c.sent("a".into());
        c.sent("b".into());
        assert!(c.deadline().is_some());
        c.accepted(br#"{"clientToken":"a"}"#);
        c.accepted(br#"{"clientToken":"b"}"#);
        assert_eq!(c.deadline(), None);
        assert!(!c.resend());
    }

    #[test]
    fn a_confirmation_that_skips_a_report_resends_the_whole_document_once() {
        let mut c = Confirmations::new(Duration::from_secs(60));
        c.sent("a".into());
        c.sent("b".into());
        c.accepted(br#"{"clientToken":"b"}"#);
        assert!(c.resend(), "report a was lost");
        assert!(!c.resend(), "once");
    }

    #[test]
    fn an_unconfirmed_report_is_resent_after_the_timeout_with_backoff() {
        let mut c = Confirmations::new(Duration::from_millis(1));
        c.sent("a".into());
        std::thread::sleep(Duration::from_millis(5));
        assert!(c.resend());
        assert_eq!(c.backoff, Duration::from_millis(2));
        c.sent("a2".into());
        c.accepted(br#"{"clientToken":"a2"}"#);
        assert_eq!(c.backoff, Duration::from_millis(1), "reset");
    }

    #[test]
    fn a_zero_timeout_never_resends() {
        let mut c = Confirmations::new(Duration::ZERO);
        c.sent("a".into());
        assert_eq!(c.deadline(), None);
        assert!(!c.resend());
    }
}
