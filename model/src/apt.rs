//! ADU's apt manifest (`{"name", "version", "packages": [{"name", "version"}],
//! "agentRestartRequired"}`), parsed and checked once here so the apt handler and the fuzzer see
//! the same rules.
//!
//! A package name ending in `-` means remove. Names and versions are restricted to what Debian
//! allows, because they become apt-get arguments.

use serde::Deserialize;

/// Largest apt manifest accepted, in bytes: a real one lists a few packages.
pub const MAX_APT_MANIFEST: usize = 1 << 20;

/// A parsed, checked apt manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AptManifest {
    pub name: String,
    pub version: String,
    pub packages: Vec<Package>,
    #[serde(default)]
    pub agent_restart_required: bool,
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
    #[error("the apt manifest lists no packages")]
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
        let manifest: AptManifest = serde_json::from_slice(crate::json::strip_bom(bytes))
            .map_err(|e| AptManifestError::NotJson(e.to_string()))?;
        if manifest.packages.is_empty() {
            return Err(AptManifestError::NoPackages);
        }
        if let Some(bad) = manifest.packages.iter().find(|p| !p.is_valid()) {
            return Err(AptManifestError::BadPackage(bad.spec()));
        }
        Ok(manifest)
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
