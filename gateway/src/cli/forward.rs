//! The fleet commands, typed at `sandstep` as before the split: they run `sandstep-fleet` with
//! the same arguments, found beside this binary or on PATH. A gateway installs without it.

use anyhow::{bail, Result};
use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;

/// The commands that moved to `sandstep-fleet`.
pub const FLEET_COMMANDS: &[&str] = &["shadow", "deploy", "cancel", "rollout", "fleet-sim"];

/// `sandstep-fleet`: beside this executable first (a build's target dir, /usr/bin), else PATH.
fn fleet_binary() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("sandstep-fleet")))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("sandstep-fleet"))
                .find(|p| p.is_file())
        })
    })
}

/// Replaces this process with `sandstep-fleet` and this process's arguments (after the
/// program name); returns only when that cannot be done.
pub fn exec_fleet(command: &str) -> Result<std::process::ExitCode> {
    let Some(fleet) = fleet_binary() else {
        bail!(
            "`sandstep {command}` is a fleet command: it is in sandstep-fleet, which is not \
             installed here (install the sandstep-fleet package where the fleet is steered)"
        );
    };
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let e = std::process::Command::new(&fleet).args(args).exec();
    bail!("{}: {e}", fleet.display())
}
