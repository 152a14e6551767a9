//! The argument grammar of the process capability: what a host program may be handed.
//!
//! A program's policy lists argument *forms*. A form is a fixed prefix of literal arguments, then
//! a fixed sequence of typed slots (`then`), then any number of arguments each fitting one of the
//! `rest` slot types. An invocation is allowed when one form accepts all of its arguments in
//! order; options can therefore only come from the prefix, never from where a value goes (apt's
//! `-o Dir=.` is refused: `-o` is not a package spec).
//!
//! Slot types:
//! - `payload-file`, `payload-file:<suffix>`: an absolute path beneath the step's `/payload`, each
//!   component a real directory or, last, a regular file (no symlink anywhere, no `..`);
//! - `work-path`, `state-path`: an absolute path beneath `/work` or `/state`, no symlink and no
//!   `..` on the way (the last component may not exist yet; when it does, it is not a symlink
//!   and not a file with other hard links, which may lie outside the step's directories);
//! - `debian-package`: `name`, `name=version` (the version starting with a digit) or `name-`;
//! - `debian-package-name`: `name` alone;
//! - `any`: anything, for the arguments of a payload script whose interpreter already runs step
//!   content (only after a `payload-file` slot makes that the program's entry point);
//! - `inactive-slot:<for A>|<for B>`: exactly the text given for the A/B slot that is not
//!   running, as the handler's slot policy tells it at the moment of the call (e.g. SWUpdate's
//!   `-estable,copy2` while slot A runs): a program that writes slots itself cannot be pointed
//!   at the running one.

use serde::{Deserialize, Serialize};
use std::path::{Component, Path};

/// One argument slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Slot {
    PayloadFile {
        suffix: Option<String>,
    },
    WorkPath,
    StatePath,
    DebianPackage,
    DebianPackageName,
    Any,
    /// The text for slot A, then for slot B.
    InactiveSlot {
        a: String,
        b: String,
    },
}

/// A policy's argument slot that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown argument slot `{0}` (payload-file[:suffix], work-path, state-path, debian-package, debian-package-name, any, inactive-slot:<for A>|<for B>)")]
pub struct UnknownSlot(pub String);

impl TryFrom<String> for Slot {
    type Error = UnknownSlot;
    fn try_from(s: String) -> Result<Slot, UnknownSlot> {
        Ok(match s.as_str() {
            "payload-file" => Slot::PayloadFile { suffix: None },
            "work-path" => Slot::WorkPath,
            "state-path" => Slot::StatePath,
            "debian-package" => Slot::DebianPackage,
            "debian-package-name" => Slot::DebianPackageName,
            "any" => Slot::Any,
            other if other.starts_with("inactive-slot:") => {
                match other["inactive-slot:".len()..].split_once('|') {
                    Some((a, b)) if !a.is_empty() && !b.is_empty() && a != b => {
                        Slot::InactiveSlot {
                            a: a.to_owned(),
                            b: b.to_owned(),
                        }
                    }
                    _ => return Err(UnknownSlot(other.to_owned())),
                }
            }
            other => match other.strip_prefix("payload-file:") {
                Some(suffix) if !suffix.is_empty() => Slot::PayloadFile {
                    suffix: Some(suffix.to_owned()),
                },
                _ => return Err(UnknownSlot(other.to_owned())),
            },
        })
    }
}

impl From<Slot> for String {
    fn from(s: Slot) -> String {
        match s {
            Slot::PayloadFile { suffix: None } => "payload-file".into(),
            Slot::PayloadFile { suffix: Some(x) } => format!("payload-file:{x}"),
            Slot::WorkPath => "work-path".into(),
            Slot::StatePath => "state-path".into(),
            Slot::DebianPackage => "debian-package".into(),
            Slot::DebianPackageName => "debian-package-name".into(),
            Slot::Any => "any".into(),
            Slot::InactiveSlot { a, b } => format!("inactive-slot:{a}|{b}"),
        }
    }
}

/// One accepted shape of a program's arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArgForm {
    /// Literal arguments, first, in this order.
    #[serde(default)]
    pub prefix: Vec<String>,
    /// Then one argument per slot, in this order.
    #[serde(default)]
    pub then: Vec<Slot>,
    /// Then any number of arguments, each fitting one of these.
    #[serde(default)]
    pub rest: Vec<Slot>,
    /// Most arguments in all.
    #[serde(default = "default_max_args")]
    pub max_args: usize,
}

fn default_max_args() -> usize {
    256
}

/// The host paths of the step's directories.
#[derive(Debug, Clone, Copy)]
pub struct StepDirs<'a> {
    pub payload: &'a Path,
    pub work: &'a Path,
    pub state: &'a Path,
    /// The A/B slot not running (`'a'` or `'b'`), or why it is not known (no slot policy, the
    /// booted slot unknown).
    pub inactive_slot: Result<char, &'a str>,
}

/// Why an argument list does not fit a form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("{count} arguments, at most {max}")]
    TooMany { count: usize, max: usize },
    #[error("`any` may only be a `rest` slot")]
    AnyNotRest,
    #[error("`any` needs a payload file as the first slot (the entry point)")]
    AnyWithoutEntryPoint,
    #[error("argument {index} `{got}` is not `{want}`")]
    NotLiteral {
        index: usize,
        got: String,
        want: String,
    },
    #[error("argument `{0}` is missing")]
    MissingLiteral(String),
    #[error("a {0} argument is missing")]
    MissingSlot(Slot),
    #[error("argument {index} `{arg}`: {why}")]
    Slot {
        index: usize,
        arg: String,
        why: SlotError,
    },
    #[error("argument {index} `{arg}` is none of: {} ({first})", kinds(rest))]
    NoneOf {
        index: usize,
        arg: String,
        rest: Vec<Slot>,
        /// Why it does not fit the first of them.
        first: SlotError,
    },
}

fn kinds(slots: &[Slot]) -> String {
    slots
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(self.clone()))
    }
}

/// Why one argument does not fit a slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    #[error("not a Debian package spec")]
    NotPackageSpec,
    #[error("not a Debian package name")]
    NotPackageName,
    #[error("not a `{0}` file")]
    WrongSuffix(String),
    #[error("not beneath {0}")]
    NotBeneath(String),
    #[error("names the directory itself")]
    DirectoryItself,
    #[error("`.` or `..` in the path")]
    DotOrDotDot,
    #[error("a symlink or `..` on the way (resolved beneath the step's directory)")]
    Escapes,
    #[error("a component on the way is not a directory")]
    NotADirectoryOnTheWay,
    #[error("not a regular file")]
    NotRegular,
    #[error("{0} is a symlink")]
    Symlink(String),
    #[error("{0} is a hard link to a file that has other names (perhaps outside the step's directories)")]
    HardLink(String),
    #[error("{path}: {errno}")]
    Io { path: String, errno: String },
    #[error("not the text for the slot that is not running (slot {0})")]
    NotInactiveSlot(char),
    #[error("which slot is not running is unknown: {0}")]
    InactiveSlotUnknown(String),
}

impl ArgForm {
    /// Whether an argument must be the text for the slot not running (then the caller reads the
    /// boot state; other forms never touch it).
    pub fn names_a_slot(&self) -> bool {
        self.then
            .iter()
            .chain(&self.rest)
            .any(|s| matches!(s, Slot::InactiveSlot { .. }))
    }

    /// Accepts `args` or says, for the first argument that does not fit, why.
    pub fn check(&self, args: &[String], dirs: StepDirs<'_>) -> Result<(), FormError> {
        if args.len() > self.max_args {
            return Err(FormError::TooMany {
                count: args.len(),
                max: self.max_args,
            });
        }
        if self.then.contains(&Slot::Any) {
            return Err(FormError::AnyNotRest);
        }
        if self.rest.contains(&Slot::Any)
            && !self
                .then
                .first()
                .is_some_and(|s| matches!(s, Slot::PayloadFile { .. }))
        {
            return Err(FormError::AnyWithoutEntryPoint);
        }
        let mut it = args.iter().enumerate();
        for want in &self.prefix {
            match it.next() {
                Some((_, got)) if got == want => {}
                Some((index, got)) => {
                    return Err(FormError::NotLiteral {
                        index,
                        got: got.clone(),
                        want: want.clone(),
                    })
                }
                None => return Err(FormError::MissingLiteral(want.clone())),
            }
        }
        for slot in &self.then {
            let Some((index, got)) = it.next() else {
                return Err(FormError::MissingSlot(slot.clone()));
            };
            fits(slot, got, dirs).map_err(|why| FormError::Slot {
                index,
                arg: got.clone(),
                why,
            })?;
        }
        for (index, got) in it {
            let mut errors = self.rest.iter().map(|slot| fits(slot, got, dirs));
            let first = match errors.next() {
                Some(Err(e)) if errors.all(|r| r.is_err()) => e,
                _ => continue,
            };
            return Err(FormError::NoneOf {
                index,
                arg: got.clone(),
                rest: self.rest.clone(),
                first,
            });
        }
        Ok(())
    }
}

/// Whether `arg` fits `slot`.
fn fits(slot: &Slot, arg: &str, dirs: StepDirs<'_>) -> Result<(), SlotError> {
    match slot {
        Slot::Any => Ok(()),
        Slot::DebianPackage => is_package_spec(arg)
            .then_some(())
            .ok_or(SlotError::NotPackageSpec),
        Slot::DebianPackageName => is_package_name(arg)
            .then_some(())
            .ok_or(SlotError::NotPackageName),
        Slot::PayloadFile { suffix } => {
            if let Some(x) = suffix {
                if !arg.ends_with(x.as_str()) {
                    return Err(SlotError::WrongSuffix(x.clone()));
                }
            }
            resolve_beneath(dirs.payload, arg, true)
        }
        Slot::WorkPath => resolve_beneath(dirs.work, arg, false),
        Slot::StatePath => resolve_beneath(dirs.state, arg, false),
        Slot::InactiveSlot { a, b } => match dirs.inactive_slot {
            Ok('a') if arg == a => Ok(()),
            Ok('b') if arg == b => Ok(()),
            Ok(s) => Err(SlotError::NotInactiveSlot(s.to_ascii_uppercase())),
            Err(why) => Err(SlotError::InactiveSlotUnknown(why.to_owned())),
        },
    }
}

/// A Debian package name (policy 5.6.1): lower-case alphanumerics and `+-.`, at least two
/// characters, starting alphanumeric.
pub fn is_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// `name`, `name=version` (version starting with a digit, Debian's version characters) or
/// `name-` (remove).
pub fn is_package_spec(s: &str) -> bool {
    if let Some((name, version)) = s.split_once('=') {
        return is_package_name(name)
            && version.starts_with(|c: char| c.is_ascii_digit())
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c));
    }
    is_package_name(s.strip_suffix('-').unwrap_or(s))
}

/// Checks that `arg` is an absolute path beneath `base` that the kernel resolves there without
/// `..`, `.` or any symlink (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so no
/// component can lead out, whatever the handler planted); with `regular_file`, that it is an
/// existing regular file, else that its parent is a directory and the last component, when it
/// exists, is neither a symlink nor a file with more than one hard link (a link planted in the
/// step's directory to a file elsewhere would be written through: beneath-resolution and
/// Landlock see only the name beneath the directory).
///
/// The program re-resolves the same text when it opens it; nothing of the step can swap a
/// component in between: the handler waits in this call, and whatever earlier programs of the
/// step started, however it detached, was stopped with them (each run's control group,
/// [`super::cgroup`]), except what a `finish-on-cancel` program (apt-get) left on purpose: a
/// service a package started, which lives under the package system's rules anyway.
pub fn resolve_beneath(base: &Path, arg: &str, regular_file: bool) -> Result<(), SlotError> {
    let rest = Path::new(arg)
        .strip_prefix(base)
        .map_err(|_| SlotError::NotBeneath(base.display().to_string()))?;
    let parts: Vec<_> = rest.components().collect();
    if parts.is_empty() {
        return Err(SlotError::DirectoryItself);
    }
    if !parts.iter().all(|p| matches!(p, Component::Normal(_))) {
        return Err(SlotError::DotOrDotDot);
    }
    let io = |path: &Path, e: rustix::io::Errno| SlotError::Io {
        path: path.display().to_string(),
        errno: e.to_string(),
    };
    let root = beneath::open_dir(base).map_err(|e| io(base, e))?;
    let found = |e: rustix::io::Errno| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => SlotError::Escapes,
        rustix::io::Errno::NOTDIR => SlotError::NotADirectoryOnTheWay,
        e => io(Path::new(arg), e),
    };
    if regular_file {
        let fd = beneath::open(&root, rest, false).map_err(found)?;
        return beneath::is_regular(&fd)
            .then_some(())
            .ok_or(SlotError::NotRegular);
    }
    let parent = rest.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = match parent {
        Some(p) => beneath::open(&root, p, true).map_err(found)?,
        None => root,
    };
    let last = parts.last().expect("not empty").as_os_str();
    match beneath::kind_at(&dir, last) {
        Ok(beneath::Kind::Symlink) => Err(SlotError::Symlink(arg.to_owned())),
        Ok(beneath::Kind::Linked) => Err(SlotError::HardLink(arg.to_owned())),
        Ok(beneath::Kind::Plain) => Ok(()),
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(io(Path::new(arg), e)),
    }
}

/// The kernel's beneath-resolution, through rustix.
mod beneath {
    use rustix::fs::{openat2, statat, AtFlags, FileType, Mode, OFlags, ResolveFlags};
    use std::os::fd::OwnedFd;
    use std::path::Path;

    const HOW: ResolveFlags = ResolveFlags::BENEATH
        .union(ResolveFlags::NO_SYMLINKS)
        .union(ResolveFlags::NO_MAGICLINKS);

    pub fn open_dir(path: &Path) -> rustix::io::Result<OwnedFd> {
        rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    }

    /// Opens `rest` beneath `root` (a path handle), refusing symlinks and `..` anywhere.
    pub fn open(root: &OwnedFd, rest: &Path, dir: bool) -> rustix::io::Result<OwnedFd> {
        let mut flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if dir {
            flags |= OFlags::DIRECTORY;
        }
        openat2(root, rest, flags, Mode::empty(), HOW)
    }

    pub fn is_regular(fd: &OwnedFd) -> bool {
        rustix::fs::fstat(fd)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
    }

    /// What a path's last component is, as far as writing through it goes.
    pub enum Kind {
        Symlink,
        /// A non-directory with more than one name.
        Linked,
        Plain,
    }

    pub fn kind_at(dir: &OwnedFd, name: &std::ffi::OsStr) -> rustix::io::Result<Kind> {
        let st = statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => Kind::Symlink,
            FileType::Directory => Kind::Plain,
            _ if st.st_nlink > 1 => Kind::Linked,
            _ => Kind::Plain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(t: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        let (p, w, s) = (t.join("payload"), t.join("work"), t.join("state"));
        for d in [&p, &w, &s] {
            std::fs::create_dir_all(d).unwrap();
        }
        (p, w, s)
    }

    fn apt_form() -> ArgForm {
        ArgForm {
            prefix: ["-y", "-q", "--download-only", "install"]
                .map(String::from)
                .to_vec(),
            then: vec![],
            rest: vec![
                Slot::PayloadFile {
                    suffix: Some(".deb".into()),
                },
                Slot::DebianPackage,
            ],
            max_args: 64,
        }
    }

    #[test]
    fn options_can_only_come_from_the_prefix() {
        let t = tempfile::tempdir().unwrap();
        let (p, w, s) = dirs(t.path());
        std::fs::write(p.join("a.deb"), b"x").unwrap();
        let d = StepDirs {
            payload: &p,
            work: &w,
            state: &s,
            inactive_slot: Err("no slot policy"),
        };
        let args = |extra: &[&str]| -> Vec<String> {
            ["-y", "-q", "--download-only", "install"]
                .iter()
                .chain(extra)
                .map(|s| s.to_string())
                .collect()
        };
        let deb = p.join("a.deb").display().to_string();
        apt_form()
            .check(&args(&[&deb, "tree", "tool=1.0-1", "old-"]), d)
            .unwrap();
        // apt's re-rooting: `-o` then `dir=.` is refused, as is any option after the prefix.
        for bad in [
            &["-o", "dir=."][..],
            &["dir=."],
            &["--allow-unauthenticated"],
            &["tool=x1"],
        ] {
            assert!(apt_form().check(&args(bad), d).is_err(), "{bad:?}");
        }
        // Reordered prefix: refused.
        let mut swapped = args(&[]);
        swapped.swap(0, 1);
        assert!(apt_form().check(&swapped, d).is_err());
    }

    #[test]
    fn paths_resolve_beneath_their_directory_without_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let (p, w, _) = dirs(t.path());
        std::fs::write(p.join("a.deb"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", w.join("etc")).unwrap();
        std::os::unix::fs::symlink(p.join("a.deb"), p.join("link.deb")).unwrap();
        let ok = |base: &Path, arg: String, file| resolve_beneath(base, &arg, file);
        assert!(ok(&p, p.join("a.deb").display().to_string(), true).is_ok());
        assert!(ok(&p, p.join("link.deb").display().to_string(), true).is_err());
        assert!(ok(&w, w.join("etc/passwd").display().to_string(), false).is_err());
        assert!(ok(&w, w.join("new.txt").display().to_string(), false).is_ok());
        assert!(ok(&w, format!("{}/../payload/a.deb", w.display()), false).is_err());
        assert!(ok(&w, "relative.txt".into(), false).is_err());
        assert!(ok(&w, "/etc/passwd".into(), false).is_err());
        // A symlink that stays inside, a symlink as the last component, a file on the way.
        std::fs::create_dir(w.join("sub")).unwrap();
        std::os::unix::fs::symlink(w.join("sub"), w.join("in")).unwrap();
        std::os::unix::fs::symlink("sub", w.join("rel")).unwrap();
        std::fs::write(w.join("f.txt"), b"x").unwrap();
        for bad in ["in/x", "rel/x", "in", "f.txt/x", "etc"] {
            let e = ok(&w, format!("{}/{bad}", w.display()), false).unwrap_err();
            assert!(!e.to_string().is_empty(), "{bad}");
        }
        for good in ["sub/x", "sub", "f.txt"] {
            ok(&w, format!("{}/{good}", w.display()), false).unwrap();
        }
        // A regular-file slot refuses a directory and a missing file.
        assert!(ok(&p, format!("{}/nope.deb", p.display()), true).is_err());
        assert!(ok(&w, format!("{}/sub", w.display()), true).is_err());
    }

    #[test]
    fn a_writable_path_that_is_a_hard_link_to_a_file_elsewhere_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (_, w, s) = dirs(t.path());
        let host = t.path().join("host-file");
        std::fs::write(&host, b"precious").unwrap();
        std::fs::hard_link(&host, w.join("planted")).unwrap();
        std::fs::hard_link(&host, s.join("planted")).unwrap();
        for (base, slot) in [(&w, Slot::WorkPath), (&s, Slot::StatePath)] {
            let arg = base.join("planted").display().to_string();
            let e = resolve_beneath(base, &arg, false).unwrap_err();
            assert_eq!(e, SlotError::HardLink(arg.clone()), "{slot:?}");
        }
        // A file with one name is fine; so is a directory (its link count is its subdirs').
        std::fs::write(w.join("own"), b"x").unwrap();
        std::fs::create_dir_all(w.join("d/e")).unwrap();
        for good in ["own", "d"] {
            resolve_beneath(&w, &w.join(good).display().to_string(), false).unwrap();
        }
    }

    #[test]
    fn slots_parse_by_name_and_unknown_ones_are_refused() {
        assert_eq!(
            Slot::try_from("payload-file:.deb".to_owned()).unwrap(),
            Slot::PayloadFile {
                suffix: Some(".deb".into())
            }
        );
        assert!(Slot::try_from("*".to_owned()).is_err());
    }

    #[test]
    fn any_needs_a_payload_entry_point() {
        let t = tempfile::tempdir().unwrap();
        let (p, w, s) = dirs(t.path());
        let d = StepDirs {
            payload: &p,
            work: &w,
            state: &s,
            inactive_slot: Err("no slot policy"),
        };
        let shell = ArgForm {
            prefix: vec!["-c".into()],
            then: vec![],
            rest: vec![Slot::Any],
            max_args: 4,
        };
        assert!(shell.check(&["-c".into(), "id".into()], d).is_err());
    }

    #[test]
    fn an_inactive_slot_argument_must_name_the_slot_not_running() {
        let slot: Slot = "inactive-slot:-estable,copy1|-estable,copy2"
            .to_owned()
            .try_into()
            .unwrap();
        let t = tempfile::tempdir().unwrap();
        let dirs = |inactive| StepDirs {
            payload: t.path(),
            work: t.path(),
            state: t.path(),
            inactive_slot: inactive,
        };
        assert_eq!(fits(&slot, "-estable,copy2", dirs(Ok('b'))), Ok(()));
        assert_eq!(
            fits(&slot, "-estable,copy1", dirs(Ok('b'))),
            Err(SlotError::NotInactiveSlot('B'))
        );
        assert!(matches!(
            fits(&slot, "-estable,copy2", dirs(Err("no slot policy"))),
            Err(SlotError::InactiveSlotUnknown(_))
        ));
        for bad in ["inactive-slot:x", "inactive-slot:x|x", "inactive-slot:|y"] {
            assert!(Slot::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
