//! The cache of precompiled components, in a directory only the agent can write.
//!
//! Entries are keyed by the component's sha256 and the engine's compatibility hash. wasmtime
//! treats deserialization as unsafe by design (an artefact is machine code), so an artefact is
//! mapped only when it carries a valid HMAC-SHA256 (ring's, the CPU's fastest code) under a key
//! kept apart from the cache, beside the trust store (`<data-dir>/keys/cache-mac.key`, 32 random
//! bytes, mode 0600, created on first use): whoever can write the cache directory cannot read
//! the key there. The MAC covers the engine key, the component's digest and the artefact's
//! bytes: a file swapped in (another entry's artefact and sidecar copied over, a crafted one, a
//! torn or garbled one) is refused before it is mapped, and compiled again from the verified
//! component. The key file is opened once, without following a symlink, and checked on what was
//! opened (no check-then-reopen window); one that others could read, that another user owns, or
//! that is not a plain 32-byte file is replaced (which invalidates every entry). Writes are
//! atomic (temporary file, fsync, rename).

use cap_std::fs::{Dir, OpenOptions};
use ring::hmac;
use std::io::{Read, Write};

/// The key's file name in its directory.
const KEY_FILE: &str = "cache-mac.key";
/// Where earlier versions kept the key: in the cache directory itself. Removed on sight.
const OLD_KEY_FILE: &str = "mac.key";

pub use crate::datadir::CacheDirs;

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

/// The key's bytes, read from one open of the file (never through a symlink), if that file is a
/// plain 32-byte file of this user that no one else may read.
fn read_private_key(dir: &Dir) -> std::io::Result<Option<Vec<u8>>> {
    use cap_std::fs::{MetadataExt, OpenOptionsExt};
    let mut opts = OpenOptions::new();
    opts.read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let mut file = match dir.open_with(KEY_FILE, &opts) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // A symlink (ELOOP) or anything else that is not the key's own file.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let m = file.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let mine = m.uid() == unsafe { libc::geteuid() };
    if !(m.is_file() && m.mode() & 0o077 == 0 && mine && m.len() == 32) {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(32);
    file.read_to_end(&mut bytes)?;
    Ok((bytes.len() == 32).then_some(bytes))
}

/// Reads the key, or makes a new one when it is missing or not private to this user.
fn load_or_make_key(dir: &Dir) -> std::io::Result<hmac::Key> {
    if let Some(bytes) = read_private_key(dir)? {
        return Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes));
    }
    if dir.symlink_metadata(KEY_FILE).is_ok() {
        tracing::warn!(
            "the precompiled cache's key file is readable by others, not the agent's own or \
             not a plain file; replacing it (every cached artefact is compiled again)"
        );
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| std::io::Error::other("no random bytes for the cache key"))?;
    let _ = dir.remove_file(KEY_FILE);
    crate::datadir::write_atomic(dir, KEY_FILE, &bytes, 0o600)?;
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
}

impl ComponentCache {
    pub(crate) fn new(dirs: CacheDirs, engine_key: String) -> Self {
        let CacheDirs {
            artefacts: dir,
            key,
        } = dirs;
        // A key an earlier version kept among the artefacts is readable to whoever can write
        // them: it goes (its entries no longer verify and are compiled again).
        let _ = dir.remove_file(OLD_KEY_FILE);
        let key = match load_or_make_key(&key) {
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
    use std::path::Path;

    /// A cache whose artefacts are in `t/cache` and its key in `t/keys`.
    fn cache(t: &Path) -> ComponentCache {
        let open = |name: &str| {
            std::fs::create_dir_all(t.join(name)).unwrap();
            Dir::open_ambient_dir(t.join(name), ambient_authority()).unwrap()
        };
        let dirs = CacheDirs {
            artefacts: open("cache"),
            key: open("keys"),
        };
        ComponentCache::new(dirs, "e1".into())
    }

    #[test]
    fn an_artefact_reads_back_only_under_its_own_digest_and_key() {
        let t = tempfile::tempdir().unwrap();
        let c = cache(t.path());
        c.write("aa", b"code").unwrap();
        assert!(matches!(c.read("aa").unwrap(), Lookup::Found(b) if b == b"code"));
        // The same bytes and sidecar under another digest: refused.
        let from = |n: &str| t.path().join("cache").join(c.entry_name("aa") + n);
        let to = |n: &str| t.path().join("cache").join(c.entry_name("bb") + n);
        std::fs::copy(from(""), to("")).unwrap();
        std::fs::copy(from(".mac"), to(".mac")).unwrap();
        assert!(matches!(c.read("bb").unwrap(), Lookup::Mismatch));
        // Another key (a new data dir's): refused.
        std::fs::remove_file(t.path().join("keys").join(KEY_FILE)).unwrap();
        assert!(matches!(
            cache(t.path()).read("aa").unwrap(),
            Lookup::Mismatch
        ));
    }

    #[test]
    fn the_key_is_not_in_the_cache_directory_and_an_old_one_there_is_removed() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("cache")).unwrap();
        std::fs::write(t.path().join("cache").join(OLD_KEY_FILE), [7u8; 32]).unwrap();
        let c = cache(t.path());
        c.write("aa", b"code").unwrap();
        let mut names: Vec<_> = std::fs::read_dir(t.path().join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [c.entry_name("aa"), c.sidecar_name("aa")]);
        assert!(t.path().join("keys").join(KEY_FILE).is_file());
    }

    #[test]
    fn a_key_others_can_read_is_replaced() {
        let t = tempfile::tempdir().unwrap();
        cache(t.path()).write("aa", b"code").unwrap();
        let key = t.path().join("keys").join(KEY_FILE);
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

    #[test]
    fn a_key_file_that_is_a_symlink_is_replaced_not_followed() {
        let t = tempfile::tempdir().unwrap();
        // A private 32-byte file elsewhere, the key file a symlink to it.
        let planted = t.path().join("planted");
        std::fs::write(&planted, [9u8; 32]).unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::create_dir_all(t.path().join("keys")).unwrap();
        let key = t.path().join("keys").join(KEY_FILE);
        std::os::unix::fs::symlink(&planted, &key).unwrap();
        let c = cache(t.path());
        let meta = std::fs::symlink_metadata(&key).unwrap();
        assert!(meta.is_file(), "the symlink was kept");
        assert_ne!(std::fs::read(&key).unwrap(), [9u8; 32]);
        assert_eq!(std::fs::read(&planted).unwrap(), [9u8; 32]);
        c.write("aa", b"code").unwrap();
        assert!(matches!(c.read("aa").unwrap(), Lookup::Found(_)));
    }
}
