//! sandstep's plain data, with no wasmtime: it tests and fuzzes fast and also compiles into handlers.
//!
//! - [`apt`]: ADU's apt manifest, checked for the apt handler.
//! - [`checksum`]: a portable CRC-32, shared by the sandbox benchmark's handler and host.
//! - [`codes`]: ADU result codes, extended result codes, and the codes sandstep adds.
//! - [`step`]: lifecycle actions and step results.
//! - [`context`]: what a handler call is told (update id, files, selected component).
//! - [`manifest`]: ADU v4/v5 update manifests, validated with field-path errors.
//! - [`authoring`]: writing manifests: from a step list, adding files, from ADU import manifests.
//! - [`deployment`]: the deployment message (workflow, manifest, signature, file URLs).
//! - [`inventory`]: attached components and selection by compatibility.
//! - [`json`]: JSON as ADU reads it (a UTF-8 byte order mark is skipped).
//! - [`journal`]: the persisted state machine of a deployment, checksummed.
//! - [`results`]: root and per-step results, and the result file.
//! - [`script_protocol`]: ADU's script protocol: argument splitting, tokens, action options.
//! - [`script_result`]: the result file of ADU's script protocol.
//! - [`reported`]: the reported-state document the agent sends, typed.
//! - [`shadow`]: device-shadow documents, the delta rule, topic layouts.
//! - [`status`]: how a device's reported document reads in a status table.
//! - [`window`]: maintenance windows: time ranges per weekday, opening and closing.

pub mod apt;
pub mod authoring;
pub mod checksum;
pub mod codes;
pub mod context;
pub mod deployment;
pub mod inventory;
pub mod journal;
pub mod json;
pub mod manifest;
pub mod reported;
pub mod results;
pub mod script_protocol;
pub mod script_result;
pub mod shadow;
pub mod status;
pub mod step;
pub mod window;

pub use codes::{ExtendedResultCode, Facility, Followup};
pub use context::{Component, StepContext, StepFile, UpdateId};
pub use step::{Action, StepResult};
