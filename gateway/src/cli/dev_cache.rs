//! The compiled components `dev run` keeps across runs, so a handler whose component did not
//! change is not compiled again (a Python or JavaScript component carries an interpreter and
//! takes seconds to compile).
//!
//! The cache is a data directory's own precompiled-component cache (`cache/components`, and the
//! key that authenticates its entries, `keys/cache-mac.key`), kept in
//! `$XDG_CACHE_HOME/sandstep/dev` (default `~/.cache/sandstep/dev`). Before the install, a run's
//! throwaway data directory gets links to (or copies of) its entries and key; after it, new
//! entries go back. The data directory's cache does the checking: entries are keyed by the
//! component's sha256 and the engine, and refused unless their MAC verifies, so a stale or
//! foreign entry is compiled again, never run. The newest [`KEEP`] components are kept.
//!
//! Entries are keyed by the signed component's digest, so `dev run` signs with one key kept
//! here (`keys/dev-signing.key`, trusted only in its throwaway data directories): Ed25519
//! signatures are deterministic, so the same component signs to the same bytes each run.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// How many compiled components the cache keeps (the newest).
pub const KEEP: usize = 8;
const ENTRIES: &str = "cache/components";
const KEY: &str = "keys/cache-mac.key";
const SIGNING_KEY: &str = "keys/dev-signing.key";
const SIGNING_PUB: &str = "keys/dev-signing.pub";

/// The dev cache's directory.
#[derive(Debug)]
pub struct DevCache {
    root: PathBuf,
}

impl DevCache {
    /// The cache of this user, created when missing; `None` without a home or cache directory
    /// (a run then compiles, as without the cache).
    pub fn open() -> Option<DevCache> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
        let root = base.join("sandstep/dev");
        for sub in [ENTRIES, "keys"] {
            private_dir(&root.join(sub)).ok()?;
        }
        Some(DevCache { root })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The key `dev run` signs with: made once, then the same for every run.
    pub fn signing_key(&self) -> io::Result<wasmsign2::KeyPair> {
        let (sk_path, pk_path) = (self.root.join(SIGNING_KEY), self.root.join(SIGNING_PUB));
        let read = || -> Option<wasmsign2::KeyPair> {
            let sk = wasmsign2::SecretKey::from_bytes(&std::fs::read(&sk_path).ok()?).ok()?;
            let pk = wasmsign2::PublicKey::from_bytes(&std::fs::read(&pk_path).ok()?).ok()?;
            Some(wasmsign2::KeyPair { sk, pk })
        };
        if let Some(kp) = read() {
            return Ok(kp);
        }
        let kp = wasmsign2::KeyPair::generate();
        sandstep_transport::private_file::write(&sk_path, &kp.sk.to_bytes())?;
        sandstep_transport::private_file::write(&pk_path, &kp.pk.to_bytes())?;
        Ok(kp)
    }

    /// Gives the data directory `data` the cache's entries and key.
    pub fn lend(&self, data: &Path) -> io::Result<()> {
        private_dir(&data.join(ENTRIES))?;
        private_dir(&data.join("keys"))?;
        link_missing(&self.root.join(ENTRIES), &data.join(ENTRIES))?;
        link_file(&self.root.join(KEY), &data.join(KEY))?;
        Ok(())
    }

    /// Takes back what the install in `data` compiled (and the key, when the cache had none),
    /// then keeps the newest [`KEEP`] components; how many files were new (0: the component
    /// was in the cache, nothing was compiled).
    pub fn keep(&self, data: &Path) -> io::Result<usize> {
        link_file(&data.join(KEY), &self.root.join(KEY))?;
        let new = link_missing(&data.join(ENTRIES), &self.root.join(ENTRIES))?;
        prune(&self.root.join(ENTRIES), KEEP)?;
        Ok(new)
    }
}

fn private_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Links (or copies, across file systems) each file of `from` that `to` lacks; how many.
fn link_missing(from: &Path, to: &Path) -> io::Result<usize> {
    let mut linked = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() && link_file(&entry.path(), &to.join(entry.file_name()))? {
            linked += 1;
        }
    }
    Ok(linked)
}

/// `from` at `to` (a hard link, else a copy keeping its mode), unless `to` exists or `from`
/// does not; whether it linked.
fn link_file(from: &Path, to: &Path) -> io::Result<bool> {
    if !from.is_file() || to.exists() {
        return Ok(false);
    }
    if std::fs::hard_link(from, to).is_err() {
        let tmp = to.with_extension("part");
        std::fs::copy(from, &tmp)?;
        std::fs::rename(tmp, to)?;
    }
    Ok(true)
}

/// Keeps the files of the `keep` newest components in `dir` (an entry and its sidecar share a
/// name's stem), removing the rest.
fn prune(dir: &Path, keep: usize) -> io::Result<()> {
    let mut stems: Vec<(std::time::SystemTime, String)> = Vec::new();
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stem = name.split('.').next().unwrap_or_default().to_owned();
        let modified = entry.metadata()?.modified()?;
        match stems.iter_mut().find(|(_, s)| *s == stem) {
            Some(s) => s.0 = s.0.max(modified),
            None => stems.push((modified, stem.clone())),
        }
        files.push((stem, entry.path()));
    }
    stems.sort_by_key(|s| std::cmp::Reverse(s.0));
    let old: Vec<&String> = stems.iter().skip(keep).map(|(_, s)| s).collect();
    for (stem, path) in files {
        if old.contains(&&stem) {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_borrows_the_entries_and_gives_back_new_ones() {
        let t = tempfile::tempdir().unwrap();
        let cache = DevCache {
            root: t.path().join("cache"),
        };
        private_dir(&cache.root.join(ENTRIES)).unwrap();
        private_dir(&cache.root.join("keys")).unwrap();
        std::fs::write(cache.root.join(ENTRIES).join("aaa.cwasm"), b"old").unwrap();
        let data = t.path().join("data");
        cache.lend(&data).unwrap();
        assert_eq!(
            std::fs::read(data.join(ENTRIES).join("aaa.cwasm")).unwrap(),
            b"old"
        );
        std::fs::write(data.join(ENTRIES).join("bbb.cwasm"), b"new").unwrap();
        std::fs::write(data.join(KEY), [7u8; 32]).unwrap();
        assert_eq!(cache.keep(&data).unwrap(), 1, "the new entry");
        assert_eq!(cache.keep(&data).unwrap(), 0, "nothing new the second time");
        assert_eq!(
            std::fs::read(cache.root.join(ENTRIES).join("bbb.cwasm")).unwrap(),
            b"new"
        );
        assert_eq!(std::fs::read(cache.root.join(KEY)).unwrap(), [7u8; 32]);
    }

    #[test]
    fn pruning_keeps_the_newest_components_with_their_sidecars() {
        let t = tempfile::tempdir().unwrap();
        for (i, stem) in ["a", "b", "c"].iter().enumerate() {
            for ext in ["cwasm", "mac"] {
                let p = t.path().join(format!("{stem}.{ext}"));
                std::fs::write(&p, b"x").unwrap();
                let when = std::time::SystemTime::UNIX_EPOCH
                    + std::time::Duration::from_secs(1_000 + i as u64);
                std::fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(when)
                    .unwrap();
            }
        }
        prune(t.path(), 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["b.cwasm", "b.mac", "c.cwasm", "c.mac"]);
    }
}
