//! How a device authenticates to IoT Hub over MQTT: its connection string, the shared access
//! signature computed from the key (the MQTT password), and the user name that names the hub,
//! the device, the API version and the Device Update model. Pure functions; the connection
//! itself is elsewhere.
//!
//! Formats from Microsoft's public documentation ("Communicate with an IoT hub using the MQTT
//! protocol", "Control access to IoT Hub using shared access signatures") and ADU's agent
//! (src/communication_managers/iothub_communication_manager/src/iothub_communication_manager.c,
//! `g_aduModelId`).

use base64::Engine as _;
use ring::hmac;

/// The model id ADU's agent announces (iothub_communication_manager.c, `g_aduModelId`).
pub const ADU_MODEL_ID: &str = "dtmi:azure:iot:deviceUpdateModel;3";
/// The MQTT API version in the user name (documented for IoT Plug and Play devices).
pub const API_VERSION: &str = "2021-04-12";

/// A device (or module) connection string: `HostName=...;DeviceId=...;SharedAccessKey=...`,
/// or `x509=true` instead of a key for a certificate. Its `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub host_name: String,
    pub device_id: String,
    pub module_id: Option<String>,
    /// The base64 key (`SharedAccessKey`); `None` with `x509=true`.
    pub shared_access_key: Option<String>,
    /// An IoT Edge gateway to connect through instead of the hub (`GatewayHostName`).
    pub gateway_host_name: Option<String>,
}

/// Why a connection string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("connection string: `{0}` is not a Name=value pair")]
    NotAPair(String),
    #[error("connection string: {0} is missing")]
    Missing(&'static str),
    #[error("connection string: {0} appears twice")]
    Twice(String),
    #[error("connection string: give SharedAccessKey or x509=true, not both")]
    KeyAndX509,
    #[error("connection string: SharedAccessKey is not base64")]
    KeyNotBase64,
    #[error("connection string: {0} is not supported ({1})")]
    Unsupported(String, &'static str),
}

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("device_id", &self.device_id)
            .field("module_id", &self.module_id)
            .field(
                "shared_access_key",
                &self.shared_access_key.as_ref().map(|_| "<hidden>"),
            )
            .field("gateway_host_name", &self.gateway_host_name)
            .finish()
    }
}

impl ConnectionString {
    /// Parses `Name=value;...` (values may contain `=`, as base64 keys do).
    pub fn parse(text: &str) -> Result<ConnectionString, AuthError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for part in text.trim().split(';').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| AuthError::NotAPair(part.to_owned()))?;
            let k = k.trim();
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(AuthError::Twice(k.to_owned()));
            }
            pairs.push((k, v.trim()));
        }
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        if let Some(name) = get("SharedAccessKeyName") {
            return Err(AuthError::Unsupported(
                format!("SharedAccessKeyName={name}"),
                "that is a hub-level policy; a device connects with its own key or certificate",
            ));
        }
        let key = get("SharedAccessKey");
        let x509 = get("x509").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if key.is_some() && x509 {
            return Err(AuthError::KeyAndX509);
        }
        if let Some(k) = &key {
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .map_err(|_| AuthError::KeyNotBase64)?;
        }
        if key.is_none() && !x509 {
            return Err(AuthError::Missing("SharedAccessKey (or x509=true)"));
        }
        Ok(ConnectionString {
            host_name: get("HostName").ok_or(AuthError::Missing("HostName"))?,
            device_id: get("DeviceId").ok_or(AuthError::Missing("DeviceId"))?,
            module_id: get("ModuleId"),
            shared_access_key: key,
            gateway_host_name: get("GatewayHostName"),
        })
    }

    /// The resource a token grants: `<host>/devices/<id>[/modules/<module>]`.
    pub fn resource(&self) -> String {
        let mut r = format!("{}/devices/{}", self.host_name, self.device_id);
        if let Some(m) = &self.module_id {
            r.push_str(&format!("/modules/{m}"));
        }
        r
    }

    /// The MQTT client id: the device id, or `<device>/<module>`.
    pub fn client_id(&self) -> String {
        match &self.module_id {
            Some(m) => format!("{}/{m}", self.device_id),
            None => self.device_id.clone(),
        }
    }

    /// The MQTT user name: hub, client id, API version and the model id announced.
    pub fn user_name(&self, model_id: &str) -> String {
        format!(
            "{}/{}/?api-version={API_VERSION}&model-id={}",
            self.host_name,
            self.client_id(),
            encode(model_id)
        )
    }

    /// The host to connect to: the gateway when there is one, else the hub.
    pub fn connect_host(&self) -> &str {
        self.gateway_host_name.as_deref().unwrap_or(&self.host_name)
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A shared access signature for `resource`, valid until `expiry` (seconds since the epoch):
/// `SharedAccessSignature sr=<resource>&sig=<signature>&se=<expiry>`, the signature being the
/// base64 HMAC-SHA256, under the decoded key, of the encoded resource, a newline and the expiry.
pub fn sas_token(resource: &str, key_base64: &str, expiry: u64) -> Result<String, AuthError> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(key_base64)
        .map_err(|_| AuthError::KeyNotBase64)?;
    let sr = encode(resource);
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &key),
        format!("{sr}\n{expiry}").as_bytes(),
    );
    let sig = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    Ok(format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry}",
        encode(&sig)
    ))
}

/// When a token valid for `lifetime_secs` from `issued` should be replaced: at four fifths of
/// its life, so a reconnect near the end never presents an expired one.
pub fn renew_at(issued: u64, lifetime_secs: u64) -> u64 {
    issued + lifetime_secs * 4 / 5
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2FuZHN0ZXAgdGVzdCBrZXkgMzIgYnl0ZXMgbG9uZyE="; // "sandstep test key 32 bytes long!"

    #[test]
    fn connection_strings_are_read_as_the_sdk_writes_them_or_refused_by_name() {
        let c = ConnectionString::parse(&format!(
            "HostName=hub.azure-devices.net;DeviceId=gw-1;SharedAccessKey={KEY}"
        ))
        .unwrap();
        assert_eq!(c.resource(), "hub.azure-devices.net/devices/gw-1");
        assert_eq!(c.connect_host(), "hub.azure-devices.net");
        assert_eq!(
            c.user_name(ADU_MODEL_ID),
            "hub.azure-devices.net/gw-1/?api-version=2021-04-12&model-id=dtmi%3Aazure%3Aiot%3AdeviceUpdateModel%3B3"
        );
        let m = ConnectionString::parse(
            "HostName=h;DeviceId=d;ModuleId=adu;x509=true;GatewayHostName=edge.local",
        )
        .unwrap();
        assert_eq!(
            (m.client_id(), m.resource()),
            ("d/adu".into(), "h/devices/d/modules/adu".into())
        );
        assert_eq!(
            (m.shared_access_key.as_deref(), m.connect_host()),
            (None, "edge.local")
        );
        for (text, err) in [
            (
                "HostName=h;DeviceId=d",
                AuthError::Missing("SharedAccessKey (or x509=true)"),
            ),
            (
                &format!("DeviceId=d;SharedAccessKey={KEY}"),
                AuthError::Missing("HostName"),
            ),
            (
                "HostName=h;DeviceId=d;SharedAccessKey=not base64!",
                AuthError::KeyNotBase64,
            ),
            (
                "HostName=h;HostName=i;DeviceId=d;x509=true",
                AuthError::Twice("HostName".into()),
            ),
            (
                &format!("HostName=h;DeviceId=d;x509=true;SharedAccessKey={KEY}"),
                AuthError::KeyAndX509,
            ),
            (
                "HostName=h;garbage;DeviceId=d",
                AuthError::NotAPair("garbage".into()),
            ),
        ] {
            assert_eq!(ConnectionString::parse(text).unwrap_err(), err, "{text}");
        }
        let policy = ConnectionString::parse(&format!(
            "HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
        ));
        assert!(matches!(policy, Err(AuthError::Unsupported(..))));
    }

    /// A vector from Microsoft's Azure IoT SDK for Node.js (azure-iot-common's authorization
    /// tests, MIT licence): key base64("password"), resource `uri`, expiry 12345.
    #[test]
    fn a_sas_token_matches_the_azure_sdks_test_vector() {
        let key = base64::engine::general_purpose::STANDARD.encode("password");
        assert_eq!(
            sas_token("uri", &key, 12345).unwrap(),
            "SharedAccessSignature sr=uri&sig=kcWxXAK2OAaAoq2oCkaGzX2NMqDB8nCyNuq2fPYCDhk%3D&se=12345"
        );
    }

    /// The signature checked independently: HMAC-SHA256 of "<encoded resource>\n<expiry>".
    #[test]
    fn a_sas_token_signs_the_encoded_resource_and_expiry_with_the_decoded_key() {
        let t = sas_token("hub.azure-devices.net/devices/gw-1", KEY, 1_900_000_000).unwrap();
        let (head, se) = t.rsplit_once("&se=").unwrap();
        assert_eq!(se, "1900000000");
        let (sr, sig) = head
            .strip_prefix("SharedAccessSignature sr=")
            .unwrap()
            .split_once("&sig=")
            .unwrap();
        assert_eq!(sr, "hub.azure-devices.net%2Fdevices%2Fgw-1");
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .unwrap();
        let sig = sig
            .replace("%2B", "+")
            .replace("%2F", "/")
            .replace("%3D", "=");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .unwrap();
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, &key),
            format!("{sr}\n1900000000").as_bytes(),
            &raw,
        )
        .expect("the signature verifies");
        assert_eq!(renew_at(1000, 3600), 3880);
    }
}
