//! ADU result codes and extended result codes (reference: ADU's `adu_core.h`).
//!
//! A result code is an `i32`; success means `> 0`. An extended result code packs
//! `facility << 28 | component << 20 | code` into an `i32` (printed as `%08X`).

/// Result codes, named as in ADU (`ADUC_Result_*`).
pub mod result {
    /// Generic failure.
    pub const FAILURE: i32 = 0;
    /// The operation was cancelled.
    pub const FAILURE_CANCELLED: i32 = -1;
    /// Generic success.
    pub const SUCCESS: i32 = 1;

    /// Download finished.
    pub const DOWNLOAD_SUCCESS: i32 = 500;
    /// Download still running.
    pub const DOWNLOAD_IN_PROGRESS: i32 = 501;
    /// The file was already present with the right hash.
    pub const DOWNLOAD_SKIPPED_FILE_EXISTS: i32 = 502;
    /// Nothing downloaded: the update is already installed.
    pub const DOWNLOAD_SKIPPED_UPDATE_ALREADY_INSTALLED: i32 = 503;
    /// Nothing downloaded: no component matched the child update.
    pub const DOWNLOAD_SKIPPED_NO_MATCHING_COMPONENTS: i32 = 504;

    /// Install finished.
    pub const INSTALL_SUCCESS: i32 = 600;
    /// Install still running.
    pub const INSTALL_IN_PROGRESS: i32 = 601;
    /// The step was skipped because IsInstalled answered 900.
    pub const INSTALL_SKIPPED_UPDATE_ALREADY_INSTALLED: i32 = 603;
    /// Nothing installed: no component matched the child update.
    pub const INSTALL_SKIPPED_NO_MATCHING_COMPONENTS: i32 = 604;
    /// Install done; reboot now.
    pub const INSTALL_REQUIRED_IMMEDIATE_REBOOT: i32 = 605;
    /// Install done; reboot after the remaining steps.
    pub const INSTALL_REQUIRED_REBOOT: i32 = 606;
    /// Install done; restart the agent now.
    pub const INSTALL_REQUIRED_IMMEDIATE_AGENT_RESTART: i32 = 607;
    /// Install done; restart the agent after the remaining steps.
    pub const INSTALL_REQUIRED_AGENT_RESTART: i32 = 608;

    /// Apply finished.
    pub const APPLY_SUCCESS: i32 = 700;
    /// Apply still running.
    pub const APPLY_IN_PROGRESS: i32 = 701;
    /// Apply done; reboot now.
    pub const APPLY_REQUIRED_IMMEDIATE_REBOOT: i32 = 705;
    /// Apply done; reboot after the remaining steps.
    pub const APPLY_REQUIRED_REBOOT: i32 = 706;
    /// Apply done; restart the agent now.
    pub const APPLY_REQUIRED_IMMEDIATE_AGENT_RESTART: i32 = 707;
    /// Apply done; restart the agent after the remaining steps.
    pub const APPLY_REQUIRED_AGENT_RESTART: i32 = 708;

    /// Cancel succeeded.
    pub const CANCEL_SUCCESS: i32 = 800;
    /// Cancel was not possible (not a failure).
    pub const CANCEL_UNABLE_TO_CANCEL: i32 = 801;

    /// IsInstalled: the update is installed.
    pub const IS_INSTALLED_INSTALLED: i32 = 900;
    /// IsInstalled: the update is not installed.
    pub const IS_INSTALLED_NOT_INSTALLED: i32 = 901;

    /// Backup done.
    pub const BACKUP_SUCCESS: i32 = 1000;
    /// The handler has no backup (not a failure).
    pub const BACKUP_SUCCESS_UNSUPPORTED: i32 = 1001;

    /// Restore done.
    pub const RESTORE_SUCCESS: i32 = 1100;
    /// The handler has no restore (not a failure).
    pub const RESTORE_SUCCESS_UNSUPPORTED: i32 = 1101;
    /// Restore done; reboot now.
    pub const RESTORE_REQUIRED_IMMEDIATE_REBOOT: i32 = 1105;
    /// Restore done; reboot later.
    pub const RESTORE_REQUIRED_REBOOT: i32 = 1106;
    /// Restore done; restart the agent now.
    pub const RESTORE_REQUIRED_IMMEDIATE_AGENT_RESTART: i32 = 1107;
    /// Restore done; restart the agent later.
    pub const RESTORE_REQUIRED_AGENT_RESTART: i32 = 1108;

    /// Whether `code` means success (`> 0`).
    pub const fn is_success(code: i32) -> bool {
        code > 0
    }

    /// Whether `code` is a failure (`<= 0`) or one of the success codes ADU defines. A handler
    /// returning anything else is refused rather than guessed at.
    pub const fn is_known(code: i32) -> bool {
        matches!(
            code,
            i32::MIN..=0
                | SUCCESS
                | 500..=504
                | 600..=601
                | 603..=608
                | 700..=701
                | 705..=708
                | 800..=801
                | 900..=901
                | 1000..=1001
                | 1100..=1101
                | 1105..=1108
        )
    }
}

/// What a result code asks of the agent besides success or failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Followup {
    /// Nothing: carry on.
    None,
    /// Reboot before running anything else.
    ImmediateReboot,
    /// Reboot once the remaining steps are done.
    Reboot,
    /// Restart the agent before running anything else.
    ImmediateAgentRestart,
    /// Restart the agent once the remaining steps are done.
    AgentRestart,
}

impl Followup {
    /// The follow-up a result code requests. ADU needs a separate API call for this; sandstep derives
    /// it from the code itself.
    pub const fn of(code: i32) -> Followup {
        use result::*;
        match code {
            INSTALL_REQUIRED_IMMEDIATE_REBOOT
            | APPLY_REQUIRED_IMMEDIATE_REBOOT
            | RESTORE_REQUIRED_IMMEDIATE_REBOOT => Followup::ImmediateReboot,
            INSTALL_REQUIRED_REBOOT | APPLY_REQUIRED_REBOOT | RESTORE_REQUIRED_REBOOT => {
                Followup::Reboot
            }
            INSTALL_REQUIRED_IMMEDIATE_AGENT_RESTART
            | APPLY_REQUIRED_IMMEDIATE_AGENT_RESTART
            | RESTORE_REQUIRED_IMMEDIATE_AGENT_RESTART => Followup::ImmediateAgentRestart,
            INSTALL_REQUIRED_AGENT_RESTART
            | APPLY_REQUIRED_AGENT_RESTART
            | RESTORE_REQUIRED_AGENT_RESTART => Followup::AgentRestart,
            _ => Followup::None,
        }
    }

    /// Whether the agent must stop running steps now.
    pub const fn is_immediate(self) -> bool {
        matches!(
            self,
            Followup::ImmediateReboot | Followup::ImmediateAgentRestart
        )
    }
}

/// The facility nibble of an extended result code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Facility {
    /// Unknown; with component 0 the code is an errno.
    Unknown = 0,
    /// Lower layer (platform).
    LowerLayer = 1,
    /// Upper layer: the workflow.
    UpperLayer = 2,
    /// A content (step) handler.
    ContentHandler = 3,
    /// The downloader.
    Downloader = 4,
    /// The component enumerator.
    ComponentEnumerator = 7,
    /// Utilities (component 3: the manifest parser).
    Utility = 8,
    /// Infrastructure (component 2: JWS manifest validation).
    Infra = 10,
    /// sandstep's own conditions, which ADU's agent does not have. ADU leaves facility 11 unused
    /// (`ADUC_FACILITY_UNUSED_B` in `src/inc/aduc/result.h`), so no sandstep-only code can be
    /// read as one of ADU's (pinned by the compatibility suite against ADU's code table).
    Sandstep = 11,
}

/// Component numbers under [`Facility::ContentHandler`], as ADU assigns them, and sandstep's
/// component for its own handlers under [`Facility::Sandstep`].
pub mod content_component {
    /// The swupdate handler.
    pub const SWUPDATE: u8 = 1;
    /// The apt handler.
    pub const APT: u8 = 2;
    /// The steps handler.
    pub const STEPS: u8 = 4;
    /// The script handler.
    pub const SCRIPT: u8 = 5;
    /// External and custom handlers: use this for a vendor handler.
    pub const CUSTOM: u8 = 32;
    /// sandstep's own handlers and SDK (firmware, component, files, SDK-level errors), under
    /// [`Facility::Sandstep`].
    pub const SANDSTEP: u8 = 0xA0;
}

/// An extended result code: `facility << 28 | component << 20 | code`.
///
/// ```
/// use sandstep_model::codes::{ExtendedResultCode, Facility};
/// let erc = ExtendedResultCode::new(Facility::ContentHandler, 5, 0x205);
/// assert_eq!(erc.raw(), 0x30500205);
/// assert_eq!(erc.to_string(), "30500205");
/// assert_eq!(erc.facility(), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ExtendedResultCode(i32);

impl ExtendedResultCode {
    /// No extended code (0).
    pub const NONE: ExtendedResultCode = ExtendedResultCode(0);

    /// Packs a facility, a component (8 bits) and a code (20 bits; higher bits are dropped).
    pub const fn new(facility: Facility, component: u8, code: u32) -> Self {
        Self::from_parts(facility as u8, component, code)
    }

    /// Packs a raw facility number (4 bits), a component and a code.
    pub const fn from_parts(facility: u8, component: u8, code: u32) -> Self {
        let raw = ((facility as u32 & 0xF) << 28) | ((component as u32) << 20) | (code & 0xF_FFFF);
        ExtendedResultCode(raw as i32)
    }

    /// Wraps a raw value.
    pub const fn from_raw(raw: i32) -> Self {
        ExtendedResultCode(raw)
    }

    /// An errno as ADU reports it (facility 0, component 0).
    pub const fn errno(errno: i32) -> Self {
        Self::from_parts(0, 0, errno as u32)
    }

    /// A child process's exit status mapped onto `base` as ADU does: `base | (0x1000 + status)`.
    pub const fn exit_status(base: ExtendedResultCode, status: i32) -> Self {
        ExtendedResultCode(base.0 | (0x1000 + (status & 0xFFF)))
    }

    /// The raw `i32`.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// The facility nibble.
    pub const fn facility(self) -> u8 {
        ((self.0 as u32) >> 28) as u8
    }

    /// The component byte.
    pub const fn component(self) -> u8 {
        (((self.0 as u32) >> 20) & 0xFF) as u8
    }

    /// The 20-bit code.
    pub const fn code(self) -> u32 {
        (self.0 as u32) & 0xF_FFFF
    }
}

impl std::fmt::Display for ExtendedResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08X}", self.0 as u32)
    }
}

impl From<ExtendedResultCode> for i32 {
    fn from(erc: ExtendedResultCode) -> i32 {
        erc.0
    }
}

/// The extended result codes sandstep itself produces. Each is documented in the README's table.
pub mod erc {
    use super::{content_component, ExtendedResultCode as E, Facility};

    const fn sandbox(code: u32) -> E {
        E::new(Facility::Sandstep, 0x00, code)
    }
    const fn workflow(code: u32) -> E {
        E::new(Facility::Sandstep, 0x01, code)
    }

    // ADU's own values, kept bit for bit.
    /// A downloaded file's hash does not match the manifest.
    pub const FILE_HASH_MISMATCH: E = E::from_raw(0x4000_000C);
    /// The manifest signature is missing or the manifest hash does not match.
    pub const MANIFEST_SIGNATURE_MISSING_OR_HASH_MISMATCH: E = E::from_raw(0x8030_0001u32 as i32);
    /// ADU's `ADUC_ERC_ROOTKEY_SIGNING_KEY_IS_DISABLED`: the manifest's signing key is on the
    /// root key package's `disabledSigningKeys`.
    pub const SIGNING_KEY_IS_DISABLED: E = E::from_raw(0xA000_0005u32 as i32);
    /// ADU's `ADUC_ERC_ROOTKEY_PACKAGE_CHANGED`: the deployment's root key package replaced the
    /// stored one (reported beside the result, as ADU's `workflow_add_erc` does).
    pub const ROOTKEY_PACKAGE_CHANGED: E = E::from_raw(0xA000_0008u32 as i32);
    /// ADU's `ADUC_ERC_ROOTKEY_PKG_UNCHANGED`: the deployment's root key package is the stored one.
    pub const ROOTKEY_PACKAGE_UNCHANGED: E = E::from_raw(0xA000_0FFFu32 as i32);
    /// ADU's `ADUC_ERC_ROOTKEY_TEST_PKG_ON_PROD_AGENT`: a package marked `isTest`.
    pub const ROOTKEY_TEST_PACKAGE: E = E::from_raw(0xA000_0007u32 as i32);
    /// ADU's `ADUC_ERC_UTILITIES_ROOTKEYUTIL_HARDCODED_ROOTKEY_LOAD_FAILED`: no root to check a
    /// root key package against.
    pub const ROOTKEY_NO_SIGNERS: E = E::from_raw(0x8060_0002u32 as i32);
    /// ADU's `ADUC_ERC_UTILITIES_ROOTKEYUTIL_SIGNATURE_FOR_KEY_NOT_FOUND`: a root that must sign
    /// the package has no signature in it.
    pub const ROOTKEY_SIGNATURE_NOT_FOUND: E = E::from_raw(0x8060_0003u32 as i32);
    /// ADU's `ADUC_ERC_UTILITIES_ROOTKEYUTIL_SIGNATURE_VALIDATION_FAILED`.
    pub const ROOTKEY_SIGNATURE_INVALID: E = E::from_raw(0x8060_0004u32 as i32);
    /// ADU's `ADUC_ERC_UTILITIES_ROOTKEYUTIL_ROOTKEYPACKAGE_CANNOT_WRITE_PACKAGE_TO_STORE`.
    pub const ROOTKEY_STORE_WRITE_FAILED: E = E::from_raw(0x8060_0007u32 as i32);
    /// ADU's `ADUC_ERC_UTILITIES_ROOTKEYUTIL_ROOTKEYPACKAGE_CANT_LOAD_FROM_STORE`: the stored
    /// package no longer verifies (or cannot be read); manifests are refused until a deployment
    /// brings a good one.
    pub const ROOTKEY_STORE_LOAD_FAILED: E = E::from_raw(0x8060_0009u32 as i32);
    /// ADU's `ADUC_ERC_UTILITIES_ROOTKEYUTIL_ROOTKEYPACKAGE_DOWNLOAD_EXCEPTION`.
    pub const ROOTKEY_DOWNLOAD_FAILED: E = E::from_raw(0x8060_0017u32 as i32);
    /// ADU's `ADUC_ERC_UTILITIES_ROOTKEYPKG_UTIL_ERROR_BAD_JSON`: the package is not JSON.
    pub const ROOTKEY_PACKAGE_BAD_JSON: E = E::from_raw(0x8050_0003u32 as i32);
    /// `0x805000NN`: ADU's `ADUC_ERC_UTILITIES_ROOTKEYPKG_PARSE_*` (NN names the member).
    pub const ROOTKEY_PACKAGE_PARSE_BASE: E = E::from_raw(0x8050_0000u32 as i32);
    /// ADU's `ADUC_ERC_DOWNLOAD_HANDLER_EXTENSION_MANAGER_CREATE_FAILURE_CREATE`: a file's
    /// `downloadHandler` is not there, so the full file was downloaded (reported beside the
    /// result).
    pub const DOWNLOAD_HANDLER_MISSING: E = E::from_raw(0x9000_0001u32 as i32);
    /// The detached manifest's file entry is missing.
    pub const DETACHED_MANIFEST_ENTITY_MISSING: E = E::from_raw(0x8030_000Bu32 as i32);
    /// The detached manifest file does not hold a valid manifest.
    pub const DETACHED_MANIFEST_BAD: E = E::from_raw(0x8030_000Cu32 as i32);
    /// The detached manifest file could not be downloaded.
    pub const DETACHED_MANIFEST_DOWNLOAD_FAILED: E = E::from_raw(0x8030_000Du32 as i32);
    /// The detached manifest file is not JSON.
    pub const DETACHED_MANIFEST_NOT_JSON: E = E::from_raw(0x8030_000Eu32 as i32);
    /// The detached manifest file has no `updateManifest`.
    pub const DETACHED_MANIFEST_NO_UPDATE_MANIFEST: E = E::from_raw(0x8030_000Fu32 as i32);
    /// The manifest version is not supported.
    pub const UNSUPPORTED_MANIFEST_VERSION: E = E::from_raw(0x8030_000Au32 as i32);
    /// A step has no `handlerProperties`.
    pub const MISSING_HANDLER_PROPERTIES: E = E::from_raw(0x8040_000Du32 as i32);
    /// The script handler: `scriptFileName` missing or empty.
    pub const SCRIPT_MISSING_SCRIPT_FILE_NAME: E = E::from_raw(0x3050_0005);
    /// The script handler: `scriptFileName` is not one of the step's files.
    pub const SCRIPT_NOT_AMONG_STEP_FILES: E = E::from_raw(0x3050_0103);
    /// The script handler: no result file, or one that does not parse.
    pub const SCRIPT_RESULT_FILE_MISSING_OR_INVALID: E = E::from_raw(0x3050_0205);
    /// The script handler: the script failed but reported erc 0.
    pub const SCRIPT_FAILED_WITHOUT_ERC: E = E::from_raw(0x3050_0206);
    /// Base for a script's exit status (`base | 0x1000 + status`).
    pub const SCRIPT_EXIT_STATUS_BASE: E = E::from_raw(0x3050_0000);
    /// The SWUpdate handler (v2): `scriptFileName` missing or empty.
    pub const SWUPDATE_MISSING_SCRIPT_FILE_NAME: E = E::from_raw(0x3010_0007);
    /// The SWUpdate handler (v2): `swuFileName` missing or empty.
    pub const SWUPDATE_MISSING_SWU_FILE_NAME: E = E::from_raw(0x3010_0008);
    /// The SWUpdate handler (v2): a step needs the script and at least one more file.
    pub const SWUPDATE_WRONG_FILE_COUNT: E = E::from_raw(0x3010_0103);
    /// The SWUpdate handler (v2): `scriptFileName` is not one of the step's files.
    pub const SWUPDATE_SCRIPT_NOT_AMONG_STEP_FILES: E = E::from_raw(0x3010_0107);
    /// The SWUpdate handler (v2): the script left no result file, or one that does not parse.
    pub const SWUPDATE_RESULT_FILE_MISSING_OR_INVALID: E = E::from_raw(0x3010_0205);
    /// Base for the SWUpdate script's exit status (`base | 0x1000 + status`).
    pub const SWUPDATE_EXIT_STATUS_BASE: E = E::from_raw(0x3010_0000);
    /// ADU's `ADUC_ERC_SWUPDATE_HANDLER_MISSING_INSTALLED_CRITERIA` (`microsoft/swupdate:1`).
    pub const SWUPDATE_MISSING_INSTALLED_CRITERIA: E = E::from_raw(0x3010_0206);
    /// A step's restore failed (the SWUpdate script could not cancel what it applied).
    pub const RESTORE_FAILED: E = E::from_raw(0x2000_0003);
    /// The apt handler needs exactly one file.
    pub const APT_WRONG_FILE_COUNT: E = E::from_raw(0x3020_0004);
    /// The apt handler needs installedCriteria.
    pub const APT_MISSING_INSTALLED_CRITERIA: E = E::from_raw(0x3020_0007);
    /// A step handler's content file (an apt manifest) does not parse.
    pub const CONTENT_PARSE_BAD_FORMAT: E = E::from_raw(0x3000_0068);
    /// apt-get could not download the packages (or there were none to download).
    pub const APT_DOWNLOAD_FAILED: E = E::from_raw(0x3020_0100);
    /// apt-get could not install the packages.
    pub const APT_INSTALL_FAILED: E = E::from_raw(0x3020_0200);

    // sandstep's sandbox (facility 11, component 0).
    /// A handler call ran past its time limit.
    pub const SANDBOX_TIME_LIMIT: E = sandbox(0x001);
    /// A handler tried to grow its memory past the cap.
    pub const SANDBOX_MEMORY_LIMIT: E = sandbox(0x002);
    /// A handler trapped (panic, unreachable, out-of-bounds access...).
    pub const SANDBOX_TRAP: E = sandbox(0x003);
    /// The handler component could not be loaded or instantiated.
    pub const SANDBOX_LOAD_FAILED: E = sandbox(0x004);
    /// The component imports a capability its handler id is not granted.
    pub const SANDBOX_CAPABILITY_DENIED: E = sandbox(0x005);
    /// No handler is registered under the step's handler id: ADU's code for a step handler
    /// extension that is not found (`ExtensionManager::LoadExtensionLibrary`).
    pub const SANDBOX_HANDLER_NOT_FOUND: E = E::from_raw(0x3000_0003);
    /// The handler component's signature is missing, untrusted or broken.
    pub const SANDBOX_SIGNATURE_REFUSED: E = sandbox(0x007);
    /// The host could not prepare the sandbox directories.
    pub const SANDBOX_SETUP_FAILED: E = sandbox(0x008);
    /// The call was stopped because the deployment was cancelled.
    pub const SANDBOX_CANCELLED: E = sandbox(0x009);
    /// The handler returned a result code that is not valid for the action.
    pub const SANDBOX_INVALID_RESULT: E = sandbox(0x00A);
    /// A folder the handler writes grew past its quota (policy `work-bytes`, `state-bytes`,
    /// `dir-growth-bytes`), or could not be measured.
    pub const SANDBOX_WORK_QUOTA: E = sandbox(0x00B);
    /// The handler held more handles (open files, directories, streams) than policy
    /// `open-handles` allows.
    pub const SANDBOX_HANDLE_LIMIT: E = sandbox(0x00C);

    // sandstep's workflow (facility 11, component 1).
    /// The manifest failed validation.
    pub const WORKFLOW_MANIFEST_INVALID: E = workflow(0x001);
    /// A step file could not be fetched.
    pub const WORKFLOW_DOWNLOAD_FAILED: E = workflow(0x002);
    /// A downloaded file has the wrong size.
    pub const WORKFLOW_FILE_SIZE_MISMATCH: E = workflow(0x003);
    /// A child update is invalid (bad manifest, or it contains reference steps).
    pub const WORKFLOW_CHILD_MANIFEST_INVALID: E = workflow(0x004);
    /// The component inventory could not be read.
    pub const WORKFLOW_INVENTORY_INVALID: E = workflow(0x005);
    /// The deployment was cancelled.
    pub const WORKFLOW_CANCELLED: E = workflow(0x006);
    /// The journal could not be written.
    pub const WORKFLOW_JOURNAL_FAILED: E = workflow(0x007);
    /// After the reboot or restart a step asked for, is-installed says the update is not there.
    pub const WORKFLOW_NOT_INSTALLED_AFTER_FOLLOWUP: E = workflow(0x008);
    /// The update's compatibility does not match the device's properties.
    pub const WORKFLOW_INCOMPATIBLE: E = workflow(0x009);
    /// The update is older than the one installed, and its manifest does not allow a downgrade.
    pub const WORKFLOW_DOWNGRADE: E = workflow(0x00A);
    /// The health checks after the reboot or restart the deployment asked for did not pass.
    pub const WORKFLOW_HEALTH_CHECK_FAILED: E = workflow(0x00B);
    /// A step's `handlerProperties.health` does not hold (or names a program the gateway does
    /// not allow).
    pub const WORKFLOW_HEALTH_INVALID: E = workflow(0x00C);
    /// A deployment's root key package is older (`published`) than the stored one: refused, so
    /// a replayed package cannot take back a revocation. ADU's agent takes any package its
    /// roots signed.
    pub const WORKFLOW_ROOTKEY_PACKAGE_OLDER: E = workflow(0x00D);
    /// The deployment's signed maintenance windows and the gateway's are never open together
    /// (it would wait forever).
    pub const WORKFLOW_WINDOW_NEVER_OPENS: E = workflow(0x00E);

    // The SDK (facility 11, component 0xA0, shared with sandstep's handlers).
    /// `handlerProperties` do not match the handler's expected shape.
    pub const SDK_INVALID_PROPERTIES: E =
        E::new(Facility::Sandstep, content_component::SANDSTEP, 0x001);
    /// A step file the handler needs is missing from the step.
    pub const SDK_MISSING_FILE: E = E::new(Facility::Sandstep, content_component::SANDSTEP, 0x002);
    /// A host capability call failed.
    pub const SDK_CAPABILITY_FAILED: E =
        E::new(Facility::Sandstep, content_component::SANDSTEP, 0x003);
    /// The apt handler: apt-get succeeded but dpkg does not report what the manifest asks for.
    pub const APT_DPKG_DISAGREES: E =
        E::new(Facility::Sandstep, content_component::SANDSTEP, 0x501);
    /// The apt handler: its record of applied criteria in /state is corrupt.
    pub const APT_RECORD_CORRUPT: E =
        E::new(Facility::Sandstep, content_component::SANDSTEP, 0x502);
    /// The script handler: the script ran past its time limit and was stopped.
    pub const SCRIPT_TIMED_OUT: E = E::new(Facility::Sandstep, content_component::SANDSTEP, 0x401);

    /// The codes above that are ADU's, with ADU's name for each (`src/inc/aduc/result.h`).
    pub const ADU_NAMED: &[(&str, E)] = &[
        (
            "ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_MISSING_DETACHED_UPDATE_MANIFEST_ENTITY",
            DETACHED_MANIFEST_ENTITY_MISSING,
        ),
        (
            "ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_BAD_DETACHED_UPDATE_MANIFEST",
            DETACHED_MANIFEST_BAD,
        ),
        (
            "ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_DETACHED_UPDATE_MANIFEST_DOWNLOAD_FAILED",
            DETACHED_MANIFEST_DOWNLOAD_FAILED,
        ),
        (
            "ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_BAD_DETACHED_UPDATE_MANIFEST_JSON_FILE",
            DETACHED_MANIFEST_NOT_JSON,
        ),
        (
            "ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_DETACHED_UPDATE_MANIFEST_MISSING_UPDATEMANIFEST_PROPERTY",
            DETACHED_MANIFEST_NO_UPDATE_MANIFEST,
        ),
        (
            "ADUC_ERC_CONTENT_DOWNLOADER_INVALID_FILE_HASH",
            FILE_HASH_MISMATCH,
        ),
        (
            "ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_MANIFEST_VALIDATION_FAILED",
            MANIFEST_SIGNATURE_MISSING_OR_HASH_MISMATCH,
        ),
        (
            "ADUC_ERC_ROOTKEY_SIGNING_KEY_IS_DISABLED",
            SIGNING_KEY_IS_DISABLED,
        ),
        (
            "ADUC_ERC_DOWNLOAD_HANDLER_EXTENSION_MANAGER_CREATE_FAILURE_CREATE",
            DOWNLOAD_HANDLER_MISSING,
        ),
        (
            "ADUC_ERC_ROOTKEY_PACKAGE_CHANGED",
            ROOTKEY_PACKAGE_CHANGED,
        ),
        (
            "ADUC_ERC_ROOTKEY_PKG_UNCHANGED",
            ROOTKEY_PACKAGE_UNCHANGED,
        ),
        (
            "ADUC_ERC_ROOTKEY_TEST_PKG_ON_PROD_AGENT",
            ROOTKEY_TEST_PACKAGE,
        ),
        (
            "ADUC_ERC_UTILITIES_ROOTKEYUTIL_HARDCODED_ROOTKEY_LOAD_FAILED",
            ROOTKEY_NO_SIGNERS,
        ),
        (
            "ADUC_ERC_UTILITIES_ROOTKEYUTIL_SIGNATURE_FOR_KEY_NOT_FOUND",
            ROOTKEY_SIGNATURE_NOT_FOUND,
        ),
        (
            "ADUC_ERC_UTILITIES_ROOTKEYUTIL_SIGNATURE_VALIDATION_FAILED",
            ROOTKEY_SIGNATURE_INVALID,
        ),
        (
            "ADUC_ERC_UTILITIES_ROOTKEYUTIL_ROOTKEYPACKAGE_CANNOT_WRITE_PACKAGE_TO_STORE",
            ROOTKEY_STORE_WRITE_FAILED,
        ),
        (
            "ADUC_ERC_UTILITIES_ROOTKEYUTIL_ROOTKEYPACKAGE_CANT_LOAD_FROM_STORE",
            ROOTKEY_STORE_LOAD_FAILED,
        ),
        (
            "ADUC_ERC_UTILITIES_ROOTKEYUTIL_ROOTKEYPACKAGE_DOWNLOAD_EXCEPTION",
            ROOTKEY_DOWNLOAD_FAILED,
        ),
        (
            "ADUC_ERC_UTILITIES_ROOTKEYPKG_UTIL_ERROR_BAD_JSON",
            ROOTKEY_PACKAGE_BAD_JSON,
        ),
        (
            "ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_UNSUPPORTED_UPDATE_MANIFEST_VERSION",
            UNSUPPORTED_MANIFEST_VERSION,
        ),
        (
            "ADUC_ERC_UTILITIES_WORKFLOW_UTIL_COPY_UPDATE_ACTION_COPY_HANDLER_PROPERTIES_FAILED",
            MISSING_HANDLER_PROPERTIES,
        ),
        (
            "ADUC_ERC_SCRIPT_HANDLER_MISSING_SCRIPTFILENAME_PROPERTY",
            SCRIPT_MISSING_SCRIPT_FILE_NAME,
        ),
        (
            "ADUC_ERC_SCRIPT_HANDLER_DOWNLOAD_FAILURE_GET_PRIMARY_FILE_ENTITY",
            SCRIPT_NOT_AMONG_STEP_FILES,
        ),
        (
            "ADUC_ERC_SCRIPT_HANDLER_INSTALL_FAILURE_PARSE_RESULT_FILE",
            SCRIPT_RESULT_FILE_MISSING_OR_INVALID,
        ),
        (
            "ADUC_ERC_SCRIPT_HANDLER_INSTALL_FAILURE_SCRIPT_RESULT_EXTENDEDRESULTCODE_ZERO",
            SCRIPT_FAILED_WITHOUT_ERC,
        ),
        (
            "ADUC_ERC_SCRIPT_HANDLER_ERROR_NONE",
            SCRIPT_EXIT_STATUS_BASE,
        ),
        (
            "ADUC_ERC_SWUPDATE_HANDLER_MISSING_SCRIPT_FILE_NAME",
            SWUPDATE_MISSING_SCRIPT_FILE_NAME,
        ),
        (
            "ADUC_ERC_SWUPDATE_HANDLER_MISSING_SWU_FILE_NAME",
            SWUPDATE_MISSING_SWU_FILE_NAME,
        ),
        (
            "ADUC_ERC_SWUPDATE_HANDLER_DOWNLOAD_FAILURE_WRONG_FILECOUNT",
            SWUPDATE_WRONG_FILE_COUNT,
        ),
        (
            "ADUC_ERC_SWUPDATE_HANDLER_DOWNLOAD_FAILURE_GET_SCRIPT_FILE_ENTITY",
            SWUPDATE_SCRIPT_NOT_AMONG_STEP_FILES,
        ),
        (
            "ADUC_ERC_SWUPDATE_HANDLER_INSTALL_FAILURE_PARSE_RESULT_FILE",
            SWUPDATE_RESULT_FILE_MISSING_OR_INVALID,
        ),
        (
            "ADUC_ERC_UPPERLEVEL_WORKFLOW_FAILED_RESTORE_FAILED",
            RESTORE_FAILED,
        ),
        (
            "ADUC_ERC_APT_HANDLER_PACKAGE_PREPARE_FAILURE_WRONG_FILECOUNT",
            APT_WRONG_FILE_COUNT,
        ),
        (
            "ADUC_ERC_APT_HANDLER_MISSING_INSTALLED_CRITERIA",
            APT_MISSING_INSTALLED_CRITERIA,
        ),
        (
            "ADUC_ERC_SWUPDATE_HANDLER_MISSING_INSTALLED_CRITERIA",
            SWUPDATE_MISSING_INSTALLED_CRITERIA,
        ),
        (
            "ADUC_ERC_UPDATE_CONTENT_HANDLER_PARSE_BAD_FORMAT",
            CONTENT_PARSE_BAD_FORMAT,
        ),
        (
            "ADUC_ERC_UPDATE_CONTENT_HANDLER_CREATE_FAILURE_NOT_FOUND",
            SANDBOX_HANDLER_NOT_FOUND,
        ),
        (
            "ADUC_ERC_APT_HANDLER_PACKAGE_DOWNLOAD_FAILURE",
            APT_DOWNLOAD_FAILED,
        ),
        (
            "ADUC_ERC_APT_HANDLER_PACKAGE_INSTALL_FAILURE",
            APT_INSTALL_FAILED,
        ),
    ];

    /// Refusals the deployment's signed content decides against this device, whatever the
    /// moment: another attempt at the same document ends the same way, so it is not retried
    /// (HTTP polling waits for the server's version to change).
    pub const FINAL_REFUSALS: &[E] = &[
        WORKFLOW_DOWNGRADE,
        WORKFLOW_INCOMPATIBLE,
        WORKFLOW_MANIFEST_INVALID,
        WORKFLOW_HEALTH_INVALID,
        MANIFEST_SIGNATURE_MISSING_OR_HASH_MISMATCH,
        SIGNING_KEY_IS_DISABLED,
        UNSUPPORTED_MANIFEST_VERSION,
    ];

    /// Whether `code` is one of [`FINAL_REFUSALS`].
    pub fn is_final_refusal(code: E) -> bool {
        FINAL_REFUSALS.contains(&code)
    }

    /// The codes only sandstep has: all in [`Facility::Sandstep`].
    pub const SANDSTEP_ONLY: &[E] = &[
        SANDBOX_TIME_LIMIT,
        SANDBOX_MEMORY_LIMIT,
        SANDBOX_TRAP,
        SANDBOX_LOAD_FAILED,
        SANDBOX_CAPABILITY_DENIED,
        SANDBOX_SIGNATURE_REFUSED,
        SANDBOX_SETUP_FAILED,
        SANDBOX_CANCELLED,
        SANDBOX_INVALID_RESULT,
        SANDBOX_WORK_QUOTA,
        SANDBOX_HANDLE_LIMIT,
        WORKFLOW_MANIFEST_INVALID,
        WORKFLOW_DOWNLOAD_FAILED,
        WORKFLOW_FILE_SIZE_MISMATCH,
        WORKFLOW_CHILD_MANIFEST_INVALID,
        WORKFLOW_INVENTORY_INVALID,
        WORKFLOW_CANCELLED,
        WORKFLOW_JOURNAL_FAILED,
        WORKFLOW_NOT_INSTALLED_AFTER_FOLLOWUP,
        WORKFLOW_INCOMPATIBLE,
        WORKFLOW_DOWNGRADE,
        WORKFLOW_HEALTH_CHECK_FAILED,
        WORKFLOW_HEALTH_INVALID,
        WORKFLOW_ROOTKEY_PACKAGE_OLDER,
        WORKFLOW_WINDOW_NEVER_OPENS,
        SDK_INVALID_PROPERTIES,
        SDK_MISSING_FILE,
        SDK_CAPABILITY_FAILED,
        SCRIPT_TIMED_OUT,
        APT_DPKG_DISAGREES,
        APT_RECORD_CORRUPT,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erc_packs_facility_component_code() {
        let e = ExtendedResultCode::new(Facility::ContentHandler, content_component::SCRIPT, 0x205);
        assert_eq!(e, erc::SCRIPT_RESULT_FILE_MISSING_OR_INVALID);
        assert_eq!((e.facility(), e.component(), e.code()), (3, 5, 0x205));
    }

    #[test]
    fn erc_drops_bits_above_the_code_field() {
        let e = ExtendedResultCode::new(Facility::Downloader, 0, 0x1_0000C);
        assert_eq!(e.raw(), 0x4000_000C);
    }

    #[test]
    fn erc_displays_as_eight_upper_hex_digits() {
        assert_eq!(
            erc::MANIFEST_SIGNATURE_MISSING_OR_HASH_MISMATCH.to_string(),
            "80300001"
        );
        assert_eq!(ExtendedResultCode::NONE.to_string(), "00000000");
    }

    #[test]
    fn exit_status_maps_like_adu() {
        let e = ExtendedResultCode::exit_status(erc::SCRIPT_EXIT_STATUS_BASE, 3);
        assert_eq!(e.raw(), 0x3050_1003);
    }

    #[test]
    fn sandstep_codes_print_as_the_readme_lists_them() {
        assert_eq!(erc::SANDBOX_TIME_LIMIT.to_string(), "B0000001");
        assert_eq!(erc::SANDBOX_INVALID_RESULT.to_string(), "B000000A");
        assert_eq!(erc::WORKFLOW_MANIFEST_INVALID.to_string(), "B0100001");
        assert_eq!(
            erc::WORKFLOW_NOT_INSTALLED_AFTER_FOLLOWUP.to_string(),
            "B0100008"
        );
        assert_eq!(erc::SDK_INVALID_PROPERTIES.to_string(), "BA000001");
        assert_eq!(erc::FILE_HASH_MISMATCH.to_string(), "4000000C");
    }

    #[test]
    fn reboot_and_restart_codes_have_followups() {
        assert_eq!(Followup::of(605), Followup::ImmediateReboot);
        assert_eq!(Followup::of(706), Followup::Reboot);
        assert_eq!(Followup::of(707), Followup::ImmediateAgentRestart);
        assert_eq!(Followup::of(1108), Followup::AgentRestart);
        assert_eq!(Followup::of(700), Followup::None);
        assert!(Followup::of(605).is_immediate());
        assert!(!Followup::of(606).is_immediate());
    }
}
