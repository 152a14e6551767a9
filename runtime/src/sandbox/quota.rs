//! The per-step `/work` quota.
//!
//! WASI writes go straight to the file system, and programs run through the process capability
//! write to the same folder, so the quota is enforced from outside: while a call runs, the folder's
//! allocated size is measured every [`POLL`]; past the limit the call is stopped (its host
//! programs killed with it) and the step fails. A last measurement after the call catches what was
//! written since the previous poll. What a handler can overshoot is what it writes in one poll
//! interval; the limit is the policy's `work-bytes`.

use cap_std::fs::{Dir, MetadataExt};
use std::sync::Arc;
use std::time::Duration;

/// How often a running call's `/work` is measured.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// Bytes allocated under `dir` (files, directories, symlinks; symlinks are not followed).
pub(crate) fn usage(dir: &Dir) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut pending = vec![dir.try_clone()?];
    while let Some(d) = pending.pop() {
        for entry in d.entries()? {
            let entry = entry?;
            let meta = entry.metadata()?;
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                pending.push(entry.open_dir()?);
            }
        }
    }
    Ok(total)
}

/// Resolves when `dir` holds more than `limit` bytes, with the bytes it holds.
pub(crate) async fn exceeded(dir: Arc<Dir>, limit: u64) -> u64 {
    loop {
        tokio::time::sleep(POLL).await;
        if let Some(used) = measure(&dir).await {
            if used > limit {
                return used;
            }
        }
    }
}

/// One measurement off the async threads; `None` if the folder could not be read.
pub(crate) async fn measure(dir: &Arc<Dir>) -> Option<u64> {
    let dir = dir.clone();
    match tokio::task::spawn_blocking(move || usage(&dir)).await {
        Ok(Ok(used)) => Some(used),
        Ok(Err(e)) => {
            tracing::warn!("cannot measure the work folder: {e}");
            None
        }
        Err(_) => None,
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
