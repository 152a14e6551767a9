//! Failures: errors that become a failure step result (result code 0 unless set otherwise).

use crate::done::Done;
use sandstep_model::codes::{content_component, erc, result, ExtendedResultCode, Facility};
use sandstep_model::step::StepResult;

/// What a lifecycle call returns: its typed result (see [`crate::done`]), or a failure (usually
/// through `?`).
pub type Outcome<C> = Result<Done<C>, Failure>;

/// A failed call: an extended result code and details, turned into a step result.
///
/// I/O errors convert with `?`: their errno becomes the extended code (facility 0, component 0, as
/// ADU reports errno values), in WASI's numbering as a component sees it, in a native test too
/// (ENOENT is 44).
///
/// ```
/// use sandstep_sdk::{ExtendedResultCode, Facility, Failure, StepResult};
///
/// const BAD_IMAGE: ExtendedResultCode = ExtendedResultCode::new(Facility::ContentHandler, 32, 0x10);
/// let failure = Failure::new(BAD_IMAGE, "image header is not ours");
/// let result = StepResult::from(failure);
/// assert_eq!(result.result_code, 0);
/// assert_eq!(result.extended_result_code, 0x3200_0010);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    result_code: i32,
    erc: ExtendedResultCode,
    details: String,
}

impl Failure {
    /// A failure (result code 0) with an extended code and details.
    pub fn new(erc: ExtendedResultCode, details: impl Into<String>) -> Self {
        Failure {
            result_code: result::FAILURE,
            erc,
            details: details.into(),
        }
    }

    /// A failure with the handler's own code: extended code facility 3 (content handler),
    /// component 32 (custom handlers, as ADU assigns), `code` in the low 20 bits.
    ///
    /// ```
    /// let f = sandstep_sdk::Failure::vendor(0x42, "controller did not answer");
    /// assert_eq!(f.erc().raw(), 0x3200_0042);
    /// ```
    pub fn vendor(code: u32, details: impl Into<String>) -> Self {
        let erc =
            ExtendedResultCode::new(Facility::ContentHandler, content_component::CUSTOM, code);
        Failure::new(erc, details)
    }

    /// A cancelled call (result code -1).
    ///
    /// ```
    /// let f = sandstep_sdk::Failure::cancelled("stopped by operator");
    /// assert_eq!(sandstep_sdk::StepResult::from(f).result_code, -1);
    /// ```
    pub fn cancelled(details: impl Into<String>) -> Self {
        Failure {
            result_code: result::FAILURE_CANCELLED,
            erc: erc::WORKFLOW_CANCELLED,
            details: details.into(),
        }
    }

    /// `handlerProperties` that do not fit the handler (extended code `SDK_INVALID_PROPERTIES`).
    ///
    /// ```
    /// let f = sandstep_sdk::Failure::invalid_properties("missing field `scriptFileName`");
    /// assert!(f.details().starts_with("handlerProperties: "));
    /// ```
    pub fn invalid_properties(reason: impl std::fmt::Display) -> Self {
        Failure::new(
            erc::SDK_INVALID_PROPERTIES,
            format!("handlerProperties: {reason}"),
        )
    }

    /// Prefixes the details with what was being done.
    ///
    /// ```
    /// let f = sandstep_sdk::Failure::new(sandstep_sdk::ExtendedResultCode::NONE, "disk full")
    ///     .context("writing /work/out");
    /// assert_eq!(f.details(), "writing /work/out: disk full");
    /// ```
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.details = format!("{what}: {}", self.details);
        self
    }

    /// The extended result code.
    ///
    /// ```
    /// let f = sandstep_sdk::Failure::invalid_properties("x");
    /// assert_eq!(f.erc(), sandstep_sdk::codes::erc::SDK_INVALID_PROPERTIES);
    /// ```
    pub fn erc(&self) -> ExtendedResultCode {
        self.erc
    }

    /// The details text.
    ///
    /// ```
    /// assert_eq!(sandstep_sdk::Failure::cancelled("why").details(), "why");
    /// ```
    pub fn details(&self) -> &str {
        &self.details
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.details, self.erc)
    }
}

impl std::error::Error for Failure {}

impl From<Failure> for StepResult {
    fn from(f: Failure) -> StepResult {
        StepResult::new(f.result_code)
            .with_erc(f.erc)
            .with_details(f.details)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        let erc = e
            .raw_os_error()
            .map(|n| ExtendedResultCode::errno(wasi_errno(n)))
            .unwrap_or(ExtendedResultCode::NONE);
        Failure::new(erc, e.to_string())
    }
}

/// The errno a component reports (WASI's numbering, which wasi-libc gives a component).
#[cfg(target_os = "wasi")]
fn wasi_errno(errno: i32) -> i32 {
    errno
}

/// In a native test, the host's errno in WASI's numbering, so the test sees the extended code
/// the gateway reports (the Python and JavaScript kits map theirs the same way).
#[cfg(not(target_os = "wasi"))]
fn wasi_errno(errno: i32) -> i32 {
    // (Linux errno, WASI errno): the errors file handling meets.
    const MAP: &[(i32, i32)] = &[
        (1, 63),   // EPERM
        (2, 44),   // ENOENT
        (5, 29),   // EIO
        (9, 8),    // EBADF
        (13, 2),   // EACCES
        (16, 10),  // EBUSY
        (17, 20),  // EEXIST
        (18, 75),  // EXDEV
        (20, 54),  // ENOTDIR
        (21, 31),  // EISDIR
        (22, 28),  // EINVAL
        (24, 33),  // EMFILE
        (27, 22),  // EFBIG
        (28, 51),  // ENOSPC
        (30, 69),  // EROFS
        (36, 37),  // ENAMETOOLONG
        (39, 55),  // ENOTEMPTY
        (40, 32),  // ELOOP
        (122, 19), // EDQUOT
    ];
    MAP.iter()
        .find(|(host, _)| *host == errno)
        .map_or(errno, |(_, wasi)| *wasi)
}
