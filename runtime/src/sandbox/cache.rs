//! The cache of precompiled components, in a directory only the agent can write.
//!
//! Entries are keyed by the component's sha256 and the engine's compatibility hash. wasmtime
//! treats deserialization as unsafe by design (an artefact is machine code), so an artefact is only
//! ever read from this directory, which sandstep creates with mode 0700 and reaches through a
//! cap-std handle: that, not a checksum, is what keeps others from changing it. Writes are atomic
//! (temporary file, fsync, rename), and each artefact has a sidecar with its CRC-32 and length
//! (crc32fast, hardware-accelerated): an artefact torn or garbled on disk no longer
//! matches it and is never deserialized. A checksum rather than sha256 because the artefact is
//! read on every handler load and the sidecar could not stop a writer of this directory anyway.

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

    fn sidecar_name(&self, digest: &str) -> String {
        format!("{}.crc32", self.entry_name(digest))
    }

    /// The sidecar name of earlier versions (sha256); removed with the entry.
    fn legacy_sidecar_name(&self, digest: &str) -> String {
        format!("{}.sha256", self.entry_name(digest))
    }

    /// The artefact's bytes, if present and matching its recorded checksum.
    pub(crate) fn read(&self, digest: &str) -> std::io::Result<Lookup> {
        let mut bytes = Vec::new();
        match self.dir.open(self.entry_name(digest)) {
            Ok(mut f) => f.read_to_end(&mut bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lookup::Missing),
            Err(e) => return Err(e),
        };
        let recorded = self
            .dir
            .read_to_string(self.sidecar_name(digest))
            .unwrap_or_default();
        if recorded.trim() != checksum(&bytes) {
            return Ok(Lookup::Mismatch);
        }
        Ok(Lookup::Found(bytes))
    }

    /// Stores an artefact atomically, its sidecar first.
    pub(crate) fn write(&self, digest: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.write_file(&self.sidecar_name(digest), checksum(bytes).as_bytes())?;
        let written = self.write_file(&self.entry_name(digest), bytes);
        if written.is_err() {
            let _ = self.dir.remove_file(self.sidecar_name(digest));
        }
        written
    }

    fn write_file(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let name = name.to_owned();
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
        for name in [
            self.entry_name(digest),
            self.sidecar_name(digest),
            self.legacy_sidecar_name(digest),
        ] {
            match self.dir.remove_file(name) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The sidecar's text for an artefact: CRC-32 and length.
fn checksum(bytes: &[u8]) -> String {
    format!("{:08x} {}", crc32fast::hash(bytes), bytes.len())
}

/// What the cache holds for a digest.
pub(crate) enum Lookup {
    Missing,
    /// Present but not matching its sidecar: never deserialized.
    Mismatch,
    Found(Vec<u8>),
}
