//! `microsoft/script:1`: runs a step's script with ADU's script protocol.
//!
//! handlerProperties: `scriptFileName` (one of the step's files), `arguments` (a string; component
//! tokens replaced, shell-style quotes honoured), `installedCriteria`, `apiVersion` ("1.0":
//! `--action-<name>`, "1.1": `--action <name>`).
//!
//! Command line: `<interpreter> <payload>/<script> <action option> <arguments...> --work-folder
//! <work> --result-file <work>/action_<action>_aduc_result.json [--installed-criteria <ic>]`. The
//! interpreter is `/bin/bash` when the script's first line asks for bash, else `/bin/sh`; the
//! program runs through the process capability (cleared environment, cwd = the step's work folder,
//! time limit, captured output). The result file decides the result; a non-zero exit status is a
//! failure with erc `0x30500000 | (0x1000 + status)`, a missing or unparsable result file one with
//! erc `0x30500205`, and a failure that reports erc 0 gets `0x30500206`. Backup and restore are
//! not part of ADU's protocol: 1001 and 1101.

use sandstep_model::script_result::ScriptResult;
use sandstep_sdk::codes::{erc, ExtendedResultCode, Facility};
use sandstep_sdk::process::{self, Command};
use sandstep_sdk::{export_handler, log, Action, Context, Failure, Handler, Outcome, StepResult};
use serde::Deserialize;

/// The script named by scriptFileName is not among the step's files.
const ERC_SCRIPT_NOT_IN_STEP: ExtendedResultCode =
    ExtendedResultCode::new(Facility::ContentHandler, 5, 0x202);
/// The arguments string does not parse (unbalanced quotes).
const ERC_BAD_ARGUMENTS: ExtendedResultCode =
    ExtendedResultCode::new(Facility::ContentHandler, 5, 0x203);
/// The script was killed at its time limit.
const ERC_TIMED_OUT: ExtendedResultCode =
    ExtendedResultCode::new(Facility::ContentHandler, 5, 0x204);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Props {
    script_file_name: String,
    #[serde(default)]
    arguments: String,
    #[serde(default)]
    installed_criteria: Option<String>,
    #[serde(default = "default_api")]
    api_version: String,
}

fn default_api() -> String {
    "1.0".into()
}

/// Replaces ADU's component tokens in the (already split) arguments.
fn substitute(args: Vec<String>, ctx: &Context) -> Vec<String> {
    let c = ctx.component();
    let field = |f: fn(&sandstep_sdk::Component) -> &str| c.map(f).unwrap_or("n/a").to_owned();
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let v = match a.as_str() {
            "--component-id-val" => field(|c| &c.id),
            "--component-name-val" => field(|c| &c.name),
            "--component-manufacturer-val" => field(|c| &c.manufacturer),
            "--component-model-val" => field(|c| &c.model),
            "--component-version-val" => field(|c| &c.version),
            "--component-group-val" => field(|c| &c.group),
            "--component-prop-val" => {
                let name = it.next().unwrap_or_default();
                c.and_then(|c| c.property(&name))
                    .unwrap_or("n/a")
                    .to_owned()
            }
            _ => a,
        };
        out.push(v);
    }
    out
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

fn run(ctx: &Context, action: Action) -> Outcome {
    let props: Props = ctx.properties()?;
    let script = ctx
        .files()
        .iter()
        .find(|f| f.name == props.script_file_name)
        .ok_or_else(|| {
            Failure::new(
                ERC_SCRIPT_NOT_IN_STEP,
                format!(
                    "scriptFileName `{}` is not one of the step's files ({})",
                    props.script_file_name,
                    ctx.files()
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
    let user_args = shlex::split(&props.arguments).ok_or_else(|| {
        Failure::new(
            ERC_BAD_ARGUMENTS,
            format!(
                "handlerProperties.arguments has unbalanced quotes: {}",
                props.arguments
            ),
        )
    })?;
    let result_name = format!("action_{}_aduc_result.json", action.file_stem());
    let result_guest = ctx.work_path(&result_name);
    let _ = std::fs::remove_file(&result_guest);

    let mut args = vec![process::host_path(script.path())?];
    if props.api_version == "1.1" {
        args.push("--action".into());
        args.push(action.name().into());
    } else {
        args.push(format!("--action-{}", action.name()));
    }
    args.extend(substitute(user_args, ctx));
    args.push("--work-folder".into());
    args.push(process::host_path(ctx.work_path(""))?);
    args.push("--result-file".into());
    args.push(process::host_path(&result_guest)?);
    if let Some(ic) = props
        .installed_criteria
        .as_deref()
        .or(ctx.installed_criteria())
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
            ERC_TIMED_OUT,
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
    fn is_installed(&mut self, ctx: &Context) -> Outcome {
        run(ctx, Action::IsInstalled)
    }
    fn download(&mut self, ctx: &Context) -> Outcome {
        run(ctx, Action::Download)
    }
    fn install(&mut self, ctx: &Context) -> Outcome {
        run(ctx, Action::Install)
    }
    fn apply(&mut self, ctx: &Context) -> Outcome {
        run(ctx, Action::Apply)
    }
    fn cancel(&mut self, ctx: &Context) -> Outcome {
        run(ctx, Action::Cancel)
    }
}

export_handler!(Script);
