//! The default handlers, against real system parts.

mod apt;
mod firmware;
mod script;
