//! `microsoft/apt:1` (also registered as `sandstep/apt:1`): installs, upgrades and removes Debian
//! packages listed in an ADU apt manifest, through apt-get run by the process capability.
//!
//! The step has exactly one apt manifest (`{"name", "version", "packages": [{"name",
//! "version"}], "agentRestartRequired"}`; a name ending in `-` means remove) and may carry `.deb`
//! files beside it, which are installed from the payload (as `apt-get install ./file.deb`), so a
//! gateway without a reachable repository can be updated. `installedCriteria` is required.
//!
//! - is-installed: 900 only when `/state/installed.json` records the criteria AND dpkg reports
//!   every listed package at the listed version (and every removal absent);
//! - download: `apt-get --download-only install ...` (fetches repository packages);
//! - install: `apt-get install ...` with dpkg's `--force-confdef --force-confold`;
//! - apply: records the criteria; 707 when the manifest asks for an agent restart, else 700.

use sandstep_model::apt::{AptManifest, Package};
use sandstep_sdk::codes::{erc, ExtendedResultCode};
use sandstep_sdk::process::{self, Command, Output};
use sandstep_sdk::{done, export_handler, log, Context, Failure, Handler, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use step_rules::apt::AptRule;

const APT_GET: &str = "/usr/bin/apt-get";
const DPKG_QUERY: &str = "/usr/bin/dpkg-query";

#[derive(Default, Serialize, Deserialize)]
struct Record {
    /// installedCriteria -> the apt manifest's name and version.
    installed: BTreeMap<String, String>,
}

struct Step {
    criteria: String,
    manifest: AptManifest,
    debs: Vec<String>,
}

fn load(ctx: &Context) -> Result<Step, Failure> {
    // The step's shape, by the rules `sandstep manifest new` applies too (step-rules).
    let names: Vec<&str> = ctx.files().iter().map(|f| f.name.as_str()).collect();
    let manifest_name =
        step_rules::apt::manifest_file(ctx.installed_criteria(), &names).map_err(|rule| {
            let code = match rule {
                AptRule::NoCriteria => erc::APT_MISSING_INSTALLED_CRITERIA,
                AptRule::ManifestCount(_) => erc::APT_WRONG_FILE_COUNT,
            };
            Failure::new(code, rule.to_string())
        })?;
    let criteria = ctx.installed_criteria().unwrap_or_default().to_owned();
    let (debs, manifests): (Vec<_>, Vec<_>) =
        ctx.files().iter().partition(|f| f.name.ends_with(".deb"));
    let manifest_file = manifests
        .into_iter()
        .find(|f| f.name == manifest_name)
        .expect("the rule found it among the step's files");
    let bytes = std::fs::read(manifest_file.path())?;
    // ADU's AptHandlerImpl::ParseContent: any parser error is PARSE_BAD_FORMAT.
    let manifest = AptManifest::parse(&bytes).map_err(|e| {
        Failure::new(
            erc::CONTENT_PARSE_BAD_FORMAT,
            format!("{}: {e}", manifest_file.name),
        )
    })?;
    let debs = debs
        .iter()
        .map(|f| process::host_path(f.path()))
        .collect::<Result<_, _>>()?;
    Ok(Step {
        criteria,
        manifest,
        debs,
    })
}

fn record_path(ctx: &Context) -> std::path::PathBuf {
    ctx.state_path("installed.json")
}

fn read_record(ctx: &Context) -> Result<Record, Failure> {
    match std::fs::read(record_path(ctx)) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            Failure::new(
                erc::APT_RECORD_CORRUPT,
                format!("/state/installed.json is corrupt: {e}"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(e) => Err(e.into()),
    }
}

/// apt-get's outcome: ADU reports a failed download or install with one code each
/// (`AptHandlerImpl::Download`, `AptHandlerImpl::Install`); the status and output go in the details.
fn check(out: Output, what: &str, code: ExtendedResultCode) -> Result<Output, Failure> {
    if out.success() {
        return Ok(out);
    }
    let status = out.exit_code.unwrap_or(128 + out.signal.unwrap_or(0));
    Err(Failure::new(
        code,
        format!(
            "{what} failed (status {status}{}):\n{}",
            if out.timed_out { ", timed out" } else { "" },
            out.tail(6)
        ),
    ))
}

fn apt_get(step: &Step, download_only: bool) -> Result<Output, Failure> {
    let mut args: Vec<String> = vec!["-y".into(), "-q".into(), "--allow-downgrades".into()];
    if download_only {
        args.push("--download-only".into());
    } else {
        args.extend(
            [
                "-o",
                "Dpkg::Options::=--force-confdef",
                "-o",
                "Dpkg::Options::=--force-confold",
            ]
            .map(String::from),
        );
    }
    args.push("install".into());
    args.extend(step.debs.iter().cloned());
    args.extend(
        step.manifest
            .packages
            .iter()
            .filter(|p| !(download_only && p.is_removal()))
            .map(Package::spec),
    );
    let (what, code) = if download_only {
        ("apt-get --download-only install", erc::APT_DOWNLOAD_FAILED)
    } else {
        ("apt-get install", erc::APT_INSTALL_FAILED)
    };
    if step.manifest.packages.is_empty() && step.debs.is_empty() {
        // ADU's adu-shell: "Aborting download. No packages specified."
        return Err(Failure::new(code, "the apt manifest names no packages"));
    }
    log::info(&format!(
        "{what} {}",
        args[args.iter().position(|a| a == "install").expect("pushed") + 1..].join(" ")
    ));
    check(Command::new(APT_GET).args(args).run()?, what, code)
}

/// Whether dpkg reports every listed package as the manifest wants it.
fn dpkg_agrees(step: &Step) -> Result<Result<(), String>, Failure> {
    let names: Vec<String> = step
        .manifest
        .packages
        .iter()
        .map(|p| p.bare_name().to_owned())
        .collect();
    let out = Command::new(DPKG_QUERY)
        .arg("-W")
        .arg("-f=${Package} ${db:Status-Status} ${Version}\\n")
        .args(names)
        .run()?;
    // dpkg-query exits 1 when a name is unknown; what it printed still counts.
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    for line in out.stdout.lines() {
        let mut it = line.split_whitespace();
        if let (Some(name), Some(status), version) = (it.next(), it.next(), it.next()) {
            seen.insert(
                name.to_owned(),
                (status.to_owned(), version.unwrap_or("").to_owned()),
            );
        }
    }
    for p in &step.manifest.packages {
        let state = seen.get(p.bare_name());
        let installed = state.is_some_and(|(s, _)| s == "installed");
        if p.is_removal() {
            if installed {
                return Ok(Err(format!("{} is still installed", p.bare_name())));
            }
        } else if !installed {
            return Ok(Err(format!("{} is not installed", p.spec())));
        } else if let Some(v) = &p.version {
            let have = &state.expect("installed").1;
            if have != v {
                return Ok(Err(format!("{} is at {have}, not {v}", p.name)));
            }
        }
    }
    Ok(Ok(()))
}

#[derive(Default)]
struct Apt;

impl Handler for Apt {
    fn is_installed(&mut self, ctx: &Context) -> Outcome<done::IsInstalled> {
        let step = load(ctx)?;
        if !read_record(ctx)?.installed.contains_key(&step.criteria) {
            return Ok(done::IsInstalled::NotInstalled
                .with_details(format!("{} was never applied here", step.criteria)));
        }
        Ok(match dpkg_agrees(&step)? {
            Ok(()) => done::IsInstalled::Installed.into(),
            Err(why) => done::IsInstalled::NotInstalled
                .with_details(format!("recorded as installed, but {why}")),
        })
    }

    fn download(&mut self, ctx: &Context) -> Outcome<done::Downloaded> {
        let step = load(ctx)?;
        apt_get(&step, true)?;
        Ok(done::Downloaded::Success.into())
    }

    fn install(&mut self, ctx: &Context) -> Outcome<done::Installed> {
        let step = load(ctx)?;
        apt_get(&step, false)?;
        if let Err(why) = dpkg_agrees(&step)? {
            return Err(Failure::new(
                erc::APT_DPKG_DISAGREES,
                format!("apt-get succeeded but {why}"),
            ));
        }
        log::progress(100, "packages installed");
        Ok(done::Installed::Success.into())
    }

    fn apply(&mut self, ctx: &Context) -> Outcome<done::Applied> {
        let step = load(ctx)?;
        let mut record = read_record(ctx)?;
        record.installed.insert(
            step.criteria.clone(),
            format!("{} {}", step.manifest.name, step.manifest.version),
        );
        let tmp = ctx.state_path("installed.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&record).expect("a record serializes"),
        )?;
        std::fs::rename(&tmp, record_path(ctx))?;
        Ok(if step.manifest.agent_restart_required {
            done::Applied::AgentRestart(done::When::Now).into()
        } else {
            done::Applied::Success.into()
        })
    }
}

export_handler!(Apt);
