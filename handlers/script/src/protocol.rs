//! Running a step's script the way ADU's script-driven handlers do, shared by
//! `microsoft/script:1` (ADU's `script_handler.cpp`) and `microsoft/swupdate:2` (ADU's
//! `swupdate_handler_v2.cpp`): the command line, the run through the process capability, and
//! reading the result file the script leaves. Where the two handlers differ is a [`Variant`].

use sandstep_model::script_protocol::{action_option, split_arguments, substitute_tokens};
use sandstep_model::script_result::ScriptResult;
use sandstep_sdk::codes::ExtendedResultCode;
use sandstep_sdk::process::{self, Command, Output};
use sandstep_sdk::{log, Action, Context, Failure, StepFile, StepResult};
use serde::Deserialize;
use step_rules::script::ScriptRule;

/// The handler properties both handlers read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Props {
    #[serde(default)]
    pub script_file_name: Option<String>,
    #[serde(default)]
    pub swu_file_name: Option<String>,
    #[serde(default)]
    pub arguments: String,
    #[serde(default)]
    pub installed_criteria: Option<String>,
    #[serde(default)]
    pub api_version: Option<String>,
}

/// Where the two handlers differ.
pub struct Variant {
    /// The result file's name in the work folder for an action.
    pub result_file: fn(Action) -> String,
    /// `scriptFileName` missing; not one of the step's files; no (parsable) result file.
    pub missing_script_name: ExtendedResultCode,
    pub script_not_among_files: ExtendedResultCode,
    pub result_file_missing: ExtendedResultCode,
    /// Base of the code an exit status becomes.
    pub exit_status_base: ExtendedResultCode,
    /// A failure the script reports with erc 0 gets this code (script:1), or is kept (swupdate:2).
    pub failed_without_erc: Option<ExtendedResultCode>,
    /// Whether a result file the script left decides the result even when it exited non-zero
    /// (swupdate:2 parses it whatever the exit status; script:1 fails on the status).
    pub result_file_over_exit_status: bool,
    /// Arguments between the action option and `handlerProperties.arguments`.
    pub leading_args: fn(&Context, &Props) -> Result<Vec<String>, Failure>,
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

/// The step file `scriptFileName` names.
fn script_file<'a>(ctx: &'a Context, props: &Props, v: &Variant) -> Result<&'a StepFile, Failure> {
    // By the rules `sandstep manifest new` applies too (step-rules).
    let names: Vec<&str> = ctx.files().iter().map(|f| f.name.as_str()).collect();
    let name = step_rules::script::script_file(props.script_file_name.as_deref(), &names).map_err(
        |rule| {
            let code = match rule {
                ScriptRule::NoScript => v.missing_script_name,
                ScriptRule::NotAmongFiles { .. } => v.script_not_among_files,
            };
            Failure::new(code, rule.to_string())
        },
    )?;
    Ok(ctx
        .files()
        .iter()
        .find(|f| f.name == name)
        .expect("the rule found it among the step's files"))
}

/// Runs the script for `action` and reads the result it left.
pub fn run(ctx: &Context, action: Action, v: &Variant) -> Result<StepResult, Failure> {
    let props: Props = ctx.properties()?;
    let script = script_file(ctx, &props, v)?;
    let result_name = (v.result_file)(action);
    let result_guest = ctx.work_path(&result_name);
    let _ = std::fs::remove_file(&result_guest);

    let mut args = vec![process::host_path(script.path())?];
    args.extend(action_option(props.api_version.as_deref(), action));
    args.extend((v.leading_args)(ctx, &props)?);
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
    let exit_failure = exit_failure(&script.name, &out, v);
    if let Some(f) = &exit_failure {
        if !v.result_file_over_exit_status || out.timed_out {
            return Err(f.clone());
        }
    }
    read_result(
        &script.name,
        &result_name,
        &result_guest,
        &out,
        v,
        exit_failure,
    )
}

/// How the script's end fails the action, if it does: a time-out, a signal, a non-zero status.
fn exit_failure(script: &str, out: &Output, v: &Variant) -> Option<Failure> {
    if out.timed_out {
        return Some(Failure::new(
            sandstep_sdk::codes::erc::SCRIPT_TIMED_OUT,
            format!("{script} timed out; last output:\n{}", out.tail(5)),
        ));
    }
    let (status, what) = match out.exit_code {
        Some(0) => return None,
        Some(s) => (s, format!("exited with status {s}")),
        None => {
            let sig = out.signal.unwrap_or(0);
            (128 + sig, format!("was killed by signal {sig}"))
        }
    };
    Some(Failure::new(
        ExtendedResultCode::exit_status(v.exit_status_base, status),
        format!("{script} {what}; last output:\n{}", out.tail(5)),
    ))
}

/// The result file's verdict (or, without one, the exit's failure or the missing file's).
fn read_result(
    script: &str,
    result_name: &str,
    result_guest: &std::path::Path,
    out: &Output,
    v: &Variant,
    exit_failure: Option<Failure>,
) -> Result<StepResult, Failure> {
    let parsed = std::fs::read(result_guest)
        .map_err(|e| format!("no result file {result_name}: {e}"))
        .and_then(|b| {
            ScriptResult::parse(&b).map_err(|e| format!("result file {result_name} {e}"))
        });
    let r = match parsed {
        Ok(r) => r,
        Err(why) => {
            return Err(exit_failure.unwrap_or_else(|| {
                Failure::new(
                    v.result_file_missing,
                    format!("{script}: {why}; last output:\n{}", out.tail(5)),
                )
            }))
        }
    };
    let mut erc_value = r.extended_result_code;
    if let Some(code) = v.failed_without_erc {
        if r.result_code <= 0 && erc_value == 0 {
            erc_value = code.raw();
        }
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
