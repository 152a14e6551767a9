//! A test guest that does what `handlerProperties.op` says, in whichever action is called.
//!
//! It imports only the base world (log, progress, WASI filesystem), so no capability grant is
//! needed. Each op is used by a test in `runtime/tests/all/sandbox.rs`.

use sandstep_sdk::codes::result;
use sandstep_sdk::{export_handler, Context, Failure, Handler, Outcome, StepResult};
use serde::Deserialize;
use std::io::Write;

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
enum Op {
    /// Read every payload file and write a summary to /work/summary.txt.
    Summarize,
    /// Spin forever.
    Loop,
    /// Allocate and touch memory until stopped.
    Alloc,
    /// Read a file and report its size.
    Read { path: String },
    /// Create or overwrite a file.
    Write { path: String },
    /// Panic with a known message.
    Panic,
    /// Parse properties that need a field the test leaves out.
    NeedsField {
        #[allow(dead_code)]
        required_number: u32,
    },
    /// Answer is-installed with 900.
    Installed,
    /// Sleep for a while (to be cancelled).
    Sleep { ms: u64 },
    /// Return a given result.
    Return {
        code: i32,
        erc: i32,
        details: String,
    },
}

#[derive(Default)]
struct Probe;

fn run(ctx: &Context, success: i32) -> Outcome {
    let op: Op = ctx.properties()?;
    match op {
        Op::Summarize => {
            let mut out = std::fs::File::create(ctx.work_path("summary.txt"))?;
            for file in ctx.files() {
                let bytes = std::fs::read(file.path())
                    .map_err(|e| Failure::from(e).context(file.path().display()))?;
                writeln!(out, "{} {} {}", file.id, file.name, bytes.len())?;
            }
            sandstep_sdk::log::progress(100, "summarized");
            Ok(StepResult::new(success)
                .with_details(format!("summarized {} files", ctx.files().len())))
        }
        Op::Loop => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Op::Alloc => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Op::Read { path } => {
            let bytes = std::fs::read(&path).map_err(|e| Failure::from(e).context(&path))?;
            Ok(StepResult::new(success)
                .with_details(format!("read {} bytes from {path}", bytes.len())))
        }
        Op::Write { path } => {
            std::fs::write(&path, b"probe was here")
                .map_err(|e| Failure::from(e).context(&path))?;
            Ok(StepResult::new(success).with_details(format!("wrote {path}")))
        }
        Op::Panic => panic!("probe panicked on purpose"),
        Op::NeedsField { .. } => Ok(StepResult::new(success)),
        Op::Installed => Ok(StepResult::new(success)),
        Op::Sleep { ms } => {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(StepResult::new(success).with_details(format!("slept {ms} ms")))
        }
        Op::Return { code, erc, details } => Ok(StepResult {
            result_code: code,
            extended_result_code: erc,
            result_details: details,
        }),
    }
}

impl Handler for Probe {
    fn is_installed(&mut self, ctx: &Context) -> Outcome {
        match ctx.properties::<Op>() {
            Ok(Op::Installed) => Ok(StepResult::new(result::IS_INSTALLED_INSTALLED)),
            Ok(Op::Return { .. }) => run(ctx, result::IS_INSTALLED_INSTALLED),
            _ => Ok(StepResult::new(result::IS_INSTALLED_NOT_INSTALLED)),
        }
    }
    fn install(&mut self, ctx: &Context) -> Outcome {
        run(ctx, result::INSTALL_SUCCESS)
    }
    fn apply(&mut self, ctx: &Context) -> Outcome {
        run(ctx, result::APPLY_SUCCESS)
    }
}

export_handler!(Probe);
