//! `@ID@`: a sandstep update handler.
//!
//! It installs the step file named by handlerProperties.fileName into `/config`, a directory the
//! gateway's policy grants this handler (gateway.toml: `dirs`), atomically (a reader sees the old
//! file or the new one), and records handlerProperties.installedCriteria in `/state`, so
//! `is-installed` can tell whether there is anything to do. `backup` keeps the current file in
//! `/work`, `restore` puts it back, `cancel` removes a half-written file.
//!
//! Build: `sandstep handler build`; the README beside this file goes on from there.

use sandstep_sdk::done::{Applied, BackedUp, Cancelled, Installed, IsInstalled, Restored};
use sandstep_sdk::files::{staged_path, write_atomically};
use sandstep_sdk::{export_handler, log, Context, Failure, Handler, Outcome};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Props {
    file_name: String,
    installed_criteria: String,
}

/// The directory the gateway grants this handler (gateway.toml).
const CONFIG: &str = "/config";
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
            IsInstalled::Installed.with_details(format!("{} is installed", p.installed_criteria))
        } else {
            IsInstalled::NotInstalled.with_details(format!("{} is not installed", p.installed_criteria))
        })
    }

    fn backup(&mut self, ctx: &Context) -> Outcome<BackedUp> {
        let p = props(ctx)?;
        let current = ctx.granted_path(CONFIG, &p.file_name);
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
        let bytes = std::fs::read(file.path())?;
        write_atomically(ctx.granted_path(CONFIG, &p.file_name), &bytes)?;
        log::info(&format!("{} installed into {CONFIG}", p.file_name));
        Ok(Installed::Success.with_details(format!("{} installed", p.file_name)))
    }

    fn apply(&mut self, ctx: &Context) -> Outcome<Applied> {
        let p = props(ctx)?;
        write_atomically(ctx.state_path(RECORD), p.installed_criteria.as_bytes())?;
        Ok(Applied::Success.with_details(format!("{} is active", p.installed_criteria)))
    }

    fn cancel(&mut self, ctx: &Context) -> Outcome<Cancelled> {
        let p = props(ctx)?;
        let staged = staged_path(&ctx.granted_path(CONFIG, &p.file_name));
        if !staged.exists() {
            return Ok(Cancelled::Success.with_details("nothing to clean up"));
        }
        std::fs::remove_file(staged)?;
        Ok(Cancelled::Success.with_details(format!("removed the half-written {}", p.file_name)))
    }

    fn restore(&mut self, ctx: &Context) -> Outcome<Restored> {
        let p = props(ctx)?;
        let backup = ctx.work_path("backup");
        if !backup.exists() {
            return Ok(Restored::Unsupported.with_details("no backup was taken"));
        }
        write_atomically(ctx.granted_path(CONFIG, &p.file_name), &std::fs::read(backup)?)?;
        Ok(Restored::Success.into())
    }
}

export_handler!(@STRUCT@);

#[cfg(test)]
mod tests {
    use super::*;

    /// A sandbox stand-in with the step file and the granted /config, in a fresh directory.
    fn setup(name: &str, props: &str) -> (Context, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("@CRATE@-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("config")).unwrap();
        std::fs::write(dir.join("app.conf"), b"greeting=hello\n").unwrap();
        let ctx = Context::for_test("@ID@", props)
            .with_dirs(dir.join("sandbox"))
            .with_file("app.conf", dir.join("app.conf"))
            .with_granted(CONFIG, dir.join("config"));
        (ctx, dir.join("config"))
    }

    const PROPS: &str = r#"{"fileName": "app.conf", "installedCriteria": "1.0"}"#;

    /// The handler's calls in the order the agent makes them, natively.
    #[test]
    fn installs_into_the_granted_directory_and_then_reports_it_installed() {
        let (ctx, config) = setup("order", PROPS);
        let mut h = @STRUCT@;
        assert_eq!(h.is_installed(&ctx).unwrap().code(), 901);
        assert_eq!(h.install(&ctx).unwrap().code(), 600);
        assert_eq!(h.apply(&ctx).unwrap().code(), 700);
        assert_eq!(h.is_installed(&ctx).unwrap().code(), 900);
        assert_eq!(std::fs::read(config.join("app.conf")).unwrap(), b"greeting=hello\n");
    }

    #[test]
    fn a_file_name_with_a_path_is_refused_with_the_handlers_own_code() {
        let (ctx, _) = setup("name", r#"{"fileName": "../x", "installedCriteria": "1"}"#);
        let failure = @STRUCT@.install(&ctx).unwrap_err();
        assert_eq!(failure.erc().raw(), 0x3200_0001);
    }

    #[test]
    fn a_missing_config_directory_fails_with_its_errno() {
        let (ctx, config) = setup("errno", PROPS);
        std::fs::remove_dir(&config).unwrap();
        let failure = @STRUCT@.install(&ctx).unwrap_err();
        // ENOENT, as the gateway reports it (WASI's errno; the SDK maps a native test's own).
        assert_eq!(failure.erc().raw(), 44, "{}", failure.details());
    }
}
