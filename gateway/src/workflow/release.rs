//! What a finished deployment gives back: its `/payload` and `/work` folders and the store
//! entries no unfinished deployment still wants, as ADU's agent destroys a workflow's sandbox
//! when it goes idle (agent_workflow.c, ADUC_Workflow_MethodCall_Idle -> SandboxDestroy). The
//! journal and the result file stay.

use crate::datadir::{safe_name, DataDir};
use sandstep_model::journal::Journal;
use sandstep_model::manifest::Manifest;
use std::collections::BTreeSet;

/// The store keys (sha256 hex) of every file a journal's manifests name, children included.
/// A manifest that no longer parses names none: its files are left alone.
pub fn store_keys(j: &Journal) -> BTreeSet<String> {
    let parent = Manifest::parse(j.running_manifest()).ok();
    let children = j
        .children
        .values()
        .filter_map(|text| Manifest::parse_child(text).ok());
    parent
        .into_iter()
        .chain(children)
        .flat_map(|m| m.files.into_iter().map(|(_, f)| f.sha256_hex()))
        .collect()
}

/// Of the keys `held` by deployment `finished`, those it may give back: those no other
/// `unfinished` journal names.
pub fn releasable(
    finished: &str,
    held: BTreeSet<String>,
    unfinished: &[Journal],
) -> BTreeSet<String> {
    let kept: BTreeSet<String> = unfinished
        .iter()
        .filter(|u| u.workflow_id != finished)
        .flat_map(store_keys)
        .collect();
    held.into_iter().filter(|k| !kept.contains(k)).collect()
}

/// Removes what `finished` held: its folders, and the store entries of `held` (the keys of the
/// files its manifests name) no `unfinished` deployment wants. Best effort: a folder that cannot
/// be removed is logged, and the next finished deployment does not depend on it.
pub fn release(data: &DataDir, finished: &Journal, held: BTreeSet<String>, unfinished: &[Journal]) {
    let wf = safe_name(&finished.workflow_id);
    let warn = |what: &str, e: std::io::Error| {
        tracing::warn!(workflow = %finished.workflow_id, "cannot remove {what}: {e}");
    };
    for (what, dir) in [("payload", data.payloads()), ("work", data.work())] {
        let Ok(dir) = dir else { continue };
        match dir.remove_dir_all(&wf) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => warn(what, e),
            _ => {}
        }
    }
    let Ok(store) = data.downloads() else { return };
    for key in releasable(&finished.workflow_id, held, unfinished) {
        for name in [key.clone(), format!("{key}.partial")] {
            match store.remove_file(&name) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => warn("a store file", e),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A running deployment's journal naming `files` (also for the journal store's tests).
    pub(in crate::workflow) fn journal(id: &str, files: &[(&str, [u8; 32])]) -> Journal {
        let entries: serde_json::Map<String, serde_json::Value> = files
            .iter()
            .map(|(name, digest)| {
                use base64::Engine as _;
                (
                    name.to_string(),
                    serde_json::json!({"fileName": name, "sizeInBytes": 1,
                        "hashes": {"sha256": base64::engine::general_purpose::STANDARD.encode(digest)}}),
                )
            })
            .collect();
        let m = serde_json::json!({
            "updateId": {"provider": "p", "name": "n", "version": "1.0"},
            "compatibility": [{"model": "m"}],
            "instructions": {"steps": [{"handler": "a/b:1", "files": files.iter().map(|f| f.0).collect::<Vec<_>>(), "handlerProperties": {}}]},
            "files": entries,
            "manifestVersion": "5.0"
        });
        Journal {
            version: 1,
            workflow_id: id.into(),
            retry_timestamp: None,
            update_id: sandstep_model::UpdateId {
                provider: "p".into(),
                name: "n".into(),
                version: "1.0".into(),
            },
            manifest: m.to_string(),
            signature: None,
            unsigned_allowed: true,
            signed_by: None,
            root_key_package_url: None,
            extra_ercs: Vec::new(),
            children: Default::default(),
            detached: None,
            source: sandstep_model::journal::FileSource::Directory("/nowhere".into()),
            status: sandstep_model::journal::Status::Running,
            units: Vec::new(),
            deferred_followup: None,
            result: None,
            started_at_ms: 0,
            updated_at_ms: 0,
            finished_at_ms: None,
            recovered: Vec::new(),
            health_failure: None,
            past_followup: false,
            seq: 0,
        }
    }

    #[test]
    fn a_finished_deployment_gives_back_only_files_no_unfinished_one_wants() {
        let done = journal("wf-1", &[("a", [1; 32]), ("b", [2; 32])]);
        let waiting = journal("wf-2", &[("b2", [2; 32])]);
        let held = store_keys(&done);
        let keys = releasable(&done.workflow_id, held, &[waiting, done.clone()]);
        assert_eq!(keys, BTreeSet::from([hex::encode([1u8; 32])]));
    }
}
