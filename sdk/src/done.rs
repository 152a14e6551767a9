//! Typed results: each lifecycle call has its own code type, so a code meant for another call,
//! or a number that is no ADU code at all, does not compile.
//!
//! ```
//! use sandstep_sdk::done::{Applied, Done, Installed, When};
//!
//! let plain: Done<Installed> = Installed::Success.into();
//! assert_eq!(plain.code(), 600);
//! let reboot = Applied::Reboot(When::Now).with_details("slot B boots next");
//! assert_eq!(reboot.code(), 705);
//! ```
//!
//! A failure is an `Err(Failure)` (usually through `?`): result code 0 and an extended code,
//! [`Failure::vendor`](crate::Failure::vendor) for the handler's own codes.

use sandstep_model::codes::result;
use sandstep_model::step::StepResult;

/// When a reboot or an agent restart should happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Before anything else runs (ADU's "immediate" codes).
    Now,
    /// Once the remaining steps are done.
    AfterSteps,
}

/// The result codes of one lifecycle call. Sealed: the SDK defines one type per call.
pub trait Code: Copy + private::Sealed {
    /// The ADU result code.
    fn code(self) -> i32;
}

mod private {
    pub trait Sealed {}
}

/// A successful call's result: its code, and details for the step's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done<C> {
    code: Coded<C>,
    details: String,
}

/// A typed code, or a code relayed from elsewhere (see [`Done::relayed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coded<C> {
    Typed(C),
    Relayed(i32, i32),
}

impl<C: Code> Done<C> {
    /// Adds details (shown in the step's result; the host clamps them to its limit).
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// A result whose code comes from outside the handler, such as a script's result file in
    /// ADU's format: the code is not checked here, and the host refuses codes that are not ADU's.
    /// A handler choosing its own results never needs this.
    pub fn relayed(result: StepResult) -> Self {
        Done {
            code: Coded::Relayed(result.result_code, result.extended_result_code),
            details: result.result_details,
        }
    }

    /// The ADU result code.
    pub fn code(&self) -> i32 {
        match self.code {
            Coded::Typed(c) => c.code(),
            Coded::Relayed(code, _) => code,
        }
    }

    /// The details.
    pub fn details(&self) -> &str {
        &self.details
    }
}

impl<C: Code> From<C> for Done<C> {
    fn from(code: C) -> Self {
        Done {
            code: Coded::Typed(code),
            details: String::new(),
        }
    }
}

impl<C: Code> From<Done<C>> for StepResult {
    fn from(d: Done<C>) -> StepResult {
        let erc = match d.code {
            Coded::Typed(_) => 0,
            Coded::Relayed(_, erc) => erc,
        };
        StepResult {
            result_code: d.code(),
            extended_result_code: erc,
            result_details: d.details,
        }
    }
}

/// Defines a call's code enum: its variants and their ADU codes.
macro_rules! codes {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident $(($bind:ident: $ty:ty))? => $code:expr),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant $(($ty))?),+
        }

        impl private::Sealed for $name {}

        impl Code for $name {
            fn code(self) -> i32 {
                match self {
                    $($name::$variant $(($bind))? => $code),+
                }
            }
        }

        impl $name {
            /// This code with details for the step's result.
            pub fn with_details(self, details: impl Into<String>) -> Done<$name> {
                Done::from(self).with_details(details)
            }
        }
    };
}

/// A reboot or restart code pair: (immediate, after the steps).
const fn when(w: When, now: i32, later: i32) -> i32 {
    match w {
        When::Now => now,
        When::AfterSteps => later,
    }
}

codes!(
    /// What `is_installed` found.
    IsInstalled {
        /// 900: the step is skipped.
        Installed => result::IS_INSTALLED_INSTALLED,
        /// 901: the step runs.
        NotInstalled => result::IS_INSTALLED_NOT_INSTALLED,
    }
);

codes!(
    /// How `download` went (the host has already fetched and verified the step's files).
    Downloaded {
        /// 500.
        Success => result::DOWNLOAD_SUCCESS,
        /// 502.
        SkippedFileExists => result::DOWNLOAD_SKIPPED_FILE_EXISTS,
        /// 503.
        SkippedUpdateAlreadyInstalled => result::DOWNLOAD_SKIPPED_UPDATE_ALREADY_INSTALLED,
        /// 504.
        SkippedNoMatchingComponents => result::DOWNLOAD_SKIPPED_NO_MATCHING_COMPONENTS,
    }
);

codes!(
    /// How `backup` went.
    BackedUp {
        /// 1000: `restore` can put things back.
        Success => result::BACKUP_SUCCESS,
        /// 1001: nothing to back up; not a failure.
        Unsupported => result::BACKUP_SUCCESS_UNSUPPORTED,
    }
);

codes!(
    /// How `install` went.
    Installed {
        /// 600.
        Success => result::INSTALL_SUCCESS,
        /// 603.
        SkippedUpdateAlreadyInstalled => result::INSTALL_SKIPPED_UPDATE_ALREADY_INSTALLED,
        /// 604.
        SkippedNoMatchingComponents => result::INSTALL_SKIPPED_NO_MATCHING_COMPONENTS,
        /// 605 (now) or 606 (after the steps).
        Reboot(w: When) => when(w, result::INSTALL_REQUIRED_IMMEDIATE_REBOOT, result::INSTALL_REQUIRED_REBOOT),
        /// 607 (now) or 608 (after the steps).
        AgentRestart(w: When) => when(
            w,
            result::INSTALL_REQUIRED_IMMEDIATE_AGENT_RESTART,
            result::INSTALL_REQUIRED_AGENT_RESTART
        ),
    }
);

codes!(
    /// How `apply` went.
    Applied {
        /// 700.
        Success => result::APPLY_SUCCESS,
        /// 705 (now) or 706 (after the steps).
        Reboot(w: When) => when(w, result::APPLY_REQUIRED_IMMEDIATE_REBOOT, result::APPLY_REQUIRED_REBOOT),
        /// 707 (now) or 708 (after the steps).
        AgentRestart(w: When) => when(
            w,
            result::APPLY_REQUIRED_IMMEDIATE_AGENT_RESTART,
            result::APPLY_REQUIRED_AGENT_RESTART
        ),
    }
);

codes!(
    /// How `cancel` went.
    Cancelled {
        /// 800.
        Success => result::CANCEL_SUCCESS,
        /// 801.
        UnableToCancel => result::CANCEL_UNABLE_TO_CANCEL,
    }
);

codes!(
    /// How `restore` went.
    Restored {
        /// 1100.
        Success => result::RESTORE_SUCCESS,
        /// 1101: nothing to restore; not a failure.
        Unsupported => result::RESTORE_SUCCESS_UNSUPPORTED,
        /// 1105 (now) or 1106 (after the steps).
        Reboot(w: When) => when(w, result::RESTORE_REQUIRED_IMMEDIATE_REBOOT, result::RESTORE_REQUIRED_REBOOT),
        /// 1107 (now) or 1108 (after the steps).
        AgentRestart(w: When) => when(
            w,
            result::RESTORE_REQUIRED_IMMEDIATE_AGENT_RESTART,
            result::RESTORE_REQUIRED_AGENT_RESTART
        ),
    }
);
