//! sandstep's plain data, with no wasmtime: it tests and fuzzes fast and also compiles into handlers.
//!
//! - [`codes`]: ADU result codes, extended result codes, and the codes sandstep adds.
//! - [`step`]: lifecycle actions and step results.
//! - [`context`]: what a handler call is told (update id, files, selected component).

pub mod codes;
pub mod context;
pub mod step;

pub use codes::{ExtendedResultCode, Facility, Followup};
pub use context::{Component, StepContext, StepFile, UpdateId};
pub use step::{Action, StepResult};
