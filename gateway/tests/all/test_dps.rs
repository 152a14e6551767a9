//! A test Device Provisioning Service beside the test hub: DPS's side of its documented MQTT
//! device protocol ("Communicate with DPS using the MQTT protocol", "Symmetric key
//! attestation"), played on the same real mosquitto behind its own TLS gate. No DPS is
//! reachable from the test machines; this follows Microsoft's public documentation.
//!
//! - The gate refuses a CONNECT (CONNACK 5) unless the client id is the registration id, the
//!   user name `<scope>/registrations/<registration id>/api-version=2019-03-31`, and the password
//!   a shared access signature for `<scope>/registrations/<registration id>` with
//!   `skn=registration`, signed with the enrollment's key (a group enrollment's: the key derived
//!   from the group key and the registration id), or no password and a certificate naming the
//!   registration.
//! - The service answers `iotdps-register` with 202 `assigning` and an operation id, and
//!   `iotdps-get-operationstatus` with 202 until the configured number of polls, then 200
//!   `assigned` with the hub and device id it is told (or `failed`). It can be told to throttle
//!   (429) requests.

use crate::test_hub::{check_sas, names, serve_gate, serve_requests, Admission, Connect};
use sandstep_transport::mqtt::Mqtt;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// How an enrollment attests.
#[derive(Debug, Clone)]
pub enum Enrollment {
    /// An individual enrollment's key (base64).
    Individual(String),
    /// An enrollment group's key: each device signs with its derived key.
    Group(String),
    /// X.509: a certificate from the test CA naming the registration.
    X509,
}

/// What DPS does with a registration.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub hub: String,
    pub device_id: String,
    /// Polls answered `assigning` before the assignment.
    pub polls: u32,
    /// `Some((code, message))`: the registration fails instead.
    pub fail: Option<(u64, String)>,
}

pub struct TestDps {
    rt: tokio::runtime::Runtime,
    pub port: u16,
    pub scope: String,
    pub admissions: Arc<Mutex<Vec<Admission>>>,
    /// Every registration request's body.
    pub registrations: Arc<Mutex<Vec<Value>>>,
    /// Every status poll.
    pub polls: Arc<AtomicU32>,
    /// Requests still to answer with 429.
    pub throttle: Arc<AtomicU32>,
    pub outcome: Arc<Mutex<Outcome>>,
    _service: Arc<tokio::sync::Mutex<Option<Mqtt>>>,
}

/// A group enrollment's device key (as the documentation computes it, independently of the
/// gateway's code).
pub fn derived(group_key: &str, registration_id: &str) -> String {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(group_key)
        .unwrap();
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        registration_id.as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// DPS's rule for one CONNECT.
fn dps_check(
    scope: &str,
    registration: &str,
    enrollment: &Enrollment,
    c: &Connect,
    certificate: &[u8],
) -> Option<String> {
    if c.client_id != registration {
        return Some(format!("client id {} is not the registration", c.client_id));
    }
    let want = format!("{scope}/registrations/{registration}/api-version=2019-03-31");
    if c.user_name != want {
        return Some(format!("user name {} (want {want})", c.user_name));
    }
    let key = match enrollment {
        Enrollment::X509 if names(certificate, registration) && c.password.is_empty() => {
            return None
        }
        Enrollment::X509 => return Some("no certificate naming the registration".into()),
        Enrollment::Individual(k) => k.clone(),
        Enrollment::Group(g) => derived(g, registration),
    };
    if !c.password.ends_with("&skn=registration") {
        return Some("the signature is not for the registration policy (skn)".into());
    }
    check_sas(
        c.password.trim_end_matches("&skn=registration"),
        &format!("{scope}/registrations/{registration}"),
        &key,
    )
    .err()
}

impl TestDps {
    /// A DPS with one enrollment, `registration`, in front of mosquitto on `broker_port`,
    /// serving the test CA's certificates in `certs` (the hub's).
    pub fn start(
        broker_port: u16,
        certs: &Path,
        registration: &str,
        enrollment: Enrollment,
        outcome: Outcome,
    ) -> TestDps {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let scope = "0ne0000SAND".to_owned();
        let admissions = Arc::new(Mutex::new(Vec::new()));
        let check = {
            let (scope, registration) = (scope.clone(), registration.to_owned());
            Arc::new(move |c: &Connect, certificate: &[u8]| {
                dps_check(&scope, &registration, &enrollment, c, certificate)
            })
        };
        let port = serve_gate(
            &rt,
            certs,
            broker_port,
            admissions.clone(),
            Default::default(),
            check,
        );
        let dps = TestDps {
            rt,
            port,
            scope,
            admissions,
            registrations: Default::default(),
            polls: Default::default(),
            throttle: Default::default(),
            outcome: Arc::new(Mutex::new(outcome)),
            _service: Default::default(),
        };
        dps.start_service(broker_port);
        dps
    }

    /// The `[iothub.dps]` table for this DPS (the credential lines are the caller's).
    pub fn table(&self, registration: &str) -> String {
        format!(
            "[iothub.dps]\nid-scope = \"{}\"\nregistration-id = \"{registration}\"\nglobal-endpoint = \"localhost\"\nport = {}\ntimeout-secs = 30\n",
            self.scope, self.port
        )
    }

    fn start_service(&self, broker_port: u16) {
        let state = Service {
            registrations: self.registrations.clone(),
            polls: self.polls.clone(),
            throttle: self.throttle.clone(),
            outcome: self.outcome.clone(),
        };
        serve_requests(
            &self.rt,
            broker_port,
            "test-dps-service",
            &["$dps/registrations/PUT/#", "$dps/registrations/GET/#"],
            self._service.clone(),
            move |topic, payload| {
                let (topic, body) = state.answer(topic, payload)?;
                Some((topic, body.to_string().into_bytes()))
            },
        );
    }
}

/// The service's state.
struct Service {
    registrations: Arc<Mutex<Vec<Value>>>,
    polls: Arc<AtomicU32>,
    throttle: Arc<AtomicU32>,
    outcome: Arc<Mutex<Outcome>>,
}

impl Service {
    /// The answer to a request on `topic`: its topic and body.
    fn answer(&self, topic: &str, payload: &[u8]) -> Option<(String, Value)> {
        let rid = topic.split("$rid=").nth(1)?.split('&').next()?.to_owned();
        if self
            .throttle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            let body = json!({"errorCode": 429001, "message": "throttled"});
            return Some((
                format!("$dps/registrations/res/429/?$rid={rid}&retry-after=1"),
                body,
            ));
        }
        let assigning = |op: &str| {
            (
                format!("$dps/registrations/res/202/?$rid={rid}&retry-after=1"),
                json!({"operationId": op, "status": "assigning"}),
            )
        };
        if topic.starts_with("$dps/registrations/PUT/iotdps-register/") {
            let body: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
            self.registrations.lock().unwrap().push(body);
            return Some(assigning("4.sand.0000-0001"));
        }
        let op = topic.split("operationId=").nth(1)?.to_owned();
        let polls = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
        let o = self.outcome.lock().unwrap().clone();
        if polls <= o.polls {
            return Some(assigning(&op));
        }
        let state = match &o.fail {
            Some((code, message)) => {
                json!({"status": "failed", "errorCode": code, "errorMessage": message})
            }
            None => json!({"status": "assigned", "assignedHub": o.hub, "deviceId": o.device_id,
                           "substatus": "initialAssignment"}),
        };
        let status = state["status"].clone();
        Some((
            format!("$dps/registrations/res/200/?$rid={rid}"),
            json!({"operationId": op, "status": status, "registrationState": state}),
        ))
    }
}
