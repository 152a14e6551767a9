//! Azure's Device Provisioning Service (DPS) over MQTT: the `[iothub.dps]` table, the device's
//! credentials there, the documented topics, and what each answer means. Pure functions; the
//! exchange itself is [`super::provision`].
//!
//! ADU's agent does not provision itself: it takes a connection string, or asks the Azure IoT
//! Identity Service (`connectionType` "AIS" in du-config.json; src/utils/config_utils/src/
//! config_utils.c), which provisions through DPS. sandstep registers itself, as the identity
//! service would, following Microsoft's public documentation ("Communicate with DPS using the
//! MQTT protocol", "Symmetric key attestation", the REST API's `RegistrationOperationStatus` and
//! `DeviceRegistrationResult`):
//!
//! - CONNECT to `<global endpoint>:8883` over TLS with client id `<registration id>`, user name
//!   `<id scope>/registrations/<registration id>/api-version=2019-03-31`, and as password a
//!   shared access signature for `<id scope>/registrations/<registration id>` with
//!   `skn=registration` (none with an X.509 certificate, whose subject names the registration).
//! - Subscribe to `$dps/registrations/res/#`; publish `{"registrationId": ..., "payload":
//!   {"modelId": ...}}` on `$dps/registrations/PUT/iotdps-register/?$rid=<rid>`.
//! - Answers come on `$dps/registrations/res/<status>/?$rid=<rid>[&retry-after=<s>]`: 202 with
//!   `{"operationId": ..., "status": "assigning"}` means poll, after `retry-after` seconds, on
//!   `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=<rid>&operationId=<id>`; 200 with
//!   `"status": "assigned"` carries `registrationState.assignedHub` and `.deviceId`.

use super::auth::{self, AuthError, ConnectionString};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// The API version in the user name.
pub const API_VERSION: &str = "2019-03-31";
/// Azure's global device endpoint.
pub const GLOBAL_ENDPOINT: &str = "global.azure-devices-provisioning.net";
/// What the device subscribes to for answers.
pub const RESPONSES: &str = "$dps/registrations/res/#";
/// The pause before polling when an answer gives none (the Azure SDKs' default).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);
/// The longest pause an answer may ask for; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The `[iothub.dps]` table: register with DPS instead of a connection string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DpsConfig {
    /// The DPS instance's ID scope (`0ne...`).
    pub id_scope: String,
    /// The device's registration id (with X.509, its certificate's subject CN).
    pub registration_id: String,
    pub global_endpoint: String,
    pub port: u16,
    /// The enrollment's key (base64); for a group enrollment, the device's key derived from the
    /// group's (`sandstep key dps-device-key`). Or none, and `[iothub] client-cert`.
    pub symmetric_key: Option<String>,
    pub symmetric_key_file: Option<PathBuf>,
    /// How long one registration (connect, register, poll) may take before it is tried again.
    pub timeout_secs: u64,
}

impl Default for DpsConfig {
    fn default() -> Self {
        DpsConfig {
            id_scope: String::new(),
            registration_id: String::new(),
            global_endpoint: GLOBAL_ENDPOINT.to_owned(),
            port: 8883,
            symmetric_key: None,
            symmetric_key_file: None,
            timeout_secs: 120,
        }
    }
}

/// How the device proves who it is to DPS (and then to its hub).
#[derive(Clone, PartialEq, Eq)]
pub enum Attestation {
    /// A base64 symmetric key.
    SymmetricKey(String),
    /// The `[iothub] client-cert` and `client-key`.
    X509,
}

impl std::fmt::Debug for Attestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attestation::SymmetricKey(_) => "SymmetricKey(<hidden>)",
            Attestation::X509 => "X509",
        })
    }
}

/// A checked `[iothub.dps]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpsSetup {
    pub id_scope: String,
    pub registration_id: String,
    pub endpoint: String,
    pub port: u16,
    pub attestation: Attestation,
    pub timeout: Duration,
}

/// Why provisioning could not be set up or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum DpsError {
    #[error("[iothub.dps] {0} is missing")]
    Missing(&'static str),
    #[error("[iothub.dps] {field} `{value}`: {why}")]
    Invalid {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("[iothub.dps]: give symmetric-key or symmetric-key-file, not both")]
    BothKeys,
    #[error("[iothub.dps]: give symmetric-key (or symmetric-key-file), or [iothub] client-cert and client-key for X.509, not both")]
    KeyAndCertificate,
    #[error("[iothub.dps]: give symmetric-key (or symmetric-key-file), or [iothub] client-cert and client-key for X.509")]
    NoCredential,
    #[error("[iothub.dps] symmetric-key-file {path}: {cause}")]
    KeyFile { path: PathBuf, cause: String },
    #[error("[iothub.dps] {0}: not base64")]
    KeyNotBase64(&'static str),
    #[error("DPS refused the registration ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("DPS ended the registration as {status}: {message}")]
    Failed { status: String, message: String },
    #[error("DPS answered what cannot be used: {0}")]
    BadAnswer(String),
    #[error("DPS: {0}")]
    Connection(String),
    #[error("DPS did not finish the registration within {} s", .0.as_secs())]
    Timeout(Duration),
}

impl DpsConfig {
    /// Checks the table; `certificate` says whether `[iothub] client-cert` and `client-key` are
    /// set.
    pub fn setup(&self, certificate: bool) -> Result<DpsSetup, DpsError> {
        let invalid = |field, value: &str, why| DpsError::Invalid {
            field,
            value: value.to_owned(),
            why,
        };
        if self.id_scope.is_empty() {
            return Err(DpsError::Missing("id-scope"));
        }
        if self.id_scope.len() > 64 || !self.id_scope.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid(
                "id-scope",
                &self.id_scope,
                "an ID scope is letters and digits",
            ));
        }
        if self.registration_id.is_empty() {
            return Err(DpsError::Missing("registration-id"));
        }
        if !valid_registration_id(&self.registration_id) {
            return Err(invalid(
                "registration-id",
                &self.registration_id,
                "up to 128 letters, digits and - . _ :, ending with a letter, a digit or -",
            ));
        }
        if !valid_host(&self.global_endpoint) {
            return Err(invalid(
                "global-endpoint",
                &self.global_endpoint,
                "not a host name",
            ));
        }
        if self.timeout_secs < 5 {
            return Err(invalid(
                "timeout-secs",
                &self.timeout_secs.to_string(),
                "at least 5",
            ));
        }
        let key = self.key()?;
        let attestation = match (key, certificate) {
            (Some(_), true) => return Err(DpsError::KeyAndCertificate),
            (None, false) => return Err(DpsError::NoCredential),
            (Some(k), false) => Attestation::SymmetricKey(k),
            (None, true) => Attestation::X509,
        };
        Ok(DpsSetup {
            id_scope: self.id_scope.clone(),
            registration_id: self.registration_id.clone(),
            endpoint: self.global_endpoint.clone(),
            port: self.port,
            attestation,
            timeout: Duration::from_secs(self.timeout_secs),
        })
    }

    /// The symmetric key, from the table or its file (base64, checked).
    fn key(&self) -> Result<Option<String>, DpsError> {
        let key = match (&self.symmetric_key, &self.symmetric_key_file) {
            (Some(_), Some(_)) => return Err(DpsError::BothKeys),
            (None, None) => return Ok(None),
            (Some(k), None) => k.trim().to_owned(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| DpsError::KeyFile {
                    path: path.clone(),
                    cause: e.to_string(),
                })?
                .trim()
                .to_owned(),
        };
        match base64::engine::general_purpose::STANDARD.decode(&key) {
            Ok(raw) if !raw.is_empty() => Ok(Some(key)),
            _ => Err(DpsError::KeyNotBase64(if self.symmetric_key.is_some() {
                "symmetric-key"
            } else {
                "symmetric-key-file"
            })),
        }
    }
}

/// DPS's registration id rule: up to 128 of letters, digits, `-`, `.`, `_`, `:`, the last a
/// letter, a digit or `-`.
pub fn valid_registration_id(id: &str) -> bool {
    id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        && id
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A DNS host name: dot-separated labels of letters, digits and `-`.
pub fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// IoT Hub's device id rule: up to 128 of letters, digits and `- . + % _ # * ? ! ( ) , : = @ $ '`.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.+%_#*?!(),:=@$'".contains(&b))
}

/// An operation id goes into a topic: letters, digits, `-`, `.`, `_` only.
fn valid_operation_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// A group enrollment's device key: base64 of HMAC-SHA256 over the registration id, keyed with
/// the decoded group key ("Symmetric key attestation", group enrollments).
pub fn derive_device_key(group_key: &str, registration_id: &str) -> Result<String, AuthError> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(group_key.trim())
        .map_err(|_| AuthError::KeyNotBase64)?;
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        registration_id.as_bytes(),
    );
    Ok(base64::engine::general_purpose::STANDARD.encode(tag.as_ref()))
}

impl DpsSetup {
    /// The MQTT user name.
    pub fn user_name(&self) -> String {
        format!(
            "{}/registrations/{}/api-version={API_VERSION}",
            self.id_scope, self.registration_id
        )
    }

    /// The password: a signature valid until `expiry` with the registration policy, or `None`
    /// with a certificate.
    pub fn password(&self, expiry: u64) -> Result<Option<String>, AuthError> {
        let Attestation::SymmetricKey(key) = &self.attestation else {
            return Ok(None);
        };
        let resource = format!("{}/registrations/{}", self.id_scope, self.registration_id);
        Ok(Some(format!(
            "{}&skn=registration",
            auth::sas_token(&resource, key, expiry)?
        )))
    }

    /// The registration request's body; the model id tells DPS (and the hub) this is a Device
    /// Update device (IoT Plug and Play's `modelId` in the registration payload).
    pub fn register_body(&self) -> Vec<u8> {
        serde_json::json!({
            "registrationId": self.registration_id,
            "payload": {"modelId": auth::ADU_MODEL_ID},
        })
        .to_string()
        .into_bytes()
    }
}

/// The topic registering the device.
pub fn register_topic(rid: u64) -> String {
    format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}")
}

/// The topic asking how operation `operation_id` goes.
pub fn poll_topic(rid: u64, operation_id: &str) -> String {
    format!(
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={operation_id}"
    )
}

/// An answer's topic: its status, the request it answers, the pause it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub rid: u64,
    pub retry_after: Option<Duration>,
}

/// Reads `$dps/registrations/res/<status>/?$rid=..&retry-after=..`; `None` for anything else.
pub fn parse_response(topic: &str) -> Option<Response> {
    let rest = topic.strip_prefix("$dps/registrations/res/")?;
    let (status, query) = rest.split_once('/')?;
    let q = super::twin::query_pairs(query);
    Some(Response {
        status: status.parse().ok()?,
        rid: q.get("$rid")?.parse().ok()?,
        retry_after: q
            .get("retry-after")
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_secs),
    })
}

/// Where DPS assigned the device, kept so the next start connects without registering again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub id_scope: String,
    pub registration_id: String,
    pub endpoint: String,
    pub assigned_hub: String,
    pub device_id: String,
    /// `initialAssignment`, `deviceDataMigrated`, `deviceDataReset`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
}

impl Assignment {
    /// Whether this assignment was made for `setup` (a changed scope, registration or endpoint
    /// registers again).
    pub fn is_for(&self, setup: &DpsSetup) -> bool {
        self.id_scope == setup.id_scope
            && self.registration_id == setup.registration_id
            && self.endpoint == setup.endpoint
    }

    /// The hub connection it gives, with the credential used at DPS.
    pub fn connection(&self, setup: &DpsSetup) -> ConnectionString {
        ConnectionString {
            host_name: self.assigned_hub.clone(),
            device_id: self.device_id.clone(),
            module_id: None,
            shared_access_key: match &setup.attestation {
                Attestation::SymmetricKey(k) => Some(k.clone()),
                Attestation::X509 => None,
            },
            gateway_host_name: None,
        }
    }
}

/// What to do after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Registered.
    Assigned(Assignment),
    /// Ask how operation `operation_id` goes, after `after`.
    Poll {
        operation_id: String,
        after: Duration,
    },
    /// DPS is busy (429) or failed (5xx): send the same request again after `after`.
    Again { after: Duration },
}

/// What an answer (`response`, `body`) to a request of `setup` means.
pub fn next(setup: &DpsSetup, response: &Response, body: &[u8]) -> Result<Next, DpsError> {
    let after = response
        .retry_after
        .unwrap_or(DEFAULT_RETRY_AFTER)
        .clamp(Duration::from_secs(1), MAX_RETRY_AFTER);
    let doc: Option<Value> = serde_json::from_slice(body).ok();
    match response.status {
        429 | 500..=599 => return Ok(Next::Again { after }),
        200 | 202 => {}
        status => {
            let message = doc
                .as_ref()
                .and_then(|d| d.get("message").and_then(Value::as_str))
                .unwrap_or("(no message)");
            return Err(DpsError::Refused {
                status,
                message: clip(message),
            });
        }
    }
    let doc = doc.ok_or_else(|| DpsError::BadAnswer("the body is not JSON".into()))?;
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let status = text(&doc, "status").unwrap_or_default();
    match status.as_str() {
        "assigned" => assigned(setup, &doc),
        "assigning" | "unassigned" => {
            let operation_id = text(&doc, "operationId")
                .ok_or_else(|| DpsError::BadAnswer(format!("`{status}` without operationId")))?;
            if !valid_operation_id(&operation_id) {
                return Err(DpsError::BadAnswer(format!(
                    "operationId `{}` has characters a topic cannot carry",
                    clip(&operation_id)
                )));
            }
            Ok(Next::Poll {
                operation_id,
                after,
            })
        }
        "failed" | "disabled" => {
            let state = doc.get("registrationState").cloned().unwrap_or_default();
            let code = state.get("errorCode").map(Value::to_string);
            let message = text(&state, "errorMessage").unwrap_or_else(|| "(no message)".into());
            Err(DpsError::Failed {
                status,
                message: clip(&match code {
                    Some(c) => format!("{message} (error {c})"),
                    None => message,
                }),
            })
        }
        other => Err(DpsError::BadAnswer(format!(
            "status `{}` is none of assigned, assigning, unassigned, failed, disabled",
            clip(other)
        ))),
    }
}

/// The assignment in an `assigned` answer, its hub and device id checked.
fn assigned(setup: &DpsSetup, doc: &Value) -> Result<Next, DpsError> {
    let state = doc
        .get("registrationState")
        .ok_or_else(|| DpsError::BadAnswer("`assigned` without registrationState".into()))?;
    let field = |k: &str| {
        state
            .get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| DpsError::BadAnswer(format!("registrationState.{k} is missing")))
    };
    let hub = field("assignedHub")?;
    if !valid_host(hub) {
        return Err(DpsError::BadAnswer(format!(
            "registrationState.assignedHub `{}` is not a host name",
            clip(hub)
        )));
    }
    let device_id = field("deviceId")?;
    if !valid_device_id(device_id) {
        return Err(DpsError::BadAnswer(format!(
            "registrationState.deviceId `{}` is not an IoT Hub device id",
            clip(device_id)
        )));
    }
    Ok(Next::Assigned(Assignment {
        id_scope: setup.id_scope.clone(),
        registration_id: setup.registration_id.clone(),
        endpoint: setup.endpoint.clone(),
        assigned_hub: hub.to_owned(),
        device_id: device_id.to_owned(),
        substatus: state.get("substatus").and_then(Value::as_str).map(clip),
    }))
}

/// At most 200 characters of what the service sent, control characters replaced, for messages.
fn clip(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests;
