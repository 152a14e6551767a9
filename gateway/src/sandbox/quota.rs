//! Disk quotas of the folders a handler writes: `/work`, `/state` and writable mapped dirs.
//!
//! WASI writes go straight to the file system, and programs run through the process capability
//! write to the same folders, so quotas are enforced from outside: while a call runs, each
//! writable folder's allocated size is measured every [`POLL`]; past its limit the call is
//! stopped (its host programs killed with it) and the step fails naming the folder and the limit.
//! A last measurement after the call catches what was written since the previous poll. What a
//! handler can overshoot is what it writes in one poll interval. Limits: `work-bytes` for
//! `/work`, `state-bytes` for `/state`, and for a writable mapped dir what it held when the
//! session began plus `dir-growth-bytes`. A folder that cannot be measured (too deep, too many
//! entries, unreadable) stops the call too: the quota fails closed. And the file system each
//! folder lies on keeps `disk-reserve-bytes` free (or half of what was free when the session
//! began, when that is less): `/work` and `/state` live in the data dir, beside the journal,
//! which must still be written when the step ends.

use cap_std::fs::Dir;
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
    /// Its cause is in the message, not a `source` (printed once).
    #[error("it cannot be read: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for UsageError {
    fn from(e: std::io::Error) -> Self {
        UsageError::Io(e)
    }
}

/// Bytes allocated under `dir` (files, directories, symlinks; symlinks are not followed). The
/// walk holds one descriptor per directory level (at most [`MAX_DEPTH`]), whatever the tree's
/// width, so a handler cannot exhaust the agent's descriptors by making many directories. It
/// runs after every call, so it costs one `openat` per directory and a `statx` per entry:
/// subdirectories are opened by name with `O_NOFOLLOW` (a name swapped for a symlink fails
/// the walk rather than leading out of `dir`). An entry removed while the walk runs (a handler
/// deleting its temporary files) counts nothing, rather than failing the measurement.
pub(crate) fn usage(dir: &Dir) -> Result<u64, UsageError> {
    use rustix::fs::{openat, statat, AtFlags, FileType, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut total = 0u64;
    let mut entries = 0u64;
    // Each level: its open directory stream and the names of its subdirectories still to visit.
    let root = openat(dir, c".", flags, Mode::empty()).map_err(std::io::Error::from)?;
    let mut levels = vec![(
        rustix::fs::Dir::new(root).map_err(std::io::Error::from)?,
        Vec::new(),
    )];
    let mut fresh = true;
    loop {
        let depth = levels.len();
        let Some((d, todo)) = levels.last_mut() else {
            return Ok(total);
        };
        if fresh {
            while let Some(entry) = d.read() {
                let entry = entry.map_err(std::io::Error::from)?;
                let name = entry.file_name();
                if name == c"." || name == c".." {
                    continue;
                }
                entries += 1;
                if entries > MAX_ENTRIES {
                    return Err(UsageError::TooManyEntries);
                }
                let at = d.fd().map_err(std::io::Error::from)?;
                let st = match statat(at, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    // Removed since the directory was read: it holds nothing any more.
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => return Err(std::io::Error::from(e).into()),
                };
                total = total.saturating_add((st.st_blocks as u64).saturating_mul(512));
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    todo.push(name.to_owned());
                }
            }
        }
        match todo.pop() {
            Some(name) => {
                if depth >= MAX_DEPTH {
                    return Err(UsageError::TooDeep);
                }
                let at = d.fd().map_err(std::io::Error::from)?;
                let sub = match openat(at, &name, flags, Mode::empty()) {
                    Ok(sub) => sub,
                    Err(rustix::io::Errno::NOENT) => {
                        fresh = false; // gone since it was listed; go on with this level
                        continue;
                    }
                    Err(e) => return Err(std::io::Error::from(e).into()),
                };
                let sub = rustix::fs::Dir::new(sub).map_err(std::io::Error::from)?;
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

/// One folder measured against its limit.
#[derive(Debug)]
pub(crate) struct Metered {
    /// Where the handler sees it.
    pub guest: String,
    pub dir: Dir,
    pub limit: u64,
    /// The policy knob that sets the limit (for messages).
    pub knob: &'static str,
    /// Free bytes its file system keeps ([`floor`]).
    pub reserve: u64,
}

/// Why a call was stopped by a quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Breach {
    /// `guest` holds `used` bytes, over `limit` (set by `knob`).
    Over {
        guest: String,
        used: u64,
        limit: u64,
        knob: &'static str,
    },
    /// `guest` could not be measured within bounds.
    Unmeasurable { guest: String, why: String },
    /// The file system holding `guest` has `free` bytes left, less than `reserve`.
    DiskLow {
        guest: String,
        free: u64,
        reserve: u64,
    },
}

/// Resolves when a folder outgrows its limit or cannot be measured.
pub(crate) async fn exceeded(metered: Arc<Vec<Metered>>) -> Breach {
    loop {
        tokio::time::sleep(POLL).await;
        if let Some(breach) = check(&metered).await {
            return breach;
        }
    }
}

/// Measures every folder once, off the async threads; the first breach.
pub(crate) async fn check(metered: &Arc<Vec<Metered>>) -> Option<Breach> {
    let metered = metered.clone();
    tokio::task::spawn_blocking(move || metered.iter().find_map(breach))
        .await
        .unwrap_or_else(|e| {
            Some(Breach::Unmeasurable {
                guest: "?".into(),
                why: format!("the measurement failed: {e}"),
            })
        })
}

fn breach(m: &Metered) -> Option<Breach> {
    if let Some(free) = free_bytes(&m.dir).filter(|free| *free < m.reserve) {
        return Some(Breach::DiskLow {
            guest: m.guest.clone(),
            free,
            reserve: m.reserve,
        });
    }
    match usage(&m.dir) {
        Ok(used) if used > m.limit => Some(Breach::Over {
            guest: m.guest.clone(),
            used,
            limit: m.limit,
            knob: m.knob,
        }),
        Ok(_) => None,
        Err(e) => Some(Breach::Unmeasurable {
            guest: m.guest.clone(),
            why: e.to_string(),
        }),
    }
}

/// The free space a session's writes must leave on `dir`'s file system: `reserve`, or half of
/// what was free when the session began if that is less (a disk already short of the reserve
/// is not the handler's doing: it may use half of what is left, not a byte of a reserve that is
/// not there).
pub(crate) fn floor(dir: &Dir, reserve: u64) -> u64 {
    free_bytes(dir).map_or(0, |free| reserve.min(free / 2))
}

/// Bytes an unprivileged writer may still use on the file system holding `dir` (None when it
/// cannot be asked: the folder's own quota still holds).
fn free_bytes(dir: &Dir) -> Option<u64> {
    use std::os::fd::AsFd;
    let st = rustix::fs::fstatvfs(dir.as_fd()).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
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

    /// A handler deleting its files and folders while a poll measures them: every measurement
    /// succeeds (what is gone counts nothing) instead of stopping the call.
    #[test]
    fn files_and_folders_removed_during_the_walk_do_not_fail_it() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..400 {
            let d = tmp.path().join(format!("d{i}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("f"), b"x").unwrap();
            std::fs::write(tmp.path().join(format!("f{i}")), b"x").unwrap();
        }
        let dir = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        let root = tmp.path().to_owned();
        let remover = std::thread::spawn(move || {
            for i in 0..400 {
                let _ = std::fs::remove_file(root.join(format!("f{i}")));
                let _ = std::fs::remove_dir_all(root.join(format!("d{i}")));
            }
        });
        let mut walks = 0;
        while !remover.is_finished() || walks == 0 {
            usage(&dir).unwrap();
            walks += 1;
        }
        remover.join().unwrap();
        assert!(usage(&dir).unwrap() < 8192, "all gone");
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
        // Descriptors open on this tree only: tests beside this one open their own.
        let open_here = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(tmp.path())))
                .count()
        };
        let dir = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        let fds_before = open_here();
        let used = usage(&dir).unwrap();
        assert!(used >= 3000 * 4096, "{used}");
        let fds_after = open_here();
        assert_eq!(fds_after, fds_before, "the walk left descriptors open");
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
