//! The device's MQTT connection to IoT Hub: MQTT 3.1.1 over TLS, the user name announcing ADU's
//! model id, and a shared access signature as the password (or an X.509 client certificate).
//! A signature is valid for `sas-lifetime-secs`; at four fifths of it the session reconnects
//! with a new one, as IoT Hub closes a connection whose token has expired. A device that DPS
//! provisioned registers again when the hub keeps refusing it (it may have been moved to another
//! hub, or its registration reset), and goes on with the new assignment.

use super::auth::{self, sas_token, ADU_MODEL_ID};
use super::config::{Identity, IotHubConfig};
use super::dps::{Assignment, DpsError, DpsSetup};
use super::provision;
use sandstep_transport::mqtt::{Mqtt, MqttConfig, MqttError, MqttEvent, Protocol, Transport};
use std::time::Duration;

/// The connection, and what it takes to make the next one: the `[iothub]` table, the identity,
/// and the `[mqtt]` table (keep-alive, reconnection backoff).
pub struct HubSession {
    config: IotHubConfig,
    identity: Identity,
    base: MqttConfig,
    conn: Mqtt,
    /// When the current signature is replaced (`None` with a certificate).
    renew: Option<tokio::time::Instant>,
    /// With DPS: registering again when the hub refuses the device.
    dps: Option<Reprovision>,
}

/// How many refusals in a row make a provisioned device register again.
pub const REFUSALS_BEFORE_REGISTERING: u32 = 2;

/// A provisioned device's registration, made again when the hub refuses it.
pub struct Reprovision {
    setup: DpsSetup,
    root: cap_std::fs::Dir,
    refusals: u32,
    pending: Option<tokio::task::JoinHandle<Result<Assignment, DpsError>>>,
}

impl Reprovision {
    /// `root` keeps the assignment (the data dir).
    pub fn new(setup: DpsSetup, root: cap_std::fs::Dir) -> Reprovision {
        Reprovision {
            setup,
            root,
            refusals: 0,
            pending: None,
        }
    }
}

/// Seconds since the epoch.
fn now_secs() -> u64 {
    sandstep_transport::clock::now_ms() / 1000
}

/// The MQTT settings of a connection made now, and when its signature should be replaced.
pub fn mqtt_config(
    config: &IotHubConfig,
    identity: &Identity,
    base: &MqttConfig,
    now: u64,
) -> Result<(MqttConfig, Option<u64>), MqttError> {
    let c = &identity.connection;
    let (password, renew) = match &c.shared_access_key {
        Some(key) => {
            let expiry = now + config.sas_lifetime_secs;
            let token = sas_token(&c.resource(), key, expiry)
                .map_err(|e| MqttError::Client(e.to_string()))?;
            (
                Some(token),
                Some(auth::renew_at(now, config.sas_lifetime_secs)),
            )
        }
        None => (None, None),
    };
    let mqtt = MqttConfig {
        url: format!("mqtts://{}:{}", c.connect_host(), config.port),
        client_id: Some(c.client_id()),
        username: Some(c.user_name(ADU_MODEL_ID)),
        // A certificate-authenticated device sends a user name and no password.
        password: password.or_else(|| Some(String::new())),
        ca_file: config.ca_file.clone(),
        client_cert: config.client_cert.clone(),
        client_key: config.client_key.clone(),
        protocol: Protocol::V311,
        ..base.clone()
    };
    Ok((mqtt, renew))
}

impl HubSession {
    /// Connects (in the background: events tell when it is up).
    pub fn connect(
        config: &IotHubConfig,
        identity: &Identity,
        base: &MqttConfig,
    ) -> Result<HubSession, MqttError> {
        let (conn, renew) = Self::open(config, identity, base)?;
        Ok(HubSession {
            config: config.clone(),
            identity: identity.clone(),
            base: base.clone(),
            conn,
            renew,
            dps: None,
        })
    }

    /// Registers again with DPS when the hub refuses the device.
    pub fn with_reprovision(mut self, r: Reprovision) -> HubSession {
        self.dps = Some(r);
        self
    }

    /// Counts the hub's refusals and connections; enough refusals in a row start a new
    /// registration with DPS.
    fn note(&mut self, ev: &MqttEvent) {
        let Some(r) = &mut self.dps else { return };
        match ev {
            MqttEvent::Connected => r.refusals = 0,
            MqttEvent::Refused => {
                r.refusals += 1;
                if r.refusals >= REFUSALS_BEFORE_REGISTERING && r.pending.is_none() {
                    tracing::warn!(
                        "IoT Hub refused device {} {} times: registering with DPS again",
                        self.identity.connection.device_id,
                        r.refusals
                    );
                    let (setup, tls) = (r.setup.clone(), self.config.tls_files());
                    r.pending = Some(tokio::spawn(async move {
                        provision::register(&setup, &tls).await
                    }));
                }
            }
            _ => {}
        }
    }

    /// A new registration ended: with an assignment, connect there.
    fn registered(&mut self, result: Result<Assignment, DpsError>) -> MqttEvent {
        let r = self.dps.as_mut().expect("only with DPS");
        r.pending = None;
        r.refusals = 0;
        let a = match result {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("registering with DPS again failed: {e}");
                return MqttEvent::Disconnected(format!("registering with DPS again failed: {e}"));
            }
        };
        provision::keep(&r.root, &a);
        self.identity = self.config.provisioned(&a, &r.setup);
        self.reopen("DPS assigned the device again")
    }

    /// Connects anew with the current identity and a new signature.
    fn reopen(&mut self, why: &str) -> MqttEvent {
        match Self::open(&self.config, &self.identity, &self.base) {
            Ok((conn, renew)) => {
                self.conn = conn;
                self.renew = renew;
                tracing::info!("reconnecting to IoT Hub: {why}");
            }
            Err(e) => {
                tracing::error!("cannot connect to IoT Hub anew ({why}): {e}");
                self.renew = None;
            }
        }
        MqttEvent::Disconnected(why.to_owned())
    }

    fn open(
        config: &IotHubConfig,
        identity: &Identity,
        base: &MqttConfig,
    ) -> Result<(Mqtt, Option<tokio::time::Instant>), MqttError> {
        let now = now_secs();
        let (mqtt, renew_at) = mqtt_config(config, identity, base, now)?;
        let client_id = mqtt.client_id.clone().expect("set above");
        let conn = Mqtt::connect(&mqtt, &client_id)?;
        let renew = renew_at
            .map(|at| tokio::time::Instant::now() + Duration::from_secs(at.saturating_sub(now)));
        Ok((conn, renew))
    }
}

impl Transport for HubSession {
    async fn recv(&mut self) -> Option<MqttEvent> {
        let renew = self.renew;
        let pending = self.dps.as_mut().and_then(|r| r.pending.as_mut());
        tokio::select! {
            ev = self.conn.recv() => {
                if let Some(ev) = &ev {
                    self.note(ev);
                }
                ev
            }
            _ = async {
                match renew {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => Some(self.reopen("renewing the shared access signature")),
            done = async {
                match pending {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                let result = done.unwrap_or_else(|e| Err(DpsError::Connection(e.to_string())));
                Some(self.registered(result))
            }
        }
    }
    async fn subscribe(&self, filter: &str) -> Result<(), MqttError> {
        self.conn.subscribe(filter).await
    }
    async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), MqttError> {
        self.conn.publish(topic, payload, retain).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iothub::auth::ConnectionString;

    #[test]
    fn a_key_device_connects_with_a_signature_renewed_at_four_fifths() {
        let identity = Identity {
            connection: ConnectionString::parse(
                "HostName=h.azure-devices.net;DeviceId=gw-1;SharedAccessKey=cGFzc3dvcmQ=",
            )
            .unwrap(),
            manufacturer: None,
            model: None,
            compat_property_names: None,
            additional_properties: Vec::new(),
        };
        let (m, renew) = mqtt_config(
            &IotHubConfig::default(),
            &identity,
            &MqttConfig::default(),
            1000,
        )
        .unwrap();
        assert_eq!(m.url, "mqtts://h.azure-devices.net:8883");
        assert_eq!(m.client_id.as_deref(), Some("gw-1"));
        assert_eq!(
            m.username.as_deref(),
            Some("h.azure-devices.net/gw-1/?api-version=2021-04-12&model-id=dtmi%3Aazure%3Aiot%3AdeviceUpdateModel%3B3")
        );
        let password = m.password.unwrap();
        assert!(
            password
                .starts_with("SharedAccessSignature sr=h.azure-devices.net%2Fdevices%2Fgw-1&sig=")
                && password.ends_with("&se=4600"),
            "{password}"
        );
        assert_eq!(renew, Some(1000 + 2880));
        assert_eq!(m.protocol, Protocol::V311);
    }
}
