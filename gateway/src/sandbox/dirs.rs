//! The directories a sandbox sees, handed over as cap-std handles.
//!
//! wasmtime-wasi opens preopens by path; we give it `/proc/self/fd/<n>` of a handle the host
//! already holds, so the guest gets exactly the directory the host opened (through cap-std, under
//! the data dir), never whatever a path might resolve to later.

use cap_std::fs::Dir;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Guest path of the step's verified files (read-only).
pub const PAYLOAD: &str = "/payload";
/// Guest path of the step's scratch directory (read-write).
pub const WORK: &str = "/work";
/// Guest path of the handler's persistent directory (read-write).
pub const STATE: &str = "/state";

/// One directory handed to the guest.
#[derive(Debug)]
pub struct Preopen {
    dir: Dir,
    guest_path: String,
    writable: bool,
}

impl Preopen {
    pub fn new(dir: Dir, guest_path: impl Into<String>, writable: bool) -> Self {
        Preopen {
            dir,
            guest_path: guest_path.into(),
            writable,
        }
    }

    /// The cap-std handle.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Where the guest sees it.
    pub fn guest_path(&self) -> &str {
        &self.guest_path
    }

    /// Whether the guest may write.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// A path that names exactly this open directory, for APIs that only take paths.
    pub(crate) fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd()))
    }

    /// The directory's current host path (for programs run through the process capability).
    pub fn host_path(&self) -> std::io::Result<PathBuf> {
        std::fs::read_link(self.fd_path())
    }
}

/// The three standard directories of a step, plus any the policy adds.
#[derive(Debug)]
pub struct StepDirs {
    pub payload: Preopen,
    pub work: Preopen,
    pub state: Preopen,
    pub extra: Vec<Preopen>,
    /// Host directories the step's host programs may also write (not the handler itself): the
    /// selected component's directories its policy names (`component-writable`).
    pub program_writable: Vec<std::path::PathBuf>,
}

impl StepDirs {
    /// `/payload` read-only, `/work` and `/state` read-write.
    pub fn new(payload: Dir, work: Dir, state: Dir) -> Self {
        StepDirs {
            payload: Preopen::new(payload, PAYLOAD, false),
            work: Preopen::new(work, WORK, true),
            state: Preopen::new(state, STATE, true),
            extra: Vec::new(),
            program_writable: Vec::new(),
        }
    }

    /// Every preopen, standard ones first.
    pub fn all(&self) -> impl Iterator<Item = &Preopen> {
        [&self.payload, &self.work, &self.state]
            .into_iter()
            .chain(self.extra.iter())
    }

    /// The preopen a guest path lies in, and the rest of the path (no `..`, no empty parts).
    pub fn resolve<'p>(&self, guest: &'p str) -> Option<(&Preopen, Vec<&'p str>)> {
        let best = self
            .all()
            .filter(|p| {
                guest == p.guest_path
                    || guest
                        .strip_prefix(p.guest_path.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .max_by_key(|p| p.guest_path.len())?;
        let rest = &guest[best.guest_path.len()..];
        let mut parts = Vec::new();
        for part in rest.split('/') {
            match part {
                "" | "." => continue,
                ".." => return None,
                p => parts.push(p),
            }
        }
        Some((best, parts))
    }
}
