//! `sandstep/files:1`: places step files at destinations the gateway's policy allows (a
//! device's `main.py`, a `CONFIG`, an image), atomically, keeping the previous version.
//!
//! Destinations are paths inside directories the policy maps in (`dirs`, e.g. host `/opt/app`
//! at `/dest/app`); nothing else is reachable. handlerProperties:
//! - `destination`: where the file goes, e.g. `/dest/app/main.py`;
//! - `fileName` (optional): which step file; default the only one;
//! - `installedCriteria`: a digest of the wanted content (`md5:<hex>`, `sha256:<hex>`, or bare
//!   hex of 32 or 64 digits), so a desired state of "URL + MD5 per file" (Degu) maps to one step
//!   per file; or any other label, then recorded in /state.
//!
//! - is-installed: for a digest, the destination's current content has it; else the record;
//! - backup: the current destination is kept in /state/previous/ (for restore, and for rolling
//!   back later);
//! - install: written beside the destination, synced, renamed over it;
//! - apply: the record and the installed digests (/state/digests.json) are updated; 700, with the
//!   digests in the details;
//! - restore: the previous version goes back.

use md5::Md5;
use sandstep_sdk::codes::{content_component, result, ExtendedResultCode, Facility};
use sandstep_sdk::{export_handler, log, Context, Failure, Handler, Outcome, StepFile, StepResult};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const fn f_erc(code: u32) -> ExtendedResultCode {
    ExtendedResultCode::new(
        Facility::Sandstep,
        content_component::SANDSTEP,
        0x300 | code,
    )
}
const ERC_BAD_DESTINATION: ExtendedResultCode = f_erc(1);
const ERC_WHICH_FILE: ExtendedResultCode = f_erc(2);
const ERC_NO_CRITERIA: ExtendedResultCode = f_erc(3);
const ERC_DIGEST_MISMATCH: ExtendedResultCode = f_erc(4);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Props {
    destination: String,
    #[serde(default)]
    file_name: Option<String>,
    #[serde(default)]
    installed_criteria: Option<String>,
}

enum Criteria {
    Md5(String),
    Sha256(String),
    Label(String),
}

fn parse_criteria(c: &str) -> Criteria {
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    let (kind, v) = match c.split_once(':') {
        Some((k, v)) => (Some(k.to_ascii_lowercase()), v),
        None => (None, c),
    };
    match (kind.as_deref(), v.len()) {
        (Some("md5") | None, 32) if hex(v) => Criteria::Md5(v.to_ascii_lowercase()),
        (Some("sha256") | None, 64) if hex(v) => Criteria::Sha256(v.to_ascii_lowercase()),
        _ => Criteria::Label(c.to_owned()),
    }
}

/// /state/digests.json: destination -> installed digests; /state/installed.json: labels.
#[derive(Default, Serialize, Deserialize)]
struct Records {
    #[serde(default)]
    digests: BTreeMap<String, Digests>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Digests {
    md5: String,
    sha256: String,
}

fn digests(bytes: &[u8]) -> Digests {
    Digests {
        md5: hex(&Md5::digest(bytes)),
        sha256: hex(&Sha256::digest(bytes)),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Step<'a> {
    dest: PathBuf,
    file: &'a StepFile,
    criteria: Criteria,
}

fn step(ctx: &Context) -> Result<Step<'_>, Failure> {
    let props: Props = ctx.properties()?;
    let dest = PathBuf::from(&props.destination);
    let plain = dest.is_absolute()
        && dest.file_name().is_some()
        && !props.destination.split('/').any(|p| p == ".." || p == ".")
        && !["/payload", "/work", "/state"]
            .iter()
            .any(|r| dest.starts_with(r));
    if !plain {
        return Err(Failure::new(
            ERC_BAD_DESTINATION,
            format!("handlerProperties.destination `{}` must be an absolute file path in a directory the policy maps in", props.destination),
        ));
    }
    let file = match props.file_name.as_deref() {
        Some(n) => ctx.file(n)?,
        None => match ctx.files() {
            [only] => only,
            files => {
                return Err(Failure::new(
                    ERC_WHICH_FILE,
                    format!(
                        "step has {} files; say which with handlerProperties.fileName",
                        files.len()
                    ),
                ))
            }
        },
    };
    let criteria = props
        .installed_criteria
        .as_deref()
        .map(parse_criteria)
        .ok_or_else(|| {
            Failure::new(
                ERC_NO_CRITERIA,
                "handlerProperties.installedCriteria is required (a digest or a label)",
            )
        })?;
    Ok(Step {
        dest,
        file,
        criteria,
    })
}

fn records(ctx: &Context) -> Result<Records, Failure> {
    match std::fs::read(ctx.state_path("digests.json")) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| Failure::new(f_erc(5), format!("/state/digests.json is corrupt: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Records::default()),
        Err(e) => Err(e.into()),
    }
}

fn save_records(ctx: &Context, r: &Records) -> Result<(), Failure> {
    let tmp = ctx.state_path("digests.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(r).expect("serializes"))?;
    std::fs::rename(tmp, ctx.state_path("digests.json"))?;
    Ok(())
}

/// Where the previous version of `dest` is kept.
fn previous(ctx: &Context, dest: &Path) -> PathBuf {
    let name: String = dest
        .to_string_lossy()
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    ctx.state_path(format!("previous/{name}"))
}

fn dest_err(dest: &Path) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::from(e).context(dest.display())
}

#[derive(Default)]
struct Files;

impl Handler for Files {
    fn is_installed(&mut self, ctx: &Context) -> Outcome {
        let s = step(ctx)?;
        let current = match std::fs::read(&s.dest) {
            Ok(b) => Some(digests(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(dest_err(&s.dest)(e)),
        };
        let installed = match (&s.criteria, &current) {
            (Criteria::Md5(want), Some(d)) => &d.md5 == want,
            (Criteria::Sha256(want), Some(d)) => &d.sha256 == want,
            (Criteria::Label(l), Some(_)) => {
                records(ctx)?
                    .labels
                    .get(&s.dest.to_string_lossy().into_owned())
                    == Some(l)
            }
            (_, None) => false,
        };
        Ok(StepResult::new(if installed {
            result::IS_INSTALLED_INSTALLED
        } else {
            result::IS_INSTALLED_NOT_INSTALLED
        }))
    }

    fn backup(&mut self, ctx: &Context) -> Outcome {
        let s = step(ctx)?;
        if !s.dest.exists() {
            return Ok(StepResult::new(result::BACKUP_SUCCESS).with_details("nothing there yet"));
        }
        std::fs::create_dir_all(ctx.state_path("previous"))?;
        std::fs::copy(&s.dest, previous(ctx, &s.dest)).map_err(dest_err(&s.dest))?;
        Ok(StepResult::new(result::BACKUP_SUCCESS))
    }

    fn install(&mut self, ctx: &Context) -> Outcome {
        let s = step(ctx)?;
        let bytes = std::fs::read(s.file.path())?;
        let d = digests(&bytes);
        let expected = match &s.criteria {
            Criteria::Md5(w) => Some((w.as_str(), d.md5.as_str())),
            Criteria::Sha256(w) => Some((w.as_str(), d.sha256.as_str())),
            Criteria::Label(_) => None,
        };
        if let Some((want, have)) = expected {
            if want != have {
                return Err(Failure::new(
                    ERC_DIGEST_MISMATCH,
                    format!(
                        "{} has digest {have}, but installedCriteria wants {want}",
                        s.file.name
                    ),
                ));
            }
        }
        let tmp = s.dest.with_file_name(format!(
            ".{}.sandstep-new",
            s.dest.file_name().expect("checked").to_string_lossy()
        ));
        {
            let mut f = std::fs::File::create(&tmp).map_err(dest_err(&s.dest))?;
            f.write_all(&bytes).map_err(dest_err(&s.dest))?;
            f.sync_all().map_err(dest_err(&s.dest))?;
        }
        std::fs::rename(&tmp, &s.dest).map_err(dest_err(&s.dest))?;
        log::info(&format!("{} placed at {}", s.file.name, s.dest.display()));
        Ok(StepResult::new(result::INSTALL_SUCCESS))
    }

    fn apply(&mut self, ctx: &Context) -> Outcome {
        let s = step(ctx)?;
        let d = digests(&std::fs::read(&s.dest).map_err(dest_err(&s.dest))?);
        let mut r = records(ctx)?;
        let key = s.dest.to_string_lossy().into_owned();
        r.digests.insert(key.clone(), d.clone());
        if let Criteria::Label(l) = &s.criteria {
            r.labels.insert(key.clone(), l.clone());
        }
        save_records(ctx, &r)?;
        Ok(StepResult::new(result::APPLY_SUCCESS)
            .with_details(format!("{key} md5={} sha256={}", d.md5, d.sha256)))
    }

    fn restore(&mut self, ctx: &Context) -> Outcome {
        let s = step(ctx)?;
        let prev = previous(ctx, &s.dest);
        if !prev.exists() {
            return Ok(StepResult::new(result::RESTORE_SUCCESS_UNSUPPORTED)
                .with_details("no previous version kept"));
        }
        std::fs::copy(prev, &s.dest).map_err(dest_err(&s.dest))?;
        Ok(StepResult::new(result::RESTORE_SUCCESS)
            .with_details(format!("{} restored", s.dest.display())))
    }
}

export_handler!(Files);
