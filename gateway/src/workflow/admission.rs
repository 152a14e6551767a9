//! Whether a signed update may run on this device at all: a deployment is data, not authority, so
//! a valid signature is not enough. Pure decisions; the executor reads the inputs.
//!
//! - **Compatibility**: with `[device] properties` configured, the update's `compatibility` must
//!   have an entry whose every key equals the device's property (ADU's service makes this check
//!   before it deploys; a replayed or misrouted deployment meets it on the device instead).
//! - **No downgrade**: an update older than the one last installed under the same provider and
//!   name is refused, unless its signed manifest says `"sandstep": {"allowDowngrade": true}`.

use sandstep_model::UpdateId;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// The `[device]` table of the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeviceConfig {
    /// The device's compatibility properties, e.g. `manufacturer` and `model`. Empty: updates
    /// are not checked for compatibility (`sandstep doctor` says so).
    pub properties: BTreeMap<String, String>,
}

/// Why an update may not run here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("update {update} is not for this device: none of its compatibility entries {entries} matches the device's properties {device}")]
    Incompatible {
        update: String,
        entries: String,
        device: String,
    },
    #[error("update {update} is older than {installed}, installed here; a downgrade runs only when its signed manifest says \"sandstep\": {{\"allowDowngrade\": true}}")]
    Downgrade { update: String, installed: String },
}

/// Decides whether `update` (with its `compatibility`) may run on a device with `device`
/// properties, where `installed` is the version last installed under its provider and name.
pub fn admit(
    update: &UpdateId,
    compatibility: &[BTreeMap<String, String>],
    allow_downgrade: bool,
    device: &BTreeMap<String, String>,
    installed: Option<&str>,
) -> Result<(), Refusal> {
    if !device.is_empty()
        && !compatibility
            .iter()
            .any(|entry| entry.iter().all(|(k, v)| device.get(k) == Some(v)))
    {
        return Err(Refusal::Incompatible {
            update: update.to_string(),
            entries: serde_json::to_string(compatibility).expect("maps serialize"),
            device: serde_json::to_string(device).expect("maps serialize"),
        });
    }
    if let Some(installed) = installed {
        if !allow_downgrade && compare_versions(&update.version, installed) == Ordering::Less {
            return Err(Refusal::Downgrade {
                update: update.to_string(),
                installed: installed.to_owned(),
            });
        }
    }
    Ok(())
}

/// Compares ADU versions (2-4 dot-separated integers) part by part, numerically; a missing part
/// counts as 0 (`1.2` = `1.2.0`).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (a, b) = (parts(a), parts(b));
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        match x.cmp(&y) {
            Ordering::Equal => {}
            other => return other,
        }
    }
    Ordering::Equal
}

/// The key under which an update's installed version is recorded.
pub fn record_key(update: &UpdateId) -> String {
    format!("{}/{}", update.provider, update.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(version: &str) -> UpdateId {
        UpdateId {
            provider: "contoso".into(),
            name: "gw".into(),
            version: version.into(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_update_for_another_model_is_refused_when_the_device_says_what_it_is() {
        let compat = [map(&[("manufacturer", "contoso"), ("model", "gw-2")])];
        let device = map(&[("manufacturer", "contoso"), ("model", "gw-1")]);
        assert!(matches!(
            admit(&id("1.0"), &compat, false, &device, None),
            Err(Refusal::Incompatible { .. })
        ));
        let ok = [map(&[("model", "gw-2")]), map(&[("model", "gw-1")])];
        assert_eq!(admit(&id("1.0"), &ok, false, &device, None), Ok(()));
        // Without device properties nothing is checked.
        assert_eq!(admit(&id("1.0"), &compat, false, &map(&[]), None), Ok(()));
    }

    #[test]
    fn an_older_version_is_refused_unless_the_signed_manifest_allows_it() {
        let none = map(&[]);
        assert!(matches!(
            admit(&id("1.9"), &[], false, &none, Some("1.10")),
            Err(Refusal::Downgrade { .. })
        ));
        assert_eq!(admit(&id("1.9"), &[], true, &none, Some("1.10")), Ok(()));
        assert_eq!(
            admit(&id("1.10"), &[], false, &none, Some("1.10.0")),
            Ok(())
        );
        assert_eq!(admit(&id("2.0"), &[], false, &none, Some("1.10")), Ok(()));
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("1.10", "1.9"), Ordering::Greater);
        assert_eq!(compare_versions("1.2", "1.2.0.0"), Ordering::Equal);
    }
}
