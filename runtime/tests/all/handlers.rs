//! The default handlers, against real system parts.

mod apt;
mod files;
mod firmware;
mod script;
