//! Registering with DPS over MQTT ([`register`]), and keeping the assignment in the data dir
//! (`dps-assignment.json`) so later starts connect to the assigned hub without registering
//! again, as the Azure SDKs advise; the session registers again when the hub refuses the
//! device (it may have been moved to another hub).

use super::dps::{self, Assignment, DpsError, DpsSetup, Next};
use cap_std::fs::Dir;
use sandstep_transport::mqtt::{Mqtt, MqttConfig, MqttEvent, Protocol};
use std::path::PathBuf;
use std::time::Duration;

/// The assignment's file in the data dir.
pub const ASSIGNMENT_FILE: &str = "dps-assignment.json";

/// The TLS files of both connections (`[iothub] ca-file`, `client-cert`, `client-key`).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// The MQTT settings of a connection to DPS made now (its signature valid for the
/// registration's timeout and a minute more).
pub fn mqtt_config(setup: &DpsSetup, tls: &TlsFiles, now: u64) -> Result<MqttConfig, DpsError> {
    let expiry = now + setup.timeout.as_secs() + 60;
    let password = setup
        .password(expiry)
        .map_err(|e| DpsError::Connection(e.to_string()))?;
    Ok(MqttConfig {
        url: format!("mqtts://{}:{}", setup.endpoint, setup.port),
        client_id: Some(setup.registration_id.clone()),
        username: Some(setup.user_name()),
        // A certificate-authenticated device sends a user name and no password.
        password: Some(password.unwrap_or_default()),
        ca_file: tls.ca_file.clone(),
        client_cert: tls.client_cert.clone(),
        client_key: tls.client_key.clone(),
        protocol: Protocol::V311,
        keep_alive_secs: 30,
        // One connection per attempt: a broken one ends the attempt.
        reconnect_min_ms: 3_600_000,
        reconnect_max_ms: 3_600_000,
    })
}

/// Registers `setup` with DPS: connect, subscribe, register, poll until assigned; within the
/// setup's timeout.
pub async fn register(setup: &DpsSetup, tls: &TlsFiles) -> Result<Assignment, DpsError> {
    let now = sandstep_transport::clock::now_ms() / 1000;
    let config = mqtt_config(setup, tls, now)?;
    let mut conn = Mqtt::connect(&config, &setup.registration_id)
        .map_err(|e| DpsError::Connection(e.to_string()))?;
    tokio::time::timeout(setup.timeout, exchange(setup, &mut conn))
        .await
        .map_err(|_| DpsError::Timeout(setup.timeout))?
}

/// The next event of `conn` that matters to a registration; a broken connection is an error.
async fn event(conn: &mut Mqtt) -> Result<MqttEvent, DpsError> {
    loop {
        match conn.recv().await {
            None => return Err(DpsError::Connection("the connection task ended".into())),
            Some(MqttEvent::Refused) => {
                return Err(DpsError::Refused {
                    status: 401,
                    message: "the connection was refused: not authorized".into(),
                })
            }
            Some(MqttEvent::Disconnected(e)) => return Err(DpsError::Connection(e)),
            Some(MqttEvent::PubAck { .. }) => {}
            Some(ev) => return Ok(ev),
        }
    }
}

/// A request to DPS: register, or ask how an operation goes.
enum Request {
    Register,
    Poll(String),
}

impl Request {
    /// Its topic under request id `rid`, and its body.
    fn message(&self, setup: &DpsSetup, rid: u64) -> (String, Vec<u8>) {
        match self {
            Request::Register => (dps::register_topic(rid), setup.register_body()),
            Request::Poll(op) => (dps::poll_topic(rid, op), Vec::new()),
        }
    }
}

/// The protocol on a connection being made.
async fn exchange(setup: &DpsSetup, conn: &mut Mqtt) -> Result<Assignment, DpsError> {
    let failed = |e: sandstep_transport::mqtt::MqttError| DpsError::Connection(e.to_string());
    while !matches!(event(conn).await?, MqttEvent::Connected) {}
    conn.subscribe(dps::RESPONSES).await.map_err(failed)?;
    while !matches!(event(conn).await?, MqttEvent::SubAck) {}
    let mut rid = 1;
    let mut request = Request::Register;
    let (topic, body) = request.message(setup, rid);
    conn.publish(&topic, body, false).await.map_err(failed)?;
    loop {
        let MqttEvent::Message { topic, payload, .. } = event(conn).await? else {
            continue;
        };
        let Some(response) = dps::parse_response(&topic) else {
            continue;
        };
        if response.rid != rid {
            continue; // an answer to an earlier request
        }
        let after = match dps::next(setup, &response, &payload)? {
            Next::Assigned(a) => return Ok(a),
            Next::Poll {
                operation_id,
                after,
            } => {
                tracing::info!("DPS is assigning the device (operation {operation_id})");
                request = Request::Poll(operation_id);
                after
            }
            Next::Again { after } => {
                tracing::warn!("DPS answered {}: asking again", response.status);
                after
            }
        };
        tokio::time::sleep(after).await;
        rid += 1;
        let (topic, body) = request.message(setup, rid);
        conn.publish(&topic, body, false).await.map_err(failed)?;
    }
}

/// The assignment kept in `root`, when it was made for `setup`.
pub fn load(root: &Dir, setup: &DpsSetup) -> Option<Assignment> {
    let bytes = root.read(ASSIGNMENT_FILE).ok()?;
    match serde_json::from_slice::<Assignment>(&bytes) {
        Ok(a) if a.is_for(setup) => Some(a),
        Ok(_) => {
            tracing::info!("{ASSIGNMENT_FILE} is for another registration: registering again");
            None
        }
        Err(e) => {
            tracing::warn!("{ASSIGNMENT_FILE}: {e}: registering again");
            None
        }
    }
}

/// Keeps `a` for the next start, and says where DPS assigned the device (a failure to keep it
/// is logged: the assignment still serves this run).
pub fn keep(root: &Dir, a: &Assignment) {
    tracing::info!(
        "DPS assigned device {} on {} ({})",
        a.device_id,
        a.assigned_hub,
        a.substatus.as_deref().unwrap_or("no substatus")
    );
    let bytes = serde_json::to_vec_pretty(a).expect("serializes");
    if let Err(e) = crate::datadir::write_atomic(root, ASSIGNMENT_FILE, &bytes, 0o600) {
        tracing::error!("cannot keep {ASSIGNMENT_FILE}: {e}");
    }
}

/// Registers until it succeeds (pausing between attempts, longer each time up to five
/// minutes), and keeps the assignment.
pub async fn provision(setup: &DpsSetup, tls: &TlsFiles, root: &Dir) -> Assignment {
    let mut pause = Duration::from_secs(2);
    loop {
        match register(setup, tls).await {
            Ok(a) => {
                keep(root, &a);
                return a;
            }
            Err(e) => {
                tracing::error!(
                    "registration {} with DPS {}:{} failed: {e}; trying again in {} s",
                    setup.registration_id,
                    setup.endpoint,
                    setup.port,
                    pause.as_secs()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(300));
            }
        }
    }
}
