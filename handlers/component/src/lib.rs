//! `sandstep/component:1`: a component-aware handler. For the selected component, it writes the
//! step's files into the component's directory and records the component's new version.
//!
//! The component's directory appears at `/component` only when the gateway's policy maps it in
//! (`component-dirs`, from an inventory property such as `path`, checked to lie under a
//! configured root), and only for the component being updated.
//!
//! - is-installed: `/component/.sandstep-version` equals installedCriteria -> 900, else 901;
//! - backup: the files about to be replaced are copied to /work/backup;
//! - install: each step file is written to `/component/<fileName>` atomically;
//! - apply: the version record becomes installedCriteria; 700;
//! - restore: the backed-up files go back.

use sandstep_sdk::codes::{content_component, ExtendedResultCode, Facility};
use sandstep_sdk::{done, export_handler, log, Context, Failure, Handler, Outcome};
use std::path::{Path, PathBuf};

const fn c_erc(code: u32) -> ExtendedResultCode {
    ExtendedResultCode::new(
        Facility::Sandstep,
        content_component::SANDSTEP,
        0x200 | code,
    )
}
const ERC_NO_COMPONENT: ExtendedResultCode = c_erc(1);
const ERC_NO_CRITERIA: ExtendedResultCode = c_erc(2);
const ERC_NO_DIRECTORY: ExtendedResultCode = c_erc(3);

const DIR: &str = "/component";
const VERSION: &str = ".sandstep-version";

fn component_dir(ctx: &Context) -> Result<PathBuf, Failure> {
    let c = ctx.component().ok_or_else(|| {
        Failure::new(
            ERC_NO_COMPONENT,
            "sandstep/component:1 runs for a selected component: use it in a child update",
        )
    })?;
    let dir = PathBuf::from(DIR);
    if std::fs::metadata(&dir).map(|m| m.is_dir()).unwrap_or(false) {
        Ok(dir)
    } else {
        Err(Failure::new(
            ERC_NO_DIRECTORY,
            format!("component `{}` has no directory mapped at {DIR}: the gateway's policy needs a component-dirs entry for this handler", c.id),
        ))
    }
}

fn criteria(ctx: &Context) -> Result<&str, Failure> {
    // The rule `sandstep manifest new` applies too (step-rules).
    step_rules::version::criteria(ctx.installed_criteria())
        .map_err(|rule| Failure::new(ERC_NO_CRITERIA, rule.to_string()))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("sandstep-new");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

#[derive(Default)]
struct ComponentHandler;

impl Handler for ComponentHandler {
    fn is_installed(&mut self, ctx: &Context) -> Outcome<done::IsInstalled> {
        let want = criteria(ctx)?;
        let dir = component_dir(ctx)?;
        let have = std::fs::read_to_string(dir.join(VERSION)).unwrap_or_default();
        Ok(if have.trim() == want {
            done::IsInstalled::Installed.into()
        } else {
            done::IsInstalled::NotInstalled.into()
        })
    }

    fn backup(&mut self, ctx: &Context) -> Outcome<done::BackedUp> {
        let dir = component_dir(ctx)?;
        let backup = ctx.work_path("backup");
        std::fs::create_dir_all(&backup)?;
        let mut saved = 0;
        for f in ctx.files().iter().map(|f| f.name.as_str()).chain([VERSION]) {
            if dir.join(f).exists() {
                std::fs::copy(dir.join(f), backup.join(f))?;
                saved += 1;
            }
        }
        Ok(done::BackedUp::Success.with_details(format!("{saved} files saved")))
    }

    fn install(&mut self, ctx: &Context) -> Outcome<done::Installed> {
        let dir = component_dir(ctx)?;
        let c = ctx.component().expect("checked by component_dir");
        for (i, f) in ctx.files().iter().enumerate() {
            let bytes = std::fs::read(f.path())?;
            write_atomic(&dir.join(&f.name), &bytes)
                .map_err(|e| Failure::from(e).context(format!("{DIR}/{}", f.name)))?;
            log::progress(
                ((i + 1) * 100 / ctx.files().len()) as u8,
                &format!("{} written for {}", f.name, c.id),
            );
        }
        Ok(done::Installed::Success.with_details(format!(
            "{} files written for {}",
            ctx.files().len(),
            c.id
        )))
    }

    fn apply(&mut self, ctx: &Context) -> Outcome<done::Applied> {
        let want = criteria(ctx)?;
        let dir = component_dir(ctx)?;
        write_atomic(&dir.join(VERSION), want.as_bytes())?;
        let c = ctx.component().expect("checked by component_dir");
        Ok(done::Applied::Success.with_details(format!("{} ({}) now at {want}", c.id, c.name)))
    }

    fn restore(&mut self, ctx: &Context) -> Outcome<done::Restored> {
        let dir = component_dir(ctx)?;
        let backup = ctx.work_path("backup");
        let mut restored = 0;
        for f in ctx.files().iter().map(|f| f.name.as_str()).chain([VERSION]) {
            if backup.join(f).exists() {
                std::fs::copy(backup.join(f), dir.join(f))?;
                restored += 1;
            }
        }
        Ok(done::Restored::Success.with_details(format!("{restored} files restored")))
    }
}

export_handler!(ComponentHandler);
