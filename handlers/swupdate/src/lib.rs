//! `microsoft/swupdate:1`, ADU's first SWUpdate handler (removed from ADU's tree in bda75d5c; read
//! at its parent e0d67ec9: `src/extensions/step_handlers/swupdate_handler/src/
//! swupdate_handler.cpp` and `src/adu-shell/scripts/adu-swupdate.sh`), on sandstep's slots.
//!
//! ADU's handler: one file per step (`Download`: `..._DOWNLOAD_FAILURE_WRONG_FILECOUNT`);
//! install runs `swupdate -v -i <image> -k /adukey/public.pem -e stable,<copy>` where the copy is
//! the partition not running (`copy2` when the root is on partition 2, else `copy1`); apply
//! points the boot loader at it and asks for an immediate reboot (705); cancel and restore point
//! it back. Here slot A is `copy1` and slot B `copy2`, the slot not running comes from the slot
//! capability, and the policy holds SWUpdate to it (`inactive-slot`), so a step cannot have
//! SWUpdate write the running slot; the key is the gateway's (`host-args`). Apply, the commit
//! after a good reboot, the rollback after a bad one and the health checks are `ab_slots`', as
//! for `sandstep/firmware:1`.

use ab_slots::{AbSlots, Installer};
use sandstep_sdk::codes::{erc, ExtendedResultCode};
use sandstep_sdk::slot::Slot;
use sandstep_sdk::{export_handler, log, process, Context, Failure, StepFile};
use step_rules::swupdate::{self, SwuRun};

/// Where Debian installs SWUpdate.
const PROGRAM: &str = "/usr/bin/swupdate";

/// SWUpdate's selection for `target`, as one argument (`-e` with its value attached).
fn selection(target: Slot) -> &'static str {
    match target {
        Slot::A => "-estable,copy1",
        Slot::B => "-estable,copy2",
    }
}

/// ADU's rule: a `microsoft/swupdate:1` step has exactly one file, the image.
fn one_file(ctx: &Context) -> Result<&StepFile, Failure> {
    let names: Vec<&str> = ctx.files().iter().map(|f| f.name.as_str()).collect();
    let image = swupdate::v1_image(&names)
        .map_err(|rule| Failure::new(erc::SWUPDATE_WRONG_FILE_COUNT, rule.to_string()))?;
    Ok(ctx
        .files()
        .iter()
        .find(|f| f.name == image)
        .expect("the rule found it among the step's files"))
}

/// Installs `image` into `target` with SWUpdate; the details on success. A run that ends before
/// SWUpdate's verdict (Debian 12's SWUpdate races itself now and then, see
/// [`swupdate::read_run`]) is run again, up to [`swupdate::ATTEMPTS`] runs in all: SWUpdate writes
/// only the slot not running, and the whole image each time.
fn install(image: &StepFile, target: Slot) -> Result<String, Failure> {
    let path = process::host_path(image.path())?;
    let mut attempt = 1;
    loop {
        let out = process::Command::new(PROGRAM)
            .args(["-v", "-i", path.as_str(), selection(target)])
            .run()?;
        let output = format!("{}\n{}", out.stdout, out.stderr);
        let run = swupdate::read_run(out.success(), out.timed_out, &output);
        if run == SwuRun::Installed {
            return Ok(format!(
                "{} installed into slot {target} by SWUpdate{}",
                image.name,
                if attempt > 1 {
                    format!(" (run {attempt})")
                } else {
                    String::new()
                }
            ));
        }
        let status = out.exit_code.unwrap_or(1);
        let why = format!("swupdate exited with {status}: {}", out.tail(6));
        if run == SwuRun::Failed || attempt == swupdate::ATTEMPTS {
            let earlier = match attempt {
                1 => String::new(),
                n => format!(" (run {n}; the earlier ones ended before SWUpdate's verdict)"),
            };
            return Err(Failure::new(
                ExtendedResultCode::exit_status(erc::SWUPDATE_EXIT_STATUS_BASE, status),
                format!("{why}{earlier}"),
            ));
        }
        log::warn(&format!(
            "run {attempt} ended before SWUpdate's verdict, running it again; {why}"
        ));
        attempt += 1;
    }
}

/// SWUpdate writes the slot.
struct SwUpdate;

impl Installer for SwUpdate {
    const NO_CRITERIA: ExtendedResultCode = erc::SWUPDATE_MISSING_INSTALLED_CRITERIA;

    fn image(ctx: &Context) -> Result<&StepFile, Failure> {
        one_file(ctx)
    }

    fn check_download(ctx: &Context) -> Result<(), Failure> {
        one_file(ctx).map(|_| ())
    }

    fn install(_ctx: &Context, image: &StepFile, target: Slot) -> Result<String, Failure> {
        install(image, target)
    }
}

export_handler!(AbSlots<SwUpdate>);
