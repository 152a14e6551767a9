//! Integration tests of the sandstep runtime, one module per area. Guests are built from source
//! by scripts/build-components.sh on first use.

mod adu_compat;
mod adu_contoso;
mod cli;
mod downloads;
mod faults;
mod fleet;
mod fuzz;
mod handlers;
mod http;
mod process;
mod restart;
mod sandbox;
mod support;
mod trust;
mod workflow;
