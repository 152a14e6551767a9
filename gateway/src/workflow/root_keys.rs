//! A deployment's `rootKeyPackageUrl`, taken before its signature is checked, as ADU's agent
//! does (`RootKeyWorkflow_UpdateRootKeys`, called before `ADUC_Workflow_HandlePropertyUpdate` in
//! `src/agent/adu_core_interface/src/adu_core_interface.c`): fetched, checked against the
//! operator's roots, stored when it is new. A failure fails the deployment with ADU's code and
//! nothing runs; the stored package is left as it was.

use super::Deployer;
use crate::trust::rotation::{self, Decision};
use sandstep_model::codes::{erc, result};
use sandstep_model::journal::Journal;
use sandstep_model::StepResult;
use sandstep_signing::rootkeys::MAX_PACKAGE_BYTES;
use tokio_util::sync::CancellationToken;

impl Deployer {
    /// Takes the package `j` names, if any; records what it did in `j.extra_ercs`.
    pub(super) async fn take_root_key_package(
        &self,
        j: &mut Journal,
        cancel: &CancellationToken,
    ) -> Result<(), StepResult> {
        let Some(url) = j.root_key_package_url.clone() else {
            return Ok(());
        };
        let fetched = tokio::select! {
            r = self.downloader.fetch_document("root key package", &url, MAX_PACKAGE_BYTES) => r,
            _ = cancel.cancelled() => {
                return Err(StepResult::failure(erc::WORKFLOW_CANCELLED, "deployment cancelled while fetching its root key package")
                    .with_code(result::FAILURE_CANCELLED))
            }
        };
        let body = fetched.map_err(|e| {
            StepResult::failure(
                erc::ROOTKEY_DOWNLOAD_FAILED,
                format!("rootKeyPackageUrl: {e}"),
            )
        })?;
        let refused = |r: rotation::Refusal| {
            StepResult::failure(r.erc(), format!("rootKeyPackageUrl {url}: {r}"))
        };
        let text = String::from_utf8(body)
            .map_err(|_| refused(rotation::Refusal::NotJson("not UTF-8 text".into())))?;
        let trust = self.loader.trust();
        let offered = rotation::verify(&text, &trust.package_signers, trust.accept_test_packages)
            .map_err(refused)?;
        // A stored package that no longer verifies is replaced, as ADU's agent replaces one it
        // cannot load (`ADUC_RootKeyUtility_IsUpdateStoreNeeded`).
        let stored = trust.fetched.as_ref().and_then(|f| f.as_ref().ok());
        match rotation::decide(&offered, stored).map_err(refused)? {
            Decision::Unchanged => {
                j.add_erc(erc::ROOTKEY_PACKAGE_UNCHANGED);
            }
            Decision::Take => {
                let dir = self.data.trust_fetched().map_err(|e| {
                    StepResult::failure(erc::ROOTKEY_STORE_WRITE_FAILED, e.to_string())
                })?;
                rotation::store(&dir, &offered).map_err(|e| {
                    StepResult::failure(
                        erc::ROOTKEY_STORE_WRITE_FAILED,
                        format!("root key package from {url}: cannot store it: {e}"),
                    )
                })?;
                tracing::info!(%url, published = ?offered.package.published, "took a new root key package");
                self.loader.take_root_key_package(offered);
                j.add_erc(erc::ROOTKEY_PACKAGE_CHANGED);
            }
        }
        Ok(())
    }
}
