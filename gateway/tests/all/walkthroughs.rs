//! The README's five operator walkthroughs, run as written: each is a script in
//! examples/walkthroughs/ that the README shows verbatim (checked here), run with bash from the
//! repository's root against a mosquitto of the test's own (`$BROKER`) and a free port for its
//! file server (`$HTTP_PORT`), with the binaries this test was built with.

use sandstep_testkit::{prerequisite_missing, repo_root, Broker};
use std::path::Path;
use std::process::Command;

const SCRIPTS: [&str; 6] = [
    "setup.sh",
    "1-adu-multi-step.sh",
    "2-replica.sh",
    "3-firmware-ab.sh",
    "4-degu-file-set.sh",
    "5-micropython-ota.sh",
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs walkthrough `script`; its whole output is shown when it fails.
fn walk(script: &str) {
    for tool in ["/usr/bin/jq", "/usr/bin/mosquitto_pub", "/usr/bin/python3"] {
        if !Path::new(tool).exists() {
            return prerequisite_missing(&format!("{tool} (the walkthroughs use it)"));
        }
    }
    let Some(broker) = Broker::start() else {
        return;
    };
    let out = Command::new("bash")
        .arg(format!("examples/walkthroughs/{script}"))
        .current_dir(repo_root())
        .env("BROKER", format!("mqtt://127.0.0.1:{}", broker.port))
        .env("HTTP_PORT", free_port().to_string())
        .env("SANDSTEP", env!("CARGO_BIN_EXE_sandstep"))
        .env("SANDSTEP_FLEET", crate::fleet::fleet_bin())
        .env("WAIT_SECS", "120")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_readme_shows_each_walkthrough_script_verbatim() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let dir = repo_root().join("examples/walkthroughs");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed = SCRIPTS.map(str::to_owned).to_vec();
    listed.sort();
    assert_eq!(on_disk, listed, "every walkthrough script is run here");
    for script in SCRIPTS {
        let text = std::fs::read_to_string(dir.join(script)).unwrap();
        assert!(
            readme.contains(&format!(
                "<!-- walkthrough: examples/walkthroughs/{script} -->\n```sh\n{text}```\n"
            )),
            "README.md does not show examples/walkthroughs/{script} as it is: \
             scripts/readme-walkthroughs.py copies it in"
        );
    }
}

#[test]
fn walkthrough_1_adu_multi_step_with_reference_steps_runs_as_written() {
    walk("1-adu-multi-step.sh");
}

#[test]
fn walkthrough_2_the_replica_between_fleet_and_gateway_runs_as_written() {
    walk("2-replica.sh");
}

#[test]
fn walkthrough_3_firmware_ab_through_a_reboot_runs_as_written() {
    walk("3-firmware-ab.sh");
}

#[test]
fn walkthrough_4_degu_file_sets_run_as_written() {
    walk("4-degu-file-set.sh");
}

#[test]
fn walkthrough_5_micropython_ota_with_its_rollback_runs_as_written() {
    walk("5-micropython-ota.sh");
}
