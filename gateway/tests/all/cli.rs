//! The `sandstep` binary: the demo deployment, exit statuses, signals, deployment documents,
//! and crash recovery at every crash point (with the `fault-injection` feature).

use crate::support::component;
use crate::workflow::{file_entry, stateful, PROBE};
use sandstep_testkit::repo_root;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub(crate) fn sandstep() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sandstep"));
    c.env_remove("RUST_LOG");
    c
}

pub(crate) fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A data dir with the probe and the vendor handler signed, trusted and installed, all through
/// the CLI.
pub(crate) fn data_dir() -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    let wasm = tempfile::tempdir().unwrap();
    let key = wasm.path().join("vendor.key");
    ok(&sandstep()
        .args(["key", "generate", "--out"])
        .arg(&key)
        .output()
        .unwrap());
    let out = ok(&sandstep()
        .args(["trust", "add", "handler"])
        .arg(wasm.path().join("vendor.key.pub"))
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap());
    assert_eq!(out.trim(), "trusted vendor", "named as the README says");
    for (name, id) in [("probe", PROBE), ("vendor-handler", "contoso/config:1")] {
        let p = wasm.path().join(format!("{name}.wasm"));
        std::fs::write(&p, component(name)).unwrap();
        ok(&sandstep()
            .args(["handler", "sign"])
            .arg(&p)
            .arg("--key")
            .arg(&key)
            .output()
            .unwrap());
        let out = sandstep()
            .args(["handler", "install"])
            .arg(&p)
            .args(["--id", id, "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        let text = ok(&out);
        assert!(text.starts_with(&format!("installed {id} (")), "{text}");
        assert!(text.contains("signed by vendor"), "{text}");
    }
    data
}

/// `sandstep key generate --kind KIND [--kid KID] --out DIR/NAME`; the secret key's path (the
/// public one is beside it, `.pub`).
pub(crate) fn manifest_key(dir: &Path, name: &str, kind: &str, kid: Option<&str>) -> PathBuf {
    let out = dir.join(name);
    let kid = kid.map(|k| ["--kid", k]);
    ok(&sandstep()
        .args(["key", "generate", "--kind", kind])
        .args(kid.iter().flatten())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap());
    out
}

/// `sandstep trust add root PUB --data-dir DATA`; what it printed.
pub(crate) fn trust_root_file(data: &Path, public: &Path) -> String {
    ok(&sandstep()
        .args(["trust", "add", "root"])
        .arg(public)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap())
}

/// `sandstep manifest sign MANIFEST --key SIGNING --root-key ROOT`, for more arguments.
pub(crate) fn manifest_sign(manifest: &Path, signing: &Path, root: &Path) -> Command {
    let mut c = sandstep();
    c.args(["manifest", "sign"])
        .arg(manifest)
        .arg("--key")
        .arg(signing)
        .arg("--root-key")
        .arg(root);
    c
}

/// Manifest keys: a root trusted by `data`, and a signing key; returns the key paths.
pub(crate) fn manifest_keys(data: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let root = manifest_key(dir, "root", "manifest-ed25519", Some("test-root"));
    let signing = manifest_key(dir, "signing", "manifest-ed25519", None);
    trust_root_file(data, &dir.join("root.pub"));
    (root, signing)
}

/// `sandstep run MANIFEST --allow-unsigned --files FILES --data-dir DATA`, for more arguments.
pub(crate) fn unsigned_run(
    manifest: &Path,
    files: impl AsRef<std::ffi::OsStr>,
    data: &Path,
) -> Command {
    let mut c = sandstep();
    c.arg("run")
        .arg(manifest)
        .arg("--allow-unsigned")
        .arg("--files")
        .arg(files)
        .arg("--data-dir")
        .arg(data);
    c
}

pub(crate) fn write_manifest(dir: &Path, steps: Vec<Value>, files: &[(&str, &[u8])]) -> PathBuf {
    let mut entries = serde_json::Map::new();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
        entries.insert(name.to_string(), file_entry(name, bytes));
    }
    let m = json!({
        "updateId": {"provider": "test", "name": "cli", "version": "1.0"},
        "compatibility": [{"model": "gw"}],
        "instructions": {"steps": steps},
        "files": entries,
        "manifestVersion": "4.0"
    });
    let path = dir.join("manifest.json");
    std::fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    path
}

fn result_file(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn the_demo_deployment_runs_from_the_examples() {
    let data = data_dir();
    let out_dir = tempfile::tempdir().unwrap();
    let result = out_dir.path().join("result.json");
    let demo = repo_root().join("examples/demo");
    // The demo device: the policy and the inventory point at it (as scripts/demo.sh renders them).
    let device = out_dir.path().join("device");
    for d in [
        "app",
        "components/sensor-0001",
        "components/sensor-0002",
        "components/motor-0001",
    ] {
        std::fs::create_dir_all(device.join(d)).unwrap();
    }
    let render = |name: &str| {
        let text = std::fs::read_to_string(demo.join(format!("{name}.in"))).unwrap();
        let path = out_dir.path().join(name);
        std::fs::write(
            &path,
            text.replace("@DEVICE@", &device.display().to_string()),
        )
        .unwrap();
        path
    };
    let config = render("config.toml");
    let inventory = render("inventory.json");

    // The default handlers, signed by the script gateway builders use, with a key we trust.
    let key = out_dir.path().join("release.key");
    ok(&sandstep()
        .args(["key", "generate", "--out"])
        .arg(&key)
        .output()
        .unwrap());
    ok(&sandstep()
        .args(["trust", "add", "handler"])
        .arg(out_dir.path().join("release.key.pub"))
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap());
    crate::support::component("script"); // built
    let signed_dir = out_dir.path().join("handlers");
    let status = Command::new(repo_root().join("scripts/sign-handlers.sh"))
        .arg("--key")
        .arg(&key)
        .arg("--out")
        .arg(&signed_dir)
        .env("SANDSTEP", env!("CARGO_BIN_EXE_sandstep"))
        .status()
        .unwrap();
    assert!(status.success());
    let installed = ok(&sandstep()
        .args(["handler", "install-defaults"])
        .arg(&signed_dir)
        .arg("--data-dir")
        .arg(data.path())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap());
    for id in [
        "microsoft/apt:1",
        "sandstep/apt:1",
        "microsoft/script:1",
        "sandstep/firmware:1",
        "sandstep/component:1",
        "sandstep/files:1",
    ] {
        assert!(
            installed.contains(&format!("installed {id} (")),
            "{installed}"
        );
    }

    let (root, signing) = manifest_keys(data.path(), out_dir.path());
    let doc = out_dir.path().join("deployment.json");
    let signed = ok(&manifest_sign(&demo.join("manifest.json"), &signing, &root)
        .arg("--out")
        .arg(&doc)
        .output()
        .unwrap());
    assert!(
        signed.starts_with(&format!("deployment document written to {}", doc.display())),
        "{signed}"
    );
    let run = || {
        sandstep()
            .arg("run")
            .arg("--deployment")
            .arg(&doc)
            .arg("--files")
            .arg(demo.join("files"))
            .arg("--components")
            .arg(&inventory)
            .arg("--config")
            .arg(&config)
            .arg("--result-file")
            .arg(&result)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap()
    };
    let stdout = ok(&run());
    assert!(
        stdout.contains("deployment contoso/gateway-demo:1.0"),
        "{stdout}"
    );
    let r = result_file(&result);
    assert_eq!(r["resultCode"], 700);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(
        r["installedUpdateId"],
        r#"{"provider":"contoso","name":"gateway-demo","version":"1.0"}"#
    );
    for step in ["step_0", "step_1", "step_2", "step_3"] {
        assert_eq!(r["stepResults"][step]["resultCode"], 700, "{step}: {r:#}");
    }
    let comps: Vec<&String> = r["stepResults"]["step_3"]["components"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        comps,
        ["sensor-0001", "sensor-0002"],
        "the motor is not a sensor"
    );
    assert_eq!(
        std::fs::read(device.join("app/app.conf")).unwrap(),
        std::fs::read(demo.join("files/app.conf")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(device.join("components/sensor-0002/.sandstep-version")).unwrap(),
        "1.1"
    );
    assert!(!device.join("components/motor-0001/sensor.conf").exists());

    let again = ok(&run());
    assert!(
        again.contains("already finished earlier (succeeded); reporting it"),
        "{again}"
    );
}

#[test]
fn exit_statuses_tell_failure_reboot_and_bad_input_apart() {
    let data = data_dir();
    let dir = tempfile::tempdir().unwrap();
    let run = |manifest: &Path, extra: &[&str]| {
        unsigned_run(manifest, dir.path(), data.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let m = write_manifest(
        dir.path(),
        vec![stateful("r", json!({"apply_code": 705}), &["f.txt"])],
        &[("f.txt", b"f")],
    );
    let out = run(&m, &[]);
    assert_eq!(out.status.code(), Some(3), "reboot required");
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("a reboot is required: reboot, then run the same command again to resume"));
    let out = run(&m, &[]);
    assert_eq!(out.status.code(), Some(0), "resumed after the 'reboot'");

    let m = write_manifest(
        dir.path(),
        vec![stateful("f", json!({"fail": "apply"}), &["f.txt"])],
        &[("f.txt", b"f")],
    );
    let out = run(&m, &[]);
    assert_eq!(out.status.code(), Some(1), "deployment failed");
    assert!(String::from_utf8_lossy(&out.stdout).contains("f: apply failed on purpose"));

    let bad = dir.path().join("inventory.json");
    std::fs::write(&bad, r#"{"components": [{"id": ""}]}"#).unwrap();
    let out = run(&m, &["--components", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("error: {}: inventory: components[0].id: must be 1-256 characters without control characters", bad.display())
    );
}

#[test]
fn a_manifest_that_breaks_a_rule_fails_with_the_field_named() {
    let data = data_dir();
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(
        dir.path(),
        vec![json!({"handler": "no-version", "files": ["f.txt"], "handlerProperties": {}})],
        &[("f.txt", b"f")],
    );
    let result = dir.path().join("r.json");
    let out = unsigned_run(&m, dir.path(), data.path())
        .arg("--result-file")
        .arg(&result)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r = result_file(&result);
    assert_eq!(
        r["resultDetails"],
        "update manifest: instructions.steps[0].handler: must look like vendor/name:version"
    );
    assert_eq!(
        r["extendedResultCode"],
        sandstep_model::codes::erc::WORKFLOW_MANIFEST_INVALID.raw()
    );
}

#[test]
fn sigint_cancels_the_running_step_and_exits_130() {
    let data = data_dir();
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(
        dir.path(),
        vec![stateful("slow", json!({"sleep_ms": 60000}), &["f.txt"])],
        &[("f.txt", b"f")],
    );
    let result = dir.path().join("r.json");
    let mut child = unsigned_run(&m, dir.path(), data.path())
        .arg("--result-file")
        .arg(&result)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the handler is inside install.
    let log = || {
        crate::workflow::walk(&data.path().join("state"))
            .into_iter()
            .find(|p| p.ends_with("slow.log"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    };
    let started = std::time::Instant::now();
    while !log().contains("install") {
        assert!(started.elapsed().as_secs() < 60, "install never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let r = result_file(&result);
    assert_eq!(r["resultCode"], -1);
    assert_eq!(r["status"], "cancelled");
    assert!(
        log().ends_with("cancel\n"),
        "the handler's cancel ran: {}",
        log()
    );
}

#[test]
fn a_deployment_document_brings_its_own_file_urls() {
    let server = crate::http::TestServer::start();
    let data = data_dir();
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(
        dir.path(),
        vec![stateful("web", json!({}), &["f.txt"])],
        &[("f.txt", b"served")],
    );
    server.put("f.txt", b"served");
    let (root, signing) = manifest_keys(data.path(), dir.path());
    let doc_path = dir.path().join("deployment.json");
    ok(&manifest_sign(&m, &signing, &root)
        .args([
            "--workflow-id",
            "wf-doc-1",
            "--files-url",
            &server.base(),
            "--out",
        ])
        .arg(&doc_path)
        .output()
        .unwrap());
    let doc: Value = serde_json::from_slice(&std::fs::read(&doc_path).unwrap()).unwrap();
    assert_eq!(doc["fileUrls"]["f.txt"], server.url("f.txt"));
    let out = sandstep()
        .arg("run")
        .arg("--deployment")
        .arg(&doc_path)
        .arg("--data-dir")
        .arg(data.path())
        .arg("--json")
        .output()
        .unwrap();
    let stdout = ok(&out);
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["event"], "planned");
    assert_eq!(events.last().unwrap()["event"], "finished");
    assert_eq!(events.last().unwrap()["status"], "succeeded");
    assert_eq!(server.requests("f.txt").len(), 1);
}

/// A power cut while the health checks run (after the restart the deployment asked for) must
/// not skip them: the next start runs them again, and their failure fails the deployment.
#[cfg(feature = "fault-injection")]
#[test]
fn cut_during_the_health_checks_the_next_start_runs_them_again() {
    let data = data_dir();
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(
        dir.path(),
        vec![stateful("svc", json!({"apply_code": 707}), &["f.txt"])],
        &[("f.txt", b"payload")],
    );
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[health]\nprograms = [[\"/bin/sh\", \"-c\", \"echo not ready; exit 1\"]]\ntries = 1\n",
    )
    .unwrap();
    let run = |crash: Option<&str>| {
        let mut c = unsigned_run(&m, dir.path(), data.path());
        c.arg("--config").arg(&config);
        if let Some(point) = crash {
            c.env("SANDSTEP_CRASH_AT", point);
        }
        c.output().unwrap()
    };
    let first = run(None);
    assert_eq!(first.status.code(), Some(4), "restart asked for: {first:?}");
    let cut = run(Some("health-checks"));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(cut.status.signal(), Some(libc::SIGABRT), "{cut:?}");
    let last = run(None);
    assert!(!last.status.success(), "{last:?}");
    let said =
        String::from_utf8_lossy(&last.stdout).into_owned() + &String::from_utf8_lossy(&last.stderr);
    assert!(
        said.contains(
            "health check program `/bin/sh -c echo not ready; exit 1` failed (try 1 of 1)"
        ),
        "{said}"
    );
}

/// Kills `sandstep run` at every crash point (after each journal write and each handler call)
/// and restarts it: every deployment must end completed, with each step applied exactly once,
/// an intact journal and a correct result file.
#[cfg(feature = "fault-injection")]
#[test]
fn killed_at_every_crash_point_the_deployment_finishes_exactly_once() {
    use sandstep_model::journal::{Journal, Status};
    let template = data_dir();
    let dir = tempfile::tempdir().unwrap();
    let child = json!({
        "updateId": {"provider": "test", "name": "child", "version": "1.0"},
        "compatibility": [{"group": "g"}],
        "instructions": {"steps": [stateful("child", json!({}), &["f.txt"])]},
        "files": {"f.txt": file_entry("f.txt", b"payload")},
        "manifestVersion": "4.0"
    })
    .to_string();
    let m = write_manifest(
        dir.path(),
        vec![
            stateful("one", json!({}), &["f.txt"]),
            stateful("two", json!({}), &["f.txt"]),
            json!({"type": "reference", "detachedManifestFileId": "child.json"}),
            stateful("three", json!({}), &["f.txt"]),
            stateful("four", json!({"apply_code": 706}), &["f.txt"]),
            stateful("five", json!({}), &["f.txt"]),
            stateful("six", json!({}), &["f.txt"]),
        ],
        &[("f.txt", b"payload"), ("child.json", child.as_bytes())],
    );
    let inventory = dir.path().join("inventory.json");
    std::fs::write(&inventory, json!({"components": [{"id": "c1", "group": "g"}, {"id": "c2", "group": "g"}, {"id": "c3", "group": "g"}]}).to_string()).unwrap();

    let attempt = |n: u64| -> bool {
        let data = tempfile::tempdir().unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", template.path().display()))
            .arg(data.path())
            .status()
            .unwrap();
        assert!(status.success());
        let run = |crash: Option<u64>| {
            let mut c = unsigned_run(&m, dir.path(), data.path());
            c.arg("--components").arg(&inventory);
            if let Some(n) = crash {
                c.env("SANDSTEP_CRASH_AT", n.to_string());
            }
            c.output().unwrap()
        };
        let crashed = run(Some(n));
        if crashed.status.code() == Some(3) {
            // Step four asked for a reboot after the last step: "reboot" (run again) to finish.
            let after = run(Some(n));
            if after.status.success() {
                return false; // past the last crash point
            }
        } else if crashed.status.success() {
            return false;
        }
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            crashed.status.signal(),
            Some(libc::SIGABRT),
            "point {n}: {}",
            String::from_utf8_lossy(&crashed.stderr)
        );
        let mut resumed = run(None);
        if resumed.status.code() == Some(3) {
            resumed = run(None);
        }
        assert!(
            resumed.status.success(),
            "point {n}: resumed run failed: {}\n{}",
            String::from_utf8_lossy(&resumed.stdout),
            String::from_utf8_lossy(&resumed.stderr)
        );
        // Each step applied exactly once.
        let logs: Vec<PathBuf> = crate::workflow::walk(&data.path().join("state"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        for name in ["one", "two", "three", "four", "five", "six"] {
            let log = std::fs::read_to_string(
                logs.iter()
                    .find(|p| p.ends_with(format!("{name}.log")))
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(
                log.matches("apply").count(),
                1,
                "point {n}: step {name} log:\n{log}"
            );
        }
        // The child step shares one state dir across components: at most one apply each.
        let child_log =
            std::fs::read_to_string(logs.iter().find(|p| p.ends_with("child.log")).unwrap())
                .unwrap();
        assert!(
            child_log.matches("apply").count() <= 3,
            "point {n}: {child_log}"
        );
        // The journal is intact and says succeeded.
        let jdir = data.path().join("journal");
        let journals: Vec<PathBuf> = std::fs::read_dir(&jdir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "journal"))
            .collect();
        assert_eq!(journals.len(), 1, "point {n}");
        let j = Journal::decode(&std::fs::read(&journals[0]).unwrap()).unwrap();
        assert_eq!(j.status, Status::Succeeded, "point {n}");
        // The result file agrees.
        let results = data.path().join("results");
        let r: Value = serde_json::from_slice(
            &std::fs::read(
                std::fs::read_dir(results)
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap()
                    .path(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(r["resultCode"], 700, "point {n}: {r:#}");
        for step in [
            "step_0", "step_1", "step_2", "step_3", "step_4", "step_5", "step_6",
        ] {
            let code = r["stepResults"][step]["resultCode"].as_i64().unwrap();
            assert!(
                [700, 603, 706].contains(&code),
                "point {n}: {step} = {code}"
            );
        }
        true
    };
    // Two workers share the points.
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tested = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if attempt(n) {
                        tested.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    } else {
                        done.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let tested = tested.load(std::sync::atomic::Ordering::SeqCst);
    // A point after each journal write (each unit's state change: downloaded, done, awaiting a
    // reboot), each handler action and each file fetched: 79 in this deployment.
    assert!(tested >= 70, "only {tested} crash points");
    eprintln!("crash-tested {tested} points");
}

#[test]
fn handler_verify_says_who_signed_or_why_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("acme.key");
    ok(&sandstep()
        .args(["key", "generate", "--out"])
        .arg(&key)
        .output()
        .unwrap());
    let meta = std::fs::metadata(&key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the secret key is private"
    );
    let again = sandstep()
        .args(["key", "generate", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "an existing key is never overwritten"
    );

    let trust = dir.path().join("trust");
    std::fs::create_dir(&trust).unwrap();
    std::fs::copy(dir.path().join("acme.key.pub"), trust.join("acme.pub")).unwrap();
    let wasm = dir.path().join("h.wasm");
    std::fs::write(&wasm, component("probe")).unwrap();

    let verify = || {
        sandstep()
            .args(["handler", "verify"])
            .arg(&wasm)
            .arg("--trust")
            .arg(&trust)
            .output()
            .unwrap()
    };
    let out = verify();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "{}: refused: unsigned: the component has no `signature` section",
            wasm.display()
        )
    );
    ok(&sandstep()
        .args(["handler", "sign"])
        .arg(&wasm)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap());
    let out = ok(&verify());
    assert_eq!(out.trim(), format!("{}: signed by acme", wasm.display()));
}

#[test]
fn a_handler_key_scoped_to_a_vendor_vouches_only_for_that_vendors_ids_not_for_a_vendor_named_alike()
{
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("contoso.key");
    ok(&sandstep()
        .args(["key", "generate", "--out"])
        .arg(&key)
        .output()
        .unwrap());
    let out = ok(&sandstep()
        .args(["trust", "add", "handler"])
        .arg(dir.path().join("contoso.key.pub"))
        .args(["--scope", "contoso", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap());
    assert_eq!(out.trim(), "trusted contoso for contoso/*");
    let listed = ok(&sandstep()
        .args(["trust", "list", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap());
    assert!(listed.contains("signs contoso/*"), "{listed}");
    let wasm = dir.path().join("vendor-handler.wasm");
    std::fs::write(&wasm, component("vendor-handler")).unwrap();
    ok(&sandstep()
        .args(["handler", "sign"])
        .arg(&wasm)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap());
    let install = |id: &str| {
        sandstep()
            .args(["handler", "install"])
            .arg(&wasm)
            .args(["--id", id, "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap()
    };
    ok(&install("contoso/config:1"));
    for id in ["microsoft/apt:1", "contosoevil/x:1", "contoso-evil/x:1"] {
        let out = install(id);
        assert!(!out.status.success(), "{id} was installed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "signed by contoso, whose scope does not cover handler id `{id}`"
            )),
            "{err}"
        );
    }
    let bad = sandstep()
        .args(["trust", "add", "handler"])
        .arg(dir.path().join("contoso.key.pub"))
        .args(["--scope", "contoso/modem/", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("--scope") && err.contains("`contoso/modem/`"),
        "{err}"
    );
}

/// `manifest new` / `add-file` / `from-import` write what devices read, with sizes and hashes
/// from the files: a new manifest runs; ADU's own sample import manifest converts, and the
/// stale size and hash it declares for its apt manifest are reported unless the local file is
/// taken as it is.
#[test]
fn manifests_are_written_from_files_a_step_list_and_adus_import_manifests() {
    let data = data_dir();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), b"alpha").unwrap();
    let m = dir.path().join("new.json");
    let step = serde_json::to_string(&stateful("new", json!({}), &["a.txt"])).unwrap();
    ok(&sandstep()
        .args(["manifest", "new", "--update-id", "contoso/toaster/1.0"])
        .args([
            "--compat",
            "manufacturer=contoso,model=toaster",
            "--step",
            &step,
        ])
        .arg("--files-dir")
        .arg(dir.path())
        .arg("--out")
        .arg(&m)
        .output()
        .unwrap());
    let v: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    assert_eq!(v["files"]["a.txt"], file_entry("a.txt", b"alpha"));
    // A rebuilt payload and a second file: add-file refreshes and lists it in step 0.
    std::fs::write(dir.path().join("a.txt"), b"alpha 2").unwrap();
    std::fs::write(dir.path().join("b.txt"), b"beta").unwrap();
    ok(&sandstep()
        .args(["manifest", "add-file"])
        .arg(&m)
        .arg(dir.path().join("a.txt"))
        .arg(dir.path().join("b.txt"))
        .args(["--step", "0"])
        .output()
        .unwrap());
    let v: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    assert_eq!(v["files"]["a.txt"], file_entry("a.txt", b"alpha 2"));
    assert_eq!(
        v["instructions"]["steps"][0]["files"],
        json!(["a.txt", "b.txt"])
    );
    let out = unsigned_run(&m, dir.path(), data.path()).output().unwrap();
    ok(&out);

    // ADU's docs/sample-artifacts import manifest, with the apt manifest from the same place.
    let adu = repo_root().join("tests/adu");
    let import = dir.path().join("sample.importmanifest.json");
    std::fs::copy(
        adu.join("import/sample-package-update-1.0.1-importManifest.json"),
        &import,
    )
    .unwrap();
    std::fs::copy(
        adu.join("apt/libcurl4-doc-apt-manifest.json"),
        dir.path().join("libcurl4-doc-apt-manifest.json"),
    )
    .unwrap();
    let convert = |extra: &[&str]| {
        sandstep()
            .args(["manifest", "from-import"])
            .arg(&import)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = convert(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("files (`libcurl4-doc-apt-manifest.json`): `libcurl4-doc-apt-manifest.json` on disk (147 bytes"),
        "{err}"
    );
    let text = ok(&convert(&["--use-local-files"]));
    let written = dir.path().join("Contoso.SampleUpdate1.1.0.1.manifest.json");
    assert_eq!(
        text.trim(),
        format!("manifest written to {}", written.display())
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&written).unwrap()).unwrap();
    assert_eq!(v["instructions"]["steps"][0]["handler"], "microsoft/apt:1");
    assert_eq!(
        v["files"]["libcurl4-doc-apt-manifest.json"]["sizeInBytes"],
        147
    );
}

/// `manifest new` refuses, naming the step and the handler, what the default handlers refuse on
/// the device by the same rules (step-rules, and the apt parser): an apt step without its
/// criteria or with an apt manifest that does not parse, a script not among the step's files,
/// an SWUpdate v2 swuFileName that leaves the work folder. ADU's apt manifests are accepted,
/// its contoso "bad" one too (no packages: it parses, and fails at download under ADU's agent
/// as under sandstep).
#[test]
fn manifest_new_refuses_what_the_default_handlers_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let adu = repo_root().join("tests/adu/apt");
    for f in [
        "libcurl4-doc-apt-manifest.json",
        "bad-apt-manifest-1.0.json",
    ] {
        std::fs::copy(adu.join(f), dir.path().join(f)).unwrap();
    }
    for f in ["install.sh", "image.swu"] {
        std::fs::write(dir.path().join(f), b"x").unwrap();
    }
    std::fs::write(
        dir.path().join("broken.json"),
        b"{\"name\": \"x\", \"version\": ",
    )
    .unwrap();
    let new = |step: &str| {
        sandstep()
            .args([
                "manifest",
                "new",
                "--update-id",
                "contoso/gw/1.0",
                "--compat",
                "model=gw",
            ])
            .args(["--step", step, "--files-dir"])
            .arg(dir.path())
            .arg("--out")
            .arg(dir.path().join("m.json"))
            .output()
            .unwrap()
    };
    let refused = |step: &str, want: &str| {
        let out = new(step);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{step}: {err}");
        assert!(!dir.path().join("m.json").exists());
    };
    refused(
        r#"{"handler": "microsoft/apt:1", "files": ["libcurl4-doc-apt-manifest.json"], "handlerProperties": {}}"#,
        "instructions.steps[0]: handlerProperties.installedCriteria is required (microsoft/apt:1 refuses it)",
    );
    refused(
        r#"{"handler": "microsoft/apt:1", "files": ["broken.json"], "handlerProperties": {"installedCriteria": "1"}}"#,
        "instructions.steps[0]: apt manifest `broken.json`:",
    );
    refused(
        r#"{"handler": "microsoft/script:1", "files": ["install.sh"], "handlerProperties": {"scriptFileName": "other.sh"}}"#,
        "scriptFileName `other.sh` is not one of the step's files (install.sh)",
    );
    refused(
        r#"{"handler": "microsoft/swupdate:2", "files": ["install.sh", "image.swu"], "handlerProperties": {"scriptFileName": "install.sh", "swuFileName": "../image.swu"}}"#,
        "swuFileName `../image.swu` is not a file name in the work folder",
    );
    refused(
        r#"{"handler": "sandstep/firmware:1", "files": ["image.swu"], "handlerProperties": {}}"#,
        "handlerProperties.installedCriteria (the new version) is required (sandstep/firmware:1 refuses it)",
    );
    refused(
        r#"{"handler": "sandstep/firmware:1", "files": ["image.swu", "install.sh"], "handlerProperties": {"installedCriteria": "2.0"}}"#,
        "step has 2 files; say which is the image with handlerProperties.imageFileName",
    );
    for apt in [
        "libcurl4-doc-apt-manifest.json",
        "bad-apt-manifest-1.0.json",
    ] {
        ok(&new(&format!(
            r#"{{"handler": "microsoft/apt:1", "files": ["{apt}"], "handlerProperties": {{"installedCriteria": "apt-1"}}}}"#
        )));
    }
}

/// A power cut while an image streams into its slot: the next run resumes from the slot's last
/// durable checkpoint (a Range request from there), and the whole image still verifies.
#[cfg(feature = "fault-injection")]
#[test]
fn a_crash_mid_stream_resumes_from_the_slots_last_checkpoint() {
    let dev = crate::handlers::firmware::Device::new();
    let server = crate::http::TestServer::start();
    let mut env = crate::workflow::Env::new();
    env.install("sandstep/firmware:1", "firmware");
    let image: Vec<u8> = (0..40_000_000u32).map(|i| (i % 253) as u8).collect();
    env.file("fw.img", &image);
    std::fs::remove_file(env.files.path().join("fw.img")).unwrap();
    server.put("fw.img", &image);
    let manifest = env.files.path().join("manifest.json");
    std::fs::write(
        &manifest,
        env.manifest(vec![json!({"handler": "sandstep/firmware:1", "files": ["fw.img"], "handlerProperties": {"installedCriteria": "4.0"}})]),
    )
    .unwrap();
    let config = env.files.path().join("config.toml");
    std::fs::write(&config, dev.config_text()).unwrap();
    let run = |crash: bool| {
        let mut c = unsigned_run(&manifest, server.base(), env.data.path());
        c.arg("--config").arg(&config);
        if crash {
            c.env("SANDSTEP_CRASH_AT", "stream-checkpoint");
        }
        c.output().unwrap()
    };
    let out = run(true);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("fault injection: crashing at stream-checkpoint"));
    let records = crate::workflow::walk(&env.data.path().join("streams"));
    assert_eq!(records.len(), 1, "{records:?}");
    let durable: u64 = std::fs::read_to_string(&records[0])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        durable >= 32 << 20 && durable < image.len() as u64,
        "{durable}"
    );
    let out = run(false);
    assert_eq!(
        out.status.code(),
        Some(3),
        "reboot required: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.requests("fw.img"), [None, Some(durable)]);
    assert!(std::fs::read(dev.path("b.img")).unwrap() == image);
    assert!(crate::workflow::walk(&env.data.path().join("streams")).is_empty());
}

/// `sandstep firmware index` writes the block index the slot capability reads.
#[test]
fn firmware_index_writes_the_block_index_of_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let image: Vec<u8> = (0..300_000u32).map(|i| (i % 7) as u8).collect();
    let path = dir.path().join("fw.img");
    std::fs::write(&path, &image).unwrap();
    let out = ok(&sandstep()
        .args(["firmware", "index"])
        .arg(&path)
        .args(["--block-size", "65536"])
        .output()
        .unwrap());
    assert!(
        out.contains("5 blocks of 65536 bytes for 300000 bytes"),
        "{out}"
    );
    let index = sandstep::blockindex::BlockIndex::parse(
        &std::fs::read(dir.path().join("fw.img.blockindex")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        index,
        sandstep::blockindex::BlockIndex::of(&mut &image[..], 65536).unwrap()
    );
    let bad = sandstep()
        .args(["firmware", "index"])
        .arg(&path)
        .args(["--block-size", "1000"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// `step call` prints extended result codes in hex, as result files and `status` do.
#[test]
fn step_call_prints_extended_codes_in_hex() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("vendor-handler.wasm");
    std::fs::write(&wasm, component("vendor-handler")).unwrap();
    let out = sandstep()
        .args(["step", "call"])
        .arg(&wasm)
        .arg("install")
        .args(["--handler-id", "contoso/config:1", "--properties", "{}"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let erc = v["extendedResultCode"].as_str().unwrap();
    assert!(
        erc.len() == 8
            && erc
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
            && erc != "00000000",
        "{v}"
    );
}

/// A handler's `dirs` grant is what `handler list` shows and what `step call` maps in, read
/// from a config file whose relative host path is relative to the file.
#[test]
fn handler_list_shows_a_dirs_grant_and_step_call_maps_it_in() {
    let data = data_dir();
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("granted")).unwrap();
    let config = t.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[handlers.\"{PROBE}\"]\ndirs = [{{ host = \"granted\", guest = \"/config\", writable = true }}]\n"
        ),
    )
    .unwrap();
    let list = ok(&sandstep()
        .args(["handler", "list", "--data-dir"])
        .arg(data.path())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap());
    let row = list.lines().find(|l| l.starts_with(PROBE)).unwrap();
    let host = t.path().join("granted");
    assert!(
        row.ends_with(&format!("granted: /config={} (rw)", host.display())),
        "{list}"
    );

    let wasm = t.path().join("probe.wasm");
    std::fs::write(&wasm, component("probe")).unwrap();
    let out = sandstep()
        .args(["step", "call"])
        .arg(&wasm)
        .arg("install")
        .args(["--handler-id", PROBE, "--properties"])
        .arg(json!({"op": "write", "path": "/config/written"}).to_string())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/config = "),
        "step call says what it maps in"
    );
    assert!(
        host.join("written").is_file(),
        "the probe wrote through the grant"
    );
}

/// A cancel arriving as is-installed begins ends the step there, with the handler's cancel:
/// the stopped call is not taken for "not installed" (which went on to download and to call a
/// broken session).
#[test]
fn a_cancel_during_is_installed_ends_the_step_with_its_cancel_and_nothing_after() {
    let data = data_dir();
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(
        dir.path(),
        vec![stateful("c", json!({}), &["f.txt"])],
        &[("f.txt", b"f")],
    );
    let out = unsigned_run(&m, dir.path(), data.path())
        .args(["--cancel-during", "is-installed"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "cancelled");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("cancel -> 800"), "{log}");
    assert!(!log.contains("download ->"), "{log}");
    assert!(!log.contains("cannot be called again"), "{log}");
}
