//! The versions installed here, and whether an update may run over them: the record
//! [`admission`](super::admission) decides downgrades with, kept in the data dir.

use super::{admission, Deployer};
use sandstep_model::codes::erc;
use sandstep_model::manifest::Manifest;
use sandstep_model::StepResult;
use std::collections::BTreeMap;

/// Where the versions installed here are recorded, in the data dir.
const INSTALLED_UPDATES: &str = "installed-updates.json";

impl Deployer {
    /// The versions installed here, by provider and name (for [`admission`]).
    fn installed_versions(&self) -> BTreeMap<String, String> {
        self.data
            .root()
            .read(INSTALLED_UPDATES)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records a finished update's version; a failure to record weakens only the downgrade
    /// check, so it is logged, not fatal.
    pub(super) fn record_installed(&self, update: &sandstep_model::UpdateId) {
        let mut versions = self.installed_versions();
        versions.insert(admission::record_key(update), update.version.clone());
        let bytes = serde_json::to_vec_pretty(&versions).expect("a map serializes");
        if let Err(e) =
            crate::datadir::write_atomic(self.data.root(), INSTALLED_UPDATES, &bytes, 0o600)
        {
            tracing::error!(update = %update, "cannot record the installed version: {e}");
        }
    }

    /// Whether `manifest` (the one that runs) may run here.
    pub(crate) fn admit(&self, manifest: &Manifest) -> Result<(), StepResult> {
        let installed = self
            .installed_versions()
            .remove(&admission::record_key(&manifest.update_id));
        admission::admit(
            &manifest.update_id,
            &manifest.compatibility,
            manifest.allow_downgrade,
            &self.settings.device.properties,
            installed.as_deref(),
        )
        .map_err(|refusal| {
            let code = match refusal {
                admission::Refusal::Incompatible { .. } => erc::WORKFLOW_INCOMPATIBLE,
                admission::Refusal::Downgrade { .. } => erc::WORKFLOW_DOWNGRADE,
            };
            StepResult::failure(code, refusal.to_string())
        })
    }
}
