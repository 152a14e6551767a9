//! A test guest that imports the `process` capability. Its install runs the program named in
//! `handlerProperties` and reports the output as JSON in the result details, or the refusal.

use sandstep_sdk::process::{self, Command};
use sandstep_sdk::{done, export_handler, Context, Handler, Outcome};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
enum Op {
    Run {
        program: String,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        cwd: Option<String>,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    HostPath {
        path: String,
    },
}

#[derive(Default)]
struct ProcessProbe;

impl Handler for ProcessProbe {
    fn is_installed(&mut self, _: &Context) -> Outcome<done::IsInstalled> {
        Ok(done::IsInstalled::NotInstalled.into())
    }

    fn install(&mut self, ctx: &Context) -> Outcome<done::Installed> {
        match ctx.properties::<Op>()? {
            Op::Run {
                program,
                args,
                cwd,
                timeout_ms,
            } => {
                let mut cmd = Command::new(program).args(args);
                if let Some(c) = cwd {
                    cmd = cmd.cwd(c);
                }
                if let Some(t) = timeout_ms {
                    cmd = cmd.timeout(std::time::Duration::from_millis(t));
                }
                let out = cmd.run()?;
                let report = serde_json::json!({
                    "exit_code": out.exit_code,
                    "signal": out.signal,
                    "timed_out": out.timed_out,
                    "stdout": out.stdout,
                    "stderr": out.stderr,
                    "truncated": out.truncated,
                });
                Ok(done::Installed::Success.with_details(report.to_string()))
            }
            Op::HostPath { path } => {
                let host = process::host_path(&path)?;
                Ok(done::Installed::Success.with_details(host))
            }
        }
    }

    fn apply(&mut self, _: &Context) -> Outcome<done::Applied> {
        Ok(done::Applied::Success.into())
    }
}

export_handler!(ProcessProbe);
