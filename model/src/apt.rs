//! ADU's apt manifest (`{"name", "version", "packages": [{"name", "version"}],
//! "agentRestartRequired"}`), parsed and checked once here so the apt handler and the fuzzer see
//! the same rules. ADU's rules (`src/extensions/step_handlers/apt_handler/src/apt_parser.cpp`,
//! `GetAptContentFromRootValue`): `name` and `version` are required; `packages` may be absent
//! (the step then fails at download, where ADU's adu-shell finds no package), but not empty;
//! a package needs a non-empty name; `agentRestartRequired` counts only as a JSON `true`; a
//! package whose name starts with `deviceupdate-agent` (ADU's agent) implies an agent restart.
//!
//! A package name ending in `-` means remove. Names and versions are restricted to what Debian
//! allows, because they become apt-get arguments.

use serde::Deserialize;

/// Largest apt manifest accepted, in bytes: a real one lists a few packages.
pub const MAX_APT_MANIFEST: usize = 1 << 20;

/// A parsed, checked apt manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptManifest {
    pub name: String,
    pub version: String,
    /// Empty when the manifest has no `packages` member.
    pub packages: Vec<Package>,
    /// `agentRestartRequired` is `true`, or a package is an update agent's own (see
    /// [`is_agent_package`]).
    pub agent_restart_required: bool,
}

/// The manifest as written: what JSON it may hold before ADU's rules are applied.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAptManifest {
    name: String,
    version: String,
    #[serde(default)]
    packages: Option<Vec<Package>>,
    #[serde(default)]
    agent_restart_required: serde_json::Value,
}

/// Whether installing package `name` means the update agent itself is replaced, so the agent
/// must restart: ADU's parser takes any name starting with `deviceupdate-agent`; sandstep's own
/// package is `sandstep`.
pub fn is_agent_package(name: &str) -> bool {
    name.starts_with("deviceupdate-agent") || name == "sandstep"
}

/// One package line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Package {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
}

/// Why an apt manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AptManifestError {
    #[error("the apt manifest is {0} bytes, more than the {MAX_APT_MANIFEST} allowed")]
    TooLarge(usize),
    #[error("not an apt manifest: {0}")]
    NotJson(String),
    #[error("the apt manifest's `packages` is empty")]
    NoPackages,
    #[error("`{0}` is not a Debian package name and version")]
    BadPackage(String),
}

impl Package {
    /// Whether the line asks for removal (`name-`).
    pub fn is_removal(&self) -> bool {
        self.name.ends_with('-')
    }

    /// The name without the removal mark.
    pub fn bare_name(&self) -> &str {
        self.name.trim_end_matches('-')
    }

    /// The apt-get argument: `name=version`, `name`, or `name-`.
    pub fn spec(&self) -> String {
        match (&self.version, self.is_removal()) {
            (Some(v), false) => format!("{}={v}", self.name),
            _ => self.name.clone(),
        }
    }

    fn is_valid(&self) -> bool {
        let name = self.bare_name();
        // Debian policy: lower-case alphanumerics and + - ., starting alphanumeric; a leading
        // `-` would also turn the argument into an apt-get option.
        name.len() >= 2
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
            && self.version.as_deref().is_none_or(|v| {
                v.starts_with(|c: char| c.is_ascii_digit())
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c))
            })
    }
}

impl AptManifest {
    /// Parses and checks a manifest file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<AptManifest, AptManifestError> {
        if bytes.len() > MAX_APT_MANIFEST {
            return Err(AptManifestError::TooLarge(bytes.len()));
        }
        let raw: RawAptManifest = serde_json::from_slice(crate::json::strip_bom(bytes))
            .map_err(|e| AptManifestError::NotJson(e.to_string()))?;
        let packages = match raw.packages {
            Some(p) if p.is_empty() => return Err(AptManifestError::NoPackages),
            Some(p) => p,
            None => Vec::new(),
        };
        if let Some(bad) = packages.iter().find(|p| !p.is_valid()) {
            return Err(AptManifestError::BadPackage(bad.spec()));
        }
        let agent_restart_required = raw.agent_restart_required == serde_json::Value::Bool(true)
            || packages.iter().any(|p| is_agent_package(&p.name));
        Ok(AptManifest {
            name: raw.name,
            version: raw.version,
            packages,
            agent_restart_required,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_upgrade_and_removal_lines_parse() {
        let m = AptManifest::parse(
            br#"{"name":"x","version":"1","packages":[{"name":"tool","version":"1.0-1"},{"name":"old-"}]}"#,
        )
        .unwrap();
        assert_eq!(m.packages[0].spec(), "tool=1.0-1");
        assert!(m.packages[1].is_removal());
        assert_eq!(m.packages[1].bare_name(), "old");
    }

    #[test]
    fn option_like_and_shell_like_names_are_refused() {
        for (name, version) in [
            ("--allow-unauthenticated", "null"),
            ("tool", "\"1;rm -rf /\""),
            ("Tool", "null"),
            ("t", "null"),
            ("tool", "\"-1\""),
            ("-", "null"),
        ] {
            let text = format!(
                r#"{{"name":"x","version":"1","packages":[{{"name":"{name}","version":{version}}}]}}"#
            );
            assert!(
                matches!(
                    AptManifest::parse(text.as_bytes()),
                    Err(AptManifestError::BadPackage(_))
                ),
                "{name} {version}"
            );
        }
    }

    #[test]
    fn a_manifest_without_packages_parses_and_one_with_an_empty_list_does_not() {
        // ADU's bad-apt-manifest-1.0.json has no `packages`: it parses, and fails at download.
        let m = AptManifest::parse(br#"{"name":"apt-update-test","version":"1.0"}"#).unwrap();
        assert!(m.packages.is_empty());
        assert_eq!(
            AptManifest::parse(br#"{"name":"x"}"#),
            Err(AptManifestError::NotJson(
                "missing field `version` at line 1 column 12".into()
            ))
        );
    }

    #[test]
    fn an_agent_package_or_a_true_flag_asks_for_an_agent_restart() {
        let parse = |t: &str| {
            AptManifest::parse(t.as_bytes())
                .unwrap()
                .agent_restart_required
        };
        assert!(parse(
            r#"{"name":"a","version":"1","packages":[{"name":"deviceupdate-agent","version":"1.0.0"}]}"#
        ));
        assert!(parse(
            r#"{"name":"a","version":"1","packages":[{"name":"sandstep"}]}"#
        ));
        assert!(!parse(
            r#"{"name":"a","version":"1","packages":[{"name":"sandstep-tools"}]}"#
        ));
        assert!(parse(
            r#"{"name":"a","version":"1","agentRestartRequired":true,"packages":[{"name":"tree"}]}"#
        ));
        // json_object_get_boolean: anything but a JSON boolean is false.
        assert!(!parse(
            r#"{"name":"a","version":"1","agentRestartRequired":"true","packages":[{"name":"tree"}]}"#
        ));
    }

    #[test]
    fn empty_and_oversized_manifests_are_refused() {
        assert_eq!(
            AptManifest::parse(br#"{"name":"x","version":"1","packages":[]}"#),
            Err(AptManifestError::NoPackages)
        );
        let big = vec![b' '; MAX_APT_MANIFEST + 1];
        assert_eq!(
            AptManifest::parse(&big),
            Err(AptManifestError::TooLarge(MAX_APT_MANIFEST + 1))
        );
    }
}
