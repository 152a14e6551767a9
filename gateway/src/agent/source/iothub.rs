//! Azure IoT Hub's device twin as ADU's agent speaks it (`source = "iothub"`): the source over a
//! [`HubSession`], and [`HubState`], the protocol's part kept between inputs (request ids, the
//! twin request awaiting its answer, the `deviceUpdate` documents already sent). The protocol
//! itself (connection strings, tokens, twin topics, ADU's documents) is [`crate::iothub`].
//!
//! - Reports become `deviceUpdate.agent` patches in ADU's shapes ([`component::agent_report`]),
//!   sent on the reported-properties topic with a request id; the hub's answer (204) is what
//!   takes a report out of the outbox (not the broker's PUBACK), a throttled or failed one (429,
//!   5xx) is sent again after a pause, one the hub refuses (400, 413) is logged and dropped.
//! - At each connection the whole twin is asked for (`$iothub/twin/GET`); its desired
//!   `deviceUpdate.service`, and each desired patch's, is handled like a shadow delta, then
//!   acknowledged (`ac`, `av`, `ad`).

use super::{Sent, Source, SourceInput};
use crate::agent::core::Profile;
use crate::agent::outbox::Queued;
use crate::iothub::component::{self, DeviceProperties};
use crate::iothub::twin::{self, StatusClass, TwinMessage};
use sandstep_transport::mqtt::{MqttEvent, Transport};
use serde_json::{Map, Value};
use std::time::{Duration, Instant};

/// The outbox topic of reported patches; the request id is added when each is sent.
pub const REPORTED: &str = "$iothub/twin/PATCH/properties/reported/";

/// How long to wait before sending again what the hub throttled or failed.
const RETRY_PAUSE: Duration = Duration::from_secs(5);

/// What the device reports about itself: `manufacturer` and `model` from `[device]
/// properties`, else du-config.json's; the other `[device]` properties; du-config.json's
/// additional device properties. (Reported only: like ADU's agent, this does not make the
/// gateway check updates' compatibility; `[device] properties` do.)
pub fn device_properties(
    identity: &crate::iothub::config::Identity,
    configured: &std::collections::BTreeMap<String, String>,
) -> DeviceProperties {
    let mut properties: Vec<(String, String)> = Vec::new();
    for (k, from_adu) in [
        ("manufacturer", &identity.manufacturer),
        ("model", &identity.model),
    ] {
        if let Some(v) = configured.get(k).or(from_adu.as_ref()) {
            properties.push((k.to_owned(), v.clone()));
        }
    }
    let extra = configured
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "manufacturer" | "model"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain(identity.additional_properties.iter().cloned());
    for (k, v) in extra {
        if !properties.iter().any(|(seen, _)| *seen == k) {
            properties.push((k, v));
        }
    }
    DeviceProperties {
        properties,
        compat_property_names: identity
            .compat_property_names
            .clone()
            .unwrap_or_else(|| component::DEFAULT_COMPAT_PROPERTY_NAMES.to_owned()),
        agent_version: format!("sandstep;agent/{}", env!("CARGO_PKG_VERSION")),
    }
}

/// What a twin message asks of the loop.
#[derive(Debug, PartialEq)]
pub enum HubInput {
    /// The report in flight is stored (or refused for good, already logged): take it out.
    Delivered,
    /// The report in flight must be sent again, once the pause the hub asked for is over.
    Resend,
    /// A desired `service` to handle, with its version.
    Service { value: Value, version: u64 },
    /// A desired document that cannot be read: reported as refused.
    Refused(String),
    /// Nothing to do.
    Nothing,
}

/// The IoT Hub protocol's state between the loop's inputs.
pub struct HubState {
    next_rid: u64,
    /// The reported patch awaiting its answer: request id, when sent.
    in_flight: Option<(u64, Instant)>,
    /// The twin GET awaiting its answer.
    get: Option<(u64, Instant)>,
    /// No report is sent before this (after 429 or 5xx).
    hold_until: Option<Instant>,
    /// The last `agent` document delivered, so one that says nothing new is not sent.
    last_agent: Option<Map<String, Value>>,
    /// The `agent` document of the report in flight.
    sending_agent: Option<Map<String, Value>>,
    /// The desired version last acknowledged.
    acked_version: Option<u64>,
    timeout: Duration,
    properties: DeviceProperties,
}

impl HubState {
    pub fn new(properties: DeviceProperties, timeout: Duration) -> HubState {
        HubState {
            next_rid: 1,
            in_flight: None,
            get: None,
            hold_until: None,
            last_agent: None,
            sending_agent: None,
            acked_version: None,
            timeout,
            properties,
        }
    }

    fn rid(&mut self) -> u64 {
        let r = self.next_rid;
        self.next_rid += 1;
        r
    }

    /// The twin document an outbox item becomes, or `None` when ADU's agent would send nothing
    /// for it (nothing it reports, or the same `agent` document as the last one delivered).
    pub fn shape(&mut self, item: &Queued) -> Option<Value> {
        self.sending_agent = None;
        let reported = match item {
            Queued::Wire { payload, .. } => return Some(payload.clone()), // startup, acks
            Queued::Report { fields, .. } | Queued::Whole { fields } => fields,
            Queued::Job(_) => return None,
        };
        let agent = component::agent_report(reported)?;
        if self.last_agent.as_ref() == Some(&agent) {
            return None;
        }
        self.sending_agent = Some(agent.clone());
        Some(component::agent_patch(agent))
    }

    /// The report in flight was stored: its `agent` document is the last one delivered.
    fn delivered(&mut self) {
        if let Some(a) = self.sending_agent.take() {
            self.last_agent = Some(a);
        }
    }

    /// The topic to send the next report on (a new request id), when none is in flight and the
    /// hub has not asked to wait.
    pub fn send_report(&mut self) -> Option<String> {
        if self.in_flight.is_some() || self.hold_until.is_some_and(|t| t > Instant::now()) {
            return None;
        }
        self.hold_until = None;
        let rid = self.rid();
        self.in_flight = Some((rid, Instant::now()));
        Some(twin::reported_topic(rid))
    }

    /// Whether a report awaits the hub's answer, or the hub asked for a pause.
    pub fn awaiting_report(&self) -> bool {
        self.in_flight.is_some() || self.hold_until.is_some_and(|t| t > Instant::now())
    }

    /// A publish failed or the connection broke: nothing is awaited any more.
    pub fn disconnected(&mut self) {
        self.in_flight = None;
        self.get = None;
    }

    /// The topic asking for the whole twin.
    pub fn send_get(&mut self) -> String {
        let rid = self.rid();
        self.get = Some((rid, Instant::now()));
        twin::get_topic(rid)
    }

    /// When something awaited is overdue (or a pause ends).
    pub fn deadline(&self) -> Option<Instant> {
        [
            self.in_flight.map(|(_, t)| t + self.timeout),
            self.get.map(|(_, t)| t + self.timeout),
            self.hold_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// At the deadline: what to send again (`(report, get)`).
    pub fn overdue(&mut self) -> (bool, bool) {
        let now = Instant::now();
        let late = |a: Option<(u64, Instant)>| a.is_some_and(|(_, t)| t + self.timeout <= now);
        let (report, get) = (late(self.in_flight), late(self.get));
        if report {
            tracing::warn!("IoT Hub did not answer a reported patch in time; sending it again");
            self.in_flight = None;
        }
        if get {
            tracing::warn!("IoT Hub did not answer the twin request in time; asking again");
            self.get = None;
        }
        if self.hold_until.is_some_and(|t| t <= now) {
            self.hold_until = None;
        }
        (report, get)
    }

    /// A message on a twin topic.
    pub fn message(&mut self, topic: &str, payload: &[u8]) -> HubInput {
        match twin::parse_topic(topic) {
            Some(TwinMessage::Response {
                status,
                rid,
                version: _,
            }) => self.response(status, rid, payload),
            Some(TwinMessage::DesiredPatch { version }) => self.desired(payload, false, version),
            None => HubInput::Nothing,
        }
    }

    fn response(&mut self, status: u16, rid: u64, payload: &[u8]) -> HubInput {
        if self.get.is_some_and(|(r, _)| r == rid) {
            self.get = None;
            if twin::classify(status) == StatusClass::Ok {
                return self.desired(payload, true, None);
            }
            tracing::warn!(
                status,
                "IoT Hub refused the twin request; asking again later"
            );
            self.hold_until = Some(Instant::now() + RETRY_PAUSE);
            return HubInput::Nothing;
        }
        if self.in_flight.is_none_or(|(r, _)| r != rid) {
            return HubInput::Nothing; // an answer to a request sent before a reconnect
        }
        self.in_flight = None;
        match twin::classify(status) {
            StatusClass::Ok => HubInput::Delivered,
            StatusClass::Retry => {
                tracing::warn!(status, "IoT Hub asked to send a reported patch again later");
                self.hold_until = Some(Instant::now() + RETRY_PAUSE);
                HubInput::Resend
            }
            StatusClass::Refused => {
                // Sending it again would be refused again: say so loudly and go on.
                tracing::error!(
                    status,
                    body = %String::from_utf8_lossy(payload),
                    "IoT Hub refused a reported patch; it is dropped"
                );
                HubInput::Delivered
            }
        }
    }

    /// A whole twin (`whole`) or a desired patch: its `deviceUpdate.service`, if any.
    fn desired(&mut self, payload: &[u8], whole: bool, version: Option<u64>) -> HubInput {
        let limit = sandstep_model::deployment::MAX_DEPLOYMENT_BYTES;
        if payload.len() > limit {
            return HubInput::Refused(format!(
                "desired twin document of {} bytes is over the {limit}-byte limit; not read",
                payload.len()
            ));
        }
        let doc = match serde_json::from_slice::<Value>(payload) {
            Ok(d) => d,
            Err(e) => return HubInput::Refused(format!("desired twin document is not JSON: {e}")),
        };
        let Some((value, v)) = component::desired_service(&doc, whole) else {
            return HubInput::Nothing;
        };
        HubInput::Service {
            value,
            version: v.or(version).unwrap_or(0),
        }
    }

    /// The acknowledgement of `service` at `version`, unless that version was acknowledged
    /// already (the whole twin, asked for again after a reconnect, brings it back).
    pub fn ack(&mut self, service: &Value, version: u64) -> Option<Queued> {
        if self.acked_version == Some(version) {
            return None;
        }
        self.acked_version = Some(version);
        Some(Queued::Wire {
            topic: REPORTED.into(),
            payload: component::service_ack(service, version),
        })
    }

    /// The startup reports: `deviceUpdate.agent` device properties and `deviceInformation`.
    pub fn startup(&self) -> Vec<Queued> {
        let manufacturer = self.property("manufacturer");
        let model = self.property("model");
        [
            component::agent_patch(component::startup(&self.properties)),
            crate::iothub::device_info::device_information(manufacturer, model),
        ]
        .into_iter()
        .map(|payload| Queued::Wire {
            topic: REPORTED.into(),
            payload,
        })
        .collect()
    }

    fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The source: the hub session, and the protocol's state.
pub struct HubSource<T> {
    conn: T,
    hub: HubState,
    connected: bool,
}

impl<T: Transport> HubSource<T> {
    pub fn new(conn: T, hub: HubState) -> Self {
        HubSource {
            conn,
            hub,
            connected: false,
        }
    }

    /// (Re)connected: subscribe, and ask for the whole twin (desired changes made while the
    /// device was away come only in it).
    async fn connected(&mut self) -> Vec<SourceInput> {
        self.connected = true;
        self.hub.disconnected();
        for filter in twin::SUBSCRIPTIONS {
            if let Err(e) = self.conn.subscribe(filter).await {
                tracing::warn!("subscribe {filter}: {e}");
            }
        }
        self.get().await;
        tracing::info!("connected to IoT Hub");
        vec![SourceInput::Resend]
    }

    async fn get(&mut self) {
        let topic = self.hub.send_get();
        if let Err(e) = self.conn.publish(&topic, Vec::new(), false).await {
            tracing::warn!("asking for the twin: {e}");
        }
    }

    /// The desired `deviceUpdate.service`: handled like a shadow delta, then acknowledged
    /// (adu_core_interface.c `OrchestratorUpdateCallback`). The service nulls what a message
    /// does not use (a cancel's manifest, a delivered signature): null is absent, as ADU's
    /// parser reads it.
    fn service(&mut self, value: Value, version: u64) -> Vec<SourceInput> {
        let mut out = Vec::new();
        match value.as_object() {
            Some(fields) if fields.get("workflow").is_some_and(|w| !w.is_null()) => {
                let mut fields = fields.clone();
                fields.retain(|_, v| !v.is_null());
                out.push(SourceInput::Desired(fields));
            }
            Some(_) => {}
            None => tracing::error!("desired deviceUpdate.service is not an object: {value}"),
        }
        out.extend(self.hub.ack(&value, version).map(SourceInput::Queue));
        out
    }
}

impl<T: Transport> Source for HubSource<T> {
    async fn recv(&mut self) -> Vec<SourceInput> {
        match self.conn.recv().await {
            None => vec![SourceInput::Closed(
                "the IoT Hub connection task ended".into(),
            )],
            Some(MqttEvent::Connected) => self.connected().await,
            Some(MqttEvent::Disconnected(e)) => {
                if self.connected {
                    tracing::warn!("disconnected from IoT Hub: {e}");
                }
                self.connected = false;
                self.hub.disconnected();
                vec![SourceInput::Resend]
            }
            // A report is delivered when the hub answers it, not at the PUBACK; a refusal is
            // followed by its Disconnected (the session re-provisions on refusals).
            Some(MqttEvent::PubAck { .. } | MqttEvent::SubAck | MqttEvent::Refused) => Vec::new(),
            Some(MqttEvent::Message { topic, payload, .. }) => {
                match self.hub.message(&topic, &payload) {
                    HubInput::Delivered => {
                        self.hub.delivered();
                        vec![SourceInput::Delivered]
                    }
                    HubInput::Resend => vec![SourceInput::Resend],
                    HubInput::Service { value, version } => self.service(value, version),
                    HubInput::Refused(why) => vec![SourceInput::Refused {
                        workflow: None,
                        why,
                    }],
                    HubInput::Nothing => Vec::new(),
                }
            }
        }
    }

    fn can_send(&self) -> bool {
        self.connected && !self.hub.awaiting_report()
    }

    async fn send(&mut self, item: &Queued) -> Sent {
        let Some(payload) = self.hub.shape(item) else {
            return Sent::Done;
        };
        let Some(topic) = self.hub.send_report() else {
            return Sent::Failed;
        };
        match self
            .conn
            .publish(&topic, payload.to_string().into_bytes(), false)
            .await
        {
            Ok(()) => Sent::InFlight,
            Err(e) => {
                tracing::warn!("publish failed: {e}");
                self.hub.disconnected();
                Sent::Failed
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.connected.then(|| self.hub.deadline()).flatten()
    }

    async fn due(&mut self) -> Vec<SourceInput> {
        let (report, get) = self.hub.overdue();
        if get {
            self.get().await;
        }
        if report {
            vec![SourceInput::Resend]
        } else {
            Vec::new()
        }
    }

    fn startup(&mut self) -> Vec<Queued> {
        self.hub.startup()
    }

    fn profile(&self) -> Profile {
        Profile {
            report_replaced_end: false,
            ignore_finished_duplicate: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state() -> HubState {
        HubState::new(
            DeviceProperties {
                properties: vec![],
                compat_property_names: "manufacturer,model".into(),
                agent_version: "x".into(),
            },
            Duration::from_secs(30),
        )
    }

    fn report(reported: Value) -> Queued {
        Queued::Report {
            fields: reported.as_object().unwrap().clone(),
            progress: true,
        }
    }

    #[test]
    fn only_the_hubs_answer_to_the_request_in_flight_delivers_a_report() {
        let mut h = state();
        let topic = h.send_report().unwrap();
        assert_eq!(topic, "$iothub/twin/PATCH/properties/reported/?$rid=1");
        assert_eq!(h.send_report(), None, "one at a time");
        assert_eq!(
            h.message("$iothub/twin/res/204/?$rid=9&$version=3", b""),
            HubInput::Nothing
        );
        assert_eq!(
            h.message("$iothub/twin/res/429/?$rid=1", b""),
            HubInput::Resend
        );
        assert_eq!(h.send_report(), None, "held after 429");
        h.hold_until = Some(Instant::now());
        let topic = h.send_report().unwrap();
        assert!(topic.ends_with("$rid=2"), "{topic}");
        assert_eq!(
            h.message("$iothub/twin/res/204/?$rid=2&$version=4", b""),
            HubInput::Delivered
        );
        h.send_report().unwrap();
        assert_eq!(
            h.message("$iothub/twin/res/400/?$rid=3", b"{\"message\":\"bad\"}"),
            HubInput::Delivered,
            "a refused patch is dropped, not retried forever"
        );
    }

    #[test]
    fn the_whole_twin_and_desired_patches_bring_the_service_and_its_version() {
        let mut h = state();
        let get = h.send_get();
        assert_eq!(get, "$iothub/twin/GET/?$rid=1");
        let twin = json!({"desired": {"deviceUpdate": {"__t": "c", "service": {"workflow": {"action": 3, "id": "w"}}}, "$version": 5}, "reported": {}});
        assert_eq!(
            h.message("$iothub/twin/res/200/?$rid=1", twin.to_string().as_bytes()),
            HubInput::Service {
                value: json!({"workflow": {"action": 3, "id": "w"}}),
                version: 5
            }
        );
        let patch = json!({"deviceUpdate": {"__t": "c", "service": {"workflow": {"action": 255, "id": "w"}}}, "$version": 6});
        assert_eq!(
            h.message(
                "$iothub/twin/PATCH/properties/desired/?$version=6",
                patch.to_string().as_bytes()
            ),
            HubInput::Service {
                value: json!({"workflow": {"action": 255, "id": "w"}}),
                version: 6
            }
        );
        assert_eq!(
            h.message(
                "$iothub/twin/PATCH/properties/desired/?$version=7",
                b"{\"x\":1,\"$version\":7}"
            ),
            HubInput::Nothing
        );
        assert!(matches!(
            h.message("$iothub/twin/PATCH/properties/desired/?$version=8", b"{not json"),
            HubInput::Refused(why) if why.starts_with("desired twin document is not JSON")
        ));
        let huge = vec![b' '; sandstep_model::deployment::MAX_DEPLOYMENT_BYTES + 1];
        assert!(matches!(
            h.message("$iothub/twin/PATCH/properties/desired/?$version=9", &huge),
            HubInput::Refused(why) if why.contains("over the")
        ));
    }

    #[test]
    fn reported_properties_come_from_device_properties_else_from_adus_config() {
        let identity = crate::iothub::config::Identity {
            connection: crate::iothub::auth::ConnectionString::parse(
                "HostName=h;DeviceId=d;SharedAccessKey=cGFzc3dvcmQ=",
            )
            .unwrap(),
            manufacturer: Some("contoso".into()),
            model: Some("espresso-v1".into()),
            compat_property_names: None,
            additional_properties: vec![("location".into(), "lab".into())],
        };
        let configured = [
            ("model".to_owned(), "espresso-v2".to_owned()),
            ("site".into(), "x".into()),
        ]
        .into_iter()
        .collect();
        let p = device_properties(&identity, &configured);
        let pairs = |p: &DeviceProperties| {
            p.properties
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pairs(&p),
            [
                "manufacturer=contoso",
                "model=espresso-v2",
                "site=x",
                "location=lab"
            ]
        );
        assert_eq!(p.compat_property_names, "manufacturer,model");
    }

    #[test]
    fn reports_that_say_nothing_new_or_nothing_adu_sends_are_not_sent() {
        let mut h = state();
        assert!(h
            .shape(&report(json!({"state": 1, "progress": {}})))
            .is_none());
        let first = h
            .shape(&report(
                json!({"state": 6, "workflow": {"action": 3, "id": "w"}}),
            ))
            .unwrap();
        assert_eq!(first["deviceUpdate"]["agent"]["state"], 6);
        // Not delivered yet (the connection broke): the same document goes again.
        assert!(h
            .shape(&report(
                json!({"state": 6, "workflow": {"action": 3, "id": "w"}})
            ))
            .is_some());
        h.delivered();
        assert!(h
            .shape(&report(
                json!({"state": 6, "workflow": {"action": 3, "id": "w"}, "progress": {}})
            ))
            .is_none());
        let job = Queued::Job(sandstep_model::reported::JobStatus {
            job_id: "w".into(),
            status: sandstep_model::reported::JobOutcome::Success,
        });
        assert!(h.shape(&job).is_none());
        // The same version is acknowledged once.
        assert!(h.ack(&json!({}), 3).is_some());
        assert!(h.ack(&json!({}), 3).is_none());
    }
}
