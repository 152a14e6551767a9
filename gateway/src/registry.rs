//! The handler registry: which component serves which handler id.
//!
//! Components are stored content-addressed (`handlers/components/<sha256>.wasm`) and recorded in
//! `handlers/registry.json` (written atomically). Reading a component back re-checks its digest, so
//! a stored file that changed is refused, never run.

use crate::datadir::{ensure_dir, write_atomic};
use crate::digest::Sha256;
use cap_std::fs::Dir;
use sandstep_model::manifest::is_handler_id;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;

pub use crate::datadir::FileIdentity;

const INDEX: &str = "registry.json";
const COMPONENTS: &str = "components";

/// One registered handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub id: String,
    /// sha256 of the component, hex.
    pub digest: String,
    pub size: u64,
    /// Where it was installed from (for `handler list`).
    pub source: String,
    /// The trusted keys whose signatures verified at install.
    #[serde(default)]
    pub signers: Vec<String>,
    pub installed_at_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Index {
    handlers: BTreeMap<String, Entry>,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("`{0}` is not a handler id; it must look like vendor/name:version")]
    BadId(String),
    #[error("no handler is registered as `{0}`; install one with `sandstep handler install <COMPONENT.wasm> --id {0}`")]
    NotFound(String),
    #[error("stored component for `{id}` does not match its recorded digest {digest}: refusing to load it")]
    Tampered { id: String, digest: String },
    #[error("handler registry index is corrupt: {0}")]
    Corrupt(String),
    /// Its cause is in the message, not a `source` (printed once).
    #[error("handler registry: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for RegistryError {
    fn from(e: std::io::Error) -> Self {
        RegistryError::Io(e)
    }
}

/// The registry in the data dir's `handlers/`.
#[derive(Debug)]
pub struct Registry {
    dir: Dir,
    components: Dir,
    /// The index as last read, with the identity of the file it was read from: each step's
    /// load only checks the file is the same one instead of reading and parsing it again.
    read: std::sync::Mutex<Option<(FileIdentity, Index)>>,
}

impl Registry {
    /// Opens the registry directory.
    pub fn open(dir: Dir) -> Result<Registry, RegistryError> {
        let components = ensure_dir(&dir, COMPONENTS, 0o700)?;
        Ok(Registry {
            dir,
            components,
            read: Default::default(),
        })
    }

    fn index(&self) -> Result<Index, RegistryError> {
        let mut file = match self.dir.open(INDEX) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Index::default()),
            Err(e) => return Err(e.into()),
        };
        let identity = FileIdentity::of(&file.metadata()?);
        let mut read = self.read.lock().expect("registry index lock");
        if let Some((seen, index)) = &*read {
            if *seen == identity {
                return Ok(index.clone());
            }
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let index: Index =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        *read = Some((identity, index.clone()));
        Ok(index)
    }

    fn save(&self, index: &Index) -> Result<(), RegistryError> {
        let bytes = serde_json::to_vec_pretty(index).expect("the index always serializes");
        Ok(write_atomic(&self.dir, INDEX, &bytes, 0o600)?)
    }

    /// Records `bytes` as the component for `id`, replacing any earlier one.
    pub fn install(
        &self,
        id: &str,
        bytes: &[u8],
        source: &str,
        signers: Vec<String>,
        now_ms: u64,
    ) -> Result<Entry, RegistryError> {
        if !is_handler_id(id) {
            return Err(RegistryError::BadId(id.to_owned()));
        }
        let digest = hex::encode(Sha256::digest(bytes));
        let name = format!("{digest}.wasm");
        if !self.components.exists(&name) {
            write_atomic(&self.components, &name, bytes, 0o600)?;
        }
        let entry = Entry {
            id: id.to_owned(),
            digest,
            size: bytes.len() as u64,
            source: source.to_owned(),
            signers,
            installed_at_ms: now_ms,
        };
        let mut index = self.index()?;
        index.handlers.insert(id.to_owned(), entry.clone());
        self.save(&index)?;
        self.collect_garbage(&index)?;
        Ok(entry)
    }

    /// Forgets `id`; its component file goes when no other id uses it.
    pub fn remove(&self, id: &str) -> Result<Entry, RegistryError> {
        let mut index = self.index()?;
        let entry = index
            .handlers
            .remove(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        self.save(&index)?;
        self.collect_garbage(&index)?;
        Ok(entry)
    }

    fn collect_garbage(&self, index: &Index) -> Result<(), RegistryError> {
        for e in self.components.entries()? {
            let name = e?.file_name().to_string_lossy().into_owned();
            let used = index
                .handlers
                .values()
                .any(|h| format!("{}.wasm", h.digest) == name);
            if !used && name.ends_with(".wasm") {
                self.components.remove_file(&name)?;
            }
        }
        Ok(())
    }

    /// Every registered handler, by id.
    pub fn list(&self) -> Result<Vec<Entry>, RegistryError> {
        Ok(self.index()?.handlers.into_values().collect())
    }

    /// The entry for `id`.
    pub fn get(&self, id: &str) -> Result<Entry, RegistryError> {
        self.index()?
            .handlers
            .remove(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))
    }

    /// What identifies the stored component file's current content without reading it: device,
    /// inode, size, and modification and change times (any write changes the change time).
    pub fn component_identity(&self, entry: &Entry) -> Result<FileIdentity, RegistryError> {
        let m = self.components.metadata(format!("{}.wasm", entry.digest))?;
        Ok(FileIdentity::of(&m))
    }

    /// The stored component bytes, checked against the recorded digest.
    pub fn component_bytes(&self, entry: &Entry) -> Result<Vec<u8>, RegistryError> {
        let mut bytes = Vec::with_capacity(entry.size as usize);
        self.components
            .open(format!("{}.wasm", entry.digest))?
            .read_to_end(&mut bytes)?;
        if hex::encode(Sha256::digest(&bytes)) != entry.digest {
            return Err(RegistryError::Tampered {
                id: entry.id.clone(),
                digest: entry.digest.clone(),
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn registry() -> (tempfile::TempDir, Registry) {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        (t, Registry::open(d).unwrap())
    }

    #[test]
    fn install_get_remove() {
        let (_t, r) = registry();
        let e = r
            .install("contoso/config:1", b"component", "x.wasm", vec![], 5)
            .unwrap();
        assert_eq!(r.get("contoso/config:1").unwrap(), e);
        assert_eq!(r.component_bytes(&e).unwrap(), b"component");
        r.remove("contoso/config:1").unwrap();
        let err = r.get("contoso/config:1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no handler is registered as `contoso/config:1`; install one with `sandstep handler install <COMPONENT.wasm> --id contoso/config:1`"
        );
    }

    #[test]
    fn an_index_changed_by_another_process_is_read_again() {
        let (t, agent) = registry();
        agent.install("a/b:1", b"one", "x", vec![], 0).unwrap();
        assert_eq!(agent.get("a/b:1").unwrap().size, 3);
        // `sandstep handler install` beside the running agent: its own registry on the dir.
        let cli =
            Registry::open(Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap())
                .unwrap();
        cli.install("a/b:1", b"second", "x", vec![], 1).unwrap();
        cli.install("c/d:1", b"other", "x", vec![], 1).unwrap();
        assert_eq!(agent.get("a/b:1").unwrap().size, 6);
        assert_eq!(agent.list().unwrap().len(), 2);
        // Rewritten in place (same inode): the change time moves, so it is read again too.
        let index = t.path().join(INDEX);
        let text = std::fs::read_to_string(&index)
            .unwrap()
            .replace("\"size\": 5", "\"size\": 55");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&index)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        assert_eq!(agent.get("c/d:1").unwrap().size, 55);
    }

    #[test]
    fn bad_ids_are_refused() {
        let (_t, r) = registry();
        let err = r.install("../../etc", b"x", "x", vec![], 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`../../etc` is not a handler id; it must look like vendor/name:version"
        );
    }

    #[test]
    fn a_changed_stored_component_is_refused() {
        let (t, r) = registry();
        let e = r.install("a/b:1", b"original", "x", vec![], 0).unwrap();
        std::fs::write(
            t.path()
                .join("components")
                .join(format!("{}.wasm", e.digest)),
            b"tampered",
        )
        .unwrap();
        assert!(matches!(
            r.component_bytes(&e),
            Err(RegistryError::Tampered { .. })
        ));
    }
}
