//! The rules of the default handlers' step properties and files, in one place: each handler
//! applies its module to a step on the device (and maps a broken rule to its own result code),
//! and `sandstep manifest new` applies the same module before it writes a manifest, so what the
//! tool accepts is what the device runs. Pure functions over property values and file names, no
//! dependencies (built for the handlers' WebAssembly target and for the host). A rule's
//! `Display` is worded for the step's `handlerProperties` and `files`.
//!
//! - [`files`] — `sandstep/files:1`
//! - [`apt`] — `microsoft/apt:1` (`sandstep/apt:1`)
//! - [`script`] — `microsoft/script:1`, and the script of `microsoft/swupdate:2`
//! - [`swupdate`] — `microsoft/swupdate:1` and `:2`
//! - [`version`] — `sandstep/firmware:1`, `microsoft/swupdate:1`, `sandstep/component:1`: the new
//!   version, and firmware's image

pub mod apt;
pub mod files;
pub mod script;
pub mod swupdate;
pub mod version;

/// Which of a step's files a property picks: the one it names, else the step's only file.
enum Pick {
    /// The property names no step file.
    NoSuch(String),
    /// No name, and the step has this many files.
    Several(usize),
}

fn named_or_only<'a>(name: Option<&str>, files: &[&'a str]) -> Result<&'a str, Pick> {
    match (name, files) {
        (Some(n), _) => files
            .iter()
            .copied()
            .find(|f| *f == n)
            .ok_or_else(|| Pick::NoSuch(n.to_owned())),
        (None, [only]) => Ok(only),
        (None, files) => Err(Pick::Several(files.len())),
    }
}

/// The step's file names, for a message.
fn listed(files: &[&str]) -> String {
    if files.is_empty() {
        "none".to_owned()
    } else {
        files.join(", ")
    }
}
