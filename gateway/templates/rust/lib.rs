//! `@ID@`: a sandstep update handler.
//!
//! It installs one file of the step into the handler's `/state` directory and records the
//! step's `installedCriteria`, so `is-installed` can tell whether there is anything to do.
//!
//! handlerProperties:
//! - `fileName`: the step file to install.
//! - `installedCriteria`: the version this step installs.
//!
//! Build: `sandstep handler build`; the README beside this file goes on from there.

use sandstep_sdk::done::{Applied, BackedUp, Installed, IsInstalled, Restored};
use sandstep_sdk::{export_handler, log, Context, Failure, Handler, Outcome};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Props {
    file_name: String,
    installed_criteria: String,
}

/// Where the installed version is recorded, under `/state`.
const RECORD: &str = "installed-version";

/// The handler's own failure codes (extended code 0x320000NN: facility 3, component 32).
const NOT_A_PLAIN_NAME: u32 = 1;

fn props(ctx: &Context) -> Result<Props, Failure> {
    let p: Props = ctx.properties()?;
    if p.file_name.contains('/') || p.file_name.starts_with('.') {
        return Err(Failure::vendor(
            NOT_A_PLAIN_NAME,
            format!("handlerProperties.fileName `{}` is not a plain file name", p.file_name),
        ));
    }
    Ok(p)
}

#[derive(Default)]
struct @STRUCT@;

impl Handler for @STRUCT@ {
    fn is_installed(&mut self, ctx: &Context) -> Outcome<IsInstalled> {
        let p = props(ctx)?;
        let have = std::fs::read_to_string(ctx.state_path(RECORD)).unwrap_or_default();
        Ok(if have == p.installed_criteria {
            IsInstalled::Installed.into()
        } else {
            IsInstalled::NotInstalled.with_details(format!("{} is not installed", p.installed_criteria))
        })
    }

    fn backup(&mut self, ctx: &Context) -> Outcome<BackedUp> {
        let p = props(ctx)?;
        let current = ctx.state_path(&p.file_name);
        if !current.exists() {
            return Ok(BackedUp::Unsupported.with_details("nothing installed yet"));
        }
        std::fs::copy(current, ctx.work_path("backup"))?;
        Ok(BackedUp::Success.into())
    }

    fn install(&mut self, ctx: &Context) -> Outcome<Installed> {
        let p = props(ctx)?;
        let file = ctx.file(&p.file_name)?;
        log::progress(10, &format!("installing {} ({} bytes)", file.name, file.size));
        let staged = ctx.state_path(format!("{}.new", p.file_name));
        std::fs::copy(file.path(), &staged)?;
        std::fs::rename(staged, ctx.state_path(&p.file_name))?;
        Ok(Installed::Success.with_details(format!("{} installed", p.file_name)))
    }

    fn apply(&mut self, ctx: &Context) -> Outcome<Applied> {
        let p = props(ctx)?;
        std::fs::write(ctx.state_path(RECORD), &p.installed_criteria)?;
        Ok(Applied::Success.with_details(format!("{} is active", p.installed_criteria)))
    }

    fn restore(&mut self, ctx: &Context) -> Outcome<Restored> {
        let p = props(ctx)?;
        let backup = ctx.work_path("backup");
        if !backup.exists() {
            return Ok(Restored::Unsupported.with_details("no backup was taken"));
        }
        std::fs::copy(backup, ctx.state_path(&p.file_name))?;
        Ok(Restored::Success.into())
    }
}

export_handler!(@STRUCT@);

#[cfg(test)]
mod tests {
    use super::*;

    /// The handler's calls in the order the agent makes them, natively, in a temporary directory.
    #[test]
    fn installs_the_file_and_then_reports_it_installed() {
        let dir = std::env::temp_dir().join(format!("@CRATE@-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("app.conf"), b"greeting=hello\n").unwrap();
        let props = r#"{"fileName": "app.conf", "installedCriteria": "1.0"}"#;
        let ctx = Context::for_test("@ID@", props)
            .with_dirs(dir.join("sandbox"))
            .with_file("app.conf", dir.join("app.conf"));
        let mut h = @STRUCT@;
        assert_eq!(h.is_installed(&ctx).unwrap().code(), 901);
        assert_eq!(h.install(&ctx).unwrap().code(), 600);
        assert_eq!(h.apply(&ctx).unwrap().code(), 700);
        assert_eq!(h.is_installed(&ctx).unwrap().code(), 900);
        let installed = std::fs::read(ctx.state_path("app.conf")).unwrap();
        assert_eq!(installed, b"greeting=hello\n");
    }

    #[test]
    fn a_file_name_with_a_path_is_refused_with_the_handlers_own_code() {
        let ctx = Context::for_test("@ID@", r#"{"fileName": "../x", "installedCriteria": "1"}"#);
        let failure = @STRUCT@.install(&ctx).unwrap_err();
        assert_eq!(failure.erc().raw(), 0x3200_0001);
    }
}
