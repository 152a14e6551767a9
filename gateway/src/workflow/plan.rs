//! Planning: the manifest, its child manifests and the inventory become the list of units.

use super::events::UnitInfo;
use super::manifests::Manifests;
use super::{resolve_source, Deployer};
use crate::download::Wanted;
use sandstep_model::codes::{erc, result};
use sandstep_model::inventory::Inventory;
use sandstep_model::journal::{Journal, Unit, UnitKind, UnitState};
use sandstep_model::manifest::{
    DetachedError, FileEntry, Manifest, ManifestError, Step, TopLevel, MAX_MANIFEST_BYTES,
};
use sandstep_model::StepResult;
use std::io::Read;
use tokio_util::sync::CancellationToken;

/// How observers see a unit.
pub fn unit_info(u: &Unit) -> UnitInfo {
    UnitInfo {
        label: u.label(),
        handler: u.handler_id.clone(),
        step: u.step,
        component: u.component.as_ref().map(|c| c.id.clone()),
    }
}

fn unit(kind: UnitKind, step: u32, handler_id: &str) -> Unit {
    Unit {
        kind,
        step,
        child_step: None,
        component: None,
        handler_id: handler_id.to_owned(),
        state: UnitState::Pending,
        files: Vec::new(),
        actions: Vec::new(),
        result: None,
        downloaded: false,
        undone_by: None,
    }
}

/// Fetches a manifest file of the deployment (hash-checked) and reads it as text. The outer error
/// is the fetch's (the deployment's result); the inner one a file that cannot be read as text.
async fn fetch_manifest_file(
    d: &Deployer,
    j: &Journal,
    id: &str,
    f: &FileEntry,
    cancel: &CancellationToken,
) -> Result<Result<String, std::io::Error>, StepResult> {
    let wanted = Wanted {
        id: id.to_owned(),
        file_name: f.file_name.clone(),
        size: f.size_in_bytes,
        sha256: f.sha256,
        download_handler: None,
    };
    let source = resolve_source(&j.source, &wanted)?;
    let fetched = tokio::select! {
        r = d.downloader.fetch(&wanted, source.as_source(), &|_, _| {}) => r,
        _ = cancel.cancelled() => return Err(StepResult::failure(erc::WORKFLOW_CANCELLED, "deployment cancelled while fetching a manifest file").with_code(result::FAILURE_CANCELLED)),
    };
    fetched.map_err(|e| StepResult::failure(e.erc(), e.to_string()))?;
    let mut text = String::new();
    Ok(d.downloader
        .store()
        .open(wanted.key())
        .and_then(|mut f| f.read_to_string(&mut text))
        .map(|_| text))
}

/// A detached manifest (top-level `detachedManifestFileId`) is replaced by the manifest its file
/// holds, as ADU's `DownloadAndUseDetachedManifest` does; the signature covered the detached one,
/// whose `files` entry pins the file's hash. Recorded in `j.detached`. The manifest that runs.
async fn use_detached_manifest(
    d: &Deployer,
    j: &mut Journal,
    top: TopLevel,
    cancel: &CancellationToken,
) -> Result<Result<Manifest, ManifestError>, StepResult> {
    let detached = top.detached.map_err(|e| {
        StepResult::failure(
            erc::DETACHED_MANIFEST_ENTITY_MISSING,
            format!("update manifest: {}", e.to_string().replace('\n', "; ")),
        )
    })?;
    let Some((id, f)) = detached else {
        return Ok(top.manifest);
    };
    let bad = |code, why: String| {
        StepResult::failure(
            code,
            format!("detached update manifest `{}`: {why}", f.file_name),
        )
    };
    if f.size_in_bytes > MAX_MANIFEST_BYTES as u64 {
        return Err(bad(
            erc::DETACHED_MANIFEST_BAD,
            format!(
                "{} bytes is over the {MAX_MANIFEST_BYTES} byte limit for a manifest",
                f.size_in_bytes
            ),
        ));
    }
    let text = fetch_manifest_file(d, j, &id, &f, cancel)
        .await?
        .map_err(|e| bad(erc::DETACHED_MANIFEST_NOT_JSON, e.to_string()))?;
    let inner = Manifest::detached_content(&text).map_err(|e| {
        let code = match e {
            DetachedError::NotJson(_) => erc::DETACHED_MANIFEST_NOT_JSON,
            DetachedError::NoUpdateManifest => erc::DETACHED_MANIFEST_NO_UPDATE_MANIFEST,
        };
        bad(code, e.to_string())
    })?;
    let read = serde_json::from_str::<serde_json::Value>(&inner)
        .ok()
        .filter(serde_json::Value::is_object)
        .map(|v| Manifest::top_level_of(&v));
    let Some(TopLevel {
        manifest,
        detached: Ok(None),
    }) = read
    else {
        return Err(bad(
            erc::DETACHED_MANIFEST_BAD,
            "`updateManifest` is not a manifest (JSON object, not itself detached)".into(),
        ));
    };
    j.detached = Some(inner);
    Ok(manifest)
}

/// Fills `j.units` (and `j.children`) from `top`, the deployment's manifest as read, and `read`
/// with each manifest it reads (also when planning fails: what they name in the store is given
/// back); a failure is the deployment's result.
pub(super) async fn plan(
    d: &Deployer,
    j: &mut Journal,
    top: TopLevel,
    inventory: Option<&Inventory>,
    cancel: &CancellationToken,
    read: &mut Manifests,
) -> Result<(), StepResult> {
    let manifest = use_detached_manifest(d, j, top, cancel)
        .await?
        .map_err(|e| {
            let code = if e.is_unsupported_version() {
                erc::UNSUPPORTED_MANIFEST_VERSION
            } else {
                erc::WORKFLOW_MANIFEST_INVALID
            };
            StepResult::failure(
                code,
                format!("update manifest: {}", e.to_string().replace('\n', "; ")),
            )
        })?;
    for w in &manifest.warnings {
        tracing::warn!(workflow = %j.workflow_id, "update manifest: {w}");
    }
    j.update_id = manifest.update_id.clone();
    let manifest = &*read.parent.insert(manifest);
    d.admit(manifest)?;
    let mut units = Vec::new();
    for (i, step) in manifest.steps.iter().enumerate() {
        let i = i as u32;
        match step {
            Step::Inline(s) => units.push(unit(UnitKind::Inline, i, &s.handler)),
            Step::Reference(r) => {
                let fid = &r.detached_manifest_file_id;
                let f = manifest
                    .file(fid)
                    .expect("validated: reference files are in `files`");
                let invalid = |why: String| {
                    StepResult::failure(
                        erc::WORKFLOW_CHILD_MANIFEST_INVALID,
                        format!(
                            "instructions.steps[{i}]: child update `{}`: {why}",
                            f.file_name
                        ),
                    )
                };
                if f.size_in_bytes > MAX_MANIFEST_BYTES as u64 {
                    return Err(invalid(format!(
                        "{} bytes is over the {MAX_MANIFEST_BYTES} byte limit for a manifest",
                        f.size_in_bytes
                    )));
                }
                let text = fetch_manifest_file(d, j, fid, f, cancel)
                    .await?
                    .map_err(|e| invalid(format!("cannot read it: {e}")))?;
                let child = Manifest::parse_child(&text)
                    .map_err(|e| invalid(e.to_string().replace('\n', "; ")))?;
                j.children.insert(i, text);
                read.children.insert(i, child);
                let child = &read.children[&i];
                let compatibility = child.compatibility.first().cloned().unwrap_or_default();
                // ADU's HandleComponents (steps_handler.cpp): without a component enumerator the
                // child's steps run once, for the host, with no component (`n/a` tokens).
                let selected = match inventory {
                    Some(inv) => inv.select(&compatibility).into_iter().map(Some).collect(),
                    None => vec![None],
                };
                if selected.is_empty() {
                    let mut u = unit(UnitKind::NoMatchingComponents, i, "");
                    u.state = UnitState::Done;
                    u.result = Some(
                        StepResult::new(result::INSTALL_SKIPPED_NO_MATCHING_COMPONENTS)
                            .with_details(format!(
                                "no component of the inventory matches {}",
                                serde_json::to_string(&compatibility)
                                    .expect("a string map serializes")
                            )),
                    );
                    units.push(u);
                    continue;
                }
                for c in selected {
                    for (cj, cs) in child.steps.iter().enumerate() {
                        let Step::Inline(cs) = cs else {
                            unreachable!("parse_child refuses reference steps")
                        };
                        let mut u = unit(UnitKind::Child, i, &cs.handler);
                        u.child_step = Some(cj as u32);
                        u.component = c.clone();
                        units.push(u);
                    }
                }
            }
        }
    }
    j.units = units;
    Ok(())
}
