//! The configuration file (TOML): data dir, downloads, default limits, and the per-handler policy.
//!
//! Everything is optional; an empty file (or none) gives the embedded defaults. A handler id
//! without a `[handlers."<id>"]` table gets no capability beyond the base world, and default
//! limits. See `examples/config.toml` for a commented example.

use crate::agent::source::SourceSettings;
use crate::download::DownloadConfig;
use crate::policy::{default_policies, HandlerPolicy, Policy};
use crate::sandbox::Limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The whole configuration. `Config::default()` is what an empty file gives: default settings
/// and the built-in policy of the default handlers. One file may serve both halves: a table
/// added here must be accepted by `sandstep_fleet::config::FleetConfig` too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Where sandstep keeps its state (default: /var/lib/sandstep as root, else a per-user dir).
    pub data_dir: Option<PathBuf>,
    pub download: DownloadConfig,
    /// Maintenance windows: when downloads may run and installs may begin.
    pub windows: crate::window::WindowsConfig,
    /// Limits for handlers without their own.
    pub limits: Limits,
    /// Trusted keys and signature rules.
    pub trust: crate::trust::TrustConfig,
    /// The gateway agent.
    pub agent: crate::agent::AgentConfig,
    /// The MQTT broker (agent, replica, operator commands).
    pub mqtt: sandstep_transport::mqtt::MqttConfig,
    /// The HTTP-polling source.
    pub http_poll: Option<crate::agent::source::http_poll::HttpPollConfig>,
    /// The IoT Hub source (ADU's protocol).
    pub iothub: Option<crate::iothub::config::IotHubConfig>,
    /// The hawkBit source (its Direct Device Integration API).
    pub hawkbit: Option<crate::agent::source::hawkbit::HawkbitConfig>,
    /// The device-state replica's table: read by `sandstep-fleet`, accepted here so one file
    /// can serve a machine that runs both halves.
    pub shadow: Option<toml::Table>,
    /// Policy per handler id.
    pub handlers: BTreeMap<String, HandlerPolicy>,
    /// What the device is: the properties updates' compatibility is checked against.
    pub device: crate::workflow::admission::DeviceConfig,
    /// Checks that must pass after a reboot or restart before a deployment commits.
    pub health: crate::health::HealthConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: None,
            download: DownloadConfig::default(),
            windows: Default::default(),
            limits: Limits::default(),
            trust: crate::trust::TrustConfig::default(),
            agent: crate::agent::AgentConfig::default(),
            mqtt: sandstep_transport::mqtt::MqttConfig::default(),
            http_poll: None,
            iothub: None,
            hawkbit: None,
            shadow: None,
            handlers: default_policies(),
            device: Default::default(),
            health: Default::default(),
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
    #[error("config {path}: [agent] source = \"{kind}\" needs a [{table}] table")]
    SourceTable {
        path: String,
        kind: &'static str,
        table: &'static str,
    },
    #[error("config {path}: {problem}")]
    Health {
        path: String,
        problem: crate::health::HealthError,
    },
    #[error("config {path}: {problem}")]
    Download {
        path: String,
        problem: crate::download::SettingError,
    },
    #[error("config {path}: {problem}")]
    Windows {
        path: String,
        problem: crate::window::WindowSettingError,
    },
    #[error("config {path}: handlers.\"{id}\": {rule}")]
    Policy {
        path: String,
        id: String,
        rule: String,
    },
}

/// The built-in policy of the default handlers applies to every id the config does not
/// configure; a table of the config's own replaces its grants, but a behaviour it leaves unset
/// (fetch-after-is-installed, payload-in-work, restore-undoes-earlier-steps: how the handler
/// works, not what it may do) is the built-in one, so a table that only maps a directory does
/// not silently change how the handler's steps run.
fn inherit_defaults(handlers: &mut BTreeMap<String, HandlerPolicy>, text: &str) {
    let own: toml::Table = toml::from_str(text).unwrap_or_default();
    let own = own.get("handlers").and_then(toml::Value::as_table);
    for (id, builtin) in default_policies() {
        let Some(policy) = handlers.get_mut(&id) else {
            handlers.insert(id, builtin);
            continue;
        };
        let set = |key: &str| {
            own.and_then(|t| t.get(&id))
                .and_then(toml::Value::as_table)
                .is_some_and(|t| t.contains_key(key))
        };
        if !set("fetch-after-is-installed") {
            policy.fetch_after_is_installed = builtin.fetch_after_is_installed;
        }
        if !set("payload-in-work") {
            policy.payload_in_work = builtin.payload_in_work;
        }
        if !set("restore-undoes-earlier-steps") {
            policy.restore_undoes_earlier_steps = builtin.restore_undoes_earlier_steps;
        }
    }
}

/// Each handler's relative `dirs` host path, joined to `base` (the config file's directory).
fn anchor_relative_dirs(handlers: &mut BTreeMap<String, HandlerPolicy>, base: &Path) {
    for d in handlers.values_mut().flat_map(|h| h.dirs.iter_mut()) {
        if d.host.is_relative() {
            d.host = base.join(&d.host);
        }
    }
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            cause: source,
        })?;
        // A relative `dirs` host path is relative to the file's own directory (a handler
        // project's gateway.toml names its stand-in directories so).
        let base = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        Config::parse_at(&text, &path.display().to_string(), base.as_deref())
    }

    /// Parses config text; `origin` names it in errors. The built-in policy of the default
    /// handlers applies to every id the text does not configure itself. Host paths must be
    /// absolute (a file read with [`Config::load`] may name them relative to itself).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_at(text, origin, None)
    }

    fn parse_at(text: &str, origin: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        inherit_defaults(&mut config.handlers, text);
        if let Some(base) = base {
            anchor_relative_dirs(&mut config.handlers, base);
        }
        config
            .policy()
            .validate()
            .map_err(|e| ConfigError::Policy {
                path: origin.to_owned(),
                id: e.id,
                rule: e.rule,
            })?;
        config
            .download
            .validate()
            .map_err(|problem| ConfigError::Download {
                path: origin.to_owned(),
                problem,
            })?;
        config
            .windows
            .validate()
            .map_err(|problem| ConfigError::Windows {
                path: origin.to_owned(),
                problem,
            })?;
        config
            .health
            .validate()
            .map_err(|problem| ConfigError::Health {
                path: origin.to_owned(),
                problem,
            })?;
        config
            .source()
            .map_err(|(kind, table)| ConfigError::SourceTable {
                path: origin.to_owned(),
                kind,
                table,
            })?;
        Ok(config)
    }

    /// The source `[agent] source` names, with its table; `Err((source, table))` when the
    /// table it needs is missing (IoT Hub's is optional: its defaults read ADU's own config).
    pub fn source(&self) -> Result<SourceSettings, (&'static str, &'static str)> {
        use crate::agent::SourceKind;
        Ok(match self.agent.source {
            SourceKind::Mqtt => SourceSettings::Shadow,
            SourceKind::Iothub => SourceSettings::Iothub(self.iothub.clone().unwrap_or_default()),
            SourceKind::HttpPoll => {
                SourceSettings::HttpPoll(self.http_poll.clone().ok_or(("http-poll", "http-poll"))?)
            }
            SourceKind::Hawkbit => {
                SourceSettings::Hawkbit(self.hawkbit.clone().ok_or(("hawkbit", "hawkbit"))?)
            }
        })
    }

    /// The per-handler policy (`[limits]` and `[handlers]`).
    pub fn policy(&self) -> Policy {
        Policy {
            defaults: self.limits.clone(),
            handlers: self.handlers.clone(),
        }
    }

    /// What the deployment engine needs (also as `Config: Into<workflow::Settings>`).
    pub fn deploy_settings(&self) -> crate::workflow::Settings {
        crate::workflow::Settings {
            download: self.download.clone(),
            windows: self.windows.clone(),
            trust: self.trust.clone(),
            policy: self.policy(),
            device: self.device.clone(),
            health: self.health.clone(),
        }
    }

    /// What the agent needs.
    pub fn agent_settings(&self) -> crate::agent::Settings {
        crate::agent::Settings {
            agent: self.agent.clone(),
            mqtt: self.mqtt.clone(),
            source: self
                .source()
                .expect("checked when the config was parsed or built with its table"),
            deploy: self.deploy_settings(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table that only maps a directory for a default handler replaces its grants, not how
    /// it works: the built-in behaviours stay unless the table sets them.
    #[test]
    fn a_default_handlers_own_table_keeps_its_built_in_behaviours_unless_it_sets_them() {
        let files = "sandstep/files:1";
        let c = Config::parse(
            &format!("[handlers.\"{files}\"]\ndirs = [{{ host = \"/opt/app\", guest = \"/dest/app\" }}]\n"),
            "t",
        )
        .unwrap();
        let p = &c.handlers[files];
        assert_eq!(p.dirs.len(), 1);
        assert!(p.fetch_after_is_installed && p.restore_undoes_earlier_steps);
        let c = Config::parse(
            &format!("[handlers.\"{files}\"]\nfetch-after-is-installed = false\n"),
            "t",
        )
        .unwrap();
        let p = &c.handlers[files];
        assert!(!p.fetch_after_is_installed && p.restore_undoes_earlier_steps);
        // Grants are not inherited: the table says exactly what the handler may do.
        let script = "microsoft/script:1";
        let c = Config::parse(&format!("[handlers.\"{script}\"]\n"), "t").unwrap();
        assert!(c.handlers[script].capabilities.is_empty());
        assert!(c.handlers[script].payload_in_work);
    }

    #[test]
    fn a_relative_dirs_host_is_relative_to_the_config_file_and_refused_in_bare_text() {
        let text = "[handlers.\"acme/config:1\"]\n\
                    dirs = [{ host = \"device/config\", guest = \"/config\", writable = true }]\n";
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("gateway.toml"), text).unwrap();
        let c = Config::load(&t.path().join("gateway.toml")).unwrap();
        let dirs = &c.handlers["acme/config:1"].dirs;
        assert_eq!(dirs[0].host, t.path().join("device/config"));
        let e = Config::parse(text, "inline").unwrap_err().to_string();
        assert!(e.contains("must be absolute"), "{e}");
    }

    #[test]
    fn a_bad_proxy_or_a_zero_attempts_is_refused_naming_the_field() {
        for (text, want) in [
            (
                "proxy = \"not a url\"",
                "[download] proxy: `not a url` is not a URL",
            ),
            (
                "proxy = \"socks5://127.0.0.1:1080\"",
                "scheme must be http or https",
            ),
            (
                "proxy = \"http://u:secret@proxy:3128/path\"",
                "no path or query",
            ),
            ("attempts = 0", "[download] attempts: must be at least 1"),
            (
                "stall-timeout-secs = 0",
                "[download] stall-timeout-secs: must not be 0",
            ),
            (
                "max-bytes-per-sec = 0",
                "[download] max-bytes-per-sec: must not be 0",
            ),
        ] {
            let e = Config::parse(&format!("[download]\n{text}\n"), "c.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains("secret"), "the password is not shown: {e}");
        }
        let ok = "[download]\nproxy = \"http://u:p@127.0.0.1:3128\"\nno-proxy = \"localhost\"\n";
        let c = Config::parse(ok, "c.toml").unwrap();
        assert_eq!(
            c.download.proxy_shown().unwrap(),
            "http://u:***@127.0.0.1:3128/"
        );
    }

    #[test]
    fn an_empty_config_gives_defaults_and_no_grants() {
        let c = Config::parse("", "test").unwrap();
        assert_eq!(c, Config::default());
        assert!(c.policy().grants("anything/x:1").process.is_none());
    }

    #[test]
    fn the_default_handlers_have_their_built_in_policy_unless_overridden() {
        let c = Config::default();
        let script = c
            .policy()
            .grants("microsoft/script:1")
            .process
            .expect("script may run programs");
        assert_eq!(
            script
                .programs
                .iter()
                .map(|p| p.path.as_str())
                .collect::<Vec<_>>(),
            ["/bin/sh", "/bin/bash"]
        );
        // The interpreter's entry point is always a payload file; nothing else may be.
        assert!(script
            .programs
            .iter()
            .all(|p| p.forms.iter().all(|f| f.prefix.is_empty()
                && f.then.first()
                    == Some(&crate::capability::arg_grammar::Slot::PayloadFile { suffix: None }))));
        // apt-get is never cut short, and an interrupted run is repaired by dpkg at the next start.
        for id in ["microsoft/apt:1", "sandstep/apt:1"] {
            let apt = c.policy().grants(id).process.expect("apt may run programs");
            let get = apt.programs.iter().find(|p| p.path == "/usr/bin/apt-get");
            let get = get.expect("apt-get is allowed");
            assert!(get.finish_on_cancel);
            assert_eq!(get.recover, ["/usr/bin/dpkg", "--configure", "-a"]);
        }
        let off = Config::parse("[handlers.\"microsoft/script:1\"]\n", "t").unwrap();
        assert!(
            off.policy().grants("microsoft/script:1").process.is_none(),
            "an explicit table replaces the default"
        );
    }

    #[test]
    fn policy_grants_process_with_its_programs() {
        let c = Config::parse(
            r#"
            [handlers."microsoft/script:1"]
            capabilities = ["process"]
            limits = { memory-bytes = 1048576, install = 5 }
            [[handlers."microsoft/script:1".process.programs]]
            path = "/bin/sh"
            forms = [{ then = ["payload-file"], rest = ["any"] }]
            "#,
            "test",
        )
        .unwrap();
        let g = c.policy().grants("microsoft/script:1");
        assert_eq!(g.process.unwrap().programs[0].path, "/bin/sh");
        let l = c.policy().limits("microsoft/script:1");
        assert_eq!(l.memory_bytes, 1 << 20);
        assert_eq!(l.install, std::time::Duration::from_secs(5));
        assert_eq!(l.apply, Limits::default().apply);
    }

    #[test]
    fn extra_dirs_may_not_shadow_the_standard_ones() {
        let e = Config::parse(
            "[handlers.\"a/b:1\"]\ndirs = [{ host = \"/srv\", guest = \"/work/x\" }]\n",
            "c.toml",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "config c.toml: handlers.\"a/b:1\": dirs: guest path `/work/x` is inside /work, which sandstep provides");
        let e = Config::parse("[handlers.\"a/b:1\"]\ncomponent-dirs = [{ property = \"path\", guest = \"/c/../etc\", under = \"/srv\" }]\n", "c.toml").unwrap_err();
        assert_eq!(e.to_string(), "config c.toml: handlers.\"a/b:1\": component-dirs: guest path `/c/../etc` must not contain `.` or `..`");
        Config::parse("[handlers.\"a/b:1\"]\ndirs = [{ host = \"/srv\", guest = \"/srv\", writable = true }]\n", "c.toml").unwrap();
    }

    #[test]
    fn mistakes_are_named() {
        let e = Config::parse("[handlers.\"a/b:1\"]\nprocess = {}\n", "c.toml").unwrap_err();
        assert_eq!(e.to_string(), "config c.toml: handlers.\"a/b:1\": has a [process] table but `process` is not in capabilities");
        let e = Config::parse("[handlers.\"nope\"]\n", "c.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "config c.toml: handlers.\"nope\": not a handler id (vendor/name:version)"
        );
        let e = Config::parse(
            "[handlers.\"a/b:1\"]\ncapabilities = [\"process\"]\n[[handlers.\"a/b:1\".process.programs]]\npath = \"/bin/true\"\nrecover = [\"dpkg\"]\n",
            "c.toml",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("`recover` command must start with an absolute path"),
            "{e}"
        );
        let e = Config::parse("colour = 1\n", "c.toml").unwrap_err();
        assert!(
            e.to_string().starts_with("config c.toml: TOML parse error"),
            "{e}"
        );
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        let e = Config::parse(
            "[health]\nurls = [\"http://127.0.0.1/ok\", \"gopher://x\"]\n",
            "c.toml",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "config c.toml: health.urls[1]: `gopher://x` is not http or https"
        );
        let e = Config::parse("[health]\ntries = \"3\"\n", "c.toml").unwrap_err();
        assert!(
            e.to_string().contains("health.tries") || e.to_string().contains("tries"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn the_shipped_example_config_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/config.toml");
        let c = super::Config::load(std::path::Path::new(path)).unwrap();
        assert_eq!(
            c.limits,
            crate::sandbox::Limits::default(),
            "the example shows the defaults"
        );
        assert_eq!(c.download, crate::download::DownloadConfig::default());
    }

    /// The example config's commented-out block under `header`, uncommented and parsed.
    fn uncommented(header: &str) -> super::Config {
        let text = include_str!("../../examples/config.toml");
        let block: String = text
            .lines()
            .skip_while(|l| *l != header)
            .map_while(|l| l.strip_prefix("# "))
            .map(|l| format!("{l}\n"))
            .collect();
        toml::from_str(&block).unwrap()
    }

    /// The agent example's `[health]` block, uncommented, is a valid health table.
    #[test]
    fn the_agent_examples_health_block_parses_when_uncommented() {
        let text = include_str!("../../examples/agent.toml");
        let block: String = text
            .lines()
            .skip_while(|l| *l != "# [health]")
            .map_while(|l| l.strip_prefix("# "))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = super::Config::parse(&block, "agent.toml").unwrap();
        assert_eq!(c.health.units, ["mosquitto.service"]);
        assert_eq!((c.health.tries, c.health.time_limit_secs), (3, 60));
    }

    /// The agent example's `[hawkbit]` block, uncommented, makes a hawkBit source.
    #[test]
    fn the_agent_examples_hawkbit_block_parses_when_uncommented() {
        let text = include_str!("../../examples/agent.toml");
        let block: String = text
            .lines()
            .skip_while(|l| *l != "# [hawkbit]")
            .map_while(|l| l.strip_prefix("# "))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = super::Config::parse(
            &format!("[agent]\nsource = \"hawkbit\"\n{block}"),
            "agent.toml",
        )
        .unwrap();
        let Ok(crate::agent::source::SourceSettings::Hawkbit(hb)) = c.source() else {
            panic!("{:?}", c.source())
        };
        assert_eq!(hb.base_url, "https://hawkbit.example");
        assert_eq!(hb.poll_interval_secs, Some(60));
    }

    #[test]
    fn the_example_configs_iothub_block_parses_when_uncommented_and_shows_the_defaults() {
        let hub = uncommented("# [iothub]").iothub.unwrap();
        assert_eq!(
            hub.connection_string_file.as_deref(),
            Some(std::path::Path::new("/etc/adu/du-config.json"))
        );
        assert_eq!(
            hub,
            crate::iothub::config::IotHubConfig {
                connection_string_file: hub.connection_string_file.clone(),
                ..Default::default()
            },
            "the example shows the defaults"
        );
    }

    #[test]
    fn the_example_configs_dps_block_parses_when_uncommented_and_shows_the_defaults() {
        let dps = uncommented("# [iothub.dps]").iothub.unwrap().dps.unwrap();
        assert_eq!(
            dps,
            crate::iothub::dps::DpsConfig {
                id_scope: "0ne00000000".into(),
                registration_id: "gw-0042".into(),
                symmetric_key_file: Some("/etc/sandstep/dps.key".into()),
                ..Default::default()
            },
            "the example shows the defaults"
        );
    }
}

impl From<Config> for crate::workflow::Settings {
    fn from(c: Config) -> Self {
        c.deploy_settings()
    }
}

impl From<Config> for crate::agent::Settings {
    fn from(c: Config) -> Self {
        c.agent_settings()
    }
}
