//! The A/B slot state machine `sandstep/firmware:1` and `microsoft/swupdate:1` share; each
//! handler supplies how an image gets into a slot ([`Installer`]).
//!
//! handlerProperties: `installedCriteria` (the version the image brings, required).
//!
//! - install: the [`Installer`] puts the step's image into the inactive slot; the handler
//!   records which version went into which slot (`/state/slots.json`);
//! - apply: selects the new slot for the next boot; 705 (reboot now);
//! - is-installed, after the reboot: the booted slot's version equals installedCriteria -> commit
//!   the slot, 900; booted back into the old slot -> the new slot failed to boot: it is marked bad
//!   and the step fails with a rollback result; otherwise 901.
//! - restore (after a failed install or apply): the next boot goes back to the booted slot.
//!
//! Progress is reported `firmwareStatus`-style: downloading, applying, completed.

use sandstep_sdk::codes::{ExtendedResultCode, Facility};
use sandstep_sdk::slot::{self, Slot};
use sandstep_sdk::{done, log, Context, Failure, Handler, Outcome, StepFile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::marker::PhantomData;

const fn fw_erc(code: u32) -> ExtendedResultCode {
    ExtendedResultCode::new(
        Facility::Sandstep,
        sandstep_sdk::codes::content_component::SANDSTEP,
        0x100 | code,
    )
}
/// installedCriteria is missing (sandstep/firmware:1's code).
pub const ERC_NO_CRITERIA: ExtendedResultCode = fw_erc(1);
/// Which step file is the image is unclear.
pub const ERC_WHICH_IMAGE: ExtendedResultCode = fw_erc(2);
/// The new slot failed to boot: the device came back on the old one.
const ERC_ROLLBACK: ExtendedResultCode = fw_erc(3);
/// The new slot was selected, but the device did not reboot since (the agent restarted): the
/// selection was undone.
const ERC_NOT_REBOOTED: ExtendedResultCode = fw_erc(4);

/// How an image gets into a slot: the handler's own part.
pub trait Installer: 'static {
    /// The code for a step without installedCriteria.
    const NO_CRITERIA: ExtendedResultCode;
    /// The step's image, or why the step's files do not say which it is.
    fn image(ctx: &Context) -> Result<&StepFile, Failure>;
    /// Checks the step at download (ADU's swupdate handler counts the files there).
    fn check_download(_ctx: &Context) -> Result<(), Failure> {
        Ok(())
    }
    /// Puts `image` into `target` (never the running slot); the result's details.
    fn install(ctx: &Context, image: &StepFile, target: Slot) -> Result<String, Failure>;
}

/// The handler: the state machine over an [`Installer`].
pub struct AbSlots<I>(PhantomData<I>);

impl<I> Default for AbSlots<I> {
    fn default() -> Self {
        AbSlots(PhantomData)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Props {
    /// ADU's import tooling writes `InstalledCriteria` too (its delta deployment does).
    #[serde(alias = "InstalledCriteria")]
    installed_criteria: Option<String>,
}

/// `/state/slots.json`.
#[derive(Default, Serialize, Deserialize)]
struct Slots {
    /// Slot ("A"/"B") -> version it holds.
    versions: BTreeMap<String, String>,
    /// The slot written and selected but not yet confirmed by a boot.
    pending: Option<String>,
}

fn read_slots(ctx: &Context) -> Result<Slots, Failure> {
    match std::fs::read(ctx.state_path("slots.json")) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| Failure::new(fw_erc(4), format!("/state/slots.json is corrupt: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Slots::default()),
        Err(e) => Err(e.into()),
    }
}

fn write_slots(ctx: &Context, s: &Slots) -> Result<(), Failure> {
    let tmp = ctx.state_path("slots.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s).expect("serializes"))?;
    std::fs::rename(tmp, ctx.state_path("slots.json"))?;
    Ok(())
}

fn criteria(ctx: &Context, missing: ExtendedResultCode) -> Result<String, Failure> {
    let props: Props = ctx.properties()?;
    // The rule `sandstep manifest new` applies too (step-rules).
    step_rules::version::criteria(props.installed_criteria.as_deref())
        .map(str::to_owned)
        .map_err(|rule| Failure::new(missing, rule.to_string()))
}

fn slot_from(s: &str) -> Slot {
    if s == "B" {
        Slot::B
    } else {
        Slot::A
    }
}

/// Records that `target` now holds `version` (not yet selected).
fn record_installed(ctx: &Context, target: Slot, version: String) -> Result<(), Failure> {
    let mut slots = read_slots(ctx)?;
    slots.versions.insert(target.to_string(), version);
    slots.pending = None;
    write_slots(ctx, &slots)
}

impl<I: Installer> Handler for AbSlots<I> {
    fn is_installed(&mut self, ctx: &Context) -> Outcome<done::IsInstalled> {
        let want = criteria(ctx, I::NO_CRITERIA)?;
        let state = slot::state()?;
        let mut slots = read_slots(ctx)?;
        let running = slots.versions.get(&state.booted.to_string()).cloned();
        if let Some(pending) = slots.pending.clone() {
            let pending_slot = slot_from(&pending);
            if pending_slot == state.booted
                && running.as_deref() == Some(want.as_str())
                && (state.rebooted || state.committed)
            {
                // First boot of the new slot: it came up, so keep it. Committed already (and so
                // no longer marked as rebooted) when the power was cut between the commit and
                // this record: finish it the same way.
                slot::commit()?;
                slots.pending = None;
                write_slots(ctx, &slots)?;
                log::progress(100, "completed");
                return Ok(done::IsInstalled::Installed.with_details(format!(
                    "running {want} from slot {}; committed",
                    state.booted
                )));
            }
            if !state.rebooted {
                // The agent came back without the reboot it asked for (a crash, a service
                // restart), or this runs again before it: undo the selection, so the next boot
                // does not start a slot the deployment reports as failed.
                slot::set_next_boot(state.booted)?;
                slots.pending = None;
                write_slots(ctx, &slots)?;
                return Err(Failure::new(
                    ERC_NOT_REBOOTED,
                    format!(
                        "slot {pending_slot} ({want}) was selected, but the device did not reboot \
                         since; the selection is undone and slot {} stays the boot slot",
                        state.booted
                    ),
                ));
            }
            if pending_slot != state.booted {
                // Rebooted, but the boot loader fell back: the new slot did not come up.
                slot::mark_bad(pending_slot)?;
                slots.pending = None;
                slots.versions.remove(&pending);
                write_slots(ctx, &slots)?;
                return Err(Failure::new(
                    ERC_ROLLBACK,
                    format!(
                        "rollback: slot {pending_slot} ({want}) failed to boot; slot {} still runs {}; slot {pending_slot} is marked bad",
                        state.booted,
                        running.as_deref().unwrap_or("an unknown version")
                    ),
                ));
            }
        }
        Ok(
            if running.as_deref() == Some(want.as_str()) && state.committed {
                done::IsInstalled::Installed.into()
            } else {
                done::IsInstalled::NotInstalled.into()
            },
        )
    }

    fn download(&mut self, ctx: &Context) -> Outcome<done::Downloaded> {
        I::check_download(ctx)?;
        // The host fetched the small files; an image is streamed into the slot at install,
        // verified as it is written.
        log::progress(100, "downloading: done by the host");
        Ok(done::Downloaded::Success.into())
    }

    fn install(&mut self, ctx: &Context) -> Outcome<done::Installed> {
        let want = criteria(ctx, I::NO_CRITERIA)?;
        let image = I::image(ctx)?;
        let state = slot::state()?;
        let target = state.booted.other();
        log::info(&format!(
            "applying {} ({want}) into slot {target}",
            image.name
        ));
        log::progress(0, "applying");
        let details = I::install(ctx, image, target)?;
        record_installed(ctx, target, want)?;
        Ok(done::Installed::Success.with_details(details))
    }

    fn apply(&mut self, ctx: &Context) -> Outcome<done::Applied> {
        let state = slot::state()?;
        let target = state.booted.other();
        slot::set_next_boot(target)?;
        let mut slots = read_slots(ctx)?;
        slots.pending = Some(target.to_string());
        write_slots(ctx, &slots)?;
        Ok(
            done::Applied::Reboot(done::When::Now)
                .with_details(format!("slot {target} boots next")),
        )
    }

    fn restore(&mut self, ctx: &Context) -> Outcome<done::Restored> {
        let state = slot::state()?;
        slot::set_next_boot(state.booted)?;
        let mut slots = read_slots(ctx)?;
        slots.pending = None;
        write_slots(ctx, &slots)?;
        Ok(done::Restored::Success.with_details(format!("slot {} stays", state.booted)))
    }
}
