//! The `[iothub]` table, and where the device's identity comes from: a connection string in the
//! config, or a file holding one, which may be ADU's own `du-config.json` (its first agent's
//! `connectionSource` with `connectionType` "string", as ADU's agent reads it: src/utils/
//! config_utils/src/config_utils.c; `manufacturer`, `model` and `compatPropertyNames` come along).

use super::auth::{AuthError, ConnectionString};
use super::dps::{Assignment, DpsConfig, DpsError, DpsSetup};
use super::provision::TlsFiles;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The `[iothub]` table (with `[agent] source = "iothub"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct IotHubConfig {
    /// `HostName=...;DeviceId=...;SharedAccessKey=...` (or `x509=true` with `client-cert`).
    pub connection_string: Option<String>,
    /// A file holding the connection string, or ADU's `du-config.json`.
    pub connection_string_file: Option<PathBuf>,
    /// The hub's (or gateway's) MQTT port.
    pub port: u16,
    /// CA certificate(s) (PEM) the hub's certificate is checked against; default: the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// The device's X.509 certificate and key (PEM), with `x509=true`.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// How long each shared access signature is valid; a new one is made at four fifths.
    pub sas_lifetime_secs: u64,
    /// `compatPropertyNames` reported (default: du-config.json's, else "manufacturer,model").
    pub compat_property_names: Option<String>,
    /// How long the hub may take to answer a twin request before it is sent again, in ms.
    pub response_timeout_ms: u64,
    /// `[iothub.dps]`: register with the Device Provisioning Service instead of a connection
    /// string.
    pub dps: Option<DpsConfig>,
}

impl Default for IotHubConfig {
    fn default() -> Self {
        IotHubConfig {
            connection_string: None,
            connection_string_file: None,
            port: 8883,
            ca_file: None,
            client_cert: None,
            client_key: None,
            sas_lifetime_secs: 3600,
            compat_property_names: None,
            response_timeout_ms: 30_000,
            dps: None,
        }
    }
}

/// Why the device's IoT Hub identity could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IotHubError {
    #[error("[iothub]: give connection-string or connection-string-file")]
    NoConnectionString,
    #[error("[iothub]: give connection-string or connection-string-file, not both")]
    Both,
    #[error("[iothub] connection-string-file {path}: {cause}")]
    File { path: PathBuf, cause: String },
    #[error("[iothub] {what}: {cause}")]
    ConnectionString { what: String, cause: AuthError },
    #[error("[iothub]: the connection string says x509=true: set client-cert and client-key")]
    NoCertificate,
    #[error("[iothub]: client-cert and client-key are for x509=true; this connection string has a SharedAccessKey")]
    CertificateWithKey,
    #[error("[iothub] sas-lifetime-secs must be at least 10")]
    ShortLifetime,
    #[error("[iothub]: give a connection string or [iothub.dps], not both")]
    DpsAndConnectionString,
    #[error(transparent)]
    Dps(#[from] DpsError),
}

/// Where the device's hub identity comes from.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A connection string (in the config, a file, or ADU's du-config.json).
    Connection(Identity),
    /// A registration with DPS, which assigns the hub and the device id.
    Dps(DpsSetup),
}

/// The device's identity and what ADU's config says about it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub connection: ConnectionString,
    /// `manufacturer` and `model` from du-config.json, when the string came from there.
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub compat_property_names: Option<String>,
    /// `agents[0].additionalDeviceProperties` (string values), reported in `deviceProperties`.
    pub additional_properties: Vec<(String, String)>,
}

impl IotHubConfig {
    /// The identity's source: `[iothub.dps]`, or the connection string.
    pub fn credentials(&self) -> Result<Credentials, IotHubError> {
        let Some(dps) = &self.dps else {
            return self.identity().map(Credentials::Connection);
        };
        if self.sas_lifetime_secs < 10 {
            return Err(IotHubError::ShortLifetime);
        }
        if self.connection_string.is_some() || self.connection_string_file.is_some() {
            return Err(IotHubError::DpsAndConnectionString);
        }
        let certificate = self.client_cert.is_some() && self.client_key.is_some();
        Ok(Credentials::Dps(dps.setup(certificate)?))
    }

    /// The identity DPS's assignment `a` gives.
    pub fn provisioned(&self, a: &Assignment, setup: &DpsSetup) -> Identity {
        Identity {
            connection: a.connection(setup),
            manufacturer: None,
            model: None,
            compat_property_names: self.compat_property_names.clone(),
            additional_properties: Vec::new(),
        }
    }

    /// The TLS files of the hub's and DPS's connections.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }

    /// Reads the connection string (from the config or its file) and checks it against the
    /// certificate settings.
    pub fn identity(&self) -> Result<Identity, IotHubError> {
        if self.sas_lifetime_secs < 10 {
            return Err(IotHubError::ShortLifetime);
        }
        let mut id = match (&self.connection_string, &self.connection_string_file) {
            (Some(_), Some(_)) => return Err(IotHubError::Both),
            (None, None) => return Err(IotHubError::NoConnectionString),
            (Some(text), None) => Identity {
                connection: ConnectionString::parse(text).map_err(|cause| {
                    IotHubError::ConnectionString {
                        what: "connection-string".into(),
                        cause,
                    }
                })?,
                manufacturer: None,
                model: None,
                compat_property_names: None,
                additional_properties: Vec::new(),
            },
            (None, Some(path)) => from_file(path)?,
        };
        let x509 = id.connection.shared_access_key.is_none();
        let cert = self.client_cert.is_some() && self.client_key.is_some();
        match (x509, cert) {
            (true, false) => return Err(IotHubError::NoCertificate),
            (false, true) => return Err(IotHubError::CertificateWithKey),
            _ => {}
        }
        if self.compat_property_names.is_some() {
            id.compat_property_names = self.compat_property_names.clone();
        }
        Ok(id)
    }
}

/// A file with a connection string, or ADU's du-config.json.
fn from_file(path: &Path) -> Result<Identity, IotHubError> {
    let err = |cause: String| IotHubError::File {
        path: path.to_owned(),
        cause,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let text = text.trim_start_matches('\u{feff}');
    let parse = |what: String, s: &str| {
        ConnectionString::parse(s).map_err(|cause| IotHubError::ConnectionString { what, cause })
    };
    if !text.trim_start().starts_with('{') {
        return Ok(Identity {
            connection: parse(path.display().to_string(), text)?,
            manufacturer: None,
            model: None,
            compat_property_names: None,
            additional_properties: Vec::new(),
        });
    }
    let doc: Value = serde_json::from_str(text).map_err(|e| err(format!("not JSON: {e}")))?;
    let agent = doc
        .get("agents")
        .and_then(|a| a.get(0))
        .ok_or_else(|| err("du-config.json without `agents[0]`".into()))?;
    let source = agent
        .get("connectionSource")
        .ok_or_else(|| err("`agents[0]` has no `connectionSource`".into()))?;
    let kind = source.get("connectionType").and_then(Value::as_str);
    if kind != Some("string") {
        return Err(err(format!(
            "`agents[0].connectionSource.connectionType` is {}: sandstep reads connection strings (\"string\"); the Azure IoT Identity Service (\"AIS\") is not supported",
            kind.map_or("missing".to_owned(), |k| format!("\"{k}\""))
        )));
    }
    let data = source
        .get("connectionData")
        .and_then(Value::as_str)
        .ok_or_else(|| err("`agents[0].connectionSource.connectionData` is missing".into()))?;
    let text_of = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    Ok(Identity {
        connection: parse(
            format!(
                "{} agents[0].connectionSource.connectionData",
                path.display()
            ),
            data,
        )?,
        // config_utils.c: the agent's own `manufacturer`/`model` (the top level's are the
        // defaults of older configs).
        manufacturer: text_of(agent.get("manufacturer").or(doc.get("manufacturer"))),
        model: text_of(agent.get("model").or(doc.get("model"))),
        compat_property_names: text_of(doc.get("compatPropertyNames")),
        additional_properties: agent
            .get("additionalDeviceProperties")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2FuZHN0ZXAgdGVzdCBrZXkgMzIgYnl0ZXMgbG9uZyE=";

    #[test]
    fn adus_du_config_is_read_for_the_connection_string_and_device_properties() {
        // The shape of ADU's src/extensions/step_handlers/script_handler/tests/testdata/
        // script_handler_test_config/du-config.json.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("du-config.json");
        let doc = serde_json::json!({
            "schemaVersion": "1.0", "aduShellTrustedUsers": ["adu"],
            "manufacturer": "contoso", "model": "espresso-v1",
            "agents": [{"name": "main", "runas": "adu",
                "connectionSource": {"connectionType": "string",
                    "connectionData": format!("HostName=h.azure-devices.net;DeviceId=d1;SharedAccessKey={KEY}")},
                "manufacturer": "contoso", "model": "espresso-v1"}]
        });
        std::fs::write(&path, doc.to_string()).unwrap();
        let c = IotHubConfig {
            connection_string_file: Some(path.clone()),
            ..IotHubConfig::default()
        };
        let id = c.identity().unwrap();
        assert_eq!(id.connection.device_id, "d1");
        assert_eq!(id.manufacturer.as_deref(), Some("contoso"));
        assert_eq!(id.model.as_deref(), Some("espresso-v1"));

        let ais = doc.to_string().replace("\"string\"", "\"AIS\"");
        std::fs::write(&path, ais).unwrap();
        let e = c.identity().unwrap_err().to_string();
        assert!(e.contains("connectionType` is \"AIS\""), "{e}");
    }

    #[test]
    fn certificates_and_keys_must_agree_with_the_connection_string() {
        let with_key = IotHubConfig {
            connection_string: Some(format!("HostName=h;DeviceId=d;SharedAccessKey={KEY}")),
            client_cert: Some("c.pem".into()),
            client_key: Some("k.pem".into()),
            ..IotHubConfig::default()
        };
        assert!(matches!(
            with_key.identity(),
            Err(IotHubError::CertificateWithKey)
        ));
        let x509 = IotHubConfig {
            connection_string: Some("HostName=h;DeviceId=d;x509=true".into()),
            ..IotHubConfig::default()
        };
        assert!(matches!(x509.identity(), Err(IotHubError::NoCertificate)));
        assert!(matches!(
            IotHubConfig::default().identity(),
            Err(IotHubError::NoConnectionString)
        ));
    }
}
