//! `sandstep run`: execute a deployment on this machine.

use super::common::{millis, sandbox, Common};
use anyhow::{bail, Context as _, Result};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sandstep::datadir::write_atomic;
use sandstep::workflow::events::{Event, Observer, UnitInfo};
use sandstep::workflow::{Deployer, Request};
use sandstep_model::deployment::{action, Deployment};
use sandstep_model::inventory::Inventory;
use sandstep_model::journal::{FileSource, Status};
use sandstep_model::results::ResultFile;
use sandstep_model::Action;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Exit statuses of `run`.
pub mod exit {
    pub const SUCCESS: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const REBOOT_REQUIRED: u8 = 3;
    pub const RESTART_REQUIRED: u8 = 4;
    pub const CANCELLED: u8 = 130;
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The update manifest (JSON). Not needed with --deployment.
    manifest: Option<PathBuf>,
    /// Where the files are: a directory holding them by fileName, or a base URL (URL = base +
    /// fileName). With --deployment, its fileUrls are used unless this is given.
    #[arg(long)]
    files: Option<String>,
    /// A deployment document (workflow, updateManifest, fileUrls) instead of a manifest file.
    #[arg(long, conflicts_with = "manifest")]
    deployment: Option<PathBuf>,
    /// Write the result file here (default: <data-dir>/results/<workflow>.json).
    #[arg(long)]
    result_file: Option<PathBuf>,
    /// The component inventory (JSON), for reference steps.
    #[arg(long)]
    components: Option<PathBuf>,
    /// The workflow id (default: derived from the manifest, so running again resumes).
    #[arg(long)]
    workflow_id: Option<String>,
    /// Run again even if this workflow already finished.
    #[arg(long)]
    force: bool,
    /// Print machine-readable events (JSON lines) on stdout instead of progress.
    #[arg(long)]
    json: bool,
    /// The manifest signature (a file holding the compact JWS), for a manifest file.
    #[arg(long, conflicts_with = "deployment")]
    signature: Option<PathBuf>,
    /// Run without a manifest signature. For development only: the manifest's origin is not
    /// verified.
    #[arg(long)]
    allow_unsigned: bool,
    /// Cancel the deployment when the first step's ACTION call begins (is-installed, download,
    /// backup, install, apply, restore), as an operator's cancel arriving then would: the call
    /// is stopped and the handler's `cancel` runs. For development (`dev run` passes it on).
    #[arg(long, value_name = "ACTION")]
    cancel_during: Option<Action>,
}

fn read_limited(path: &Path, limit: usize, what: &str) -> Result<String> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if meta.len() > limit as u64 {
        bail!(
            "{what} {} is {} bytes; the limit is {limit}",
            path.display(),
            meta.len()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

fn file_source(files: &str) -> Result<FileSource> {
    if files.starts_with("http://") || files.starts_with("https://") {
        let base = if files.ends_with('/') {
            files.to_owned()
        } else {
            format!("{files}/")
        };
        return Ok(FileSource::BaseUrl(base));
    }
    let p = Path::new(files.strip_prefix("file://").unwrap_or(files));
    let abs = std::fs::canonicalize(p)
        .with_context(|| format!("--files {files}: not a directory or URL"))?;
    if !abs.is_dir() {
        bail!("--files {files}: not a directory");
    }
    Ok(FileSource::Directory(abs.display().to_string()))
}

fn request(args: &RunArgs) -> Result<Request> {
    let inventory = match &args.components {
        Some(p) => Some(
            Inventory::parse(&read_limited(
                p,
                sandstep_model::inventory::MAX_INVENTORY_BYTES,
                "inventory",
            )?)
            .with_context(|| format!("{}", p.display()))?,
        ),
        None => None,
    };
    if let Some(doc) = &args.deployment {
        let text = read_limited(
            doc,
            sandstep_model::deployment::MAX_DEPLOYMENT_BYTES,
            "deployment document",
        )?;
        let d = Deployment::parse(&text).with_context(|| format!("{}", doc.display()))?;
        if d.workflow.action == action::CANCEL {
            bail!(
                "{}: workflow.action is 255 (cancel); `run` has nothing to cancel",
                doc.display()
            );
        }
        let source = match &args.files {
            Some(f) => file_source(f)?,
            None => FileSource::Urls(d.file_urls.clone()),
        };
        return Ok(Request {
            workflow_id: args.workflow_id.clone().unwrap_or(d.workflow.id),
            retry_timestamp: d.workflow.retry_timestamp,
            manifest: d.update_manifest.expect("checked by Deployment::parse"),
            source,
            inventory,
            force: args.force,
            signature: d.update_manifest_signature,
            allow_unsigned: args.allow_unsigned,
            root_key_package_url: d.root_key_package_url,
        });
    }
    let Some(path) = &args.manifest else {
        bail!("give a manifest file, or --deployment DOC.json");
    };
    let Some(files) = &args.files else {
        bail!("--files <DIR|BASE-URL> is required with a manifest file");
    };
    let manifest = read_limited(
        path,
        sandstep_model::manifest::MAX_MANIFEST_BYTES,
        "manifest",
    )?;
    let workflow_id = args.workflow_id.clone().unwrap_or_else(|| {
        let d = Sha256::digest(manifest.as_bytes());
        format!("local-{}", hex::encode(&d[..8]))
    });
    let signature = match &args.signature {
        Some(p) => Some(
            read_limited(p, sandstep_signing::jws::MAX_JWS_BYTES, "signature")?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    Ok(Request {
        workflow_id,
        retry_timestamp: None,
        manifest,
        source: file_source(files)?,
        inventory,
        force: args.force,
        signature,
        allow_unsigned: args.allow_unsigned,
        root_key_package_url: None,
    })
}

pub async fn run(args: RunArgs, common: &Common) -> Result<ExitCode> {
    let req = match request(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(exit::BAD_INPUT));
        }
    };
    if args.allow_unsigned {
        eprintln!("WARNING: --allow-unsigned: a manifest without a signature will run; its origin is not verified");
    }
    let config = common.load_config()?;
    let data = common.data_dir(&config)?;
    let data_path = data.path().to_owned();
    let sandbox = sandbox(&data)?;
    let deployer = Deployer::new(sandbox, data, config)?;
    if let Err(e) = sandstep::capability::reaper::start() {
        tracing::warn!("cannot become the subreaper of host programs: {e}");
    }

    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("cancelling: a running step is stopped and its handler's cancel called");
        c.cancel();
    });

    let mut console = Console::new(args.json);
    console.cancel_during = args.cancel_during.map(|a| (a, cancel.clone()));
    let console = Arc::new(console);
    let workflow_id = req.workflow_id.clone();
    let outcome = deployer.run(req, console.clone(), &cancel).await?;
    console.clear();
    sandstep::fault::point("before-result-file");
    let result = &outcome.result;
    let where_ = match &args.result_file {
        Some(p) => {
            write_result_file(p, result)?;
            p.display().to_string()
        }
        None => {
            let name = deployer.journals().write_result(result)?;
            format!("{}/results/{name}", data_path.display())
        }
    };
    if !args.json {
        print_summary(&workflow_id, result, outcome.already_done);
        eprintln!("result file: {where_}");
    }
    let code = match outcome.status {
        Status::Succeeded => exit::SUCCESS,
        Status::RebootRequired => {
            eprintln!("a reboot is required: reboot, then run the same command again to resume");
            exit::REBOOT_REQUIRED
        }
        Status::RestartRequired => {
            eprintln!("an agent restart is required: run the same command again to resume");
            exit::RESTART_REQUIRED
        }
        Status::Cancelled => exit::CANCELLED,
        _ => exit::FAILED,
    };
    Ok(ExitCode::from(code))
}

/// Writes the result file atomically next to its final name.
fn write_result_file(path: &Path, result: &ResultFile) -> Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("--result-file {}: needs a file name", path.display()))?;
    let dir = Dir::open_ambient_dir(parent, ambient_authority())
        .with_context(|| format!("--result-file: cannot open {}", parent.display()))?;
    write_atomic(&dir, name, &serde_json::to_vec_pretty(result)?, 0o644)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn print_summary(workflow_id: &str, r: &ResultFile, already_done: bool) {
    let verdict = if r.result_code > 0 {
        "succeeded"
    } else {
        "failed"
    };
    if already_done {
        println!("workflow {workflow_id} already finished earlier ({verdict}); reporting it (use --force to run again)");
    }
    println!(
        "deployment {} ({}): {:?}, result {} erc {} in {}",
        r.update_id,
        workflow_id,
        r.status,
        r.result_code,
        r.extended_result_codes,
        millis(r.duration_ms)
    );
    for (key, s) in &r.step_results {
        let handler = s.handler.as_deref().unwrap_or("reference");
        println!(
            "  {key:<8} {handler:<22} {:>5}  {:08X}  {:>8}  {}",
            s.result_code,
            s.extended_result_code as u32,
            millis(s.duration_ms.unwrap_or(0)),
            s.result_details
        );
        for (cid, c) in &s.components {
            println!(
                "    component {cid}: {} {:08X} {}",
                c.result_code, c.extended_result_code as u32, c.result_details
            );
            for (ck, cs) in &c.step_results {
                println!(
                    "      {ck:<8} {:<20} {:>5}  {:08X}  {:>8}  {}",
                    cs.handler.as_deref().unwrap_or(""),
                    cs.result_code,
                    cs.extended_result_code as u32,
                    millis(cs.duration_ms.unwrap_or(0)),
                    cs.result_details
                );
            }
        }
    }
    if !r.result_details.is_empty() {
        println!("  details: {}", r.result_details);
    }
}

/// Shows events: progress bars on a terminal, plain lines otherwise, JSON lines with --json.
struct Console {
    mode: Mode,
    units: Mutex<Vec<UnitInfo>>,
    bars: Mutex<HashMap<(usize, String), ProgressBar>>,
    multi: MultiProgress,
    /// `--cancel-during`: the action whose start cancels the deployment.
    cancel_during: Option<(Action, CancellationToken)>,
}

#[derive(PartialEq)]
enum Mode {
    Json,
    Tty,
    Plain,
}

impl Console {
    fn new(json: bool) -> Self {
        let mode = if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Tty
        } else {
            Mode::Plain
        };
        Console {
            mode,
            units: Mutex::default(),
            bars: Mutex::default(),
            multi: MultiProgress::new(),
            cancel_during: None,
        }
    }

    fn label(&self, unit: usize) -> String {
        self.units
            .lock()
            .expect("console lock")
            .get(unit)
            .map(|u| format!("step {} ({})", u.label, u.handler))
            .unwrap_or_else(|| format!("unit {unit}"))
    }

    fn line(&self, text: String) {
        match self.mode {
            Mode::Tty => self.multi.suspend(|| eprintln!("{text}")),
            _ => eprintln!("{text}"),
        }
    }

    fn bar(&self, key: (usize, String), total: u64, template: &str) -> ProgressBar {
        let mut bars = self.bars.lock().expect("console lock");
        bars.entry(key.clone())
            .or_insert_with(|| {
                let b = self.multi.add(ProgressBar::new(total));
                b.set_style(ProgressStyle::with_template(template).expect("valid template"));
                b.set_message(key.1.clone());
                b
            })
            .clone()
    }

    fn clear(&self) {
        for (_, b) in self.bars.lock().expect("console lock").drain() {
            b.finish_and_clear();
        }
    }
}

impl Observer for Console {
    fn event(&self, ev: &Event) {
        if let (Event::ActionStarted { unit, action }, Some((at, cancel))) =
            (ev, &self.cancel_during)
        {
            if action == at && !cancel.is_cancelled() {
                self.line(format!(
                    "{}: cancelling as {action} begins (--cancel-during)",
                    self.label(*unit)
                ));
                cancel.cancel();
            }
        }
        if self.mode == Mode::Json {
            println!("{}", serde_json::to_string(ev).expect("events serialize"));
            return;
        }
        match ev {
            Event::Planned {
                units,
                resumed,
                workflow_id,
            } => {
                *self.units.lock().expect("console lock") = units.clone();
                let how = if *resumed { "resuming" } else { "starting" };
                self.line(format!(
                    "{how} workflow {workflow_id}: {} unit(s)",
                    units.len()
                ));
            }
            Event::Recovered { message } => self.line(format!("before resuming: {message}")),
            Event::Waiting { what, phrase, .. } => self.line(format!("{what}: {phrase}")),
            Event::UnitStarted { unit, .. } => self.line(format!("{}: started", self.label(*unit))),
            Event::FileProgress {
                unit,
                file,
                done,
                total,
            } if self.mode == Mode::Tty => {
                let b = self.bar(
                    (*unit, format!("download {file}")),
                    *total,
                    "  {msg:40} {bytes:>10}/{total_bytes:10} {bar:30} {bytes_per_sec}",
                );
                b.set_position(*done);
            }
            Event::FileReady {
                unit,
                file,
                result_code,
            } => {
                self.clear_bar(*unit, &format!("download {file}"));
                let how = if *result_code == 502 {
                    "already present (502)"
                } else {
                    "fetched and verified"
                };
                self.line(format!("{}: {file} {how}", self.label(*unit)));
            }
            Event::ActionStarted { unit, action } if self.mode == Mode::Tty => {
                let b = self.bar((*unit, "step".into()), 100, "  {msg:40} {bar:30} {pos:>3}%");
                b.set_message(format!("{} {action}", self.label(*unit)));
                b.set_position(0);
            }
            Event::Handler {
                unit,
                percent: Some(p),
                message,
                ..
            } => {
                if self.mode == Mode::Tty {
                    let b = self.bar((*unit, "step".into()), 100, "  {msg:40} {bar:30} {pos:>3}%");
                    b.set_position(u64::from(*p));
                } else {
                    self.line(format!("{}: {p}% {message}", self.label(*unit)));
                }
            }
            Event::ActionFinished {
                unit,
                action,
                result,
                duration_ms,
            } => {
                self.line(format!(
                    "{}: {action} -> {} {:08X} ({}){}",
                    self.label(*unit),
                    result.result_code,
                    result.extended_result_code as u32,
                    millis(*duration_ms),
                    if result.result_details.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", result.result_details)
                    }
                ));
            }
            Event::UnitFinished { unit, .. } => self.clear_bar(*unit, "step"),
            _ => {}
        }
    }
}

impl Console {
    /// Removes a progress bar, if shown.
    fn clear_bar(&self, unit: usize, name: &str) {
        let bar = self
            .bars
            .lock()
            .expect("console lock")
            .remove(&(unit, name.to_owned()));
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    }
}
