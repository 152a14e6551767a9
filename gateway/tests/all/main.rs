//! Integration tests of the sandstep runtime, one module per area. Guests are built from source
//! by scripts/build-components.sh on first use.

mod adu_compat;
mod adu_contoso;
mod boot;
mod cli;
mod ddi_server;
mod downloads;
mod dps;
mod faults;
mod fleet;
#[cfg(feature = "dev-tools")]
mod fuzz;
mod handlers;
mod hawkbit;
mod http;
mod iothub;
mod mqtt_tls;
mod process;
mod proxy;
mod restart;
mod rollback;
mod rollouts;
mod root_keys;
mod sandbox;
mod seeds;
mod support;
mod test_dps;
mod test_hub;
mod trust;
mod vendor_kit;
mod walkthroughs;
mod windows;
mod workflow;

/// The fuzz smoke run, the fleet simulation and the benchmark guest's check need the dev tools
/// (`--features sandstep/dev-tools`, as scripts/test.sh builds): without them they are a
/// missing prerequisite, not a pass.
#[cfg(not(feature = "dev-tools"))]
#[test]
fn the_dev_tool_tests_need_the_dev_tools_feature() {
    sandstep_testkit::prerequisite_missing(
        "the fuzz smoke run, fleet-sim and bench-guest tests need --features sandstep/dev-tools \
         (scripts/test.sh enables it)",
    );
}
