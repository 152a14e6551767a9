//! The data directory: everything sandstep writes, reached only through cap-std handles.
//!
//! ```text
//! <data-dir>/
//!   journal/<workflow>.journal     the deployment journals (checksummed, atomic writes)
//!   downloads/<sha256>             verified payloads, content-addressed; <sha256>.partial while fetching
//!   payload/<workflow>/<unit>/     a step's /payload: hard links to downloads, named by fileName
//!   work/<workflow>/<unit>/        a step's /work
//!   state/<handler>/               a handler's /state (persists across deployments)
//!   cache/components/              precompiled components (0700)
//!   handlers/                      the handler registry
//!   trust/handlers/*.pub           trusted handler signing keys
//!   trust/roots/*.pub              trusted manifest root keys (JWK)
//!   results/<workflow>.json        result files (unless --result-file)
//! ```
//!
//! The only ambient path is the root, opened once at start-up. Every name below it is either
//! fixed, a hex digest, a name passed through [`safe_name`], or a manifest `fileName` that
//! [`check_plain_name`](sandstep_model::manifest::check_plain_name) accepted; and cap-std refuses
//! any path that would leave the directory anyway.

use cap_std::ambient_authority;
use cap_std::fs::{Dir, DirBuilder, OpenOptions};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The data dir used when none is given: `/var/lib/sandstep` for root, else the user's state dir.
pub fn default_path() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/sandstep");
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(state).join("sandstep");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/sandstep"),
        None => PathBuf::from("/tmp/sandstep-state"),
    }
}

/// Turns an arbitrary id (workflow id, handler id, component id) into one safe path component:
/// `[A-Za-z0-9._-]` kept, the rest replaced by `_`, at most 48 characters, then `-` and 32 hex
/// digits (128 bits) of the id's sha256, so that ids chosen to collide (a deployment's workflow
/// id is unsigned) cannot share a directory. Never `.`/`..`, never empty.
pub fn safe_name(id: &str) -> String {
    named(id, 16)
}

/// The name sandstep 0.1 gave `id` (32 bits of digest), only to carry its journals and
/// directories over (see [`adopt_legacy`]).
pub fn legacy_safe_name(id: &str) -> String {
    named(id, 4)
}

/// Opens `dir/name/sub` (`sub` may be empty), creating it with `mode` when missing; a `name`
/// that is missing takes over the entry `legacy` first ([`adopt_legacy`]).
pub fn ensure_dir_adopting(
    dir: &Dir,
    legacy: &str,
    name: &str,
    sub: &str,
    mode: u32,
) -> std::io::Result<Dir> {
    let path = if sub.is_empty() {
        name.to_owned()
    } else {
        format!("{name}/{sub}")
    };
    match dir.open_dir(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        opened => return opened,
    }
    adopt_legacy(dir, legacy, name);
    ensure_dir(dir, path, mode)
}

/// In `dir`, renames the entry `legacy` to `name` when only the legacy one exists (a data dir
/// written by an older sandstep); anything else is left alone.
pub fn adopt_legacy(dir: &Dir, legacy: &str, name: &str) {
    if legacy != name && !dir.exists(name) && dir.symlink_metadata(legacy).is_ok() {
        if let Err(e) = dir.rename(legacy, dir, name) {
            tracing::warn!("cannot rename {legacy} to {name}: {e}");
        }
    }
}

fn named(id: &str, digest_bytes: usize) -> String {
    let mut s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    // One component already, but keep it from even looking like a traversal.
    while s.contains("..") {
        s = s.replace("..", "_.");
    }
    if s.starts_with('.') {
        s.replace_range(..1, "_");
    }
    let digest = Sha256::digest(id.as_bytes());
    format!("{s}-{}", hex::encode(&digest[..digest_bytes]))
}

/// A stored file's identity: unchanged means its bytes are the ones read before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileIdentity {
    pub fn of(m: &cap_std::fs::Metadata) -> FileIdentity {
        use cap_std::fs::MetadataExt as _;
        FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Creates `dir/name` (and parents) with `mode` when missing, and opens it. Opening comes
/// first: the directory nearly always exists, and one `openat2` is all that takes.
pub fn ensure_dir(dir: &Dir, name: impl AsRef<Path>, mode: u32) -> std::io::Result<Dir> {
    let name = name.as_ref();
    match dir.open_dir(name) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        opened => return opened,
    }
    let mut b = DirBuilder::new();
    b.recursive(true);
    {
        use cap_std::fs::DirBuilderExt;
        b.mode(mode);
    }
    dir.create_dir_with(name, &b)?;
    dir.open_dir(name)
}

/// Writes `bytes` to `dir/name` atomically: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(dir: &Dir, name: &str, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_renamed(dir, name, bytes, mode, true)
}

/// Replaces `name` in `dir` atomically (temp file, rename) without syncing: for files whose loss
/// in a power cut costs nothing (what the journal also holds, courtesy copies).
pub fn replace(dir: &Dir, name: &str, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_renamed(dir, name, bytes, mode, false)
}

fn write_renamed(
    dir: &Dir,
    name: &str,
    bytes: &[u8],
    mode: u32,
    sync: bool,
) -> std::io::Result<()> {
    let tmp = format!(".{name}.tmp");
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    {
        use cap_std::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let result = (|| {
        let mut f = dir.open_with(&tmp, &opts)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        dir.rename(&tmp, dir, name)?;
        if sync {
            // The rename is durable only once the directory is synced.
            dir.open(".")?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = dir.remove_file(&tmp);
    }
    result
}

/// Where sandstep keeps its files.
#[derive(Debug)]
pub struct DataDir {
    root: Dir,
    path: PathBuf,
}

/// Why the data dir could not be used.
#[derive(Debug, thiserror::Error)]
#[error("data dir {path}: {what}: {cause}")]
pub struct DataDirError {
    pub path: String,
    pub what: String,
    /// In the message, not a `source`: printed once.
    pub cause: std::io::Error,
}

impl DataDir {
    /// Opens (creating when missing, mode 0700) the data dir at `path`.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let err = |what: &str, source| DataDirError {
            path: path.display().to_string(),
            what: what.to_owned(),
            cause: source,
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| err("create", e))?;
        }
        let root = Dir::open_ambient_dir(path, ambient_authority()).map_err(|e| err("open", e))?;
        Ok(DataDir {
            root,
            path: path.to_owned(),
        })
    }

    /// The path it was opened from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root handle.
    pub fn root(&self) -> &Dir {
        &self.root
    }

    fn sub(&self, name: &str, mode: u32) -> Result<Dir, DataDirError> {
        ensure_dir(&self.root, name, mode).map_err(|source| DataDirError {
            path: self.path.display().to_string(),
            what: format!("open {name}/"),
            cause: source,
        })
    }

    pub fn journals(&self) -> Result<Dir, DataDirError> {
        self.sub("journal", 0o700)
    }
    pub fn downloads(&self) -> Result<Dir, DataDirError> {
        self.sub("downloads", 0o700)
    }
    pub fn payloads(&self) -> Result<Dir, DataDirError> {
        self.sub("payload", 0o755)
    }
    pub fn work(&self) -> Result<Dir, DataDirError> {
        self.sub("work", 0o755)
    }
    pub fn state(&self) -> Result<Dir, DataDirError> {
        self.sub("state", 0o755)
    }
    /// The precompiled components (`cache/components`) and, apart from them, the key that
    /// vouches for them (`keys/`, see [`crate::sandbox::cache`]).
    pub fn component_cache(&self) -> Result<CacheDirs, DataDirError> {
        self.sub("cache", 0o700)?;
        Ok(CacheDirs {
            artefacts: self.sub("cache/components", 0o700)?,
            key: self.sub("keys", 0o700)?,
        })
    }
    pub fn handlers(&self) -> Result<Dir, DataDirError> {
        self.sub("handlers", 0o700)
    }
    pub fn trust_handlers(&self) -> Result<Dir, DataDirError> {
        self.sub("trust", 0o755)?;
        self.sub("trust/handlers", 0o755)
    }
    pub fn trust_roots(&self) -> Result<Dir, DataDirError> {
        self.sub("trust", 0o755)?;
        self.sub("trust/roots", 0o755)
    }
    /// The root key package deployments brought (see [`crate::trust::rotation`]): apart from
    /// `trust/roots`, since what is there the operator chose and a package is checked against.
    pub fn trust_fetched(&self) -> Result<Dir, DataDirError> {
        self.sub("trust", 0o755)?;
        self.sub("trust/fetched", 0o755)
    }
    /// The ledger of running host programs (see [`crate::capability::ledger`]).
    pub fn programs(&self) -> Result<Dir, DataDirError> {
        self.sub("programs", 0o700)
    }
    /// Where a streamed image's durable progress is recorded (per image and slot).
    pub fn streams(&self) -> Result<Dir, DataDirError> {
        self.sub("streams", 0o700)
    }
    pub fn results(&self) -> Result<Dir, DataDirError> {
        self.sub("results", 0o755)
    }
}

/// Where the precompiled cache keeps its artefacts and, apart from them, its key.
#[derive(Debug)]
pub struct CacheDirs {
    pub artefacts: Dir,
    pub key: Dir,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_are_single_plain_components() {
        for id in [
            "../../etc",
            "/abs/path",
            ".",
            "..",
            "",
            "a\0b",
            "wf-1",
            &"x".repeat(500),
        ] {
            let s = safe_name(id);
            assert!(!s.is_empty() && s != "." && s != "..", "{id:?} -> {s}");
            assert!(
                !s.contains('/') && !s.contains('\0') && !s.starts_with('.'),
                "{id:?} -> {s}"
            );
            assert!(s.len() <= 48 + 33);
        }
        assert_ne!(
            safe_name("a/b"),
            safe_name("a_b"),
            "distinct ids never collide"
        );
        assert!(safe_name("wf-1").starts_with("wf-1-"));
    }

    #[test]
    fn names_carry_128_bits_of_digest_and_legacy_entries_are_adopted() {
        let n = safe_name("wf-1");
        assert_eq!(n.len(), "wf-1-".len() + 32, "{n}");
        assert!(n.starts_with(&legacy_safe_name("wf-1")));
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        d.create_dir(legacy_safe_name("microsoft/apt:1")).unwrap();
        d.write(
            format!("{}/installed.json", legacy_safe_name("microsoft/apt:1")),
            b"{}",
        )
        .unwrap();
        let new = safe_name("microsoft/apt:1");
        adopt_legacy(&d, &legacy_safe_name("microsoft/apt:1"), &new);
        assert_eq!(d.read(format!("{new}/installed.json")).unwrap(), b"{}");
        // An existing new entry is never replaced.
        d.create_dir(legacy_safe_name("microsoft/apt:1")).unwrap();
        adopt_legacy(&d, &legacy_safe_name("microsoft/apt:1"), &new);
        assert!(d.exists(legacy_safe_name("microsoft/apt:1")));
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        write_atomic(&d, "x.json", b"one", 0o600).unwrap();
        write_atomic(&d, "x.json", b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(t.path().join("x.json")).unwrap(), b"two");
        assert!(!t.path().join(".x.json.tmp").exists());
    }
}
