//! The reported `fileSets`: the files present at the files handler's destinations (its policy
//! `dirs`), with their MD5 and sha256, as the Degu device reports at boot; computed at start and
//! after each deployment, so a file put there by other means shows too. The walk is bounded
//! (depth, count, size) and never follows symlinks.

use crate::digest::Sha256;
use crate::policy::ExtraDir;
use md5::{Digest as _, Md5};
use sandstep_model::reported::FileDigests;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// Most files listed.
const MAX_FILES: usize = 1000;
/// Deepest directory level walked.
const MAX_DEPTH: usize = 8;
/// Largest file hashed; a larger one is listed with its size only.
const MAX_HASHED: u64 = 256 << 20;
/// Most bytes hashed in all (the report runs on the agent's loop); past it, sizes only.
const BUDGET: u64 = 512 << 20;

/// `guest path -> {md5, sha256}` (or `{size, note}`) for every regular file under `dirs`.
pub fn file_sets(dirs: &[ExtraDir]) -> BTreeMap<String, FileDigests> {
    let mut out = BTreeMap::new();
    let mut budget = BUDGET;
    for d in dirs {
        walk(
            &d.host,
            d.guest.trim_end_matches('/'),
            0,
            &mut out,
            &mut budget,
        );
    }
    out
}

fn walk(
    dir: &Path,
    guest: &str,
    depth: usize,
    out: &mut BTreeMap<String, FileDigests>,
    budget: &mut u64,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if out.len() >= MAX_FILES {
            return;
        }
        let Ok(kind) = e.file_type() else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        let at = format!("{guest}/{name}");
        if kind.is_dir() && depth < MAX_DEPTH {
            walk(&e.path(), &at, depth + 1, out, budget);
        } else if kind.is_file() {
            out.insert(at, digests(&e.path(), budget));
        }
    }
}

fn digests(path: &Path, budget: &mut u64) -> FileDigests {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let not_hashed = |note: &str| FileDigests::NotHashed {
        size,
        note: note.to_owned(),
    };
    if size > MAX_HASHED || size > *budget {
        return not_hashed("too large to hash here");
    }
    *budget -= size;
    let Ok(mut f) = std::fs::File::open(path) else {
        return not_hashed("unreadable");
    };
    let (mut md5, mut sha) = (Md5::new(), Sha256::new());
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                md5.update(&buf[..n]);
                sha.update(&buf[..n]);
            }
            Err(_) => return not_hashed("unreadable"),
        }
    }
    FileDigests::Hashed {
        md5: hex::encode(md5.finalize()),
        sha256: hex::encode(sha.finalize()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_present_is_listed_by_guest_path_and_symlinks_are_not_followed() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("sub")).unwrap();
        std::fs::write(t.path().join("main.py"), b"print('v1')\n").unwrap();
        std::fs::write(t.path().join("sub/lib.py"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("link")).unwrap();
        let sets = file_sets(&[ExtraDir {
            host: t.path().to_owned(),
            guest: "/dest/app".into(),
            writable: true,
        }]);
        let keys: Vec<&str> = sets.keys().map(String::as_str).collect();
        assert_eq!(keys, ["/dest/app/main.py", "/dest/app/sub/lib.py"]);
        assert_eq!(
            sets["/dest/app/sub/lib.py"],
            FileDigests::Hashed {
                md5: "d41d8cd98f00b204e9800998ecf8427e".into(),
                sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into()
            }
        );
    }
}
