//! Logging and progress. The host tags each line with workflow, step and handler, and rate-limits
//! floods, so log freely but not in tight loops.

#[cfg(target_family = "wasm")]
use crate::__bindings::sandstep::handler::host;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed.
    Trace,
    /// For developers.
    Debug,
    /// Normal progress.
    Info,
    /// Something odd that did not stop the call.
    Warn,
    /// Something failed.
    Error,
}

/// Emits a log line at `level`.
///
/// ```no_run
/// sandstep_sdk::log::log(sandstep_sdk::log::Level::Debug, "checking slot state");
/// ```
pub fn log(level: Level, message: &str) {
    // Outside a component (a handler's native unit tests) there is no host: print instead.
    #[cfg(not(target_family = "wasm"))]
    {
        eprintln!("[{level:?}] {message}");
    }
    #[cfg(target_family = "wasm")]
    host::log(wit_level(level), message);
}

#[cfg(target_family = "wasm")]
fn wit_level(level: Level) -> host::LogLevel {
    match level {
        Level::Trace => host::LogLevel::Trace,
        Level::Debug => host::LogLevel::Debug,
        Level::Info => host::LogLevel::Info,
        Level::Warn => host::LogLevel::Warn,
        Level::Error => host::LogLevel::Error,
    }
}

/// Emits an info line.
///
/// ```no_run
/// sandstep_sdk::log::info("installing 3 packages");
/// ```
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Emits a warning.
///
/// ```no_run
/// sandstep_sdk::log::warn("no backup possible for this slot");
/// ```
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Emits an error line.
///
/// ```no_run
/// sandstep_sdk::log::error("image header is corrupt");
/// ```
pub fn error(message: &str) {
    log(Level::Error, message);
}

/// Emits a debug line.
///
/// ```no_run
/// sandstep_sdk::log::debug("properties parsed");
/// ```
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Reports progress of the current action (`percent` is clamped to 100).
///
/// ```no_run
/// sandstep_sdk::log::progress(50, "half of the packages installed");
/// ```
pub fn progress(percent: u8, message: &str) {
    #[cfg(not(target_family = "wasm"))]
    eprintln!("[progress {}%] {message}", percent.min(100));
    #[cfg(target_family = "wasm")]
    host::progress(percent.min(100), message);
}

#[cfg(test)]
mod tests {
    /// A handler's native unit tests may log and report progress: printed, not a trap.
    #[test]
    fn logging_outside_a_component_prints() {
        super::info("native");
        super::warn("native");
        super::progress(150, "native");
    }
}
