//! Maintenance windows through the `sandstep` binary: a deployment waits for the gateway's
//! download window and says when it opens, installs wait for the install window after the
//! downloads, a deployment whose signed windows never meet the gateway's fails at once, a
//! wait can be cancelled, impossible windows are refused naming the field, and a deployment's
//! signed bandwidth cap holds.

use crate::cli::{data_dir, ok, sandstep, unsigned_run, write_manifest};
use crate::support::utc_window;
use crate::workflow::stateful;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A config file with this `[windows]` table body (the processes run with `TZ=UTC`).
fn config(dir: &Path, windows: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, format!("[windows]\n{windows}\n")).unwrap();
    path
}

/// `run --json`'s events.
fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A data dir with the probe, and a files dir with a manifest of one probe step `name` using
/// `f.txt`.
fn one_step(name: &str) -> (tempfile::TempDir, tempfile::TempDir, std::path::PathBuf) {
    let data = data_dir();
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(
        dir.path(),
        vec![stateful(name, json!({}), &["f.txt"])],
        &[("f.txt", b"f")],
    );
    (data, dir, m)
}

/// The manifest at `m` with its `sandstep` member set to `own`.
fn with_own(m: &Path, own: Value) {
    let mut doc: Value = serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap();
    doc["sandstep"] = own;
    std::fs::write(m, doc.to_string()).unwrap();
}

/// `sandstep run` of the unsigned manifest `m` under the config file `cfg`.
fn run_with(m: &Path, files: &Path, data: &Path, cfg: &Path) -> std::process::Command {
    let mut c = unsigned_run(m, files, data);
    c.arg("--config").arg(cfg).env("TZ", "UTC");
    c
}

fn position(events: &[Value], what: impl Fn(&Value) -> bool) -> Option<usize> {
    events.iter().position(what)
}

#[test]
fn a_deployment_waits_for_the_gateways_download_window_and_says_when_it_opens() {
    let (data, dir, m) = one_step("w");
    let cfg = config(
        dir.path(),
        &format!("download = [\"{}\"]", utc_window(3, 3600)),
    );
    let started = Instant::now();
    let out = run_with(&m, dir.path(), data.path(), &cfg)
        .output()
        .unwrap();
    let took = started.elapsed();
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("download: waiting for the window (opens ") && log.contains(" UTC)"),
        "{log}"
    );
    assert!(took >= Duration::from_secs(2), "{took:?}");
}

#[test]
fn installs_wait_for_the_install_window_after_every_download() {
    let data = data_dir();
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(
        dir.path(),
        vec![
            stateful("a", json!({}), &["a.txt"]),
            stateful("b", json!({}), &["b.txt"]),
        ],
        &[("a.txt", b"a"), ("b.txt", b"b")],
    );
    let cfg = config(
        dir.path(),
        &format!("install = [\"{}\"]", utc_window(3, 3600)),
    );
    let out = run_with(&m, dir.path(), data.path(), &cfg)
        .arg("--json")
        .output()
        .unwrap();
    let ev = events(&ok(&out));
    let wait = position(&ev, |e| e["event"] == "waiting" && e["what"] == "install")
        .expect("waited for the install window");
    let last_download = ev
        .iter()
        .rposition(|e| e["event"] == "action-finished" && e["action"] == "download")
        .expect("downloads ran");
    let first_install = position(&ev, |e| {
        e["event"] == "action-started" && e["action"] == "install"
    })
    .expect("installs ran");
    assert!(last_download < wait && wait < first_install, "{ev:#?}");
    assert!(
        ev[wait]["phrase"]
            .as_str()
            .unwrap()
            .starts_with("waiting for the window (opens "),
        "{:?}",
        ev[wait]
    );
    assert!(
        !ev.iter().any(|e| e["what"] == "download"),
        "no download window set"
    );
}

#[test]
fn signed_windows_that_never_meet_the_gateways_fail_the_deployment_at_once_naming_both() {
    let (data, dir, m) = one_step("n");
    with_own(&m, json!({"downloadWindows": ["daily 03:00-04:00"]}));
    let cfg = config(dir.path(), "download = [\"daily 01:00-02:00\"]");
    let out = run_with(&m, dir.path(), data.path(), &cfg)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "failed");
    let ev = events(&String::from_utf8_lossy(&out.stdout));
    let end = ev.last().unwrap();
    assert_eq!(end["event"], "finished");
    assert_eq!(end["status"], "failed");
    let details = end["result"]["resultDetails"].as_str().unwrap();
    for says in [
        "never open together",
        "daily 01:00-02:00",
        "daily 03:00-04:00",
        "sandstep.downloadWindows",
    ] {
        assert!(details.contains(says), "{details}");
    }
    assert_eq!(
        end["result"]["extendedResultCode"],
        json!(0xB010_000Eu32 as i32)
    );
    assert!(
        !ev.iter().any(|e| e["event"] == "action-started"),
        "{ev:#?}"
    );
}

#[test]
fn a_deployment_waiting_for_its_window_is_cancelled_by_sigint() {
    let (data, dir, m) = one_step("c");
    let cfg = config(
        dir.path(),
        &format!("download = [\"{}\"]", utc_window(3600, 7200)),
    );
    let mut child = run_with(&m, dir.path(), data.path(), &cfg)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let waiting = line.contains("waiting for the window");
        seen.push(line);
        if waiting {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.contains("waiting")),
        "{seen:#?}"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:#?}");
    let result = rest
        .iter()
        .find_map(|l| l.strip_prefix("result file: "))
        .unwrap_or_else(|| panic!("{rest:#?}"));
    let result: Value = serde_json::from_slice(&std::fs::read(result).unwrap()).unwrap();
    assert_eq!(result["status"], "cancelled");
    assert_eq!(result["resultCode"], -1, "{result:#}");
    assert!(
        result["resultDetails"]
            .as_str()
            .unwrap()
            .contains("cancelled while waiting for the download window"),
        "{result:#}"
    );
}

#[test]
fn impossible_windows_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (table, says) in [
        (
            "download = [\"Mon 25:00-26:00\"]",
            "[windows] download[0]: `Mon 25:00-26:00`: `25:00` is not a time of day",
        ),
        (
            "install = [\"daily 01:00-02:00\", \"Mon 10:00-10:00\"]",
            "[windows] install[1]: `Mon 10:00-10:00`: opens and closes at the same time",
        ),
        (
            "download = [\"Someday 01:00-02:00\"]",
            "`Someday` is not a day",
        ),
    ] {
        let cfg = config(dir.path(), table);
        let out = sandstep()
            .arg("doctor")
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{text}");
        assert!(text.contains(says), "{table}: {text}");
    }
}

#[test]
fn doctor_shows_each_window_and_whether_it_is_open_now() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "download = [\"{}\"]\ninstall = [\"{}\"]",
            utc_window(-60, 3600),
            utc_window(3600, 7200)
        ),
    );
    let out = sandstep()
        .arg("doctor")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(data.path())
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |what: &str| {
        text.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what} line: {text}"))
            .to_owned()
    };
    assert!(
        line("download window").contains("(UTC): open now, closes "),
        "{text}"
    );
    assert!(
        line("install window").contains("(UTC): closed now, opens "),
        "{text}"
    );
}

/// The signed `sandstep.maxBytesPerSec` caps the deployment's downloads through the whole
/// path: a signed deployment document, its file URLs, the workflow.
#[test]
fn a_deployments_signed_bandwidth_cap_holds_for_its_downloads() {
    let server = crate::http::TestServer::start();
    let data = data_dir();
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let m = write_manifest(
        dir.path(),
        vec![stateful("capped", json!({}), &["big.bin"])],
        &[("big.bin", &big)],
    );
    server.put("big.bin", &big);
    with_own(&m, json!({"maxBytesPerSec": 100_000}));
    let (root, signing) = crate::cli::manifest_keys(data.path(), dir.path());
    let deployment = dir.path().join("deployment.json");
    ok(&crate::cli::manifest_sign(&m, &signing, &root)
        .args([
            "--workflow-id",
            "wf-capped",
            "--files-url",
            &server.base(),
            "--out",
        ])
        .arg(&deployment)
        .output()
        .unwrap());
    let started = Instant::now();
    ok(&sandstep()
        .arg("run")
        .arg("--deployment")
        .arg(&deployment)
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap());
    let took = started.elapsed();
    // 300 KB at 100 KB/s, less the first quarter second's burst.
    assert!(took >= Duration::from_millis(2_700), "{took:?}");
    assert_eq!(server.requests("big.bin").len(), 1);
}
