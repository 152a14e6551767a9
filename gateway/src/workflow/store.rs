//! Journals and result files in the data dir.

use crate::datadir::{safe_name, write_atomic, FileIdentity};
use cap_std::fs::Dir;
use sandstep_model::journal::{Journal, JournalError};
use sandstep_model::results::ResultFile;

/// Why a journal could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{name}: {cause}")]
    Io { name: String, cause: std::io::Error },
    #[error("{name} belongs to workflow `{owner}`")]
    NotItsJournal { name: String, owner: String },
    /// Torn or garbled: moved aside so the evidence stays while the deployment starts over.
    #[error("{cause} (kept as {aside})")]
    Corrupt { cause: JournalError, aside: String },
    #[error("{name}: {cause}")]
    Unreadable { name: String, cause: JournalError },
}

fn io(name: &str) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |cause| StoreError::Io {
        name: name.to_owned(),
        cause,
    }
}

/// `journal/<workflow>.journal` and `results/<workflow>.json`.
#[derive(Debug)]
pub struct JournalStore {
    journals: Dir,
    results: Dir,
    /// Journals read before whose deployment was over, with the identity of the file read: a
    /// finished journal is never written again, so the next look for unfinished ones only
    /// checks the file is the same instead of reading and decoding each one again.
    finished: std::sync::Mutex<std::collections::HashMap<String, FileIdentity>>,
}

impl JournalStore {
    pub fn new(journals: Dir, results: Dir) -> Self {
        JournalStore {
            journals,
            results,
            finished: Default::default(),
        }
    }

    fn name(workflow_id: &str) -> String {
        format!("{}.journal", safe_name(workflow_id))
    }

    fn legacy_name(workflow_id: &str) -> String {
        format!("{}.journal", crate::datadir::legacy_safe_name(workflow_id))
    }

    /// The journal of `workflow_id`, if any. A torn or corrupt journal is reported, and moved
    /// aside (`.corrupt`) so the evidence stays while the deployment can start over.
    pub fn load(&self, workflow_id: &str) -> Result<Option<Journal>, StoreError> {
        let name = Self::name(workflow_id);
        crate::datadir::adopt_legacy(&self.journals, &Self::legacy_name(workflow_id), &name);
        let bytes = match self.journals.read(&name) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&name)(e)),
        };
        match Journal::decode(&bytes) {
            Ok(j) if j.workflow_id == workflow_id => Ok(Some(j)),
            Ok(j) => Err(StoreError::NotItsJournal {
                name,
                owner: j.workflow_id,
            }),
            Err(e @ (JournalError::Checksum | JournalError::Body(_) | JournalError::NoHeader)) => {
                let aside = format!("{name}.corrupt");
                tracing::error!(journal = %name, "{e}; moved to {aside}");
                self.journals
                    .rename(&name, &self.journals, &aside)
                    .map_err(io(&name))?;
                Err(StoreError::Corrupt { cause: e, aside })
            }
            Err(cause) => Err(StoreError::Unreadable { name, cause }),
        }
    }

    /// Writes the journal atomically (bumping its sequence number and timestamp).
    pub fn save(&self, j: &mut Journal) -> std::io::Result<()> {
        j.seq += 1;
        j.updated_at_ms = super::now_ms();
        write_atomic(
            &self.journals,
            &Self::name(&j.workflow_id),
            &j.encode(),
            0o600,
        )?;
        crate::fault::point("journal-write");
        Ok(())
    }

    /// Journals whose deployment is not over.
    pub fn unfinished(&self) -> Result<Vec<Journal>, StoreError> {
        let mut out = Vec::new();
        for e in self.journals.entries().map_err(io("journal/"))? {
            let name = e
                .map_err(io("journal/"))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if !name.ends_with(".journal") {
                continue;
            }
            let mut file = self.journals.open(&name).map_err(io(&name))?;
            let identity = FileIdentity::of(&file.metadata().map_err(io(&name))?);
            let mut finished = self.finished.lock().expect("journal store lock");
            if finished.get(&name) == Some(&identity) {
                continue;
            }
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io(&name))?;
            match Journal::decode(&bytes) {
                Ok(j) if !j.status.is_terminal() => out.push(j),
                Ok(_) => {
                    finished.insert(name, identity);
                }
                Err(e) => tracing::error!(journal = %name, "skipping unreadable journal: {e}"),
            }
        }
        out.sort_by_key(|j| j.started_at_ms);
        Ok(out)
    }

    /// Writes `results/<workflow>.json` atomically.
    pub fn write_result(&self, r: &ResultFile) -> std::io::Result<String> {
        let name = format!("{}.json", safe_name(&r.workflow_id));
        write_atomic(
            &self.results,
            &name,
            &serde_json::to_vec_pretty(r).expect("a result serializes"),
            0o644,
        )?;
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandstep_model::journal::Status;

    fn store() -> (tempfile::TempDir, JournalStore) {
        let t = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            std::fs::create_dir(t.path().join(name)).unwrap();
            Dir::open_ambient_dir(t.path().join(name), cap_std::ambient_authority()).unwrap()
        };
        let s = JournalStore::new(open("journal"), open("results"));
        (t, s)
    }

    fn ids(s: &JournalStore) -> Vec<String> {
        s.unfinished()
            .unwrap()
            .into_iter()
            .map(|j| j.workflow_id)
            .collect()
    }

    #[test]
    fn a_finished_journal_written_again_as_running_is_unfinished_again() {
        let (_t, s) = store();
        let mut a = super::super::release::tests::journal("a", &[]);
        let mut b = super::super::release::tests::journal("b", &[]);
        s.save(&mut a).unwrap();
        b.status = Status::Succeeded;
        b.started_at_ms = 1;
        s.save(&mut b).unwrap();
        assert_eq!(ids(&s), ["a"]);
        assert_eq!(
            ids(&s),
            ["a"],
            "a finished journal seen before is still skipped"
        );
        // A retry of `b` (same workflow id) runs again: its journal is written anew.
        b.status = Status::Running;
        s.save(&mut b).unwrap();
        assert_eq!(ids(&s), ["a", "b"]);
    }
}
