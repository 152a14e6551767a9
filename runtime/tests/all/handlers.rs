//! The default handlers, against real system parts.

mod script;
