//! `microsoft/script:1`: runs a step's script with ADU's script protocol.
//!
//! As ADU's `script_handler.cpp`: handlerProperties `scriptFileName` (one of the step's files),
//! `arguments` (split on single spaces, quotes meaning nothing; component tokens replaced),
//! `installedCriteria`, `apiVersion` (absent or "1.0": `--action-<name>`, "1.1": `--action
//! <name>`, anything else: no action option). Cancel does not run the script (ADU's answers 800).
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

use sandstep_model::script_protocol::{
    action_option, result_file_name, split_arguments, substitute_tokens,
};
use sandstep_model::script_result::ScriptResult;
use sandstep_sdk::codes::{erc, ExtendedResultCode};
use sandstep_sdk::process::{self, Command};
use sandstep_sdk::{
    done, export_handler, log, Action, Context, Done, Failure, Handler, Outcome, StepResult,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Props {
    #[serde(default)]
    script_file_name: Option<String>,
    #[serde(default)]
    arguments: String,
    #[serde(default)]
    installed_criteria: Option<String>,
    #[serde(default)]
    api_version: Option<String>,
}

fn interpreter(script: &std::path::Path) -> &'static str {
    let first = std::fs::read(script)
        .ok()
        .and_then(|b| {
            b.split(|&c| c == b'\n')
                .next()
                .map(|l| String::from_utf8_lossy(l).into_owned())
        })
        .unwrap_or_default();
    if first.starts_with("#!") && first.contains("bash") {
        "/bin/bash"
    } else {
        "/bin/sh"
    }
}

/// The step file `scriptFileName` names (ADU: `Script_Handler_DownloadPrimaryScriptFile`).
fn script_file<'a>(ctx: &'a Context, props: &Props) -> Result<&'a sandstep_sdk::StepFile, Failure> {
    let name = props
        .script_file_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Failure::new(
                erc::SCRIPT_MISSING_SCRIPT_FILE_NAME,
                "handlerProperties.scriptFileName is missing or empty",
            )
        })?;
    ctx.files().iter().find(|f| f.name == name).ok_or_else(|| {
        Failure::new(
            erc::SCRIPT_NOT_AMONG_STEP_FILES,
            format!(
                "scriptFileName `{name}` is not one of the step's files ({})",
                ctx.files()
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

fn run(ctx: &Context, action: Action) -> Result<StepResult, Failure> {
    let props: Props = ctx.properties()?;
    let script = script_file(ctx, &props)?;
    let result_name = result_file_name(action);
    let result_guest = ctx.work_path(&result_name);
    let _ = std::fs::remove_file(&result_guest);

    let mut args = vec![process::host_path(script.path())?];
    args.extend(action_option(props.api_version.as_deref(), action));
    args.extend(substitute_tokens(
        split_arguments(&props.arguments),
        ctx.component()
            .map(|c| c as &dyn sandstep_model::script_protocol::ComponentFields),
    ));
    args.push("--work-folder".into());
    args.push(process::host_path(ctx.work_path(""))?);
    args.push("--result-file".into());
    args.push(process::host_path(&result_guest)?);
    if let Some(ic) = props
        .installed_criteria
        .as_deref()
        .or(ctx.installed_criteria())
        .filter(|ic| !ic.is_empty())
    {
        args.push("--installed-criteria".into());
        args.push(ic.to_owned());
    }

    log::info(&format!(
        "running {} --action-{}",
        script.name,
        action.name()
    ));
    let out = Command::new(interpreter(script.path())).args(args).run()?;
    if out.timed_out {
        return Err(Failure::new(
            erc::SCRIPT_TIMED_OUT,
            format!("{} timed out; last output:\n{}", script.name, out.tail(5)),
        ));
    }
    match out.exit_code {
        Some(0) => {}
        Some(status) => {
            return Err(Failure::new(
                ExtendedResultCode::exit_status(erc::SCRIPT_EXIT_STATUS_BASE, status),
                format!(
                    "{} exited with status {status}; last output:\n{}",
                    script.name,
                    out.tail(5)
                ),
            ))
        }
        None => {
            return Err(Failure::new(
                ExtendedResultCode::exit_status(
                    erc::SCRIPT_EXIT_STATUS_BASE,
                    128 + out.signal.unwrap_or(0),
                ),
                format!(
                    "{} was killed by signal {}; last output:\n{}",
                    script.name,
                    out.signal.unwrap_or(0),
                    out.tail(5)
                ),
            ))
        }
    }
    let parsed = std::fs::read(&result_guest)
        .map_err(|e| format!("no result file {result_name}: {e}"))
        .and_then(|b| {
            ScriptResult::parse(&b).map_err(|e| format!("result file {result_name} {e}"))
        });
    let r = match parsed {
        Ok(r) => r,
        Err(why) => {
            return Err(Failure::new(
                erc::SCRIPT_RESULT_FILE_MISSING_OR_INVALID,
                format!("{}: {why}; last output:\n{}", script.name, out.tail(5)),
            ))
        }
    };
    let mut erc_value = r.extended_result_code;
    if r.result_code <= 0 && erc_value == 0 {
        erc_value = erc::SCRIPT_FAILED_WITHOUT_ERC.raw();
    }
    let mut details = r.result_details.unwrap_or_default();
    if r.result_code <= 0 {
        let tail = out.tail(5);
        if !tail.is_empty() {
            details = format!("{details}\nlast output:\n{tail}");
        }
    }
    Ok(StepResult {
        result_code: r.result_code,
        extended_result_code: erc_value,
        result_details: details,
    })
}

#[derive(Default)]
struct Script;

impl Handler for Script {
    fn is_installed(&mut self, ctx: &Context) -> Outcome<done::IsInstalled> {
        run(ctx, Action::IsInstalled).map(Done::relayed)
    }
    fn download(&mut self, ctx: &Context) -> Outcome<done::Downloaded> {
        run(ctx, Action::Download).map(Done::relayed)
    }
    fn install(&mut self, ctx: &Context) -> Outcome<done::Installed> {
        run(ctx, Action::Install).map(Done::relayed)
    }
    fn apply(&mut self, ctx: &Context) -> Outcome<done::Applied> {
        run(ctx, Action::Apply).map(Done::relayed)
    }
    /// ADU's script handler does not run the script to cancel (`ScriptHandlerImpl::Cancel`
    /// requests the workflow's cancellation and answers 800); the host has already stopped the
    /// running action.
    fn cancel(&mut self, _ctx: &Context) -> Outcome<done::Cancelled> {
        Ok(done::Cancelled::Success.into())
    }
}

export_handler!(Script);
