//! `microsoft/swupdate:2`: ADU's SWUpdate handler v2 (`swupdate_handler_v2.cpp`), the script
//! protocol with these differences, each as ADU's handler does it:
//!
//! - `handlerProperties.swuFileName` is required (`PrepareCommandArguments`: erc `0x30100008`),
//!   and the script gets `--swu-file <work>/<swuFileName>` right after the action option.
//! - One result file for every action, `<work>/aduc_result.json` (`SWUpdateHandler_PerformAction`),
//!   read whatever the script's exit status: a non-zero status is a failure with erc
//!   `0x30100000 | (0x1000 + status)` unless the script left a result file, which then decides;
//!   without one, erc `0x30100205`.
//! - download needs the script and at least one more file (`Download`: erc `0x30100103`), answers
//!   503 when is-installed finds the update installed, and runs the script's download action
//!   otherwise.
//! - backup does nothing and succeeds (1000); restore runs the script's cancel action, and succeeds
//!   (1100) only when the script answers 800 (`Restore`, `CancelApply`), else erc `0x20000003`.
//!
//! ADU also appends the key/value pairs of `/etc/adu/du-swupdate-handler-config.json` to the
//! command line; a handler here reads no host configuration, so such options go in
//! `handlerProperties.arguments` (signed with the manifest) instead.

use crate::protocol::{self, Props, Variant};
use sandstep_sdk::codes::{erc, result};
use sandstep_sdk::{Action, Context, Failure, StepResult};

/// The result file of every action.
const RESULT_FILE: &str = "aduc_result.json";

pub const V2: Variant = Variant {
    result_file: |_| RESULT_FILE.to_owned(),
    missing_script_name: erc::SWUPDATE_MISSING_SCRIPT_FILE_NAME,
    script_not_among_files: erc::SWUPDATE_SCRIPT_NOT_AMONG_STEP_FILES,
    result_file_missing: erc::SWUPDATE_RESULT_FILE_MISSING_OR_INVALID,
    exit_status_base: erc::SWUPDATE_EXIT_STATUS_BASE,
    failed_without_erc: None,
    result_file_over_exit_status: true,
    leading_args: swu_file,
};

/// `--swu-file <work>/<swuFileName>`.
fn swu_file(ctx: &Context, props: &Props) -> Result<Vec<String>, Failure> {
    // ADU joins the name to the work folder as given; a name that leaves it is refused here
    // (step-rules, as `sandstep manifest new` refuses it).
    let name = step_rules::swupdate::swu_file_name(props.swu_file_name.as_deref())
        .map_err(|rule| Failure::new(erc::SWUPDATE_MISSING_SWU_FILE_NAME, rule.to_string()))?;
    Ok(vec![
        "--swu-file".to_owned(),
        sandstep_sdk::process::host_path(ctx.work_path(name))?,
    ])
}

/// ADU's `SWUpdateHandlerImpl::Download`.
pub fn download(ctx: &Context) -> Result<StepResult, Failure> {
    step_rules::swupdate::v2_file_count(ctx.files().len())
        .map_err(|rule| Failure::new(erc::SWUPDATE_WRONG_FILE_COUNT, rule.to_string()))?;
    // Runs the script's is-installed, which also finds the script among the step's files.
    let installed = protocol::run(ctx, Action::IsInstalled, &V2)?;
    if installed.result_code == result::IS_INSTALLED_INSTALLED {
        return Ok(StepResult::new(
            result::DOWNLOAD_SKIPPED_UPDATE_ALREADY_INSTALLED,
        ));
    }
    protocol::run(ctx, Action::Download, &V2)
}

/// ADU's `SWUpdateHandlerImpl::Restore`: the script's cancel action undoes what was applied.
pub fn restore(ctx: &Context) -> Result<StepResult, Failure> {
    let cancelled = protocol::run(ctx, Action::Cancel, &V2)?;
    if cancelled.result_code == result::CANCEL_SUCCESS {
        return Ok(StepResult::new(result::RESTORE_SUCCESS));
    }
    Err(Failure::new(
        erc::RESTORE_FAILED,
        format!(
            "the script could not cancel what was applied: result {}, erc {:#x}; {}",
            cancelled.result_code, cancelled.extended_result_code, cancelled.result_details
        ),
    ))
}
