//! Where desired state comes from, and where reports go: one adapter per source, behind
//! [`Source`]. An adapter turns its wire messages into [`SourceInput`]s and the outbox's items
//! into its wire format; it is the only place that knows that wire's JSON. The runner
//! (`agent::runner`) is the same for all.
//!
//! The sources, chosen by [`SourceSettings`] (from `[agent] source` and the source's table):
//!
//! | source | module | desired state | reports |
//! |---|---|---|---|
//! | MQTT device shadow | [`shadow`] | deltas on `state/<id>/update/delta` | patches on `.../update`, confirmed on `.../accepted` |
//! | Azure IoT Hub | [`iothub`] | the twin's `deviceUpdate.service` | `deviceUpdate.agent` in ADU's shapes |
//! | HTTP polling | [`http_poll`] | `<project>/version` and the tag's `deployment.json` | kept in `reported.json` |
//! | hawkBit DDI | [`hawkbit`] | the controller's `deploymentBase` and `cancelAction` | action feedback |

pub mod hawkbit;
pub(crate) mod http;
pub mod http_poll;
pub mod iothub;
pub mod shadow;

use super::core::Profile;
use super::outbox::Queued;
use sandstep_model::deployment::{Deployment, Workflow};
use sandstep_model::reported::{Patch, ReportedWorkflow};
use serde_json::{Map, Value};
use std::time::Instant;

/// The source in effect, with its settings: one variant per source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSettings {
    Shadow,
    HttpPoll(http_poll::HttpPollConfig),
    Iothub(crate::iothub::config::IotHubConfig),
    Hawkbit(hawkbit::HawkbitConfig),
}

/// What a source hands the runner.
#[derive(Debug)]
pub enum SourceInput {
    /// Desired fields, as ADU's deployment message carries them (or anything else).
    Desired(Map<String, Value>),
    /// A deployment the source fetched itself, under the workflow the source gave it.
    Deployment(Deployment),
    /// Desired state that cannot be read or run: reported as refused.
    Refused {
        workflow: Option<ReportedWorkflow>,
        why: String,
    },
    /// A report of the source's own (HTTP polling's `retry`).
    Report(Box<Patch>),
    /// A message of the source's own to queue (an acknowledgement), after what came before it.
    Queue(Queued),
    /// The item in flight was delivered.
    Delivered,
    /// The item in flight is to be sent again (the connection broke, the service asked).
    Resend,
    /// The service missed reports: send the whole reported document again.
    ResendWhole,
    /// The connection is gone for good: the agent cannot go on.
    Closed(String),
}

/// How sending an item went.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// On its way; its delivery comes as [`SourceInput::Delivered`].
    InFlight,
    /// Delivered already, or nothing of it goes to this source's service.
    Done,
    /// Not sent (the connection broke): sent again later.
    Failed,
}

/// How a deployment the source handed over ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Succeeded, or had nothing to do.
    Succeeded,
    /// Failed (or was cancelled): another attempt may end otherwise.
    Failed,
    /// Refused for what its signed content says against this device (a downgrade, another
    /// model, a bad signature: `erc::FINAL_REFUSALS`): another attempt ends the same way.
    Refused,
}

impl Ending {
    /// How a deployment with `status` and main extended result code `erc` ended.
    pub fn of(status: sandstep_model::journal::Status, erc: i32) -> Ending {
        use sandstep_model::codes::{erc as codes, ExtendedResultCode};
        use sandstep_model::journal::Status;
        match status {
            Status::Failed if codes::is_final_refusal(ExtendedResultCode::from_raw(erc)) => {
                Ending::Refused
            }
            Status::Failed | Status::Cancelled => Ending::Failed,
            _ => Ending::Succeeded,
        }
    }
}

/// One source of desired state and sink of reports.
pub(crate) trait Source {
    /// The next inputs, when the source has any; must be cancel-safe (the runner waits for
    /// other things at the same time).
    async fn recv(&mut self) -> Vec<SourceInput>;
    /// Whether an item may be sent now (connected, none awaiting an answer, not held back).
    fn can_send(&self) -> bool;
    /// Sends the outbox's front item in this source's wire format.
    async fn send(&mut self, item: &Queued) -> Sent;
    /// When the runner must call [`Source::due`] without other input (a poll, an answer
    /// overdue).
    fn deadline(&self) -> Option<Instant>;
    /// The deadline passed.
    async fn due(&mut self) -> Vec<SourceInput>;
    /// A deployment started (or resumed).
    fn started(&mut self, _workflow: &Workflow) {}
    /// A deployment ended, or one the source handed over was refused.
    fn finished(&mut self, _workflow: &Workflow, _ending: Ending) -> Vec<SourceInput> {
        Vec::new()
    }
    /// Messages of its own to queue when the agent starts.
    fn startup(&mut self) -> Vec<Queued> {
        Vec::new()
    }
    /// How its service expects deployments to be handled.
    fn profile(&self) -> Profile;
}
