//! The `slot` capability: A/B firmware slots.
//!
//! The host moves the bytes: [`write_image`] streams a payload file into a slot and hashes it on the
//! way, so an image never passes through the handler's memory. Which devices or files are the
//! slots, and how the next boot slot is selected, is the gateway's policy.

use crate::__bindings::sandstep::handler::slot as wit;
use crate::failure::Failure;
use sandstep_model::codes::erc;
use std::path::Path;

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    ///
    /// ```
    /// use sandstep_sdk::slot::Slot;
    /// assert_eq!(Slot::A.other(), Slot::B);
    /// ```
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn to_wit(self) -> wit::SlotName {
        match self {
            Slot::A => wit::SlotName::A,
            Slot::B => wit::SlotName::B,
        }
    }

    fn from_wit(s: wit::SlotName) -> Slot {
        match s {
            wit::SlotName::A => Slot::A,
            wit::SlotName::B => Slot::B,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// The device's boot state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The slot the running system booted from.
    pub booted: Slot,
    /// The slot selected for the next boot.
    pub next_boot: Slot,
    /// Whether the booted slot is committed.
    pub committed: bool,
    /// Slots marked bad.
    pub bad: Vec<Slot>,
    /// Whether the system rebooted since the other slot was selected for the next boot.
    pub rebooted: bool,
}

/// What [`write_image`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Bytes written.
    pub bytes: u64,
    /// sha256 of the bytes written, lower-case hex.
    pub sha256: String,
    /// Bytes that came over the network: less than `bytes` when the update carried a block
    /// index and the device already had blocks of the image.
    pub fetched: u64,
}

/// Why a slot operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The policy refused it.
    Denied(String),
    /// The image is too big or its digest is wrong.
    InvalidImage(String),
    /// The host could not read, write or sync.
    Io(String),
}

impl From<wit::Error> for Error {
    fn from(e: wit::Error) -> Self {
        match e {
            wit::Error::Denied(s) => Error::Denied(s),
            wit::Error::InvalidImage(s) => Error::InvalidImage(s),
            wit::Error::Io(s) => Error::Io(s),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Denied(s) => write!(f, "denied by policy: {s}"),
            Error::InvalidImage(s) => write!(f, "invalid image: {s}"),
            Error::Io(s) => write!(f, "I/O error: {s}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for Failure {
    /// A capability error becomes a failure with extended code `SDK_CAPABILITY_FAILED`.
    fn from(e: Error) -> Failure {
        Failure::new(erc::SDK_CAPABILITY_FAILED, format!("slot: {e}"))
    }
}

/// The current boot state.
///
/// ```no_run
/// let state = sandstep_sdk::slot::state()?;
/// let target = state.booted.other();
/// # Ok::<(), sandstep_sdk::slot::Error>(())
/// ```
pub fn state() -> Result<State, Error> {
    let s = wit::state()?;
    Ok(State {
        booted: Slot::from_wit(s.booted),
        next_boot: Slot::from_wit(s.next_boot),
        committed: s.committed,
        bad: s.bad.into_iter().map(Slot::from_wit).collect(),
        rebooted: s.rebooted,
    })
}

/// Streams the payload file at `payload_path` into `target` (never the booted slot), checking its
/// sha256 (hex) when given.
///
/// ```no_run
/// use sandstep_sdk::slot;
/// let written = slot::write_image(slot::Slot::B, "/payload/rootfs.img", None)?;
/// # Ok::<(), sandstep_sdk::slot::Error>(())
/// ```
pub fn write_image(
    target: Slot,
    payload_path: impl AsRef<Path>,
    expected_sha256: Option<&str>,
) -> Result<Written, Error> {
    let p = payload_path.as_ref().to_string_lossy();
    let w = wit::write_image(target.to_wit(), &p, expected_sha256)?;
    Ok(Written {
        bytes: w.bytes,
        sha256: w.sha256,
        fetched: w.fetched,
    })
}

/// Selects `target` for the next boot.
///
/// ```no_run
/// sandstep_sdk::slot::set_next_boot(sandstep_sdk::slot::Slot::B)?;
/// # Ok::<(), sandstep_sdk::slot::Error>(())
/// ```
pub fn set_next_boot(target: Slot) -> Result<(), Error> {
    Ok(wit::set_next_boot(target.to_wit())?)
}

/// Marks the booted slot good.
///
/// ```no_run
/// sandstep_sdk::slot::commit()?;
/// # Ok::<(), sandstep_sdk::slot::Error>(())
/// ```
pub fn commit() -> Result<(), Error> {
    Ok(wit::commit()?)
}

/// Marks `target` bad.
///
/// ```no_run
/// sandstep_sdk::slot::mark_bad(sandstep_sdk::slot::Slot::B)?;
/// # Ok::<(), sandstep_sdk::slot::Error>(())
/// ```
pub fn mark_bad(target: Slot) -> Result<(), Error> {
    Ok(wit::mark_bad(target.to_wit())?)
}
