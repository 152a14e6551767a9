//! Landlock for host programs: the kernel holds a program to what its handler's grant allows.
//!
//! A host program (a payload script's `/bin/sh`, apt-get) runs outside the WebAssembly sandbox.
//! Before it starts, a Landlock ruleset is built from its grant ([`Boundary`]): it may write only
//! beneath the step's writable directories (`/work`, `/state`, the handler's writable mapped
//! dirs) and the paths its program rule adds (apt-get: the package system's own), plus the
//! harmless character devices (`/dev/null`, ...); with `readable`, it may read and run programs
//! only beneath those paths and the step's directories. The child sets no-new-privileges and
//! enters the ruleset between fork and exec, so the program and everything it starts, however it
//! detaches, stay inside; a write elsewhere fails with EACCES from the kernel.
//!
//! Decisions (which rights, on which paths) are pure functions; the syscalls are in [`sys`]
//! (Landlock has no wrapper in libc or rustix: its three syscalls and two structures are the
//! kernel's UAPI, `include/uapi/linux/landlock.h`).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Landlock's filesystem rights (`LANDLOCK_ACCESS_FS_*`), by the ABI that introduced them.
pub mod access {
    pub const EXECUTE: u64 = 1 << 0;
    pub const WRITE_FILE: u64 = 1 << 1;
    pub const READ_FILE: u64 = 1 << 2;
    pub const READ_DIR: u64 = 1 << 3;
    pub const REMOVE_DIR: u64 = 1 << 4;
    pub const REMOVE_FILE: u64 = 1 << 5;
    pub const MAKE_CHAR: u64 = 1 << 6;
    pub const MAKE_DIR: u64 = 1 << 7;
    pub const MAKE_REG: u64 = 1 << 8;
    pub const MAKE_SOCK: u64 = 1 << 9;
    pub const MAKE_FIFO: u64 = 1 << 10;
    pub const MAKE_BLOCK: u64 = 1 << 11;
    pub const MAKE_SYM: u64 = 1 << 12;
    /// ABI 2: link or rename across directories.
    pub const REFER: u64 = 1 << 13;
    /// ABI 3.
    pub const TRUNCATE: u64 = 1 << 14;

    /// Rights that may be granted on a file (not a directory).
    pub const FILE_ONLY: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE;
    pub const READ: u64 = EXECUTE | READ_FILE | READ_DIR;
}

/// Every right that changes the file system, as far as kernel ABI `abi` knows them.
pub fn write_rights(abi: u32) -> u64 {
    use access::*;
    let mut w = WRITE_FILE
        | REMOVE_DIR
        | REMOVE_FILE
        | MAKE_CHAR
        | MAKE_DIR
        | MAKE_REG
        | MAKE_SOCK
        | MAKE_FIFO
        | MAKE_BLOCK
        | MAKE_SYM;
    if abi >= 2 {
        w |= REFER;
    }
    if abi >= 3 {
        w |= TRUNCATE;
    }
    w
}

/// Character devices every program may write: output thrown away, zeros, random bytes.
pub const DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// What one program run may touch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Boundary {
    /// Written beneath (and read).
    pub writable: Vec<PathBuf>,
    /// Read beneath only (the step's /payload, a read-only mapped dir).
    pub read_only: Vec<PathBuf>,
    /// When set, reads and program runs are held to these and the paths above; when empty,
    /// reads are not restricted.
    pub readable: Vec<PathBuf>,
}

/// One path-beneath rule: a path and the rights granted beneath it (masked to file rights when
/// the path turns out to be a file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: PathBuf,
    pub access: u64,
}

impl Boundary {
    /// The rights the ruleset handles (everything not granted by a rule is refused).
    pub fn handled(&self, abi: u32) -> u64 {
        match self.readable.is_empty() {
            true => write_rights(abi),
            false => write_rights(abi) | access::READ,
        }
    }

    /// The rules granting what the boundary allows, for kernel ABI `abi`.
    pub fn rules(&self, abi: u32) -> Vec<Rule> {
        let read = match self.readable.is_empty() {
            true => 0,
            false => access::READ,
        };
        let write = write_rights(abi);
        let mut rules: Vec<Rule> = Vec::new();
        let mut add = |path: &Path, access: u64| {
            if access != 0 {
                rules.push(Rule {
                    path: path.to_owned(),
                    access,
                });
            }
        };
        for p in &self.writable {
            add(p, write | read);
        }
        for p in &self.read_only {
            add(p, read);
        }
        for p in &self.readable {
            add(p, read);
        }
        for d in DEVICES {
            add(
                Path::new(d),
                ((access::WRITE_FILE | access::TRUNCATE) & write) | read,
            );
        }
        rules
    }

    /// The writable paths, for a message naming them.
    pub fn describe(&self) -> String {
        let paths: Vec<String> = self
            .writable
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        paths.join(", ")
    }
}

/// Why a ruleset could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("the kernel has no Landlock (or it is disabled): {0}")]
    Unavailable(std::io::Error),
    #[error("Landlock ruleset: {what}: {cause}")]
    Ruleset { what: String, cause: std::io::Error },
}

/// The kernel's Landlock ABI version, or why there is none. Asked once.
pub fn abi() -> Result<u32, &'static std::io::Error> {
    static ABI: std::sync::OnceLock<Result<u32, std::io::Error>> = std::sync::OnceLock::new();
    ABI.get_or_init(sys::abi_version).as_ref().copied()
}

/// A built ruleset, entered by a child before it runs its program ([`enter`]).
#[derive(Debug)]
pub struct Ruleset {
    fd: OwnedFd,
}

impl Ruleset {
    /// Builds the ruleset of `boundary`. Paths that do not exist are left out (a policy may name
    /// `/lib64` on a machine without it); one that cannot be opened otherwise is an error.
    pub fn build(boundary: &Boundary) -> Result<Ruleset, LandlockError> {
        let abi = abi().map_err(|e| {
            LandlockError::Unavailable(std::io::Error::from_raw_os_error(
                e.raw_os_error().unwrap_or(libc::ENOSYS),
            ))
        })?;
        let handled = boundary.handled(abi);
        let fd = sys::create_ruleset(handled).map_err(|cause| LandlockError::Ruleset {
            what: "create".into(),
            cause,
        })?;
        for rule in boundary.rules(abi) {
            let failed = |cause| LandlockError::Ruleset {
                what: rule.path.display().to_string(),
                cause,
            };
            let target = match sys::open_path(&rule.path) {
                Ok(t) => t,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(failed(e)),
            };
            let is_dir = rustix::fs::fstat(&target)
                .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir())
                .map_err(|e| failed(e.into()))?;
            let mut granted = rule.access & handled;
            if !is_dir {
                granted &= access::FILE_ONLY;
            }
            if granted != 0 {
                sys::add_rule(&fd, &target, granted).map_err(failed)?;
            }
        }
        Ok(Ruleset { fd })
    }

    /// The descriptor the child enters; it must stay open until the child has exec'd.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Sets no-new-privileges and enters the ruleset `fd`. Called in the child between fork and
/// exec: only async-signal-safe calls (prctl, syscall), no allocation.
pub fn enter(fd: RawFd) -> std::io::Result<()> {
    sys::restrict_self(fd)
}

/// The three syscalls and two structures of `include/uapi/linux/landlock.h`.
mod sys {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::path::Path;

    const CREATE_RULESET_VERSION: u32 = 1 << 0;
    const RULE_PATH_BENEATH: libc::c_int = 1;

    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
    }

    #[repr(C, packed)]
    struct PathBeneathAttr {
        allowed_access: u64,
        parent_fd: i32,
    }

    fn check(ret: libc::c_long) -> std::io::Result<libc::c_long> {
        match ret {
            r if r < 0 => Err(std::io::Error::last_os_error()),
            r => Ok(r),
        }
    }

    pub fn abi_version() -> std::io::Result<u32> {
        // SAFETY: a null attribute with size 0 and the version flag only queries the ABI.
        let v = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0usize,
                CREATE_RULESET_VERSION,
            )
        };
        check(v).map(|v| v as u32)
    }

    pub fn create_ruleset(handled: u64) -> std::io::Result<OwnedFd> {
        let attr = RulesetAttr {
            handled_access_fs: handled,
        };
        // SAFETY: attr is a valid landlock_ruleset_attr prefix of the size passed; the kernel
        // returns a new descriptor (close-on-exec) that we own.
        let fd = check(unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                std::mem::size_of::<RulesetAttr>(),
                0u32,
            )
        })?;
        // SAFETY: fd is a new descriptor owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    pub fn open_path(path: &Path) -> std::io::Result<OwnedFd> {
        rustix::fs::open(
            path,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(Into::into)
    }

    pub fn add_rule(ruleset: &OwnedFd, target: &OwnedFd, access: u64) -> std::io::Result<()> {
        let attr = PathBeneathAttr {
            allowed_access: access,
            parent_fd: target.as_raw_fd(),
        };
        // SAFETY: attr is a valid, packed landlock_path_beneath_attr; both descriptors are open.
        check(unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset.as_raw_fd(),
                RULE_PATH_BENEATH,
                &attr as *const PathBeneathAttr,
                0u32,
            )
        })
        .map(drop)
    }

    pub fn restrict_self(ruleset: RawFd) -> std::io::Result<()> {
        // SAFETY: prctl and syscall are async-signal-safe and take plain integers here.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            check(libc::syscall(
                libc::SYS_landlock_restrict_self,
                ruleset,
                0u32,
            ))
            .map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_handled_as_far_as_the_abi_knows_them_and_reads_only_when_restricted() {
        let open = Boundary::default();
        assert_eq!(open.handled(1) & access::REFER, 0);
        assert_ne!(open.handled(2) & access::REFER, 0);
        assert_eq!(open.handled(2) & access::TRUNCATE, 0);
        assert_ne!(open.handled(7) & access::TRUNCATE, 0);
        assert_eq!(open.handled(7) & access::READ, 0, "reads not restricted");
        let held = Boundary {
            readable: vec!["/usr".into()],
            ..Boundary::default()
        };
        assert_eq!(held.handled(7) & access::READ, access::READ);
    }

    #[test]
    fn the_rules_grant_writes_beneath_writable_paths_only() {
        let b = Boundary {
            writable: vec!["/w".into()],
            read_only: vec!["/p".into()],
            readable: vec![],
        };
        let rules = b.rules(7);
        assert_eq!(rules[0].path, Path::new("/w"));
        assert_eq!(rules[0].access, write_rights(7));
        // Reads are not handled, so a read-only dir needs no rule.
        assert!(rules.iter().all(|r| r.path != Path::new("/p")));
        let null = rules
            .iter()
            .find(|r| r.path == Path::new("/dev/null"))
            .unwrap();
        assert_eq!(null.access, access::WRITE_FILE | access::TRUNCATE);
        let held = Boundary {
            readable: vec!["/usr".into()],
            ..b
        };
        let rules = held.rules(7);
        let p = rules.iter().find(|r| r.path == Path::new("/p")).unwrap();
        assert_eq!(p.access, access::READ);
        let w = rules.iter().find(|r| r.path == Path::new("/w")).unwrap();
        assert_eq!(w.access, write_rights(7) | access::READ);
    }
}
