//! `contoso/config:1`: an example vendor handler built with `sandstep-sdk`.
//!
//! It installs one configuration file from the step's payload into the handler's `/state`
//! directory, keeps the previous version for `restore`, and records which `installedCriteria` it
//! installed, so `is-installed` can answer without redoing work.
//!
//! For a child update's step, each selected component gets its own copy: the file goes to
//! `/state/<component id>/<target>` and the record key is `<component id>/<target>`.
//!
//! handlerProperties:
//! - `fileName` (optional): which step file to install; default: the step's only file.
//! - `target`: the name to install it as, a plain file name.
//! - `installedCriteria`: the version label recorded on success.

use sandstep_sdk::codes::{ExtendedResultCode, Facility};
use sandstep_sdk::{done, export_handler, log, Context, Failure, Handler, Outcome};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Vendor codes: facility 3 (content handler), component 32 (custom).
const ERC_BAD_TARGET: ExtendedResultCode = ExtendedResultCode::new(Facility::ContentHandler, 32, 1);
const ERC_NO_CRITERIA: ExtendedResultCode =
    ExtendedResultCode::new(Facility::ContentHandler, 32, 2);
const ERC_WHICH_FILE: ExtendedResultCode = ExtendedResultCode::new(Facility::ContentHandler, 32, 3);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Props {
    #[serde(default)]
    file_name: Option<String>,
    target: String,
    #[serde(default)]
    installed_criteria: Option<String>,
}

impl Props {
    fn parse(ctx: &Context) -> Result<Props, Failure> {
        let props: Props = ctx.properties()?;
        let plain = !props.target.is_empty()
            && !props.target.contains('/')
            && props.target != "."
            && props.target != "..";
        if !plain {
            return Err(Failure::new(
                ERC_BAD_TARGET,
                format!(
                    "handlerProperties.target: `{}` is not a plain file name",
                    props.target
                ),
            ));
        }
        Ok(props)
    }

    fn criteria(&self) -> Result<&str, Failure> {
        self.installed_criteria.as_deref().ok_or_else(|| {
            Failure::new(
                ERC_NO_CRITERIA,
                "handlerProperties.installedCriteria is required",
            )
        })
    }
}

/// `/state/installed.json`: target name -> installed criteria.
type Record = BTreeMap<String, String>;

/// The component's directory name: its id with anything but `[A-Za-z0-9._-]` replaced.
fn component_dir(ctx: &Context) -> Option<String> {
    let c = ctx.component()?;
    let name: String =
        c.id.chars()
            .map(|ch| {
                if ch.is_ascii_alphanumeric() || "._-".contains(ch) {
                    ch
                } else {
                    '_'
                }
            })
            .collect();
    Some(if name.starts_with('.') {
        format!("_{name}")
    } else {
        name
    })
}

/// Where the target lives, and its record key.
fn target(ctx: &Context, props: &Props) -> std::io::Result<(PathBuf, String)> {
    match component_dir(ctx) {
        Some(dir) => {
            std::fs::create_dir_all(ctx.state_path(&dir))?;
            Ok((
                ctx.state_path(&dir).join(&props.target),
                format!("{dir}/{}", props.target),
            ))
        }
        None => Ok((ctx.state_path(&props.target), props.target.clone())),
    }
}

fn record_path(ctx: &Context) -> PathBuf {
    ctx.state_path("installed.json")
}

fn read_record(ctx: &Context) -> Result<Record, Failure> {
    match std::fs::read(record_path(ctx)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Failure::new(
                ERC_NO_CRITERIA,
                format!("/state/installed.json is corrupt: {e}"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::new()),
        Err(e) => Err(e.into()),
    }
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

#[derive(Default)]
struct ConfigHandler;

impl Handler for ConfigHandler {
    fn is_installed(&mut self, ctx: &Context) -> Outcome<done::IsInstalled> {
        let props = Props::parse(ctx)?;
        let installed =
            read_record(ctx)?.get(&props.target).map(String::as_str) == Some(props.criteria()?);
        Ok(if installed {
            done::IsInstalled::Installed.into()
        } else {
            done::IsInstalled::NotInstalled.into()
        })
    }

    fn backup(&mut self, ctx: &Context) -> Outcome<done::BackedUp> {
        let props = Props::parse(ctx)?;
        let (current, _) = target(ctx, &props)?;
        if !current.exists() {
            return Ok(done::BackedUp::Success.with_details("nothing to back up"));
        }
        std::fs::copy(&current, ctx.work_path("backup"))?;
        Ok(done::BackedUp::Success.into())
    }

    fn install(&mut self, ctx: &Context) -> Outcome<done::Installed> {
        let props = Props::parse(ctx)?;
        let file = match &props.file_name {
            Some(name) => ctx.file(name)?,
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
        let bytes = std::fs::read(file.path())?;
        log::info(&format!(
            "installing {} ({} bytes) as {}",
            file.name,
            bytes.len(),
            props.target
        ));
        write_atomically(&target(ctx, &props)?.0, &bytes)?;
        log::progress(100, "configuration written");
        Ok(done::Installed::Success.into())
    }

    fn apply(&mut self, ctx: &Context) -> Outcome<done::Applied> {
        let props = Props::parse(ctx)?;
        let mut record = read_record(ctx)?;
        let (_, key) = target(ctx, &props)?;
        record.insert(key.clone(), props.criteria()?.to_owned());
        let json = serde_json::to_vec_pretty(&record).expect("a string map always serializes");
        write_atomically(&record_path(ctx), &json)?;
        Ok(done::Applied::Success.with_details(format!("{key} is now active")))
    }

    fn restore(&mut self, ctx: &Context) -> Outcome<done::Restored> {
        let props = Props::parse(ctx)?;
        let backup = ctx.work_path("backup");
        if !backup.exists() {
            return Ok(done::Restored::Unsupported.with_details("no backup was taken"));
        }
        std::fs::copy(backup, target(ctx, &props)?.0)?;
        Ok(done::Restored::Success.into())
    }
}

export_handler!(ConfigHandler);
