//! A step's lifecycle actions and the result each returns.

use crate::codes::{result, ExtendedResultCode};
use serde::{Deserialize, Serialize};

/// ADU's limit on `resultDetails`, in bytes.
pub const MAX_RESULT_DETAILS: usize = 1024;

/// One of the seven lifecycle calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    IsInstalled,
    Download,
    Backup,
    Install,
    Apply,
    Cancel,
    Restore,
}

impl Action {
    /// Every action, in lifecycle order.
    pub const ALL: [Action; 7] = [
        Action::IsInstalled,
        Action::Download,
        Action::Backup,
        Action::Install,
        Action::Apply,
        Action::Cancel,
        Action::Restore,
    ];

    /// The WIT / command-line name (`is-installed`, `install`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Action::IsInstalled => "is-installed",
            Action::Download => "download",
            Action::Backup => "backup",
            Action::Install => "install",
            Action::Apply => "apply",
            Action::Cancel => "cancel",
            Action::Restore => "restore",
        }
    }

    /// The name ADU uses in result file names (`action_<name>_aduc_result.json`).
    pub const fn file_stem(self) -> &'static str {
        match self {
            Action::IsInstalled => "is_installed",
            other => other.name(),
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.name() == s || a.file_stem() == s)
            .ok_or_else(|| {
                format!(
                    "unknown action `{s}`; expected one of: {}",
                    Action::ALL.map(|a| a.name()).join(", ")
                )
            })
    }
}

/// What a lifecycle call returned: ADU's `ADUC_Result` plus details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepResult {
    pub result_code: i32,
    pub extended_result_code: i32,
    pub result_details: String,
}

impl StepResult {
    /// A result with only a code.
    pub fn new(result_code: i32) -> Self {
        StepResult {
            result_code,
            extended_result_code: 0,
            result_details: String::new(),
        }
    }

    /// A failure (code 0) with an extended code and details; details are clamped.
    pub fn failure(erc: ExtendedResultCode, details: impl Into<String>) -> Self {
        StepResult {
            result_code: result::FAILURE,
            extended_result_code: erc.raw(),
            result_details: clamp_details(details.into()),
        }
    }

    /// Replaces the result code.
    pub fn with_code(mut self, result_code: i32) -> Self {
        self.result_code = result_code;
        self
    }

    /// Sets the extended result code.
    pub fn with_erc(mut self, erc: ExtendedResultCode) -> Self {
        self.extended_result_code = erc.raw();
        self
    }

    /// Adds details, clamped to [`MAX_RESULT_DETAILS`].
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.result_details = clamp_details(details.into());
        self
    }

    /// Whether the code means success.
    pub fn is_success(&self) -> bool {
        result::is_success(self.result_code)
    }

    /// The extended code as a typed value.
    pub fn erc(&self) -> ExtendedResultCode {
        ExtendedResultCode::from_raw(self.extended_result_code)
    }
}

/// Cuts `details` to at most [`MAX_RESULT_DETAILS`] bytes on a character boundary, marking the cut.
pub fn clamp_details(mut details: String) -> String {
    if details.len() <= MAX_RESULT_DETAILS {
        return details;
    }
    const MARK: &str = "…";
    let mut end = MAX_RESULT_DETAILS - MARK.len();
    while !details.is_char_boundary(end) {
        end -= 1;
    }
    details.truncate(end);
    details.push_str(MARK);
    details
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_round_trip() {
        for a in Action::ALL {
            assert_eq!(a.name().parse::<Action>().unwrap(), a);
        }
        assert_eq!(Action::IsInstalled.file_stem(), "is_installed");
        assert!("explode"
            .parse::<Action>()
            .unwrap_err()
            .contains("unknown action `explode`"));
    }

    #[test]
    fn details_are_clamped_to_1024_bytes_on_a_char_boundary() {
        let long = "é".repeat(2000);
        let clamped = clamp_details(long);
        assert!(clamped.len() <= MAX_RESULT_DETAILS);
        assert!(clamped.ends_with('…'));
        assert_eq!(clamp_details("short".into()), "short");
    }

    #[test]
    fn step_result_serializes_with_adu_key_names() {
        let r = StepResult::new(700);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["resultCode"], 700);
        assert_eq!(v["extendedResultCode"], 0);
    }
}
