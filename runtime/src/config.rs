//! The configuration file (TOML): data dir, downloads, default limits, and the per-handler policy.
//!
//! Everything is optional; an empty file (or none) gives the embedded defaults. A handler id
//! without a `[handlers."<id>"]` table gets no capability beyond the base world, and default
//! limits. See `examples/config.toml` for a commented example.

use crate::capability::process::ProcessPolicy;
use crate::capability::{Capability, Grants};
use crate::download::DownloadConfig;
use crate::sandbox::Limits;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The whole configuration. `Config::default()` is what an empty file gives: default settings
/// and the built-in policy of the default handlers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Where sandstep keeps its state (default: /var/lib/sandstep as root, else a per-user dir).
    pub data_dir: Option<PathBuf>,
    pub download: DownloadConfig,
    /// Limits for handlers without their own.
    pub limits: Limits,
    /// Trusted keys and signature rules.
    pub trust: crate::trust::TrustConfig,
    /// The gateway agent.
    pub agent: crate::agent::AgentConfig,
    /// The MQTT broker (agent, replica, operator commands).
    pub mqtt: crate::mqtt::MqttConfig,
    /// The HTTP-polling source.
    pub http_poll: Option<crate::agent::poll::HttpPollConfig>,
    /// The device-state replica.
    pub shadow: ShadowConfig,
    /// Policy per handler id.
    pub handlers: BTreeMap<String, HandlerPolicy>,
    /// What the device is: the properties updates' compatibility is checked against.
    pub device: crate::workflow::admission::DeviceConfig,
}

/// The `[shadow]` table: the device-state replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ShadowConfig {
    /// The SQLite database (default: `<data-dir>/shadow.sqlite`).
    pub database: Option<PathBuf>,
}

/// The built-in policy of the default handlers (`default-policy.toml`).
pub fn default_policies() -> BTreeMap<String, HandlerPolicy> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PolicyFile {
        handlers: BTreeMap<String, HandlerPolicy>,
    }
    // Not parsed as a `Config`: its serde default is this very function.
    toml::from_str::<PolicyFile>(include_str!("default-policy.toml"))
        .expect("the built-in policy is valid (tested)")
        .handlers
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: None,
            download: DownloadConfig::default(),
            limits: Limits::default(),
            trust: crate::trust::TrustConfig::default(),
            agent: crate::agent::AgentConfig::default(),
            mqtt: crate::mqtt::MqttConfig::default(),
            http_poll: None,
            shadow: ShadowConfig::default(),
            handlers: default_policies(),
            device: Default::default(),
        }
    }
}

/// What one handler id is granted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct HandlerPolicy {
    /// Capability interfaces granted (`process`, `slot`).
    pub capabilities: BTreeSet<Capability>,
    /// Limits replacing the defaults for this handler.
    pub limits: Option<Limits>,
    /// The process capability's programs and rules (when `process` is granted).
    pub process: Option<ProcessPolicy>,
    /// The slot capability's slots and boot control (when `slot` is granted).
    pub slot: Option<crate::capability::slot::SlotPolicy>,
    /// Extra host directories preopened for this handler.
    pub dirs: Vec<ExtraDir>,
    /// Component properties that may be mapped in as directories, for the selected component
    /// only (component-aware handlers).
    pub component_dirs: Vec<ComponentDir>,
    /// Put a copy of each verified payload file in the step's work folder before the handler
    /// runs, as ADU's agent downloads a step's files into the folder it passes as
    /// `--work-folder` (its script handler's scripts copy `<work-folder>/<file>`). A copy, never
    /// a link: what a program does to it cannot reach the store, another step, or a later run.
    pub payload_in_work: bool,
}

/// A host directory the policy hands to a handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExtraDir {
    /// Absolute host path.
    pub host: PathBuf,
    /// Where the handler sees it (absolute, not /payload, /work or /state).
    pub guest: String,
    #[serde(default)]
    pub writable: bool,
}

/// A component property (such as `path`) whose value, a host directory, is mapped in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ComponentDir {
    /// The property name in the inventory (`properties.<name>`).
    pub property: String,
    /// Where the handler sees the directory.
    pub guest: String,
    #[serde(default)]
    pub writable: bool,
    /// The directory must lie under this host path (after resolving symlinks).
    pub under: PathBuf,
}

fn check_guest_path(guest: &str) -> Result<(), String> {
    if !guest.starts_with('/') || guest == "/" {
        return Err(format!(
            "guest path `{guest}` must be an absolute directory like /data"
        ));
    }
    if guest.split('/').any(|p| p == ".." || p == ".") {
        return Err(format!("guest path `{guest}` must not contain `.` or `..`"));
    }
    for reserved in ["/payload", "/work", "/state"] {
        if guest == reserved || guest.starts_with(&format!("{reserved}/")) {
            return Err(format!(
                "guest path `{guest}` is inside {reserved}, which sandstep provides"
            ));
        }
    }
    Ok(())
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config {path}: handlers.\"{id}\": {rule}")]
    Policy {
        path: String,
        id: String,
        rule: String,
    },
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses config text; `origin` names it in errors. The built-in policy of the default
    /// handlers applies to every id the text does not configure itself.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        for (id, policy) in default_policies() {
            config.handlers.entry(id).or_insert(policy);
        }
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        for (id, p) in &self.handlers {
            let err = |rule: String| ConfigError::Policy {
                path: origin.to_owned(),
                id: id.clone(),
                rule,
            };
            if !sandstep_model::manifest::is_handler_id(id) {
                return Err(err("not a handler id (vendor/name:version)".into()));
            }
            if p.process.is_some() && !p.capabilities.contains(&Capability::Process) {
                return Err(err(
                    "has a [process] table but `process` is not in capabilities".into(),
                ));
            }
            for d in &p.dirs {
                check_guest_path(&d.guest).map_err(|r| err(format!("dirs: {r}")))?;
                if !d.host.is_absolute() {
                    return Err(err(format!(
                        "dirs: host path `{}` must be absolute",
                        d.host.display()
                    )));
                }
            }
            for d in &p.component_dirs {
                check_guest_path(&d.guest).map_err(|r| err(format!("component-dirs: {r}")))?;
                if !d.under.is_absolute() {
                    return Err(err(format!(
                        "component-dirs: `under` path `{}` must be absolute",
                        d.under.display()
                    )));
                }
            }
            if let Some(pp) = &p.process {
                for prog in &pp.programs {
                    if !prog.path.starts_with('/') {
                        return Err(err(format!(
                            "process program `{}` must be an absolute path",
                            prog.path
                        )));
                    }
                    if prog.recover.first().is_some_and(|r| !r.starts_with('/')) {
                        return Err(err(format!(
                            "process program `{}`: its `recover` command must start with an \
                             absolute path",
                            prog.path
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The capabilities and policies granted to `handler_id`.
    pub fn grants(&self, handler_id: &str) -> Grants {
        let Some(p) = self.handlers.get(handler_id) else {
            return Grants::default();
        };
        Grants {
            process: p
                .capabilities
                .contains(&Capability::Process)
                .then(|| p.process.clone().unwrap_or_default()),
            slot: p.capabilities.contains(&Capability::Slot).then(|| {
                crate::capability::slot::SlotGrant {
                    policy: p.slot.clone(),
                    handler_id: handler_id.to_owned(),
                }
            }),
        }
    }

    /// The policy table for `handler_id`, if any.
    pub fn policy(&self, handler_id: &str) -> Option<&HandlerPolicy> {
        self.handlers.get(handler_id)
    }

    /// The limits for `handler_id`.
    pub fn limits(&self, handler_id: &str) -> Limits {
        self.handlers
            .get(handler_id)
            .and_then(|p| p.limits.clone())
            .unwrap_or_else(|| self.limits.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_config_gives_defaults_and_no_grants() {
        let c = Config::parse("", "test").unwrap();
        assert_eq!(c, Config::default());
        assert!(c.grants("anything/x:1").process.is_none());
    }

    #[test]
    fn the_default_handlers_have_their_built_in_policy_unless_overridden() {
        let c = Config::default();
        let script = c
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
            let apt = c.grants(id).process.expect("apt may run programs");
            let get = apt.programs.iter().find(|p| p.path == "/usr/bin/apt-get");
            let get = get.expect("apt-get is allowed");
            assert!(get.finish_on_cancel);
            assert_eq!(get.recover, ["/usr/bin/dpkg", "--configure", "-a"]);
        }
        let off = Config::parse("[handlers.\"microsoft/script:1\"]\n", "t").unwrap();
        assert!(
            off.grants("microsoft/script:1").process.is_none(),
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
        let g = c.grants("microsoft/script:1");
        assert_eq!(g.process.unwrap().programs[0].path, "/bin/sh");
        let l = c.limits("microsoft/script:1");
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
}
