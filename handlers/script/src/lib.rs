//! ADU's script-driven handlers, in the sandbox: `microsoft/script:1` and `microsoft/swupdate:2`.
//!
//! `microsoft/script:1`, as ADU's `script_handler.cpp`: handlerProperties `scriptFileName` (one
//! of the step's files), `arguments` (split on single spaces, quotes meaning nothing; component
//! tokens replaced), `installedCriteria`, `apiVersion` (absent or "1.0": `--action-<name>`,
//! "1.1": `--action <name>`, anything else: no action option). Cancel does not run the script
//! (ADU's answers 800).
//!
//! Command line: `<interpreter> <payload>/<script> <action option> <arguments...> --work-folder
//! <work> --result-file <work>/action_<action>_aduc_result.json [--installed-criteria <ic>]`, the
//! work folder holding copies of the step's files (policy `payload-in-work`). The
//! interpreter is `/bin/bash` when the script's first line asks for bash, else `/bin/sh`; the
//! program runs through the process capability (cleared environment, cwd = the step's work folder,
//! time limit, captured output). The result file decides the result; a non-zero exit status is a
//! failure with erc `0x30500000 | (0x1000 + status)`, a missing or unparsable result file one with
//! erc `0x30500205`, and a failure that reports erc 0 gets `0x30500206`. Backup and restore are
//! not part of ADU's protocol: 1001 and 1101.
//!
//! `microsoft/swupdate:2` is the same protocol with ADU's SWUpdate differences ([`swupdate`]).

mod protocol;
mod swupdate;

use protocol::Variant;
use sandstep_model::script_protocol::result_file_name;
use sandstep_sdk::codes::erc;
use sandstep_sdk::{done, export_handler, Action, Context, Done, Handler, Outcome};

/// `microsoft/script:1`'s side of the protocol.
const SCRIPT: Variant = Variant {
    result_file: result_file_name,
    missing_script_name: erc::SCRIPT_MISSING_SCRIPT_FILE_NAME,
    script_not_among_files: erc::SCRIPT_NOT_AMONG_STEP_FILES,
    result_file_missing: erc::SCRIPT_RESULT_FILE_MISSING_OR_INVALID,
    exit_status_base: erc::SCRIPT_EXIT_STATUS_BASE,
    failed_without_erc: Some(erc::SCRIPT_FAILED_WITHOUT_ERC),
    result_file_over_exit_status: false,
    leading_args: |_, _| Ok(Vec::new()),
};

fn is_swupdate(ctx: &Context) -> bool {
    ctx.handler_id().starts_with("microsoft/swupdate:")
}

/// The protocol side of the id the step names.
fn variant(ctx: &Context) -> &'static Variant {
    if is_swupdate(ctx) {
        &swupdate::V2
    } else {
        &SCRIPT
    }
}

#[derive(Default)]
struct Script;

impl Handler for Script {
    fn is_installed(&mut self, ctx: &Context) -> Outcome<done::IsInstalled> {
        protocol::run(ctx, Action::IsInstalled, variant(ctx)).map(Done::relayed)
    }
    fn download(&mut self, ctx: &Context) -> Outcome<done::Downloaded> {
        if is_swupdate(ctx) {
            return swupdate::download(ctx).map(Done::relayed);
        }
        protocol::run(ctx, Action::Download, &SCRIPT).map(Done::relayed)
    }
    fn install(&mut self, ctx: &Context) -> Outcome<done::Installed> {
        protocol::run(ctx, Action::Install, variant(ctx)).map(Done::relayed)
    }
    fn apply(&mut self, ctx: &Context) -> Outcome<done::Applied> {
        protocol::run(ctx, Action::Apply, variant(ctx)).map(Done::relayed)
    }
    fn backup(&mut self, ctx: &Context) -> Outcome<done::BackedUp> {
        if is_swupdate(ctx) {
            // ADU: `SWUpdateHandlerImpl::Backup`, a no-op that succeeds.
            return Ok(done::BackedUp::Success.into());
        }
        Ok(done::BackedUp::Unsupported.into())
    }
    fn restore(&mut self, ctx: &Context) -> Outcome<done::Restored> {
        if is_swupdate(ctx) {
            return swupdate::restore(ctx).map(Done::relayed);
        }
        Ok(done::Restored::Unsupported.into())
    }
    /// ADU's script handler does not run the script to cancel (`ScriptHandlerImpl::Cancel`
    /// requests the workflow's cancellation and answers 800); the host has already stopped the
    /// running action. So does its SWUpdate handler (`SWUpdateHandlerImpl::Cancel`).
    fn cancel(&mut self, _ctx: &Context) -> Outcome<done::Cancelled> {
        Ok(done::Cancelled::Success.into())
    }
}

export_handler!(Script);
