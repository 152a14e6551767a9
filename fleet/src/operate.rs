//! Operator actions on rollouts, shared by the command line and the console: each is decided
//! by a pure rule ([`decide`], [`crate::rollout`]'s phases), saved against the version read
//! (a replica saving at the same moment makes it read and decide again), and written to the
//! audit log with who did it.

use crate::rollout::{self, Member, Progress, Rollout, State};
use crate::store::{AuditEntry, Store, StoreError};
use sandstep_model::deployment::{action, Deployment, Workflow};
use sandstep_model::manifest::Manifest;
use serde_json::Value;

/// Pause, resume or abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop deploying to further devices (those deployed to carry on).
    Pause,
    /// Carry on a paused rollout; failures so far are accepted.
    Resume,
    /// End it for good.
    Abort,
}

impl Control {
    pub fn name(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Abort => "abort",
        }
    }

    /// `pause`, `resume` or `abort`.
    pub fn parse(text: &str) -> Option<Control> {
        [Control::Pause, Control::Resume, Control::Abort]
            .into_iter()
            .find(|c| c.name() == text)
    }
}

/// Why an operator action was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum OperateError {
    #[error("no rollout `{0}`")]
    NoRollout(String),
    #[error("rollout {id} is {state}")]
    Ended { id: String, state: &'static str },
    #[error("rollout {id} is already {state}")]
    Already { id: String, state: &'static str },
    #[error("rollout {0} kept changing; try again")]
    KeptChanging(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The progress `what` leads to from `r`'s (`members`: how its devices stand), at `now`.
pub fn decide(
    r: &Rollout,
    members: &[Member],
    what: Control,
    now: u64,
) -> Result<Progress, OperateError> {
    let state = r.progress.state;
    Ok(match (what, state) {
        (_, State::Aborted | State::Finished) => {
            return Err(OperateError::Ended {
                id: r.id.clone(),
                state: state.name(),
            })
        }
        (Control::Pause, State::Running) => Progress {
            state: State::Paused,
            reason: Some("paused by the operator".into()),
            updated_ms: now,
            ..r.progress.clone()
        },
        (Control::Resume, State::Paused) => rollout::resumed(r, members, now),
        (Control::Abort, _) => Progress {
            state: State::Aborted,
            reason: Some("aborted by the operator".into()),
            updated_ms: now,
            ..r.progress.clone()
        },
        (_, s) => {
            return Err(OperateError::Already {
                id: r.id.clone(),
                state: s.name(),
            })
        }
    })
}

/// Carries out `what` on rollout `id` for `who` (`console:alice`, `cli:root`); the rollout as
/// saved.
pub async fn control(
    store: &mut Store,
    id: &str,
    what: Control,
    who: &str,
) -> Result<Rollout, OperateError> {
    for _ in 0..20 {
        let (mut r, version) = store
            .rollout(id)
            .await?
            .ok_or_else(|| OperateError::NoRollout(id.to_owned()))?;
        let now = sandstep_transport::clock::now_ms();
        let members = store.members(&r).await?;
        r.progress = decide(&r, &members, what, now)?;
        if store.save_rollout(&r, version).await? {
            store
                .add_audit(&AuditEntry {
                    at_ms: now,
                    who: who.to_owned(),
                    action: format!("rollout-{}", what.name()),
                    rollout: Some(id.to_owned()),
                    detail: format!("now {}", r.progress.state.name()),
                })
                .await?;
            return Ok(r);
        }
    }
    Err(OperateError::KeptChanging(id.to_owned()))
}

/// A rollout to start: the deployment document (signed elsewhere; its workflow is replaced by
/// the rollout's) and how it proceeds.
#[derive(Debug, Clone)]
pub struct NewRollout {
    pub id: String,
    pub group: String,
    pub deployment: Deployment,
    /// Cumulative share per phase ([`rollout::parse_phases`]).
    pub phases: Vec<u32>,
    pub max_failure_rate: Option<u32>,
    pub min_devices: u64,
    pub soak_ms: u64,
}

/// Stores `new` for the replicas to carry out, audited for `who`; the rollout and how many
/// devices its group has now.
pub async fn create(
    store: &mut Store,
    new: NewRollout,
    who: &str,
) -> Result<(Rollout, usize), OperateError> {
    let r = rollout_of(new, sandstep_transport::clock::now_ms())?;
    if store.rollout(&r.id).await?.is_some() {
        return Err(OperateError::Invalid(format!(
            "a rollout `{}` exists already",
            r.id
        )));
    }
    store.create_rollout(&r).await?;
    let members = store.members(&r).await?.len();
    store
        .add_audit(&AuditEntry {
            at_ms: r.created_ms,
            who: who.to_owned(),
            action: "rollout-create".into(),
            rollout: Some(r.id.clone()),
            detail: format!(
                "{} to group `{}`, {} device(s) now",
                r.update_id, r.group, members
            ),
        })
        .await?;
    Ok((r, members))
}

/// The rollout `new` describes, created at `now`; refused when its id, group or deployment
/// cannot be one.
pub fn rollout_of(new: NewRollout, now: u64) -> Result<Rollout, OperateError> {
    let invalid = |m: String| Err(OperateError::Invalid(m));
    if !sandstep_model::shadow::valid_device_id(&new.id) {
        return invalid(format!(
            "rollout id `{}`: use letters, digits, '-', '_', '.' and ':'",
            new.id
        ));
    }
    if new.group.trim().is_empty() {
        return invalid("the group is empty".into());
    }
    let mut doc = new.deployment;
    doc.workflow = Workflow {
        action: action::PROCESS_DEPLOYMENT,
        id: new.id.clone(),
        retry_timestamp: None,
    };
    doc.check()
        .map_err(|e| OperateError::Invalid(e.to_string()))?;
    let text = doc.update_manifest.as_deref().unwrap_or_default();
    let manifest = Manifest::parse(text)
        .map_err(|e| OperateError::Invalid(format!("the deployment's manifest: {e}")))?;
    let Ok(Value::Object(desired)) = serde_json::to_value(&doc) else {
        return invalid("the deployment does not serialise to an object".into());
    };
    Ok(Rollout {
        id: new.id.clone(),
        group: new.group,
        update_id: manifest.update_id.to_string(),
        desired,
        workflow_id: new.id,
        phases: new.phases,
        max_failure_rate: new.max_failure_rate,
        min_devices: new.min_devices,
        soak_ms: new.soak_ms,
        created_ms: now,
        progress: Progress::default(),
    })
}
