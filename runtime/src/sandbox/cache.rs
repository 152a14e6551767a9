//! The cache of precompiled components, in a directory only the agent can write.
//!
//! Entries are keyed by the component's sha256 and the engine's compatibility hash. wasmtime
//! treats deserialization as unsafe by design (an artefact is machine code), so an artefact is only
//! ever read from this directory, which sandstep creates with mode 0700 and reaches through a
//! cap-std handle. Writes are atomic (temporary file, fsync, rename).

use cap_std::fs::{Dir, OpenOptions};
use std::io::{Read, Write};

/// A directory of precompiled components.
#[derive(Debug)]
pub struct ComponentCache {
    dir: Dir,
    engine_key: String,
}

impl ComponentCache {
    pub(crate) fn new(dir: Dir, engine_key: String) -> Self {
        ComponentCache { dir, engine_key }
    }

    /// The file name of the artefact for a component digest (hex).
    pub fn entry_name(&self, digest: &str) -> String {
        format!("{digest}-{}.cwasm", self.engine_key)
    }

    /// The artefact's bytes, if present.
    pub(crate) fn read(&self, digest: &str) -> std::io::Result<Option<Vec<u8>>> {
        match self.dir.open(self.entry_name(digest)) {
            Ok(mut f) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes)?;
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores an artefact atomically.
    pub(crate) fn write(&self, digest: &str, bytes: &[u8]) -> std::io::Result<()> {
        let name = self.entry_name(digest);
        let tmp = format!(".{name}.{}.tmp", std::process::id());
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        {
            use cap_std::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let result = (|| {
            let mut f = self.dir.open_with(&tmp, &opts)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            self.dir.rename(&tmp, &self.dir, &name)
        })();
        if result.is_err() {
            let _ = self.dir.remove_file(&tmp);
        }
        result
    }

    /// Removes an artefact (a corrupt one, or one whose handler was removed).
    pub(crate) fn remove(&self, digest: &str) -> std::io::Result<()> {
        match self.dir.remove_file(self.entry_name(digest)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
