//! `sandstep/firmware:1`: a firmware image into the inactive A/B slot, swupdate-like; the slot
//! state machine is `ab_slots`' (apply, commit after a good reboot, rollback after a bad one).
//!
//! handlerProperties: `installedCriteria` (the version the image brings, required),
//! `imageFileName` (optional: which step file is the image; default the only file).
//!
//! Install: the host streams the image from /payload into the inactive slot and checks its
//! sha256 (the image never passes through this handler's memory).

use ab_slots::{AbSlots, Installer, ERC_NO_CRITERIA, ERC_WHICH_IMAGE};
use sandstep_sdk::codes::{erc, ExtendedResultCode};
use sandstep_sdk::slot::{self, Slot};
use sandstep_sdk::{export_handler, Context, Failure, StepFile};
use serde::Deserialize;
use step_rules::version::VersionRule;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Props {
    image_file_name: Option<String>,
}

/// The host writes the slot (`slot.write-image`).
struct HostWrite;

impl Installer for HostWrite {
    const NO_CRITERIA: ExtendedResultCode = ERC_NO_CRITERIA;

    fn image(ctx: &Context) -> Result<&StepFile, Failure> {
        let props: Props = ctx.properties()?;
        // The rule `sandstep manifest new` applies too (step-rules).
        let names: Vec<&str> = ctx.files().iter().map(|f| f.name.as_str()).collect();
        let image = step_rules::version::image_file(props.image_file_name.as_deref(), &names)
            .map_err(|rule| {
                let code = match rule {
                    VersionRule::WhichImage(_) => ERC_WHICH_IMAGE,
                    _ => erc::SDK_MISSING_FILE,
                };
                Failure::new(code, rule.to_string())
            })?;
        ctx.file(image)
    }

    fn install(_ctx: &Context, image: &StepFile, target: Slot) -> Result<String, Failure> {
        let written = slot::write_image(target, image.path(), Some(&image.sha256))?;
        Ok(if written.fetched < written.bytes {
            format!(
                "{} bytes into slot {target}; {} fetched, the rest was on the device",
                written.bytes, written.fetched
            )
        } else {
            format!("{} bytes into slot {target}", written.bytes)
        })
    }
}

export_handler!(AbSlots<HostWrite>);
