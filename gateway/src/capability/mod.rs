//! Host capabilities: one module per WIT interface, each of the same shape (state, a borrowing
//! view or `impl Host`, `add_to_linker`).
//!
//! - [`host`]: logging and progress, linked for every handler.
//! - [`process`]: run an allow-listed host program, linked only when granted; what it may be
//!   handed is [`arg_grammar`]'s forms; what a killed agent left running is found through
//!   [`ledger`].
//! - [`slot`]: A/B firmware slots and boot control, linked only when granted.

pub mod arg_grammar;
pub mod cgroup;
pub mod host;
pub mod landlock;
pub mod ledger;
pub mod process;
pub mod reaper;
pub mod repair;
pub mod slot;

use std::fmt;

/// The `PATH` every host program gets (its environment is otherwise cleared).
pub(crate) const PROGRAM_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A capability interface a component may import beyond the base world.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `sandstep:handler/process`.
    Process,
    /// `sandstep:handler/slot`.
    Slot,
}

/// One capability: its policy name and its WIT interface (without version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapabilityRow {
    pub capability: Capability,
    pub name: &'static str,
    pub interface: &'static str,
}

/// Every capability beyond the base world, the one list of them. A new capability is a row
/// here and its module; the three places that hold one (what the policy grants, what the store
/// keeps, what the linker adds) match on [`Capability`] exhaustively, so the compiler names
/// each.
pub const CAPABILITIES: &[CapabilityRow] = &[
    CapabilityRow {
        capability: Capability::Process,
        name: "process",
        interface: "sandstep:handler/process",
    },
    CapabilityRow {
        capability: Capability::Slot,
        name: "slot",
        interface: "sandstep:handler/slot",
    },
];

impl Capability {
    fn row(self) -> &'static CapabilityRow {
        CAPABILITIES
            .iter()
            .find(|r| r.capability == self)
            .expect("every capability has its row in CAPABILITIES")
    }

    /// The capability's WIT interface name, without version.
    pub fn interface(self) -> &'static str {
        self.row().interface
    }

    /// The short name used in policy files.
    pub fn name(self) -> &'static str {
        self.row().name
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a component's imports ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportKind {
    /// Always linked: WASI (filesystem, clocks, random, cli, io, sockets with every address
    /// denied) and `sandstep:handler/host`, `/types`.
    Base,
    /// A capability interface that needs a grant.
    Capability(Capability),
    /// Something sandstep does not provide.
    Unknown,
}

/// Classifies an import name such as `wasi:filesystem/types@0.2.0`.
pub fn classify_import(name: &str) -> ImportKind {
    let unversioned = name.split('@').next().unwrap_or(name);
    if let Some(r) = CAPABILITIES.iter().find(|r| r.interface == unversioned) {
        return ImportKind::Capability(r.capability);
    }
    match unversioned {
        "sandstep:handler/host" | "sandstep:handler/types" => ImportKind::Base,
        other => {
            let wasi = [
                "wasi:cli/",
                "wasi:clocks/",
                "wasi:filesystem/",
                "wasi:io/",
                "wasi:random/",
                "wasi:sockets/",
            ];
            if wasi.iter().any(|p| other.starts_with(p)) {
                ImportKind::Base
            } else {
                ImportKind::Unknown
            }
        }
    }
}

/// The capabilities granted to one handler for one session.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// The process capability and its policy.
    pub process: Option<process::ProcessPolicy>,
    /// The slot capability and its policy.
    pub slot: Option<slot::SlotGrant>,
}

impl Grants {
    /// Whether `cap` is granted.
    pub fn allows(&self, cap: Capability) -> bool {
        match cap {
            Capability::Process => self.process.is_some(),
            Capability::Slot => self.slot.is_some(),
        }
    }

    /// The capabilities granted, in order.
    pub fn capabilities(&self) -> Vec<Capability> {
        CAPABILITIES
            .iter()
            .map(|r| r.capability)
            .filter(|c| self.allows(*c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_classified_by_interface_without_version() {
        assert_eq!(
            classify_import("wasi:filesystem/types@0.2.3"),
            ImportKind::Base
        );
        assert_eq!(
            classify_import("sandstep:handler/host@0.1.0"),
            ImportKind::Base
        );
        assert_eq!(
            classify_import("sandstep:handler/process@0.1.0"),
            ImportKind::Capability(Capability::Process)
        );
        assert_eq!(
            classify_import("sandstep:handler/slot@0.1.0"),
            ImportKind::Capability(Capability::Slot)
        );
        assert_eq!(
            classify_import("wasi:http/outgoing-handler@0.2.0"),
            ImportKind::Unknown
        );
        assert_eq!(classify_import("evil:thing/x"), ImportKind::Unknown);
    }

    /// Every capability has one row, and every row's interface is in the WIT package.
    #[test]
    fn the_table_lists_each_capability_once_against_the_wit_package() {
        let wit = include_str!("../../../wit/handler.wit");
        for r in CAPABILITIES {
            assert_eq!(
                CAPABILITIES
                    .iter()
                    .filter(|x| x.capability == r.capability)
                    .count(),
                1
            );
            let name = r.interface.rsplit('/').next().unwrap();
            assert!(
                wit.contains(&format!("interface {name} ")),
                "{}",
                r.interface
            );
            assert_eq!(r.capability.name(), r.name);
        }
    }
}
