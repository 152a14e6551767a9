//! A deployment's manifests, each read once per run of the deployment: the manifest that runs
//! (the submitted one, or the one its detached file holds) and the child manifests of its
//! reference steps. Planning reads them from the texts it receives and fetches; a deployment
//! resumed by a new process reads them from its journal.

use sandstep_model::journal::{Journal, Unit};
use sandstep_model::manifest::{InlineStep, Manifest, ManifestError, Step};
use std::collections::{BTreeSet, HashMap};

/// The manifests read so far (all of them, once planning is through).
#[derive(Debug, Default)]
pub(super) struct Manifests {
    /// The manifest that runs; `None` until it parsed.
    pub parent: Option<Manifest>,
    /// Child manifests by the parent's step index.
    pub children: HashMap<u32, Manifest>,
}

/// A manifest a journal holds that no longer parses (a newer sandstep's stricter rule).
#[derive(Debug, thiserror::Error)]
pub(super) enum StoredManifestError {
    #[error("stored manifest no longer parses: {0}")]
    Parent(ManifestError),
    #[error("stored child manifest of step {step}: {cause}")]
    Child { step: u32, cause: ManifestError },
}

impl Manifests {
    /// The manifests of a planned deployment, from its journal's texts.
    pub fn from_journal(j: &Journal) -> Result<Manifests, StoredManifestError> {
        let parent = Manifest::parse(j.running_manifest()).map_err(StoredManifestError::Parent)?;
        let mut children = HashMap::new();
        for (step, text) in &j.children {
            let child = Manifest::parse_child(text)
                .map_err(|cause| StoredManifestError::Child { step: *step, cause })?;
            children.insert(*step, child);
        }
        Ok(Manifests {
            parent: Some(parent),
            children,
        })
    }

    /// The manifest a planned unit's step is in, the step, its index there and its level
    /// (0: the parent, 1: a child).
    pub fn step_of(&self, u: &Unit) -> (&Manifest, &InlineStep, u32, u32) {
        let (manifest, index, level) = match u.child_step {
            Some(cs) => (&self.children[&u.step], cs, 1),
            None => (
                self.parent
                    .as_ref()
                    .expect("units are planned from a parsed manifest"),
                u.step,
                0,
            ),
        };
        let Step::Inline(step) = &manifest.steps[index as usize] else {
            unreachable!("units are only planned for inline steps")
        };
        (manifest, step, index, level)
    }

    /// The store keys (sha256 hex) of every file these manifests name.
    pub fn store_keys(&self) -> BTreeSet<String> {
        self.parent
            .iter()
            .chain(self.children.values())
            .flat_map(|m| m.files.iter().map(|(_, f)| f.sha256_hex()))
            .collect()
    }
}
