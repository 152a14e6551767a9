//! The README's five operator walkthroughs, run as written: each is a script in
//! examples/walkthroughs/ that the README shows verbatim (checked here), run with bash from the
//! repository's root against a mosquitto of the test's own (`$BROKER`) and a free port for its
//! file server (`$HTTP_PORT`), with the binaries this test was built with.

use sandstep_testkit::{free_port, prerequisite_missing, repo_root, Broker};
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

/// Runs walkthrough `script`; its whole output is shown when it fails.
fn walk(script: &str) {
    for tool in [
        "/usr/bin/jq",
        "/usr/bin/mosquitto_pub",
        "/usr/bin/python3",
        "/usr/bin/curl",
    ] {
        if !Path::new(tool).exists() {
            return prerequisite_missing(&format!("{tool} (the walkthroughs use it)"));
        }
    }
    let Some(broker) = Broker::start() else {
        return;
    };
    // A step that never ends (an agent that does not stop for its reboot) fails the test
    // instead of holding the suite.
    let out = Command::new("timeout")
        .args(["600", "bash"])
        .arg(format!("examples/walkthroughs/{script}"))
        .current_dir(repo_root())
        .env("BROKER", format!("mqtt://127.0.0.1:{}", broker.port))
        .env("HTTP_PORT", free_port().to_string())
        .env("CONSOLE_PORT", free_port().to_string())
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

/// The README's other command blocks are synopses (`ID`, `[--watch]`), not runnable as they
/// stand: each `sandstep` / `sandstep-fleet` command in them must still name a subcommand and
/// options the binaries have, so the page cannot drift from the CLI. Every option is checked
/// against that subcommand's `--help`.
#[test]
fn every_command_in_the_readmes_synopses_exists_with_its_options() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let mut checked = 0;
    for command in synopsis_commands(&readme) {
        let (bin, words, options) = split_command(&command);
        let exe = match bin {
            "sandstep-fleet" => crate::fleet::fleet_bin(),
            _ => env!("CARGO_BIN_EXE_sandstep").into(),
        };
        for path in alternatives(&words) {
            let out = Command::new(&exe)
                .args(&path)
                .arg("--help")
                .output()
                .unwrap();
            let help = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "README: `{command}`: `{bin} {}` is not a command: {}",
                path.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            for o in &options {
                assert!(
                    names_option(&help, o),
                    "README: `{command}`: `{bin} {}` has no option {o}",
                    path.join(" ")
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} commands found in the README");
    // The reading of a synopsis, pinned: alternatives, brackets, a longer option is not a match.
    let (bin, words, options) = split_command("$f rollout pause|resume ID [--watch|--wait]");
    assert_eq!((bin, alternatives(&words).len()), ("sandstep-fleet", 2));
    assert_eq!(options, ["--watch", "--wait"]);
    assert!(!names_option("  --allow-unsigned  Run it", "--allow"));
}

/// The commands of every ```sh block but the walkthroughs (which run), continuation lines
/// joined, comments cut.
fn synopsis_commands(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = readme.lines().peekable();
    let mut previous = "";
    while let Some(line) = lines.next() {
        if line != "```sh" || previous.starts_with("<!-- walkthrough:") {
            previous = line;
            continue;
        }
        let mut joined = String::new();
        for l in lines.by_ref() {
            if l == "```" {
                break;
            }
            let code = l.split(" #").next().unwrap_or("");
            let code = if code.trim_start().starts_with('#') {
                ""
            } else {
                code
            };
            joined.push_str(code.trim_end().trim_end_matches('\\'));
            if !code.trim_end().ends_with('\\') {
                out.push(std::mem::take(&mut joined));
            } else {
                joined.push(' ');
            }
        }
        previous = "```";
    }
    out.into_iter()
        .filter_map(|c| {
            let toks: Vec<&str> = c.split_whitespace().collect();
            let at = toks
                .iter()
                .position(|t| matches!(*t, "sandstep" | "sandstep-fleet" | "$s" | "$f"))?;
            Some(toks[at..].join(" "))
        })
        .collect()
}

/// (binary, subcommand words as written, options).
fn split_command(command: &str) -> (&'static str, Vec<String>, Vec<String>) {
    let mut toks = command.split_whitespace();
    let bin = match toks.next() {
        Some("sandstep-fleet" | "$f") => "sandstep-fleet",
        _ => "sandstep",
    };
    let (mut words, mut options) = (Vec::new(), Vec::new());
    let mut in_words = true;
    for t in toks {
        let is_word = t
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '|')
            && !t.starts_with('-');
        if in_words && is_word && words.len() < 2 {
            words.push(t.to_owned());
            continue;
        }
        in_words = false;
        for part in t.split('|') {
            let o = part.trim_start_matches('[');
            if let Some(name) = o.strip_prefix("--") {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                options.push(format!("--{name}"));
            }
        }
    }
    (bin, words, options)
}

/// `rollout pause|resume|abort` -> each alternative.
fn alternatives(words: &[String]) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new()];
    for w in words {
        out = out
            .into_iter()
            .flat_map(|p: Vec<String>| {
                w.split('|').map(move |alt| {
                    let mut p = p.clone();
                    p.push(alt.to_owned());
                    p
                })
            })
            .collect();
    }
    out
}

/// Whether `help` lists `option` (not only a longer option it begins).
fn names_option(help: &str, option: &str) -> bool {
    help.match_indices(option).any(|(i, _)| {
        help[i + option.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'))
    })
}
