//! A test guest that does what `handlerProperties.op` says, in whichever action is called.
//!
//! It imports only the base world (log, progress, WASI filesystem), so no capability grant is
//! needed. Each op is used by a test in `gateway/tests/all/sandbox.rs`.

use sandstep_sdk::codes::result;
use sandstep_sdk::{done, export_handler, Context, Done, Failure, Handler, Outcome, StepResult};
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
    /// Write `total_kib` KiB into `/work/fill` in 64 KiB chunks (a disk filler), then sleep
    /// `then_sleep_ms` (to be caught by the quota's poll rather than its final check).
    FillWork {
        total_kib: u64,
        /// The folder to fill (`/work` unless said).
        #[serde(default = "default_fill_dir")]
        dir: String,
        #[serde(default)]
        then_sleep_ms: u64,
        /// Directories made in /work first (to attack the quota's walk).
        #[serde(default)]
        dirs_first: u32,
    },
    /// Open `path` `count` times, holding every handle, then report how many it got.
    OpenMany { path: String, count: u32 },
    /// Call log `logs` times and progress `progress` times, with `len`-byte messages.
    Flood { logs: u32, progress: u32, len: u32 },
    /// Report progress 10, 20, ... up to `last` percent at once, and return.
    Steps { last: u8 },
    /// Return a given result.
    Return {
        code: i32,
        erc: i32,
        details: String,
    },
    /// A well-behaved stateful step: install and apply append to `/state/<name>.log`, apply
    /// leaves `/state/<name>.done` (what is-installed checks) and returns `apply_code`; `fail`
    /// names an action that fails instead. `is_installed_code` and `install_code`, when given,
    /// are what is-installed (before anything is done) and install answer.
    Stateful {
        name: String,
        #[serde(default = "default_apply")]
        apply_code: i32,
        #[serde(default)]
        is_installed_code: Option<i32>,
        #[serde(default)]
        install_code: Option<i32>,
        #[serde(default)]
        fail: Option<String>,
        #[serde(default)]
        sleep_ms: u64,
    },
}

fn default_fill_dir() -> String {
    "/work".into()
}

fn default_apply() -> i32 {
    result::APPLY_SUCCESS
}

fn log_line(ctx: &Context, name: &str, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ctx.state_path(format!("{name}.log")))?;
    writeln!(f, "{line}")
}

/// A result with any code, as a test asks for (the host must refuse what is not ADU's).
type Raw = Result<StepResult, Failure>;

fn stateful(ctx: &Context, action: &str) -> Raw {
    let Op::Stateful {
        name,
        apply_code,
        is_installed_code,
        install_code,
        fail,
        sleep_ms,
    } = ctx.properties()?
    else {
        return Ok(StepResult::new(result::SUCCESS));
    };
    let done = ctx.state_path(format!("{name}.done"));
    if action == "is-installed" {
        let code = if done.exists() {
            result::IS_INSTALLED_INSTALLED
        } else {
            is_installed_code.unwrap_or(result::IS_INSTALLED_NOT_INSTALLED)
        };
        return Ok(StepResult::new(code));
    }
    log_line(ctx, &name, action)?;
    if sleep_ms > 0 && (action == "install" || action == "apply") {
        std::thread::sleep(std::time::Duration::from_millis(sleep_ms));
    }
    if fail.as_deref() == Some(action) {
        return Ok(StepResult {
            result_code: result::FAILURE,
            extended_result_code: 0x3200_0042,
            result_details: format!("{name}: {action} failed on purpose"),
        });
    }
    let code = match action {
        "download" => result::DOWNLOAD_SUCCESS,
        "backup" => result::BACKUP_SUCCESS,
        "install" => install_code.unwrap_or(result::INSTALL_SUCCESS),
        "apply" => {
            std::fs::write(&done, b"")?;
            apply_code
        }
        "restore" => result::RESTORE_SUCCESS,
        "cancel" => result::CANCEL_SUCCESS,
        _ => result::SUCCESS,
    };
    Ok(StepResult::new(code))
}

fn is_stateful(ctx: &Context) -> bool {
    matches!(ctx.properties::<Op>(), Ok(Op::Stateful { .. }))
}

#[derive(Default)]
struct Probe;

fn run(ctx: &Context, success: i32) -> Raw {
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
        Op::FillWork {
            total_kib,
            dir,
            then_sleep_ms,
            dirs_first,
        } => {
            for i in 0..dirs_first {
                std::fs::create_dir(format!("{dir}/d{i}"))?;
            }
            let mut f = std::fs::File::create(format!("{dir}/fill"))?;
            let chunk = vec![0x5au8; 64 << 10];
            let mut written = 0u64;
            while written < total_kib << 10 {
                f.write_all(&chunk)?;
                written += chunk.len() as u64;
            }
            f.sync_all()?;
            std::thread::sleep(std::time::Duration::from_millis(then_sleep_ms));
            Ok(StepResult::new(success).with_details(format!("wrote {written} bytes")))
        }
        Op::OpenMany { path, count } => {
            let mut held = Vec::new();
            for _ in 0..count {
                held.push(std::fs::File::open(&path)?);
            }
            Ok(StepResult::new(success).with_details(format!("holds {} handles", held.len())))
        }
        Op::Flood {
            logs,
            progress,
            len,
        } => {
            let message = "x".repeat(len as usize);
            for _ in 0..logs {
                sandstep_sdk::log::info(&message);
            }
            for i in 0..progress {
                sandstep_sdk::log::progress((i % 100) as u8, &message);
            }
            sandstep_sdk::log::progress(100, "done");
            Ok(StepResult::new(success).with_details(format!("{logs} logs, {progress} progress")))
        }
        Op::Steps { last } => {
            for p in (10..=last).step_by(10) {
                sandstep_sdk::log::progress(p, &format!("step {p}"));
            }
            Ok(StepResult::new(success))
        }
        Op::Stateful { .. } => unreachable!("stateful ops are dispatched before run"),
        Op::Return { code, erc, details } => Ok(StepResult {
            result_code: code,
            extended_result_code: erc,
            result_details: details,
        }),
    }
}

impl Handler for Probe {
    fn is_installed(&mut self, ctx: &Context) -> Outcome<done::IsInstalled> {
        if is_stateful(ctx) {
            return stateful(ctx, "is-installed").map(Done::relayed);
        }
        match ctx.properties::<Op>() {
            Ok(Op::Installed) => Ok(done::IsInstalled::Installed.into()),
            Ok(Op::Return { .. }) => run(ctx, result::IS_INSTALLED_INSTALLED).map(Done::relayed),
            _ => Ok(done::IsInstalled::NotInstalled.into()),
        }
    }
    fn download(&mut self, ctx: &Context) -> Outcome<done::Downloaded> {
        if is_stateful(ctx) {
            return stateful(ctx, "download").map(Done::relayed);
        }
        Ok(done::Downloaded::Success.into())
    }
    fn backup(&mut self, ctx: &Context) -> Outcome<done::BackedUp> {
        if is_stateful(ctx) {
            return stateful(ctx, "backup").map(Done::relayed);
        }
        Ok(done::BackedUp::Unsupported.into())
    }
    fn install(&mut self, ctx: &Context) -> Outcome<done::Installed> {
        if is_stateful(ctx) {
            return stateful(ctx, "install").map(Done::relayed);
        }
        run(ctx, result::INSTALL_SUCCESS).map(Done::relayed)
    }
    fn apply(&mut self, ctx: &Context) -> Outcome<done::Applied> {
        if is_stateful(ctx) {
            return stateful(ctx, "apply").map(Done::relayed);
        }
        run(ctx, result::APPLY_SUCCESS).map(Done::relayed)
    }
    fn restore(&mut self, ctx: &Context) -> Outcome<done::Restored> {
        if is_stateful(ctx) {
            return stateful(ctx, "restore").map(Done::relayed);
        }
        Ok(done::Restored::Unsupported.into())
    }
    fn cancel(&mut self, ctx: &Context) -> Outcome<done::Cancelled> {
        if is_stateful(ctx) {
            return stateful(ctx, "cancel").map(Done::relayed);
        }
        Ok(done::Cancelled::Success.into())
    }
}

export_handler!(Probe);
