//! The default handlers, against real system parts.

mod apt;
mod files;
pub(crate) mod firmware;
mod script;
mod swupdate;
mod swupdate_v1;
