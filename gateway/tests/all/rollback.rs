//! Walkthrough 5 of the README (micropython-ota, HTTP polling) as an operator follows it, with
//! the CLI only: tags made with `sandstep manifest new` and `manifest sign --out`, served over
//! loopback HTTP. Pointing `version` back at an older tag is refused as a downgrade, once and
//! finally (not retried), and `sandstep status` says why; a rollback is a tag whose manifest was
//! made with `--allow-downgrade`.

use crate::cli::{manifest_key, manifest_sign, ok, trust_root_file};
use crate::fleet::{install_files_handler, polling_agent, sandstep};
use crate::support::wait_until;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Publishes tag `tag`: main.py with `content`, under update version `version`.
fn publish(
    server: &crate::http::TestServer,
    keys: &Path,
    tag: &str,
    version: &str,
    content: &str,
    downgrade: bool,
) {
    let dir = keys.join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("main.py"), content).unwrap();
    server.put(&format!("proj/{tag}/main.py"), content.as_bytes());
    // No installedCriteria: `manifest new` fills in the file's sha256, by the handler's rules.
    let step = r#"{"handler": "sandstep/files:1", "files": ["main.py"], "handlerProperties": {"destination": "/dest/app/main.py"}}"#;
    let mut new = sandstep();
    new.args(["manifest", "new", "--update-id"])
        .arg(format!("test/poll/{version}"))
        .args(["--compat", "model=mpy", "--step", step, "--files-dir"])
        .arg(&dir)
        .arg("--out")
        .arg(dir.join("manifest.json"));
    if downgrade {
        new.arg("--allow-downgrade");
    }
    ok(&new.output().unwrap());
    ok(&manifest_sign(
        &dir.join("manifest.json"),
        &keys.join("signing"),
        &keys.join("root"),
    )
    .args(["--files-url", &server.url(&format!("proj/{tag}/"))])
    .arg("--out")
    .arg(dir.join("deployment.json"))
    .output()
    .unwrap());
    server.put(
        &format!("proj/{tag}/deployment.json"),
        &std::fs::read(dir.join("deployment.json")).unwrap(),
    );
}

fn reported(data: &Path) -> Value {
    let bytes = std::fs::read(data.join("reported.json")).unwrap_or_default();
    serde_json::from_slice::<Value>(&bytes).unwrap_or_default()["state"]["reported"].clone()
}

#[test]
fn a_rollback_by_tag_needs_a_signed_downgrade_and_a_refused_one_is_not_retried() {
    let server = crate::http::TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (data, device) = (dir.path().join("data"), dir.path().join("device"));
    std::fs::create_dir(&device).unwrap();
    install_files_handler(&data);
    manifest_key(dir.path(), "root", "manifest-ed25519", Some("poll-root"));
    manifest_key(dir.path(), "signing", "manifest-ed25519", None);
    trust_root_file(&data, &dir.path().join("root.pub"));
    // What the device would refuse is refused here first, naming the step and the rule.
    std::fs::write(dir.path().join("main.py"), "x").unwrap();
    let out = sandstep()
        .args(["manifest", "new", "--update-id", "test/poll/1.0", "--compat", "model=mpy"])
        .args(["--step", r#"{"handler": "sandstep/files:1", "files": ["main.py"], "handlerProperties": {"destination": "/dest/app/main.py", "installedCriteria": "sha256:x"}}"#])
        .arg("--files-dir")
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path().join("bad.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("instructions.steps[0]: handlerProperties.installedCriteria `sha256:x` is not a sha256 digest"),
        "{err}"
    );
    assert!(!dir.path().join("bad.json").exists());
    publish(&server, dir.path(), "v1", "1.0", "print('v1')\n", false);
    publish(&server, dir.path(), "v2", "2.0", "print('v2')\n", false);
    server.put("proj/version", b"v1\n");
    let agent = polling_agent(&server, dir.path(), &data, &device);
    let main = || std::fs::read_to_string(device.join("main.py")).unwrap_or_default();
    wait_until("v1 installed", || main() == "print('v1')\n");
    server.put("proj/version", b"v2\n");
    wait_until("v2 installed", || {
        main() == "print('v2')\n" && reported(&data)["status"] == "completed"
    });

    // Back to v1 as it is: an older version, not allowed to downgrade.
    server.put("proj/version", b"v1\n");
    wait_until("the downgrade refused", || {
        reported(&data)["retry"]["tag"] == "v1"
    });
    let r = reported(&data);
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(
        r["lastInstallResult"]["extendedResultCodes"], "B010000A",
        "{r:#}"
    );
    assert_eq!(r["retry"]["attempts"], 1, "{r:#}");
    assert_eq!(r["retry"]["nextAtMs"], Value::Null, "{r:#}");
    // The interval is 1 s and backoff would try again within 2 s: nothing is tried again.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(reported(&data)["retry"]["attempts"], 1);
    assert_eq!(main(), "print('v2')\n");
    let attempts = agent
        .output()
        .matches("deploying the server's version")
        .count();
    assert_eq!(attempts, 3, "v1, v2, then v1 once: {}", agent.output());

    // `sandstep status` on the gateway (its config) says what happened, and that it is final.
    let out = sandstep()
        .args(["status", "--config"])
        .arg(dir.path().join("agent.toml"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("  ! failed ")
            && table.contains("is older than")
            && table.contains("allowDowngrade")
            && table.contains("  ! retry of tag v1: 1 attempt(s) failed; refused for what it says"),
        "{table}"
    );

    // The rollback, signed as one: a new tag whose manifest allows the downgrade.
    publish(
        &server,
        dir.path(),
        "v1-rollback",
        "1.0",
        "print('v1')\n",
        true,
    );
    server.put("proj/version", b"v1-rollback\n");
    wait_until("the rollback installed", || {
        main() == "print('v1')\n" && reported(&data)["status"] == "completed"
    });
    let r = reported(&data);
    assert_eq!(r["retry"], Value::Null, "{r:#}");
    assert!(
        r["installedUpdateId"].as_str().unwrap().contains("\"1.0\""),
        "{r:#}"
    );
}
