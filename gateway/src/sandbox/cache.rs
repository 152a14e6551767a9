//! The cache of precompiled components, in a directory only the agent can write.
//!
//! Entries are keyed by the component's sha256 and the engine's compatibility hash. wasmtime
//! treats deserialization as unsafe by design (an artefact is machine code), so an artefact is
//! mapped only when it carries a valid HMAC-SHA256 (ring's, the CPU's fastest code) under a key
//! that only the agent can read (`mac.key`, 32 random bytes, mode 0600, created on first use). The
//! MAC covers the engine key, the component's digest and the artefact's bytes: a file swapped in
//! (another entry's artefact and sidecar copied over, a crafted one, a torn or garbled one) is
//! refused before it is mapped, and compiled again from the verified component. A key file that
//! others could read, or that another user owns, is replaced (which invalidates every entry).
//! Writes are atomic (temporary file, fsync, rename).

use cap_std::fs::{Dir, OpenOptions};
use ring::hmac;
use std::io::{Read, Write};

/// The key's file name in the cache directory.
const KEY_FILE: &str = "mac.key";

/// A directory of precompiled components.
#[derive(Debug)]
pub struct ComponentCache {
    dir: Dir,
    engine_key: String,
    /// None when no key could be read or made: nothing is read from or written to the cache.
    key: Option<MacKey>,
}

/// The cache's HMAC key.
struct MacKey(hmac::Key);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

/// Reads the key, or makes a new one when it is missing or not private to this user.
fn load_or_make_key(dir: &Dir) -> std::io::Result<hmac::Key> {
    use cap_std::fs::MetadataExt;
    let private = |m: &cap_std::fs::Metadata| {
        m.is_file()
            && m.mode() & 0o077 == 0
            // SAFETY: geteuid has no preconditions.
            && m.uid() == unsafe { libc::geteuid() }
            && m.len() == 32
    };
    match dir.symlink_metadata(KEY_FILE) {
        Ok(m) if private(&m) => {
            let bytes = dir.read(KEY_FILE)?;
            return Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes));
        }
        Ok(_) => tracing::warn!(
            "the precompiled cache's key file is readable by others or not the agent's own; \
             replacing it (every cached artefact is compiled again)"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| std::io::Error::other("no random bytes for the cache key"))?;
    let _ = dir.remove_file(KEY_FILE);
    crate::datadir::write_atomic(dir, KEY_FILE, &bytes, 0o600)?;
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
}

impl ComponentCache {
    pub(crate) fn new(dir: Dir, engine_key: String) -> Self {
        let key = match load_or_make_key(&dir) {
            Ok(k) => Some(MacKey(k)),
            Err(e) => {
                tracing::warn!("the precompiled cache is off: no key ({e})");
                None
            }
        };
        ComponentCache {
            dir,
            engine_key,
            key,
        }
    }

    /// The file name of the artefact for a component digest (hex).
    pub fn entry_name(&self, digest: &str) -> String {
        format!("{digest}-{}.cwasm", self.engine_key)
    }

    fn sidecar_name(&self, digest: &str) -> String {
        format!("{}.mac", self.entry_name(digest))
    }

    /// The sidecar names of earlier versions (sha256, CRC-32); removed with the entry.
    fn legacy_sidecar_names(&self, digest: &str) -> [String; 2] {
        let entry = self.entry_name(digest);
        [format!("{entry}.sha256"), format!("{entry}.crc32")]
    }

    /// The MAC context over what an artefact is bound to, before its bytes.
    fn context(&self, key: &MacKey, digest: &str) -> hmac::Context {
        let mut ctx = hmac::Context::with_key(&key.0);
        for part in ["sandstep-cache-v1", &self.engine_key, digest] {
            ctx.update(part.as_bytes());
            ctx.update(&[0]);
        }
        ctx
    }

    /// The artefact's bytes, if present and carrying a valid MAC.
    pub(crate) fn read(&self, digest: &str) -> std::io::Result<Lookup> {
        let Some(key) = &self.key else {
            return Ok(Lookup::Missing);
        };
        let mut bytes = Vec::new();
        match self.dir.open(self.entry_name(digest)) {
            Ok(mut f) => f.read_to_end(&mut bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lookup::Missing),
            Err(e) => return Err(e),
        };
        let recorded = self
            .dir
            .read_to_string(self.sidecar_name(digest))
            .ok()
            .and_then(|t| hex::decode(t.trim()).ok())
            .unwrap_or_default();
        let mut ctx = self.context(key, digest);
        ctx.update(&bytes);
        let tag = ctx.sign();
        if !tags_equal(tag.as_ref(), &recorded) {
            return Ok(Lookup::Mismatch);
        }
        Ok(Lookup::Found(bytes))
    }

    /// Stores an artefact atomically, its sidecar first.
    pub(crate) fn write(&self, digest: &str, bytes: &[u8]) -> std::io::Result<()> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let mut ctx = self.context(key, digest);
        ctx.update(bytes);
        let tag = hex::encode(ctx.sign().as_ref());
        self.write_file(&self.sidecar_name(digest), tag.as_bytes())?;
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
        let [sha, crc] = self.legacy_sidecar_names(digest);
        for name in [self.entry_name(digest), self.sidecar_name(digest), sha, crc] {
            match self.dir.remove_file(name) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Equal tags, compared in constant time.
fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the cache holds for a digest.
pub(crate) enum Lookup {
    Missing,
    /// Present but without a valid MAC: never deserialized.
    Mismatch,
    Found(Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;
    use std::os::unix::fs::PermissionsExt;

    fn cache(t: &std::path::Path) -> ComponentCache {
        ComponentCache::new(
            Dir::open_ambient_dir(t, ambient_authority()).unwrap(),
            "e1".into(),
        )
    }

    #[test]
    fn an_artefact_reads_back_only_under_its_own_digest_and_key() {
        let t = tempfile::tempdir().unwrap();
        let c = cache(t.path());
        c.write("aa", b"code").unwrap();
        assert!(matches!(c.read("aa").unwrap(), Lookup::Found(b) if b == b"code"));
        // The same bytes and sidecar under another digest: refused.
        let from = |n: &str| t.path().join(c.entry_name("aa") + n);
        let to = |n: &str| t.path().join(c.entry_name("bb") + n);
        std::fs::copy(from(""), to("")).unwrap();
        std::fs::copy(from(".mac"), to(".mac")).unwrap();
        assert!(matches!(c.read("bb").unwrap(), Lookup::Mismatch));
        // Another key (a new data dir's): refused.
        std::fs::remove_file(t.path().join(KEY_FILE)).unwrap();
        assert!(matches!(
            cache(t.path()).read("aa").unwrap(),
            Lookup::Mismatch
        ));
    }

    #[test]
    fn a_key_others_can_read_is_replaced() {
        let t = tempfile::tempdir().unwrap();
        cache(t.path()).write("aa", b"code").unwrap();
        let key = t.path().join(KEY_FILE);
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let before = std::fs::read(&key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = cache(t.path());
        assert_ne!(std::fs::read(&key).unwrap(), before);
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(c.read("aa").unwrap(), Lookup::Mismatch));
    }
}
