//! `sandstep:handler/slot`: A/B firmware slots.
//!
//! The policy names the two slots (block devices or files) and the boot control: a bootloader
//! environment file of `key=value` lines, GRUB's environment block, or allow-listed commands
//! such as `fw_printenv` / `fw_setenv`. The handler decides, the host moves the data:
//! `write-image` puts a payload file into the inactive slot while hashing it, so the image never
//! passes through guest memory. An image the workflow left to this capability ([`Streams`]) is
//! streamed from its source straight into the slot, resumably; with a block index beside it
//! (`delta`), only the blocks the device lacks are fetched. The slot is marked bad from the
//! first byte until the whole image verified.
//!
//! Boot environment keys (U-Boot style): `booted_slot` (set by the boot loader: what runs now),
//! `boot_slot` (what boots next), `upgrade_available` (1 until the new slot is committed),
//! `slot_a_bad` / `slot_b_bad`, and sandstep's `selected_boot_id` (the boot id when the other slot
//! was selected, so a later state can say whether the system rebooted since).

use super::host::{CallTags, EventSink, HandlerEvent};
use crate::bindings::slot::{self, Error as WitError, SlotName, SlotState, Written};
use crate::blockindex::BlockIndex;
use crate::digest::Sha256;
use crate::download::{Destination, OwnedSource, Wanted};
use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

mod delta;

/// Policy for the slot capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SlotPolicy {
    /// Slot A: a block device or a file.
    pub a: PathBuf,
    /// Slot B.
    pub b: PathBuf,
    /// Largest image for a file-backed slot (a block device's own size always applies).
    #[serde(default)]
    pub max_image_bytes: Option<u64>,
    /// How the next boot slot is selected and the booted one read.
    pub boot: BootControl,
    /// Where the current boot's id is read, to tell whether a reboot happened.
    #[serde(default = "default_boot_id")]
    pub boot_id_file: PathBuf,
    /// The kernel command line, one of the places that can say which slot booted.
    #[serde(default = "default_cmdline")]
    pub cmdline_file: PathBuf,
}

fn default_boot_id() -> PathBuf {
    PathBuf::from("/proc/sys/kernel/random/boot_id")
}

fn default_cmdline() -> PathBuf {
    PathBuf::from("/proc/cmdline")
}

/// Which slot booted, from what the device says, in this order: the boot environment's
/// `booted_slot`; the kernel command line (`sandstep.slot=`, RAUC's `rauc.slot=`, or a `root=`
/// naming a slot's path); the device the root filesystem is mounted from. `None` when none of
/// them tells: the slot capability then refuses to write (it must never guess and overwrite
/// the running system).
pub fn booted_slot(
    env_value: Option<&str>,
    cmdline: &str,
    slot_paths: [&str; 2],
    root_device_is: [bool; 2],
) -> Option<SlotName> {
    if let Some(s) = env_value.and_then(parse_slot) {
        return Some(s);
    }
    for token in cmdline.split_whitespace() {
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        match key {
            "sandstep.slot" | "rauc.slot" => {
                if let Some(s) = parse_slot(value) {
                    return Some(s);
                }
            }
            "root" => {
                if value == slot_paths[0] {
                    return Some(SlotName::A);
                }
                if value == slot_paths[1] {
                    return Some(SlotName::B);
                }
            }
            _ => {}
        }
    }
    match root_device_is {
        [true, false] => Some(SlotName::A),
        [false, true] => Some(SlotName::B),
        _ => None,
    }
}

/// Whether `/` is mounted from block device `slot`.
fn root_is_on(slot: &std::path::Path) -> bool {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    match (std::fs::metadata(slot), std::fs::metadata("/")) {
        (Ok(dev), Ok(root)) => dev.file_type().is_block_device() && dev.rdev() == root.dev(),
        _ => false,
    }
}

/// Replaces the boot environment at `path` durably: beside it, synced, renamed, the directory
/// synced, and then the whole filesystem. The last step is for FAT (the EFI system partition
/// that holds GRUB's environment): its fsync of a FAT16 root directory does not write the
/// directory's entries, so after a power cut the boot test found the old environment and a FAT
/// that the next rename found broken (the kernel then mounts it read-only).
fn replace_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
    else {
        return Err(std::io::Error::other("not a file path"));
    };
    let parent = if parent.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        parent
    };
    let dir = Dir::open_ambient_dir(parent, cap_std::ambient_authority())?;
    crate::datadir::write_atomic(&dir, name, bytes, 0o644)?;
    // `dir` may be an O_PATH descriptor, which syncfs refuses: sync through an opened one.
    rustix::fs::syncfs(dir.open(".")?).map_err(std::io::Error::from)
}

/// The boot-control method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", tag = "method")]
pub enum BootControl {
    /// A bootloader environment file of `key=value` lines, rewritten atomically.
    EnvFile { path: PathBuf },
    /// Commands: `get` + key prints the value, `set` + key + value stores it (e.g.
    /// `get = ["/usr/bin/fw_printenv", "-n"]`, `set = ["/usr/bin/fw_setenv"]`).
    Command { get: Vec<String>, set: Vec<String> },
    /// GRUB's environment block (`/boot/grub/grubenv`, what `load_env`/`save_env` and
    /// `grub-editenv` read and write): rewritten whole, same size, atomically.
    Grubenv { path: PathBuf },
}

/// The first line of a GRUB environment block (grub-core/lib/envblk.h, GRUB_ENVBLK_SIGNATURE).
const GRUBENV_SIGNATURE: &str = "# GRUB Environment Block\n";
/// The size `grub-editenv create` gives a block (GRUB_ENVBLK_DEFCFG's size, 1 KiB).
const GRUBENV_SIZE: usize = 1024;

/// A GRUB environment block that cannot be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrubenvError {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("no `# GRUB Environment Block` signature")]
    NoSignature,
    #[error("the variables need {need} bytes, more than the block's {size}")]
    TooLarge { need: usize, size: usize },
}

/// The variables of a GRUB environment block: `KEY=VALUE` lines after the signature; a line
/// starting with `#` is a comment (grub-editenv 2.06 writes a warning line), and the `#` padding
/// to the block's end is one without a newline. A backslash escapes the next character (as
/// grub-editenv writes `\\` and a newline).
pub fn parse_grubenv(block: &[u8]) -> Result<BTreeMap<String, String>, GrubenvError> {
    let text = std::str::from_utf8(block).map_err(|_| GrubenvError::NotUtf8)?;
    let Some(body) = text.strip_prefix(GRUBENV_SIGNATURE) else {
        return Err(GrubenvError::NoSignature);
    };
    let mut env = BTreeMap::new();
    let (mut line, mut chars) = (String::new(), body.chars());
    let mut comment = false;
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                if let Some((k, v)) = line.split_once('=').filter(|_| !comment) {
                    env.insert(k.to_owned(), v.to_owned());
                }
                line.clear();
                comment = false;
            }
            _ if comment => {}
            '#' if line.is_empty() => comment = true,
            '\\' => line.extend(chars.next()),
            c => line.push(c),
        }
    }
    Ok(env)
}

/// A GRUB environment block of `size` bytes holding `env`; `Err` when it does not fit.
pub fn render_grubenv(
    env: &BTreeMap<String, String>,
    size: usize,
) -> Result<Vec<u8>, GrubenvError> {
    let mut text = GRUBENV_SIGNATURE.to_owned();
    for (k, v) in env {
        text.push_str(k);
        text.push('=');
        for c in v.chars() {
            if matches!(c, '\\' | '\n') {
                text.push('\\');
            }
            text.push(c);
        }
        text.push('\n');
    }
    if text.len() > size {
        return Err(GrubenvError::TooLarge {
            need: text.len(),
            size,
        });
    }
    let mut block = text.into_bytes();
    block.resize(size, b'#');
    Ok(block)
}

impl SlotPolicy {
    /// The boot environment's variables that sandstep reads.
    pub fn read_env(&self) -> Result<BTreeMap<String, String>, WitError> {
        match &self.boot {
            BootControl::EnvFile { path } => {
                let text = match std::fs::read_to_string(path) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                    Err(e) => {
                        return Err(WitError::Io(format!(
                            "boot environment {}: {e}",
                            path.display()
                        )))
                    }
                };
                Ok(text
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .collect())
            }
            BootControl::Grubenv { path } => match std::fs::read(path) {
                Ok(b) => parse_grubenv(&b)
                    .map_err(|e| WitError::Io(format!("GRUB environment {}: {e}", path.display()))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
                Err(e) => Err(WitError::Io(format!(
                    "GRUB environment {}: {e}",
                    path.display()
                ))),
            },
            BootControl::Command { get, .. } => {
                let mut env = BTreeMap::new();
                for key in [
                    "booted_slot",
                    "boot_slot",
                    "upgrade_available",
                    "slot_a_bad",
                    "slot_b_bad",
                    "selected_boot_id",
                ] {
                    let out = std::process::Command::new(&get[0])
                        .args(&get[1..])
                        .arg(key)
                        .env_clear()
                        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                        .output()
                        .map_err(|e| WitError::Io(format!("{}: {e}", get[0])))?;
                    if out.status.success() {
                        env.insert(
                            key.to_owned(),
                            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
                        );
                    }
                }
                Ok(env)
            }
        }
    }

    /// Changes boot environment variables (an env file atomically, or one `set` each).
    pub fn write_env(&self, changes: &[(&str, String)]) -> Result<(), WitError> {
        match &self.boot {
            BootControl::EnvFile { path } => {
                let mut env = self.read_env()?;
                for (k, v) in changes {
                    env.insert((*k).to_owned(), v.clone());
                }
                let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                replace_file(path, text.as_bytes())
                    .map_err(|e| WitError::Io(format!("boot environment {}: {e}", path.display())))
            }
            BootControl::Grubenv { path } => {
                let mut env = self.read_env()?;
                for (k, v) in changes {
                    env.insert((*k).to_owned(), v.clone());
                }
                let size = std::fs::metadata(path)
                    .map(|m| m.len() as usize)
                    .unwrap_or(GRUBENV_SIZE)
                    .max(GRUBENV_SIZE);
                let err = |e: &dyn std::fmt::Display| {
                    WitError::Io(format!("GRUB environment {}: {e}", path.display()))
                };
                let block = render_grubenv(&env, size).map_err(|e| err(&e))?;
                replace_file(path, &block).map_err(|e| err(&e))
            }
            BootControl::Command { set, .. } => {
                for (k, v) in changes {
                    let status = std::process::Command::new(&set[0])
                        .args(&set[1..])
                        .arg(k)
                        .arg(v)
                        .env_clear()
                        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                        .status()
                        .map_err(|e| WitError::Io(format!("{}: {e}", set[0])))?;
                    if !status.success() {
                        return Err(WitError::Io(format!("{} {k} {v}: {status}", set[0])));
                    }
                }
                Ok(())
            }
        }
    }

    /// Which slot booted, which boots next, whether it is committed, which are bad, and
    /// whether a reboot happened since a slot was selected.
    pub fn state(&self) -> Result<SlotState, WitError> {
        let env = self.read_env()?;
        let policy = self;
        let cmdline = std::fs::read_to_string(&policy.cmdline_file).unwrap_or_default();
        let (a, b) = (policy.a.to_string_lossy(), policy.b.to_string_lossy());
        let booted = booted_slot(
            env.get("booted_slot").map(String::as_str),
            &cmdline,
            [&a, &b],
            [root_is_on(&policy.a), root_is_on(&policy.b)],
        )
        .ok_or_else(|| {
            WitError::Denied(
                "which slot booted is unknown: set `booted_slot` in the boot environment, \
                 `sandstep.slot=a|b` on the kernel command line, or mount the root filesystem \
                 from a slot device; nothing is written until it is known"
                    .into(),
            )
        })?;
        let next_boot = env
            .get("boot_slot")
            .and_then(|v| parse_slot(v))
            .unwrap_or(booted);
        let bad = [SlotName::A, SlotName::B]
            .into_iter()
            .filter(|s| {
                env.get(&format!("slot_{}_bad", name(*s)))
                    .is_some_and(|v| v == "1")
            })
            .collect();
        let rebooted = match env.get("selected_boot_id").filter(|v| !v.is_empty()) {
            Some(then) => self.boot_id()? != *then,
            None => false,
        };
        Ok(SlotState {
            booted,
            next_boot,
            committed: env.get("upgrade_available").is_none_or(|v| v != "1"),
            bad,
            rebooted,
        })
    }

    /// Health checks failed on a slot on trial (booted, selected, not committed): marks it bad
    /// and selects the other slot, committed, for the next boot, with this boot's id as the
    /// selection's, so the step sees the reboot into the old slot as the rollback it is. The
    /// rolled-back slot, or `None` when the booted slot is not on trial.
    pub fn roll_back_trial(&self) -> Result<Option<SlotName>, WitError> {
        let s = self.state()?;
        if s.committed || s.next_boot != s.booted {
            return Ok(None);
        }
        let bad = format!("slot_{}_bad", name(s.booted));
        self.write_env(&[
            (bad.as_str(), "1".into()),
            ("boot_slot", name(other(s.booted)).into()),
            ("upgrade_available", "0".into()),
            ("bootcount", "0".into()),
            ("selected_boot_id", self.boot_id()?),
        ])?;
        Ok(Some(s.booted))
    }

    /// This boot's id.
    pub fn boot_id(&self) -> Result<String, WitError> {
        let p = &self.boot_id_file;
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .map_err(|e| WitError::Io(format!("boot id {}: {e}", p.display())))
    }
}

/// What the policy grants: the capability, with or without slots configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotGrant {
    pub policy: Option<SlotPolicy>,
    pub handler_id: String,
}

/// Step files the host streams into a slot instead of placing them in /payload (firmware
/// images): their sources, and where progress is recorded so that a restart resumes.
pub struct Streams {
    pub downloader: Arc<crate::download::Downloader>,
    /// By file name.
    pub files: BTreeMap<String, (Wanted, OwnedSource)>,
    /// The data dir's `streams/` (0700): `<sha256>-<slot>` holds how much of the slot is that
    /// image's, durable. Outside every handler's reach.
    pub records: Dir,
}

/// Bytes streamed between syncs (each sync records where a restart resumes).
const STREAM_CHECKPOINT: u64 = 32 << 20;

/// Per-store state of the capability.
pub struct SlotCtx {
    pub grant: SlotGrant,
    /// The step's /payload, where images are read from.
    pub payload: Dir,
    /// Images that are not in /payload but streamed from their source.
    pub streams: Option<Arc<Streams>>,
    pub events: Option<EventSink>,
    pub tags: Arc<CallTags>,
}

impl SlotCtx {
    /// The capability's state for one step: images come from its `payload`, progress goes where
    /// the host capability sends events.
    pub fn for_step(
        grant: SlotGrant,
        payload: &Dir,
        streams: Option<Arc<Streams>>,
        host: &super::host::HostCtx,
    ) -> std::io::Result<Self> {
        Ok(SlotCtx {
            grant,
            payload: payload.try_clone()?,
            streams,
            events: host.events.clone(),
            tags: host.tags.clone(),
        })
    }
}

/// A slot's name as people read it: `A` or `B`.
pub fn label(s: SlotName) -> &'static str {
    match s {
        SlotName::A => "A",
        SlotName::B => "B",
    }
}

fn name(s: SlotName) -> &'static str {
    match s {
        SlotName::A => "a",
        SlotName::B => "b",
    }
}

fn parse_slot(v: &str) -> Option<SlotName> {
    match v.trim().to_ascii_lowercase().as_str() {
        "a" => Some(SlotName::A),
        "b" => Some(SlotName::B),
        _ => None,
    }
}

fn other(s: SlotName) -> SlotName {
    match s {
        SlotName::A => SlotName::B,
        SlotName::B => SlotName::A,
    }
}

fn io(what: &str) -> impl Fn(std::io::Error) -> WitError + '_ {
    move |e| WitError::Io(format!("{what}: {e}"))
}

impl SlotCtx {
    fn policy(&self) -> Result<&SlotPolicy, WitError> {
        self.grant.policy.as_ref().ok_or_else(|| {
            WitError::Denied(format!(
                "no slots are configured for `{}` (policy: handlers.\"{}\".slot)",
                self.grant.handler_id, self.grant.handler_id
            ))
        })
    }

    fn slot_path(&self, s: SlotName) -> Result<&PathBuf, WitError> {
        let p = self.policy()?;
        Ok(match s {
            SlotName::A => &p.a,
            SlotName::B => &p.b,
        })
    }

    // The policy's boot environment, or the refusal when no slots are configured (a refusal
    // the handler sees, never a trap).
    fn state(&self) -> Result<SlotState, WitError> {
        self.policy()?.state()
    }

    fn boot_id(&self) -> Result<String, WitError> {
        self.policy()?.boot_id()
    }

    fn write_env(&self, changes: &[(&str, String)]) -> Result<(), WitError> {
        self.policy()?.write_env(changes)
    }

    fn progress(&self, percent: u8, message: String) {
        if let Some(sink) = &self.events {
            sink(&self.tags, &HandlerEvent::Progress { percent, message });
        }
    }

    /// Opens the slot for writing (a block device as it is, a file created when missing) and
    /// checks that an image of `total` bytes fits; the file and whether it is a block device.
    fn open_slot(&self, target: SlotName, total: u64) -> Result<(std::fs::File, bool), WitError> {
        let slot_path = self.slot_path(target)?;
        let shown = slot_path.display().to_string();
        let is_block = std::fs::metadata(slot_path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_block_device()
        });
        // Read too: a resumed stream hashes the prefix already in the slot.
        let mut dst = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(!is_block)
            .open(slot_path)
            .map_err(io(&shown))?;
        let capacity = if is_block {
            Some(dst.seek(SeekFrom::End(0)).map_err(io("slot size"))?)
        } else {
            self.policy()?.max_image_bytes
        };
        if let Some(cap) = capacity {
            if total > cap {
                return Err(WitError::InvalidImage(format!(
                    "image is {total} bytes; slot {} holds {cap}",
                    name(target).to_uppercase()
                )));
            }
        }
        dst.seek(SeekFrom::Start(0)).map_err(io("slot"))?;
        Ok((dst, is_block))
    }

    /// Copies `src` into the slot, reporting progress every 10%; the sha256 of what was
    /// written and its length. The hash is computed on a second thread while this one reads and
    /// writes, so an image costs one pass of hashing time, not hashing plus copying.
    fn copy_hashing(
        &self,
        src: &mut impl Read,
        dst: &mut std::fs::File,
        total: u64,
        target: SlotName,
        payload_path: &str,
    ) -> Result<([u8; 32], u64), WitError> {
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
            let hasher = scope.spawn(move || {
                let mut h = Sha256::new();
                for chunk in rx {
                    h.update(&chunk);
                }
                h.finalize()
            });
            let mut done = 0u64;
            let mut last_pct = 0u8;
            let copied = loop {
                let mut buf = vec![0u8; 1 << 20];
                let n = match src.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => n,
                    Err(e) => break Err(io(payload_path)(e)),
                };
                buf.truncate(n);
                if let Err(e) = dst.write_all(&buf) {
                    break Err(io("slot")(e));
                }
                done += n as u64;
                if tx.send(buf).is_err() {
                    break Err(WitError::Io("the hashing thread stopped".into()));
                }
                let pct = (done * 100 / total.max(1)) as u8;
                if pct >= last_pct + 10 {
                    last_pct = pct;
                    self.progress(
                        pct,
                        format!(
                            "applying: {done} of {total} bytes into slot {}",
                            name(target).to_uppercase()
                        ),
                    );
                }
            };
            drop(tx);
            let digest = hasher.join().expect("the hashing thread does not panic");
            copied.map(|()| (digest, done))
        })
    }

    /// Writes payload file `payload_path` into `target` (never the booted slot): from
    /// /payload, or streamed from its source when the host streams it. The slot is marked bad
    /// until the whole image is written, verified and synced.
    fn write_image(
        &self,
        target: SlotName,
        payload_path: &str,
        expected: Option<String>,
    ) -> Result<Written, WitError> {
        let state = self.state()?;
        if target == state.booted {
            return Err(WitError::Denied(format!(
                "slot {} is the booted slot; write the other one",
                name(target).to_uppercase()
            )));
        }
        let rel = payload_path
            .strip_prefix("/payload/")
            .filter(|r| !r.is_empty() && !r.split('/').any(|p| p == ".." || p.is_empty()))
            .ok_or_else(|| {
                WitError::Denied(format!("`{payload_path}` is not a file in /payload"))
            })?;
        let streamed = self.streams.as_ref().and_then(|s| s.files.get(rel));
        let bad_flag = format!("slot_{}_bad", name(target));
        let written = match streamed {
            Some((wanted, source)) => {
                let index = self.block_index(rel)?;
                self.policy()?.write_env(&[(&*bad_flag, "1".into())])?;
                match index {
                    Some(index) => {
                        self.delta_image(target, state.booted, wanted, source, &index)?
                    }
                    None => self.stream_image(target, wanted, source)?,
                }
            }
            None => {
                let mut src = self.payload.open(rel).map_err(io(payload_path))?;
                self.policy()?.write_env(&[(&*bad_flag, "1".into())])?;
                self.copy_image(target, &mut src, payload_path)?
            }
        };
        if let Some(want) = expected {
            if !want.eq_ignore_ascii_case(&written.sha256) {
                return Err(WitError::InvalidImage(format!(
                    "slot {} now holds sha256 {}, expected {want}; it stays marked bad",
                    name(target).to_uppercase(),
                    written.sha256
                )));
            }
        }
        self.policy()?.write_env(&[(&*bad_flag, "0".into())])?;
        Ok(written)
    }

    /// The block index that came with streamed image `rel` (`/payload/<rel>.blockindex`).
    fn block_index(&self, rel: &str) -> Result<Option<BlockIndex>, WitError> {
        let name = format!("{rel}{}", crate::blockindex::FILE_SUFFIX);
        let bytes = match self.payload.read(&name) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&name)(e)),
        };
        BlockIndex::parse(&bytes)
            .map(Some)
            .map_err(|e| WitError::InvalidImage(format!("/payload/{name}: {e}")))
    }

    /// Copies an image from /payload into `target`, synced.
    fn copy_image(
        &self,
        target: SlotName,
        src: &mut cap_std::fs::File,
        payload_path: &str,
    ) -> Result<Written, WitError> {
        let total = src.metadata().map_err(io(payload_path))?.len();
        let (mut dst, is_block) = self.open_slot(target, total)?;
        let (digest, done) = self.copy_hashing(src, &mut dst, total, target, payload_path)?;
        if !is_block {
            dst.set_len(done).map_err(io("slot"))?;
        }
        dst.sync_all().map_err(io("slot"))?;
        Ok(Written {
            bytes: done,
            sha256: hex::encode(digest),
            fetched: done,
        })
    }

    /// Streams `wanted` from its source straight into `target`, resuming from what an earlier
    /// attempt made durable; verified against the signed manifest's size and sha256.
    fn stream_image(
        &self,
        target: SlotName,
        wanted: &Wanted,
        source: &OwnedSource,
    ) -> Result<Written, WitError> {
        let streams = self.streams.as_ref().expect("called for a streamed file");
        let (dst, is_block) = self.open_slot(target, wanted.size)?;
        if !is_block {
            // The image's length from the start, so the stream's final sync is the only one.
            dst.set_len(wanted.size).map_err(io("slot"))?;
        }
        let record = format!("{}-{}", wanted.key(), name(target));
        let resume_at = stream_record(&streams.records, &record, name(target));
        let records = streams.records.try_clone().map_err(io("streams/"))?;
        let rec = record.clone();
        let checkpoint = Arc::new(move |durable: u64| {
            let _ =
                crate::datadir::write_atomic(&records, &rec, durable.to_string().as_bytes(), 0o600);
        });
        let dest = Destination {
            file: dst,
            resume_at,
            checkpoint_every: STREAM_CHECKPOINT,
            checkpoint,
        };
        let label = name(target).to_uppercase();
        let last = std::sync::Mutex::new(0u8);
        let progress = |done: u64, total: u64| {
            let pct = (done * 100 / total.max(1)) as u8;
            let mut l = last.lock().expect("progress lock");
            if pct >= *l + 5 || done == total {
                *l = pct;
                self.progress(
                    pct,
                    format!("applying: {done} of {total} bytes streamed into slot {label}"),
                );
            }
        };
        let fetched = tokio::runtime::Handle::current().block_on(streams.downloader.stream_into(
            wanted,
            source.as_source(),
            dest,
            &progress,
        ));
        let fetched = match fetched {
            Ok(n) => n,
            Err(crate::download::DownloadError::HashMismatch {
                expected, actual, ..
            }) => {
                let _ = streams.records.remove_file(&record);
                return Err(WitError::InvalidImage(format!(
                    "slot {label} was written with sha256 {actual}, but the signed manifest says {expected}; slot {label} stays marked bad"
                )));
            }
            Err(e) => {
                return Err(WitError::Io(format!(
                    "{e}; slot {label} stays marked bad, and the next attempt resumes"
                )))
            }
        };
        let _ = streams.records.remove_file(&record);
        tracing::info!(file = %wanted.file_name, slot = %label, fetched, size = wanted.size, resumed_at = resume_at, "image streamed into the slot");
        Ok(Written {
            bytes: wanted.size,
            sha256: wanted.key(),
            fetched,
        })
    }
}

/// How much of a slot an earlier attempt made durable for this image (`record`); records of
/// other images for the same slot are dropped, as that slot is about to be rewritten.
fn stream_record(records: &Dir, record: &str, slot: &str) -> u64 {
    let suffix = format!("-{slot}");
    if let Ok(entries) = records.entries() {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(&suffix) && n != record {
                let _ = records.remove_file(&n);
            }
        }
    }
    records
        .read_to_string(record)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// The view the generated bindings call into.
pub struct SlotView<'a>(pub &'a mut SlotCtx);

impl slot::Host for SlotView<'_> {
    async fn state(&mut self) -> wasmtime::Result<Result<SlotState, WitError>> {
        Ok(self.0.state())
    }

    async fn write_image(
        &mut self,
        target: SlotName,
        payload_path: String,
        expected_sha256: Option<String>,
    ) -> wasmtime::Result<Result<Written, WitError>> {
        // Bulk I/O: off the async worker.
        let ctx = &*self.0;
        Ok(tokio::task::block_in_place(|| {
            ctx.write_image(target, &payload_path, expected_sha256)
        }))
    }

    async fn set_next_boot(&mut self, target: SlotName) -> wasmtime::Result<Result<(), WitError>> {
        let s = match self.0.state() {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        if s.bad.contains(&target) {
            return Ok(Err(WitError::Denied(format!(
                "slot {} is marked bad; write it again first",
                name(target).to_uppercase()
            ))));
        }
        let (pending, selected) = if target == s.booted {
            ("0", String::new())
        } else {
            match self.0.boot_id() {
                Ok(id) => ("1", id),
                Err(e) => return Ok(Err(e)),
            }
        };
        // `bootcount` restarts, so the boot loader counts this slot's attempts from zero
        // (U-Boot's bootcount/bootlimit counts while `upgrade_available` is 1).
        Ok(self.0.write_env(&[
            ("boot_slot", name(target).into()),
            ("upgrade_available", pending.into()),
            ("selected_boot_id", selected),
            ("bootcount", "0".into()),
        ]))
    }

    async fn commit(&mut self) -> wasmtime::Result<Result<(), WitError>> {
        let booted = match self.0.state() {
            Ok(s) => s.booted,
            Err(e) => return Ok(Err(e)),
        };
        let written = self.0.write_env(&[
            ("boot_slot", name(booted).into()),
            ("upgrade_available", "0".into()),
            ("selected_boot_id", String::new()),
            ("bootcount", "0".into()),
        ]);
        crate::fault::hold("slot-committed");
        Ok(written)
    }

    async fn mark_bad(&mut self, target: SlotName) -> wasmtime::Result<Result<(), WitError>> {
        let s = match self.0.state() {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let mut changes = vec![(format!("slot_{}_bad", name(target)), "1".to_string())];
        if s.next_boot == target {
            changes.push(("boot_slot".into(), name(other(target)).into()));
            changes.push(("upgrade_available".into(), "0".into()));
            changes.push(("selected_boot_id".into(), String::new()));
        }
        let refs: Vec<(&str, String)> = changes
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        Ok(self.0.write_env(&refs))
    }
}

struct HasSlot;

impl HasData for HasSlot {
    type Data<'a> = SlotView<'a>;
}

/// Links `slot`; only called for handlers granted it. `get` finds the capability's state in
/// the store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> SlotView<'_>,
) -> wasmtime::Result<()> {
    slot::add_to_linker::<T, HasSlot>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grub_environment_block_keeps_its_size_and_other_variables() {
        let mut block =
            b"# GRUB Environment Block\n# WARNING: a comment\nsaved_entry=Debian\nodd=a\\\\b\n"
                .to_vec();
        block.resize(1024, b'#');
        let mut env = parse_grubenv(&block).unwrap();
        assert_eq!(env["saved_entry"], "Debian");
        assert_eq!(env["odd"], "a\\b");
        env.insert("boot_slot".into(), "b".into());
        let out = render_grubenv(&env, 1024).unwrap();
        assert_eq!(out.len(), 1024);
        assert_eq!(parse_grubenv(&out).unwrap(), env);
        assert!(parse_grubenv(b"boot_slot=a\n").is_err(), "no signature");
        env.insert("big".into(), "x".repeat(1024));
        assert!(matches!(
            render_grubenv(&env, 1024),
            Err(GrubenvError::TooLarge { size: 1024, .. })
        ));
    }

    #[test]
    fn the_booted_slot_comes_from_the_env_the_cmdline_or_the_root_device_or_not_at_all() {
        let paths = ["/dev/mmcblk0p2", "/dev/mmcblk0p3"];
        let none = [false, false];
        let b = |s: Option<SlotName>| s.map(name);
        assert_eq!(b(booted_slot(Some("b"), "", paths, none)), Some("b"));
        assert_eq!(
            b(booted_slot(Some("?"), "sandstep.slot=a", paths, none)),
            Some("a")
        );
        assert_eq!(
            b(booted_slot(None, "quiet rauc.slot=B", paths, none)),
            Some("b")
        );
        assert_eq!(
            b(booted_slot(None, "root=/dev/mmcblk0p3 ro", paths, none)),
            Some("b")
        );
        assert_eq!(
            b(booted_slot(None, "root=/dev/sda1", paths, [true, false])),
            Some("a")
        );
        assert_eq!(booted_slot(None, "root=/dev/sda1", paths, none), None);
        assert_eq!(booted_slot(None, "", paths, [true, true]), None);
    }
}
