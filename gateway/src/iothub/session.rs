//! The device's MQTT connection to IoT Hub: MQTT 3.1.1 over TLS, the user name announcing ADU's
//! model id, and a shared access signature as the password (or an X.509 client certificate).
//! A signature is valid for `sas-lifetime-secs`; at four fifths of it the session reconnects
//! with a new one, as IoT Hub closes a connection whose token has expired.

use super::auth::{self, sas_token, ADU_MODEL_ID};
use super::config::{Identity, IotHubConfig};
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
        })
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
        tokio::select! {
            ev = self.conn.recv() => ev,
            _ = async {
                match renew {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                match Self::open(&self.config, &self.identity, &self.base) {
                    Ok((conn, renew)) => {
                        self.conn = conn;
                        self.renew = renew;
                        tracing::info!("reconnecting to IoT Hub with a new shared access signature");
                    }
                    Err(e) => {
                        tracing::error!("cannot make a new shared access signature: {e}");
                        self.renew = None;
                    }
                }
                Some(MqttEvent::Disconnected("renewing the shared access signature".into()))
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
