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
//! The rules of these properties are the `step-rules` crate's (`files`), which `sandstep manifest new`
//! applies too.
//!
//! - is-installed: for a digest, the destination's current content has it; else the record;
//! - backup: the current destination is kept in /state/previous/ (for restore, and for rolling
//!   back later), and /state/changes.json records that this deployment changes it;
//! - install: written beside the destination, synced, renamed over it;
//! - apply: the record and the installed digests (/state/digests.json) are updated; 700, with the
//!   digests in the details;
//! - restore: the file set goes back as a whole: every destination this deployment's steps
//!   changed gets its previous version again (or is removed when it did not exist), newest
//!   first, and the details name them. ADU calls restore on the failing step only
//!   (steps_handler.cpp, StepsHandler_Install); a file set half new and half old is what this
//!   avoids.

use md5::Md5;
use sandstep_sdk::codes::{content_component, ExtendedResultCode, Facility};
use sandstep_sdk::{done, export_handler, log, Context, Failure, Handler, Outcome, StepFile};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use step_rules::files::{Criteria, RuleError};

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
const ERC_NOT_A_DIGEST: ExtendedResultCode = f_erc(5);
const ERC_CHANGES_UNREADABLE: ExtendedResultCode = f_erc(6);
const ERC_DIGESTS_UNREADABLE: ExtendedResultCode = f_erc(7);
const ERC_RESTORE_INCOMPLETE: ExtendedResultCode = f_erc(8);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Props {
    destination: String,
    #[serde(default)]
    file_name: Option<String>,
    #[serde(default)]
    installed_criteria: Option<String>,
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

/// The failure a broken property rule is.
fn refused(e: RuleError) -> Failure {
    let erc = match e {
        RuleError::Destination(_) => ERC_BAD_DESTINATION,
        RuleError::WhichFile(_) | RuleError::NoSuchFile(_) => ERC_WHICH_FILE,
        RuleError::NoCriteria => ERC_NO_CRITERIA,
        RuleError::NotADigest { .. } => ERC_NOT_A_DIGEST,
    };
    Failure::new(erc, e.to_string())
}

fn step(ctx: &Context) -> Result<Step<'_>, Failure> {
    let props: Props = ctx.properties()?;
    step_rules::files::check_destination(&props.destination).map_err(refused)?;
    let names: Vec<&str> = ctx.files().iter().map(|f| f.name.as_str()).collect();
    let name = match props.file_name.as_deref() {
        Some(n) => n,
        None => step_rules::files::which_file(None, &names).map_err(refused)?,
    };
    let file = ctx.file(name)?;
    let criteria = props
        .installed_criteria
        .as_deref()
        .ok_or(RuleError::NoCriteria)
        .and_then(step_rules::files::parse_criteria)
        .map_err(refused)?;
    Ok(Step {
        dest: PathBuf::from(&props.destination),
        file,
        criteria,
    })
}

/// A JSON record in /state (`None` when there is none yet); `erc` says it is corrupt.
fn load_state<T: serde::de::DeserializeOwned>(
    ctx: &Context,
    name: &str,
    erc: ExtendedResultCode,
) -> Result<Option<T>, Failure> {
    match std::fs::read(ctx.state_path(name)) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Failure::new(erc, format!("/state/{name} is corrupt: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes a JSON record in /state whole (beside it, then renamed over it).
fn save_state<T: Serialize>(ctx: &Context, name: &str, value: &T) -> Result<(), Failure> {
    let tmp = ctx.state_path(format!("{name}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(value).expect("serializes"))?;
    std::fs::rename(tmp, ctx.state_path(name))?;
    Ok(())
}

fn records(ctx: &Context) -> Result<Records, Failure> {
    Ok(load_state(ctx, "digests.json", ERC_DIGESTS_UNREADABLE)?.unwrap_or_default())
}

fn save_records(ctx: &Context, r: &Records) -> Result<(), Failure> {
    save_state(ctx, "digests.json", r)
}

/// /state/changes.json: the destinations one deployment changed, in order, for restore.
#[derive(Default, Serialize, Deserialize)]
struct Changes {
    workflow: String,
    changed: Vec<Change>,
}

#[derive(Serialize, Deserialize)]
struct Change {
    dest: String,
    /// Whether a previous version was kept (else restore removes the file).
    existed: bool,
}

/// The changes recorded for this deployment (none when the record is another deployment's).
fn changes(ctx: &Context) -> Result<Changes, Failure> {
    let fresh = || Changes {
        workflow: ctx.workflow_id().to_owned(),
        changed: Vec::new(),
    };
    let c: Option<Changes> = load_state(ctx, "changes.json", ERC_CHANGES_UNREADABLE)?;
    Ok(c.filter(|c| c.workflow == ctx.workflow_id())
        .unwrap_or_else(fresh))
}

fn save_changes(ctx: &Context, c: &Changes) -> Result<(), Failure> {
    save_state(ctx, "changes.json", c)
}

/// Writes `bytes` beside `dest`, syncs, and renames it over `dest`.
fn place(dest: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let tmp = dest.with_file_name(format!(
        ".{}.sandstep-new",
        dest.file_name().expect("checked").to_string_lossy()
    ));
    {
        let mut f = std::fs::File::create(&tmp).map_err(dest_err(dest))?;
        f.write_all(bytes).map_err(dest_err(dest))?;
        f.sync_all().map_err(dest_err(dest))?;
    }
    std::fs::rename(&tmp, dest).map_err(dest_err(dest))?;
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
    fn is_installed(&mut self, ctx: &Context) -> Outcome<done::IsInstalled> {
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
        Ok(if installed {
            done::IsInstalled::Installed.into()
        } else {
            done::IsInstalled::NotInstalled.into()
        })
    }

    fn backup(&mut self, ctx: &Context) -> Outcome<done::BackedUp> {
        let s = step(ctx)?;
        let mut c = changes(ctx)?;
        let key = s.dest.to_string_lossy().into_owned();
        if c.changed.iter().any(|ch| ch.dest == key) {
            // An earlier step (or attempt) of this deployment kept what was there before it.
            return Ok(done::BackedUp::Success.with_details("kept before"));
        }
        let existed = s.dest.exists();
        if existed {
            std::fs::create_dir_all(ctx.state_path("previous"))?;
            std::fs::copy(&s.dest, previous(ctx, &s.dest)).map_err(dest_err(&s.dest))?;
        }
        c.changed.push(Change { dest: key, existed });
        save_changes(ctx, &c)?;
        Ok(done::BackedUp::Success.with_details(if existed {
            "previous version kept"
        } else {
            "nothing there yet"
        }))
    }

    fn install(&mut self, ctx: &Context) -> Outcome<done::Installed> {
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
        place(&s.dest, &bytes)?;
        log::info(&format!("{} placed at {}", s.file.name, s.dest.display()));
        Ok(done::Installed::Success.into())
    }

    fn apply(&mut self, ctx: &Context) -> Outcome<done::Applied> {
        let s = step(ctx)?;
        let d = digests(&std::fs::read(&s.dest).map_err(dest_err(&s.dest))?);
        let mut r = records(ctx)?;
        let key = s.dest.to_string_lossy().into_owned();
        r.digests.insert(key.clone(), d.clone());
        if let Criteria::Label(l) = &s.criteria {
            r.labels.insert(key.clone(), l.clone());
        }
        save_records(ctx, &r)?;
        Ok(done::Applied::Success.with_details(format!("{key} md5={} sha256={}", d.md5, d.sha256)))
    }

    /// Puts back every file this deployment's steps changed, newest first. A file that cannot
    /// be put back does not stop the others: each is tried, and the failure names those left.
    fn restore(&mut self, ctx: &Context) -> Outcome<done::Restored> {
        let c = changes(ctx)?;
        if c.changed.is_empty() {
            return Ok(done::Restored::Unsupported.with_details("this deployment changed no file"));
        }
        let mut records = records(ctx)?;
        let (mut restored, mut removed, mut left) = (Vec::new(), Vec::new(), Vec::new());
        for ch in c.changed.iter().rev() {
            match undo(ctx, ch, &mut records) {
                Ok(Undone::Restored) => restored.push(ch.dest.as_str()),
                Ok(Undone::Removed) => removed.push(ch.dest.as_str()),
                Ok(Undone::Untouched) => {}
                Err(e) => left.push(e.details().to_owned()),
            }
        }
        save_records(ctx, &records)?;
        let mut details = Vec::new();
        if !restored.is_empty() {
            details.push(format!("restored {}", restored.join(", ")));
        }
        if !removed.is_empty() {
            details.push(format!(
                "removed {} (new in this deployment)",
                removed.join(", ")
            ));
        }
        if left.is_empty() {
            return Ok(done::Restored::Success.with_details(details.join("; ")));
        }
        details.push(format!("not put back: {}", left.join("; ")));
        Err(Failure::new(ERC_RESTORE_INCOMPLETE, details.join("; ")))
    }
}

/// What restore did to one changed file.
enum Undone {
    Restored,
    Removed,
    /// New in this deployment, but never placed (its step failed first): nothing to remove.
    Untouched,
}

fn undo(ctx: &Context, ch: &Change, records: &mut Records) -> Result<Undone, Failure> {
    let dest = Path::new(&ch.dest);
    records.labels.remove(&ch.dest);
    if ch.existed {
        let bytes = std::fs::read(previous(ctx, dest)).map_err(dest_err(dest))?;
        place(dest, &bytes)?;
        records.digests.insert(ch.dest.clone(), digests(&bytes));
        return Ok(Undone::Restored);
    }
    records.digests.remove(&ch.dest);
    match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Undone::Untouched),
        _ => {
            std::fs::remove_file(dest).map_err(dest_err(dest))?;
            Ok(Undone::Removed)
        }
    }
}

export_handler!(Files);
