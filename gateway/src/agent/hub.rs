//! What the agent's loop keeps when its source is IoT Hub (`source = "iothub"`): request ids,
//! the twin request awaiting its answer, the `deviceUpdate` documents already sent. The loop
//! itself (`mqtt_loop`) is the same as over the MQTT shadow; this decides the protocol's part.
//!
//! - Reports become `deviceUpdate.agent` patches in ADU's shapes ([`component::agent_report`]),
//!   sent on the reported-properties topic with a request id; the hub's answer (204) is what
//!   takes a report out of the outbox (not the broker's PUBACK), a throttled or failed one (429,
//!   5xx) is sent again after a pause, one the hub refuses (400, 413) is logged and dropped.
//! - At each connection the whole twin is asked for (`$iothub/twin/GET`); its desired
//!   `deviceUpdate.service`, and each desired patch's, is handled like a shadow delta, then
//!   acknowledged (`ac`, `av`, `ad`).

use super::report::Outgoing;
use crate::iothub::component::{self, DeviceProperties};
use crate::iothub::twin::{self, StatusClass, TwinMessage};
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
    /// The last `agent` document queued, so one that says nothing new is not sent.
    last_agent: Option<Map<String, Value>>,
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

    /// A report as the hub takes it, or `None` when ADU's agent would send nothing for it.
    pub fn shape(&mut self, o: Outgoing) -> Option<Outgoing> {
        if o.topic == REPORTED {
            return Some(o); // already a twin document (startup, acknowledgements)
        }
        let reported = o.payload.pointer("/state/reported")?.as_object()?;
        let agent = component::agent_report(reported)?;
        if self.last_agent.as_ref() == Some(&agent) {
            return None;
        }
        self.last_agent = Some(agent.clone());
        Some(Outgoing {
            topic: REPORTED.into(),
            payload: component::agent_patch(agent),
            progress: false,
        })
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
    pub fn ack(&mut self, service: &Value, version: u64) -> Option<Outgoing> {
        if self.acked_version == Some(version) {
            return None;
        }
        self.acked_version = Some(version);
        Some(Outgoing {
            topic: REPORTED.into(),
            payload: component::service_ack(service, version),
            progress: false,
        })
    }

    /// The startup reports: `deviceUpdate.agent` device properties and `deviceInformation`.
    pub fn startup(&self) -> Vec<Outgoing> {
        let manufacturer = self.property("manufacturer");
        let model = self.property("model");
        [
            component::agent_patch(component::startup(&self.properties)),
            crate::iothub::device_info::device_information(manufacturer, model),
        ]
        .into_iter()
        .map(|payload| Outgoing {
            topic: REPORTED.into(),
            payload,
            progress: false,
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

    fn report(reported: Value) -> Outgoing {
        Outgoing {
            topic: "state/d/update".into(),
            payload: json!({"state": {"reported": reported}, "clientToken": "t"}),
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
            .shape(report(json!({"state": 1, "progress": {}})))
            .is_none());
        let first = h
            .shape(report(
                json!({"state": 6, "workflow": {"action": 3, "id": "w"}}),
            ))
            .unwrap();
        assert_eq!(first.topic, REPORTED);
        assert_eq!(first.payload["deviceUpdate"]["agent"]["state"], 6);
        assert!(h
            .shape(report(
                json!({"state": 6, "workflow": {"action": 3, "id": "w"}, "progress": {}})
            ))
            .is_none());
        let job = Outgoing {
            topic: "state/d/update".into(),
            payload: json!({"jobId": "w", "status": "SUCCESS"}),
            progress: false,
        };
        assert!(h.shape(job).is_none());
        // The same version is acknowledged once.
        assert!(h.ack(&json!({}), 3).is_some());
        assert!(h.ack(&json!({}), 3).is_none());
    }
}
