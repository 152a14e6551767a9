//! The health gate. After the reboot or agent restart a deployment asked for, the gateway's
//! `[health]` checks and the deployment's own (its steps' `handlerProperties.health`) run before
//! any step confirms the update (the firmware handler commits its slot in that confirmation).
//!
//! When they fail and a slot of the deployment's handlers is on trial, the slot is marked bad and
//! the old one selected, and the deployment asks for the reboot into it; back there, the step
//! reports its rollback and the deployment fails with the check's words added. Otherwise the
//! deployment fails at once with them. A deployment whose checks do not hold (a bad URL, a
//! program the gateway does not allow) is refused before anything runs.

use super::manifests::Manifests;
use super::{Deployer, WorkflowError};
use crate::health::{self, run::Runner, DeploymentHealth};
use sandstep_model::codes::{erc, result};
use sandstep_model::journal::{Journal, Status, UnitState};
use sandstep_model::StepResult;
use tokio_util::sync::CancellationToken;

impl Deployer {
    /// Every step's own checks; the first that does not hold, named by step.
    pub(super) fn deployment_health(
        &self,
        j: &Journal,
        m: &Manifests,
    ) -> Result<Vec<DeploymentHealth>, StepResult> {
        let dir = self
            .health_dir()
            .map_err(|e| StepResult::failure(erc::WORKFLOW_HEALTH_INVALID, e.to_string()))?;
        let mut all = Vec::new();
        for unit in &j.units {
            if unit.handler_id.is_empty() {
                continue;
            }
            let (_, step, _, _) = m.step_of(unit);
            match health::deployment_health(&step.handler_properties, &self.settings.health, &dir) {
                Ok(Some(h)) => all.push(h),
                Ok(None) => {}
                Err(e) => {
                    return Err(StepResult::failure(
                        erc::WORKFLOW_HEALTH_INVALID,
                        format!("step {}: {e}", unit.label()),
                    ))
                }
            }
        }
        Ok(all)
    }

    /// Runs the checks once the deployment is past its reboot or restart. `None`: go on;
    /// otherwise the status and result the deployment ends with now.
    pub(super) async fn health_gate(
        &self,
        j: &mut Journal,
        m: &Manifests,
        cancel: &CancellationToken,
    ) -> Result<Option<(Status, StepResult)>, WorkflowError> {
        if j.health_failure.is_some() {
            // Back from the reboot into the old slot: the steps say so, and finish adds why.
            return Ok(None);
        }
        let steps = match self.deployment_health(j, m) {
            Ok(s) => s,
            Err(r) => return Ok(Some((Status::Failed, r))),
        };
        let plan = health::plan(&self.settings.health, &steps);
        if plan.is_empty() {
            return Ok(None);
        }
        let dir = self.health_dir()?;
        tracing::info!(
            checks = plan.checks.len(),
            tries = plan.tries,
            "running the health checks before the deployment commits"
        );
        crate::fault::point("health-checks");
        let runner = Runner::new(&plan, &dir, self.sandbox.ledger());
        let Err(failure) = runner.run(&plan, cancel).await else {
            return Ok(None);
        };
        let failed = StepResult::failure(erc::WORKFLOW_HEALTH_CHECK_FAILED, failure.to_string());
        if let Some(rolled) = self.roll_back_slots(j) {
            let failed = failed.clone().with_details(format!(
                "{}; slot {rolled} was on trial: it is marked bad and the other slot boots next",
                failed.result_details
            ));
            j.health_failure = Some(failed.clone());
            let r = StepResult::new(result::APPLY_REQUIRED_IMMEDIATE_REBOOT)
                .with_details(format!("rolling back: {}", failed.result_details));
            return Ok(Some((Status::RebootRequired, r)));
        }
        for u in j.units.iter_mut() {
            if matches!(u.state, UnitState::AwaitingFollowup { .. }) {
                u.state = UnitState::Done;
                u.result = Some(failed.clone());
            }
        }
        Ok(Some((Status::Failed, failed)))
    }

    /// Rolls back the slot on trial of any of the deployment's slot handlers: its label.
    fn roll_back_slots(&self, j: &Journal) -> Option<String> {
        let mut ids: Vec<&str> = j.units.iter().map(|u| u.handler_id.as_str()).collect();
        ids.dedup();
        for id in ids {
            let Some(policy) = self.settings.policy.grants(id).slot.and_then(|g| g.policy) else {
                continue;
            };
            match policy.roll_back_trial() {
                Ok(Some(slot)) => return Some(crate::capability::slot::label(slot).to_owned()),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(handler = id, "cannot roll the slot on trial back: {e:?}")
                }
            }
        }
        None
    }

    /// `<data>/health`: the checks' programs' `/work`, as a host path.
    fn health_dir(&self) -> Result<std::path::PathBuf, WorkflowError> {
        let dir = crate::datadir::ensure_dir(self.data.root(), "health", 0o700)
            .map_err(|e| super::files::setup_error(&self.data, e))?;
        use std::os::fd::AsRawFd as _;
        std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .map_err(|e| super::files::setup_error(&self.data, e))
    }
}

/// The deployment's final result, with the health failure that made it roll back: a success
/// (nothing reported the rollback) becomes that failure; a failure (the step's rollback) says why.
pub(super) fn with_health_failure(
    status: Status,
    result: StepResult,
    failure: &StepResult,
) -> (Status, StepResult) {
    match status {
        Status::Succeeded => (Status::Failed, failure.clone()),
        Status::Failed => {
            let details = format!("{}; {}", result.result_details, failure.result_details);
            (status, result.with_details(details))
        }
        other => (other, result),
    }
}
