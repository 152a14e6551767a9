//! The fleet side's configuration: the same TOML file format as the gateway's, of which it reads
//! `data-dir`, `[mqtt]`, `[shadow]` and `[agent] topics` (the topic layout both halves must
//! agree on). The gateway's own sections are accepted and left alone, so one file can serve a
//! machine that runs both halves; any other key is refused, naming it.

use crate::store::{Database, DatabaseError, PgTls};
use sandstep_model::shadow::TopicLayout;
use sandstep_transport::mqtt::MqttConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The file the fleet package installs.
pub const SYSTEM_CONFIG: &str = "/etc/sandstep/fleet.toml";

/// The whole configuration. `FleetConfig::default()` is what an empty file gives.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct FleetConfig {
    /// Where the replica keeps its SQLite store when `[shadow] database` names none.
    pub data_dir: Option<PathBuf>,
    /// The broker (replica and operator commands).
    pub mqtt: MqttConfig,
    /// The device-state replica.
    pub shadow: ShadowConfig,
    /// The web console (`sandstep-fleet console`).
    pub console: ConsoleConfig,
    /// Of the agent's table, only the topic layout.
    pub agent: AgentTopics,
    // The gateway's sections: accepted, not read here.
    download: Option<toml::Table>,
    windows: Option<toml::Table>,
    limits: Option<toml::Table>,
    trust: Option<toml::Table>,
    http_poll: Option<toml::Table>,
    iothub: Option<toml::Table>,
    hawkbit: Option<toml::Table>,
    handlers: Option<toml::Table>,
    device: Option<toml::Table>,
    health: Option<toml::Table>,
}

/// `[agent] topics`; the agent's other keys are the gateway's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct AgentTopics {
    pub topics: TopicLayout,
}

/// The `[shadow]` table: the device-state replica.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ShadowConfig {
    /// A SQLite file (default: `<data-dir>/shadow.sqlite`) or a PostgreSQL URL
    /// (`postgres://user@host/db`) for fleets served by several replicas.
    pub database: Option<String>,
    /// The CA certificate(s) (PEM) PostgreSQL's TLS certificate is checked against; default:
    /// the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM) the replica presents to PostgreSQL (`cert`
    /// authentication: the certificate's CN is the database user).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The MQTT shared-subscription group replicas join (`$share/<group>/...`), so each report
    /// is handled by one of them; empty: a plain subscription (a broker without shared
    /// subscriptions, one replica only).
    pub share_group: String,
    /// How often the replica looks at running rollouts, in milliseconds.
    pub rollout_interval_ms: u64,
}

/// The `[console]` table: the web console over the replica's store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConsoleConfig {
    /// Where it listens (HTTPS).
    pub listen: String,
    /// Its TLS certificate chain and key (PEM); without them a self-signed certificate is made
    /// once and kept in the data dir (`console-cert.pem`, `console-key.pem`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The accounts file (`sandstep-fleet console add-user`); default: `<data-dir>/console-accounts`.
    pub accounts: Option<PathBuf>,
    /// The CA (PEM) whose client certificates the console accepts: an account marked
    /// `certificate` logs in with one whose subject common name is its name.
    pub client_ca: Option<PathBuf>,
    /// How long a login lasts, in minutes.
    pub session_minutes: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            listen: "127.0.0.1:8443".into(),
            cert: None,
            key: None,
            accounts: None,
            client_ca: None,
            session_minutes: 720,
        }
    }
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            database: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            share_group: "sandstep".into(),
            rollout_interval_ms: 1000,
        }
    }
}

impl ShadowConfig {
    /// The replica's store when `database` names one (else the data dir's SQLite file).
    pub fn store(&self) -> Result<Option<Database>, DatabaseError> {
        self.database
            .as_deref()
            .map(|d| Database::parse(d, self.tls()))
            .transpose()
    }

    /// How the replica speaks TLS to PostgreSQL.
    pub fn tls(&self) -> PgTls {
        PgTls {
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {cause}")]
    Read {
        path: String,
        /// In the message, not a `source`: printed once.
        cause: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config {path}: [shadow] database: {cause}")]
    Database { path: String, cause: DatabaseError },
}

impl FleetConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<FleetConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        FleetConfig::parse(&text, &path.display().to_string())
    }

    /// Parses config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<FleetConfig, ConfigError> {
        let config: FleetConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config
            .shadow
            .store()
            .map_err(|cause| ConfigError::Database {
                path: origin.to_owned(),
                cause,
            })?;
        Ok(config)
    }
}

/// The replica's data dir when none is given: `/var/lib/sandstep-shadow` as root (the
/// sandstep-shadow service's state directory), else a per-user one.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/sandstep-shadow");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("sandstep-shadow")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_serves_both_halves_and_unknown_keys_are_refused() {
        let both = "data-dir = \"/d\"\n[mqtt]\nurl = \"mqtt://b:1883\"\n\
                    [agent]\ndevice-id = \"gw\"\ntopics = \"aws\"\n\
                    [handlers.\"x/y:1\"]\ncapabilities = []\n\
                    [shadow]\nshare-group = \"g\"\n";
        let c = FleetConfig::parse(both, "t").unwrap();
        assert_eq!(c.mqtt.url, "mqtt://b:1883");
        assert_eq!(
            c.agent.topics.topics(),
            sandstep_model::shadow::Topics::aws()
        );
        assert_eq!(c.shadow.share_group, "g");
        // Every table of the gateway's config (sandstep::config::Config) is accepted.
        let gateway = "[download]\n[windows]\n[limits]\n[trust]\n[http-poll]\n[iothub]\n\
                       [hawkbit]\n[handlers]\n[device]\n[health]\n";
        FleetConfig::parse(gateway, "t").unwrap();
        let e = FleetConfig::parse("[shadow]\nsharegroup = \"g\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("sharegroup"), "{e}");
        let e = FleetConfig::parse("rollouts = 1\n", "t").unwrap_err();
        assert!(e.to_string().contains("rollouts"), "{e}");
    }

    #[test]
    fn a_database_setting_that_names_no_store_is_refused_at_load_naming_it() {
        let e = FleetConfig::parse("[shadow]\ndatabase = \"?sslmode=require\"\n", "f.toml")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config f.toml: [shadow] database: `?sslmode=require` is neither"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The shipped example is the package's conffile: it parses and shows the defaults, and
    /// its commented store settings parse when uncommented.
    #[test]
    fn the_shipped_fleet_config_parses_with_its_store_settings_uncommented_too() {
        let text = include_str!("../../examples/fleet.toml");
        let c = FleetConfig::parse(text, "fleet.toml").unwrap();
        assert_eq!(
            c.shadow,
            ShadowConfig::default(),
            "the example shows the defaults"
        );
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = FleetConfig::parse(&uncommented, "fleet.toml").unwrap();
        assert_eq!(
            c.shadow.database.as_deref(),
            Some("postgres://sandstep@%2Frun%2Fpostgresql/fleet")
        );
        assert_eq!(
            c.shadow.ca_file.as_deref(),
            Some(Path::new("/etc/sandstep/db-ca.pem"))
        );
        assert_eq!(
            c.data_dir.as_deref(),
            Some(Path::new("/var/lib/sandstep-shadow"))
        );
    }
}
