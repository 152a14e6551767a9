//! `microsoft/apt:1` (ADU's `AptHandlerImpl`): `installedCriteria` is required, and the step has
//! exactly one apt manifest; `.deb` files beside it are installed from the payload.

/// A broken rule of an apt step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AptRule {
    /// `installedCriteria` is missing or empty.
    NoCriteria,
    /// Not exactly one file other than `.deb` files: these are the candidates.
    ManifestCount(Vec<String>),
}

impl std::fmt::Display for AptRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AptRule::NoCriteria => f.write_str("handlerProperties.installedCriteria is required"),
            AptRule::ManifestCount(m) => {
                let names: Vec<&str> = m.iter().map(String::as_str).collect();
                write!(
                    f,
                    "an apt step needs exactly one apt manifest beside its .deb files, it has {} ({})",
                    m.len(),
                    super::listed(&names)
                )
            }
        }
    }
}

impl std::error::Error for AptRule {}

/// The step's apt manifest among `files`, once `criteria` is there.
pub fn manifest_file<'a>(criteria: Option<&str>, files: &[&'a str]) -> Result<&'a str, AptRule> {
    if criteria.is_none_or(str::is_empty) {
        return Err(AptRule::NoCriteria);
    }
    let manifests: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !f.ends_with(".deb"))
        .collect();
    match manifests[..] {
        [one] => Ok(one),
        _ => Err(AptRule::ManifestCount(
            manifests.iter().map(|m| m.to_string()).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apt_step_has_its_criteria_and_one_manifest_beside_its_debs() {
        assert_eq!(
            manifest_file(Some("1.0"), &["m.json", "a.deb"]),
            Ok("m.json")
        );
        assert_eq!(manifest_file(None, &["m.json"]), Err(AptRule::NoCriteria));
        assert_eq!(
            manifest_file(Some(""), &["m.json"]),
            Err(AptRule::NoCriteria)
        );
        assert_eq!(
            manifest_file(Some("1"), &["a.deb"]),
            Err(AptRule::ManifestCount(vec![]))
        );
        let two = manifest_file(Some("1"), &["m.json", "n.json"]).unwrap_err();
        assert!(
            two.to_string().contains("it has 2 (m.json, n.json)"),
            "{two}"
        );
    }
}
