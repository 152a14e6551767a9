//! ADU's step lifecycle as pure decisions: given the answer a handler gave to one action, what
//! happens next. No I/O; the executor in [`super`] carries decisions out and journals them. Each
//! rule cites the ADU code it follows (repository Azure/iot-hub-device-update); "why did this
//! step end with this code" is answered here.
//!
//! ADU's reference is `src/extensions/update_manifest_handlers/steps_handler/src/steps_handler.cpp`
//! (`StepsHandler_Download`, `DoV1DownloadWork`, `StepsHandler_Install`). As there, a deployment
//! runs in two phases: the download phase asks every unit is-installed and downloads those that
//! are not installed, in order, before the install phase asks each again and runs backup,
//! install and apply; so a download failure anywhere leaves nothing installed.
//! Where sandstep differs on purpose it says so:
//! sandstep derives reboot and restart requests from the result code (ADU needs a separate API
//! call), and keeps a journal, so after the reboot a step asked for, is-installed confirms it.

use sandstep_model::codes::{erc, result, Followup};
use sandstep_model::{Action, StepResult};

/// The two phases of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// is-installed, then download (every unit, before any install).
    Download,
    /// is-installed, then backup, install, apply.
    Install,
}

/// What the executor does next with a unit.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// This unit's download phase is over; the install phase asks it again.
    Downloaded,
    /// Call this action next.
    Call(Action),
    /// The unit is finished with this result; the deployment goes on.
    Done(StepResult),
    /// The unit failed with this result; the deployment stops. `restore` first when asked.
    Fail { result: StepResult, restore: bool },
    /// Stop the deployment now for a reboot or agent restart; is-installed decides afterwards.
    Stop(Followup, StepResult),
}

/// A decision: what comes next, and a reboot or restart to do once every step is done.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub next: Next,
    pub defer: Option<Followup>,
}

impl From<Next> for Decision {
    fn from(next: Next) -> Self {
        Decision { next, defer: None }
    }
}

/// After is-installed of `handler` in `phase`. `resumed_after` is the last action before the
/// reboot or restart this unit waited for, when it waited for one.
pub fn after_is_installed(
    answer: &StepResult,
    resumed_after: Option<Action>,
    handler: &str,
    phase: Phase,
) -> Decision {
    if phase == Phase::Download {
        // ADU DoV1DownloadWork: installed -> no download (603, asked again at install); any
        // other answer -> download.
        return if answer.result_code == result::IS_INSTALLED_INSTALLED {
            Next::Downloaded
        } else {
            Next::Call(Action::Download)
        }
        .into();
    }
    // ADU: only IsInstalled_Installed (900) skips the step, as 603 (steps_handler.cpp,
    // StepsHandler_Install: "If this item is already installed, skip to the next one").
    if answer.result_code == result::IS_INSTALLED_INSTALLED {
        return Next::Done(match resumed_after {
            // sandstep: the step's own success, confirmed after the follow-up it asked for.
            Some(Action::Install) => StepResult::new(result::INSTALL_SUCCESS)
                .with_details("confirmed installed after the requested reboot or restart"),
            Some(_) => StepResult::new(result::APPLY_SUCCESS)
                .with_details("confirmed installed after the requested reboot or restart"),
            None => StepResult::new(result::INSTALL_SKIPPED_UPDATE_ALREADY_INSTALLED)
                .with_details(already_installed(answer)),
        })
        .into();
    }
    if resumed_after.is_some() {
        // sandstep: ADU re-runs the whole update after a reboot; sandstep resumes, so a step
        // that is still not installed after the reboot it asked for has failed: with the
        // handler's own failure when it gave one (a failed boot, say), else sandstep's code.
        let result = if answer.is_success() {
            StepResult::failure(
                erc::WORKFLOW_NOT_INSTALLED_AFTER_FOLLOWUP,
                format!(
                    "after the reboot or restart that `{handler}` asked for, is-installed reports the update is not installed"
                ),
            )
        } else {
            answer.clone()
        };
        return Next::Fail {
            result,
            restore: false,
        }
        .into();
    }
    // ADU: any other answer, a failure included, means "not installed" and the step goes on
    // (steps_handler.cpp: a throwing IsInstalled is read as IsInstalled_NotInstalled, and only
    // 900 is tested for).
    Next::Call(Action::Backup).into()
}

/// After download, backup, install or apply.
/// The details of a step skipped as already installed: what is-installed said, so a person
/// reading `603` learns why (ADU leaves them empty; the code is ADU's).
fn already_installed(answer: &StepResult) -> String {
    match answer.result_details.trim() {
        "" => "already installed (is-installed answered 900)".to_owned(),
        said => format!("already installed: {said}"),
    }
}

pub fn after(action: Action, answer: &StepResult) -> Decision {
    let followup = Followup::of(answer.result_code);
    if !answer.is_success() {
        // ADU: install and apply failures call Restore, best effort, and abort; a backup or
        // download failure aborts without it (StepsHandler_Install, StepsHandler_Download).
        let restore = matches!(action, Action::Install | Action::Apply);
        return Next::Fail {
            result: answer.clone(),
            restore,
        }
        .into();
    }
    // ADU: an immediate reboot or restart requested by install skips the rest ("Skip remaining
    // tasks for this instance"); sandstep resumes after it.
    if followup.is_immediate() {
        return Next::Stop(followup, answer.clone()).into();
    }
    let defer = (followup != Followup::None).then_some(followup);
    let next = match action {
        Action::Download => Next::Downloaded,
        Action::Backup => Next::Call(Action::Install),
        // ADU: install answering 603 or 604 skips apply ("If any step reported that the update
        // is already installed on the selected component, we will skip the 'apply' phase").
        Action::Install
            if matches!(
                answer.result_code,
                result::INSTALL_SKIPPED_UPDATE_ALREADY_INSTALLED
                    | result::INSTALL_SKIPPED_NO_MATCHING_COMPONENTS
            ) =>
        {
            Next::Done(answer.clone())
        }
        Action::Install => Next::Call(Action::Apply),
        _ => Next::Done(answer.clone()),
    };
    Decision { next, defer }
}

/// Two deferred follow-ups make one: a reboot covers an agent restart.
pub fn merge_deferred(earlier: Option<Followup>, later: Followup) -> Followup {
    match (earlier, later) {
        (Some(Followup::Reboot), _) | (_, Followup::Reboot) => Followup::Reboot,
        _ => later,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use result::*;

    fn code(c: i32) -> StepResult {
        StepResult::new(c)
    }

    fn skipped() -> StepResult {
        code(INSTALL_SKIPPED_UPDATE_ALREADY_INSTALLED).with_details(already_installed(&code(900)))
    }

    fn fail() -> StepResult {
        StepResult::failure(erc::SANDBOX_TRAP, "boom")
    }

    #[test]
    fn is_installed_rows() {
        // (answer, resumed after, next) - ADU steps_handler.cpp, StepsHandler_Install.
        let rows: &[(StepResult, Option<Action>, Next)] = &[
            // 900 skips the step as 603.
            (code(IS_INSTALLED_INSTALLED), None, Next::Done(skipped())),
            // 901 goes on.
            (
                code(IS_INSTALLED_NOT_INSTALLED),
                None,
                Next::Call(Action::Backup),
            ),
            // A failure is "not installed": the step goes on.
            (fail(), None, Next::Call(Action::Backup)),
            // Any other success code is not 900 either.
            (code(APPLY_SUCCESS), None, Next::Call(Action::Backup)),
        ];
        for (answer, resumed, next) in rows {
            assert_eq!(
                &after_is_installed(answer, *resumed, "h/x:1", Phase::Install).next,
                next,
                "{answer:?}"
            );
        }
    }

    #[test]
    fn the_download_phase_downloads_what_is_not_installed_and_nothing_else() {
        // ADU steps_handler.cpp, DoV1DownloadWork.
        let phase =
            |answer: StepResult| after_is_installed(&answer, None, "h/x:1", Phase::Download).next;
        assert_eq!(phase(code(IS_INSTALLED_INSTALLED)), Next::Downloaded);
        assert_eq!(
            phase(code(IS_INSTALLED_NOT_INSTALLED)),
            Next::Call(Action::Download)
        );
        assert_eq!(phase(fail()), Next::Call(Action::Download));
    }

    #[test]
    fn after_a_requested_reboot_is_installed_confirms_or_fails_the_step() {
        let installed = code(IS_INSTALLED_INSTALLED);
        let d = after_is_installed(&installed, Some(Action::Install), "h/x:1", Phase::Install);
        assert!(matches!(d.next, Next::Done(r) if r.result_code == INSTALL_SUCCESS));
        let d = after_is_installed(&installed, Some(Action::Apply), "h/x:1", Phase::Install);
        assert!(matches!(d.next, Next::Done(r) if r.result_code == APPLY_SUCCESS));
        let d = after_is_installed(
            &code(IS_INSTALLED_NOT_INSTALLED),
            Some(Action::Apply),
            "h/x:1",
            Phase::Install,
        );
        assert!(matches!(
            d.next,
            Next::Fail { result, restore: false }
                if result.extended_result_code == erc::WORKFLOW_NOT_INSTALLED_AFTER_FOLLOWUP.raw()
        ));
        // The handler's own failure (a failed boot) is kept.
        let d = after_is_installed(&fail(), Some(Action::Apply), "h/x:1", Phase::Install);
        assert_eq!(
            d.next,
            Next::Fail {
                result: fail(),
                restore: false
            }
        );
    }

    #[test]
    fn action_rows() {
        use Action::*;
        let rows: &[(Action, StepResult, Next)] = &[
            (Download, code(DOWNLOAD_SUCCESS), Next::Downloaded),
            (Backup, code(BACKUP_SUCCESS), Next::Call(Install)),
            (
                Backup,
                code(BACKUP_SUCCESS_UNSUPPORTED),
                Next::Call(Install),
            ),
            (Install, code(INSTALL_SUCCESS), Next::Call(Apply)),
            // ADU: install 603/604 skips apply.
            (
                Install,
                code(INSTALL_SKIPPED_UPDATE_ALREADY_INSTALLED),
                Next::Done(code(INSTALL_SKIPPED_UPDATE_ALREADY_INSTALLED)),
            ),
            (
                Install,
                code(INSTALL_SKIPPED_NO_MATCHING_COMPONENTS),
                Next::Done(code(INSTALL_SKIPPED_NO_MATCHING_COMPONENTS)),
            ),
            (Apply, code(APPLY_SUCCESS), Next::Done(code(APPLY_SUCCESS))),
            // ADU: failures abort; restore after install and apply only.
            (
                Download,
                fail(),
                Next::Fail {
                    result: fail(),
                    restore: false,
                },
            ),
            (
                Backup,
                fail(),
                Next::Fail {
                    result: fail(),
                    restore: false,
                },
            ),
            (
                Install,
                fail(),
                Next::Fail {
                    result: fail(),
                    restore: true,
                },
            ),
            (
                Apply,
                fail(),
                Next::Fail {
                    result: fail(),
                    restore: true,
                },
            ),
            // Immediate follow-ups stop the deployment.
            (
                Install,
                code(INSTALL_REQUIRED_IMMEDIATE_REBOOT),
                Next::Stop(
                    Followup::ImmediateReboot,
                    code(INSTALL_REQUIRED_IMMEDIATE_REBOOT),
                ),
            ),
            (
                Apply,
                code(APPLY_REQUIRED_IMMEDIATE_AGENT_RESTART),
                Next::Stop(
                    Followup::ImmediateAgentRestart,
                    code(APPLY_REQUIRED_IMMEDIATE_AGENT_RESTART),
                ),
            ),
        ];
        for (action, answer, next) in rows {
            assert_eq!(&after(*action, answer).next, next, "{action} {answer:?}");
        }
    }

    #[test]
    fn deferred_follow_ups_are_recorded_and_a_reboot_covers_a_restart() {
        let d = after(Action::Install, &code(INSTALL_REQUIRED_REBOOT));
        assert_eq!(d.next, Next::Call(Action::Apply));
        assert_eq!(d.defer, Some(Followup::Reboot));
        let d = after(Action::Apply, &code(APPLY_REQUIRED_AGENT_RESTART));
        assert_eq!(d.next, Next::Done(code(APPLY_REQUIRED_AGENT_RESTART)));
        assert_eq!(d.defer, Some(Followup::AgentRestart));
        assert_eq!(
            merge_deferred(Some(Followup::Reboot), Followup::AgentRestart),
            Followup::Reboot
        );
        assert_eq!(
            merge_deferred(Some(Followup::AgentRestart), Followup::Reboot),
            Followup::Reboot
        );
        assert_eq!(
            merge_deferred(None, Followup::AgentRestart),
            Followup::AgentRestart
        );
    }
}
