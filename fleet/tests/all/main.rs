//! Integration tests of the fleet side, one module per area: the store on SQLite and a real
//! PostgreSQL, fleet-sim against real replicas and mosquitto, and the command line. The fleet
//! with real gateways is tested from the gateway's suite (gateway/tests/all/fleet.rs,
//! rollouts.rs), which runs both binaries.

mod console;
mod console_browser;
mod console_certificates;
mod doctor;
#[cfg(feature = "dev-tools")]
mod sim;
mod store;

/// The `sandstep-fleet` binary, with no test environment leaking in.
pub fn fleet() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sandstep-fleet"));
    c.env_remove("RUST_LOG").env_remove("SANDSTEP_CONFIG");
    c
}

/// fleet-sim needs the dev tools (`--features sandstep-fleet/dev-tools`, as scripts/test.sh
/// builds): without them it is a missing prerequisite, not a pass.
#[cfg(not(feature = "dev-tools"))]
#[test]
fn the_fleet_sim_tests_need_the_dev_tools_feature() {
    sandstep_testkit::prerequisite_missing(
        "the fleet-sim tests need --features sandstep-fleet/dev-tools (scripts/test.sh enables it)",
    );
}
