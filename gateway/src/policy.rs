//! Per-handler policy: what each handler id is granted (capabilities and their rules), its
//! limits, and the host directories mapped in for it. The config file's `[limits]` and
//! `[handlers."<id>"]` tables are parsed into this; the deployment engine and the loader take it
//! from there. A handler id without a table gets the base world only and the default limits.

use crate::capability::process::{ProcessPolicy, ProgramRule};
use crate::capability::{Capability, Grants};
use crate::sandbox::dirs::Preopen;
use crate::sandbox::Limits;
use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The policy of every handler id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Limits for handlers without their own.
    pub defaults: Limits,
    pub handlers: BTreeMap<String, HandlerPolicy>,
}

impl Default for Policy {
    /// The default limits and the built-in policy of the default handlers.
    fn default() -> Self {
        Policy {
            defaults: Limits::default(),
            handlers: default_policies(),
        }
    }
}

/// A rule of one handler's table that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("handlers.\"{id}\": {rule}")]
pub struct PolicyError {
    pub id: String,
    pub rule: String,
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
    /// Component properties naming a directory the handler's host programs may write beneath
    /// (the kernel holds them to it: [`crate::capability::landlock`]), for the selected
    /// component only: ADU's scripts copy firmware into the component's `path`. A value that is
    /// not an existing directory grants nothing (the program's own write then fails, as it
    /// would under ADU's agent).
    pub component_writable: Vec<String>,
    /// Put a copy of each verified payload file in the step's work folder before the handler
    /// runs, as ADU's agent downloads a step's files into the folder it passes as
    /// `--work-folder` (its script handler's scripts copy `<work-folder>/<file>`). A copy, never
    /// a link: what a program does to it cannot reach the store, another step, or a later run.
    pub payload_in_work: bool,
    /// Fetch no file before is-installed: the handler answers it without its files (a file
    /// set's digest against the destination), so an installed step downloads nothing. Off by
    /// default, as is-installed may read a small file (an apt manifest, ADU's script handler
    /// downloads its primary script first: script_handler.cpp, ScriptHandlerImpl::IsInstalled).
    pub fetch_after_is_installed: bool,
    /// The handler's restore undoes every earlier step it ran in the deployment, not only the
    /// failing one (a file set is put back whole): after a restore that succeeded, those steps
    /// are reported `undoneBy` the failing step, as their own 700 no longer holds.
    pub restore_undoes_earlier_steps: bool,
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

/// Why a guest path cannot be a mapped directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestPathError {
    #[error("guest path `{0}` must be an absolute directory like /data")]
    NotAbsolute(String),
    #[error("guest path `{0}` must not contain `.` or `..`")]
    DotSegment(String),
    #[error("guest path `{guest}` is inside {reserved}, which sandstep provides")]
    Reserved {
        guest: String,
        reserved: &'static str,
    },
}

fn check_guest_path(guest: &str) -> Result<(), GuestPathError> {
    if !guest.starts_with('/') || guest == "/" {
        return Err(GuestPathError::NotAbsolute(guest.to_owned()));
    }
    if guest.split('/').any(|p| p == ".." || p == ".") {
        return Err(GuestPathError::DotSegment(guest.to_owned()));
    }
    for reserved in ["/payload", "/work", "/state"] {
        if guest == reserved || guest.starts_with(&format!("{reserved}/")) {
            return Err(GuestPathError::Reserved {
                guest: guest.to_owned(),
                reserved,
            });
        }
    }
    Ok(())
}

impl Policy {
    /// Checks every handler's table: ids, absolute paths, guest paths that do not shadow the
    /// step's own directories, tables only for granted capabilities.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (id, p) in &self.handlers {
            let err = |rule: String| PolicyError {
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
    pub fn handler(&self, handler_id: &str) -> Option<&HandlerPolicy> {
        self.handlers.get(handler_id)
    }

    /// The limits for `handler_id`.
    pub fn limits(&self, handler_id: &str) -> Limits {
        self.handlers
            .get(handler_id)
            .and_then(|p| p.limits.clone())
            .unwrap_or_else(|| self.defaults.clone())
    }

    /// The directories the policy adds for a handler: its `dirs`, and for a component-aware handler
    /// the selected component's directories named by `component-dirs` (each checked to lie under
    /// the policy's `under` path after resolving symlinks, so an inventory cannot hand out `/`).
    pub fn extra_preopens(
        &self,
        handler_id: &str,
        component: Option<&sandstep_model::Component>,
    ) -> Result<Vec<Preopen>, PreopenError> {
        let Some(policy) = self.handler(handler_id) else {
            return Ok(Vec::new());
        };
        let rule = |what: &str| format!("policy handlers.\"{handler_id}\".{what}");
        let open = |rule: String, path: &std::path::Path| {
            Dir::open_ambient_dir(path, cap_std::ambient_authority()).map_err(|cause| {
                PreopenError::Open {
                    rule,
                    path: path.to_owned(),
                    cause,
                }
            })
        };
        let mut out = Vec::new();
        for d in &policy.dirs {
            let dir = open(rule("dirs"), &d.host)?;
            out.push(Preopen::new(dir, d.guest.clone(), d.writable));
        }
        let Some(c) = component else {
            return Ok(out);
        };
        for d in &policy.component_dirs {
            let real = component_dir(c, d, rule("component-dirs"))?;
            let dir = open(rule("component-dirs"), &real)?;
            out.push(Preopen::new(dir, d.guest.clone(), d.writable));
        }
        Ok(out)
    }
}

impl Policy {
    /// Every handler's program rules, with the handler id.
    pub fn program_rules(&self) -> impl Iterator<Item = (&str, &ProgramRule)> {
        self.handlers.iter().flat_map(|(id, h)| {
            h.process
                .iter()
                .flat_map(|p| p.programs.iter())
                .map(move |r| (id.as_str(), r))
        })
    }

    /// The host directories a handler's programs may also write for the selected component
    /// (`component-writable`): each property's value, resolved, when it is a directory.
    pub fn component_writable(
        &self,
        handler_id: &str,
        component: Option<&sandstep_model::Component>,
    ) -> Vec<PathBuf> {
        let (Some(policy), Some(c)) = (self.handler(handler_id), component) else {
            return Vec::new();
        };
        policy
            .component_writable
            .iter()
            .filter_map(|prop| c.properties.get(prop).and_then(|v| v.as_str()))
            .filter_map(|value| std::fs::canonicalize(value).ok())
            .filter(|real| real.is_dir())
            .collect()
    }
}

/// The real path of the directory component `c`'s property names, checked to lie under the
/// rule's `under` path.
fn component_dir(
    c: &sandstep_model::Component,
    d: &ComponentDir,
    rule: String,
) -> Result<PathBuf, PreopenError> {
    let value = c
        .properties
        .get(&d.property)
        .and_then(|v| v.as_str())
        .ok_or_else(|| PreopenError::NoProperty {
            component: c.id.clone(),
            property: d.property.clone(),
            rule: rule.clone(),
        })?;
    let under = std::fs::canonicalize(&d.under).map_err(|cause| PreopenError::Open {
        rule: format!("{rule}.under"),
        path: d.under.clone(),
        cause,
    })?;
    let real = std::fs::canonicalize(value).map_err(|cause| PreopenError::Resolve {
        component: c.id.clone(),
        property: d.property.clone(),
        value: value.to_owned(),
        cause,
    })?;
    if !real.starts_with(&under) || !real.is_dir() {
        return Err(PreopenError::NotUnder {
            component: c.id.clone(),
            property: d.property.clone(),
            value: value.to_owned(),
            under,
            rule,
        });
    }
    Ok(real)
}

/// Why a directory the policy maps in could not be.
#[derive(Debug, thiserror::Error)]
pub enum PreopenError {
    #[error("{rule}: cannot open {}: {cause}", path.display())]
    Open {
        rule: String,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("component `{component}` has no string property `{property}` ({rule})")]
    NoProperty {
        component: String,
        property: String,
        rule: String,
    },
    #[error("component `{component}`: properties.{property} `{value}`: {cause}")]
    Resolve {
        component: String,
        property: String,
        value: String,
        cause: std::io::Error,
    },
    #[error("component `{component}`: properties.{property} `{value}` is not a directory under {} ({rule})", under.display())]
    NotUnder {
        component: String,
        property: String,
        value: String,
        under: PathBuf,
        rule: String,
    },
}
