//! The per-step `/work` quota.
//!
//! WASI writes go straight to the file system, and programs run through the process capability
//! write to the same folder, so the quota is enforced from outside: while a call runs, the folder's
//! allocated size is measured every [`POLL`]; past the limit the call is stopped (its host
//! programs killed with it) and the step fails. A last measurement after the call catches what was
//! written since the previous poll. What a handler can overshoot is what it writes in one poll
//! interval; the limit is the policy's `work-bytes`. A folder that cannot be measured (too deep,
//! too many entries, unreadable) stops the call too: the quota fails closed.

use cap_std::fs::{Dir, MetadataExt};
use std::sync::Arc;
use std::time::Duration;

/// How often a running call's `/work` is measured.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// Most directory levels measured; a deeper tree fails the measurement (and so the call).
pub(crate) const MAX_DEPTH: usize = 64;
/// Most entries (files, directories, links) a step's `/work` may hold: inodes are a resource
/// too, and a walk over millions of them would outlast the poll.
pub(crate) const MAX_ENTRIES: u64 = 100_000;

/// Why `/work` could not be measured within bounds; the call is stopped (fail closed).
#[derive(Debug, thiserror::Error)]
pub(crate) enum UsageError {
    #[error("it is more than {MAX_DEPTH} directories deep")]
    TooDeep,
    #[error("it holds more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("it cannot be read: {0}")]
    Io(#[from] std::io::Error),
}

/// Bytes allocated under `dir` (files, directories, symlinks; symlinks are not followed). The
/// walk holds one descriptor per directory level (at most [`MAX_DEPTH`]), whatever the tree's
/// width, so a handler cannot exhaust the agent's descriptors by making many directories.
pub(crate) fn usage(dir: &Dir) -> Result<u64, UsageError> {
    let mut total = 0u64;
    let mut entries = 0u64;
    // Each level: its open directory and the names of its subdirectories still to visit.
    let mut levels: Vec<(Dir, Vec<std::ffi::OsString>)> = vec![(dir.try_clone()?, Vec::new())];
    let mut fresh = true;
    loop {
        let depth = levels.len();
        let Some((d, todo)) = levels.last_mut() else {
            return Ok(total);
        };
        if fresh {
            for entry in d.entries()? {
                let entry = entry?;
                entries += 1;
                if entries > MAX_ENTRIES {
                    return Err(UsageError::TooManyEntries);
                }
                let meta = entry.metadata()?;
                total = total.saturating_add(meta.blocks().saturating_mul(512));
                if meta.is_dir() {
                    todo.push(entry.file_name());
                }
            }
        }
        match todo.pop() {
            Some(name) => {
                if depth >= MAX_DEPTH {
                    return Err(UsageError::TooDeep);
                }
                let sub = d.open_dir(&name)?; // inside `dir` whatever it is by now: cap-std
                levels.push((sub, Vec::new()));
                fresh = true;
            }
            None => {
                levels.pop();
                fresh = false;
            }
        }
    }
}

/// Resolves when `dir` holds more than `limit` bytes, or cannot be measured within bounds, with
/// what was found.
pub(crate) async fn exceeded(dir: Arc<Dir>, limit: u64) -> Result<u64, String> {
    loop {
        tokio::time::sleep(POLL).await;
        match measure(&dir).await {
            Ok(used) if used > limit => return Ok(used),
            Ok(_) => {}
            Err(why) => return Err(why),
        }
    }
}

/// One measurement off the async threads.
pub(crate) async fn measure(dir: &Arc<Dir>) -> Result<u64, String> {
    let dir = dir.clone();
    match tokio::task::spawn_blocking(move || usage(&dir)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the measurement failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_nested_files_and_not_symlink_targets() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        std::fs::write(tmp.path().join("a/big"), vec![1u8; 300_000]).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("huge"), vec![1u8; 2_000_000]).unwrap();
        std::os::unix::fs::symlink(outside.path().join("huge"), tmp.path().join("link")).unwrap();
        let dir = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        let used = usage(&dir).unwrap();
        assert!((300_000..1_000_000).contains(&used), "{used}");
    }
}

#[cfg(test)]
mod bounds {
    use super::*;

    #[test]
    fn thousands_of_directories_are_measured_with_a_few_descriptors() {
        // Many sibling directories: the walk keeps one descriptor per level, not per directory.
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..3000 {
            std::fs::create_dir(tmp.path().join(format!("d{i}"))).unwrap();
        }
        let fds_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
        let dir = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        let used = usage(&dir).unwrap();
        assert!(used >= 3000 * 4096, "{used}");
        let fds_after = std::fs::read_dir("/proc/self/fd").unwrap().count();
        assert!(fds_after <= fds_before + 2, "{fds_before} -> {fds_after}");
    }

    #[test]
    fn a_tree_too_deep_or_too_wide_fails_the_measurement() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = tmp.path().to_owned();
        for _ in 0..(MAX_DEPTH + 1) {
            p.push("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        let dir = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        assert!(matches!(usage(&dir), Err(UsageError::TooDeep)));
    }
}
