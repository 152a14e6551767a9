//! The Debian packages on this machine: build them (scripts/package.sh), install the gateway's, `sandstep
//! doctor`, a signed deployment through the installed binary and handlers, an upgrade to a rebuilt
//! package (journal, vendor handler and an edited config survive), and purge (data gone).
//!
//! A test binary of its own: cargo runs test binaries one after another, so no other test sees
//! the installed /etc/sandstep/config.toml. It needs root and dpkg, and skips (saying why) when
//! a sandstep package or data is already on the machine, which it would otherwise replace.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn repo() -> PathBuf {
    Path::new(ROOT).parent().unwrap().to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The installed binary, with no test environment leaking in.
fn installed() -> Command {
    let mut c = Command::new("/usr/bin/sandstep");
    c.env_remove("SANDSTEP_CONFIG").env_remove("RUST_LOG");
    c
}

/// See `all::support::prerequisite_missing` (this test is its own binary): skipped locally,
/// a failure under scripts/test.sh.
fn prerequisite_missing(why: &str) {
    if std::env::var_os("SANDSTEP_REQUIRE_PREREQUISITES").is_some_and(|v| v == "1") {
        panic!("a prerequisite of the package test is missing under scripts/test.sh: {why}");
    }
    eprintln!("skipping the package test: {why}");
}

fn why_skip() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["/usr/bin/dpkg", "/usr/bin/dpkg-deb", "/usr/bin/objdump"] {
        if !Path::new(tool).exists() {
            return Some(format!("{tool} is missing"));
        }
    }
    if !repo().join("target/wasm/apt.wasm").exists() {
        return Some("no components in target/wasm (scripts/build-components.sh)".into());
    }
    let q = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", "sandstep"])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&q.stdout) == "installed" {
        return Some("a sandstep package is installed; not replacing it".into());
    }
    for p in [
        "/var/lib/sandstep",
        "/etc/sandstep",
        "/usr/bin/sandstep",
        "/usr/bin/sandstep-fleet",
    ] {
        if Path::new(p).exists() {
            return Some(format!("{p} exists; not replacing it"));
        }
    }
    None
}

/// Purges the package whatever happens to the test.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "sandstep", "sandstep-fleet"])
            .output();
    }
}

struct Mosquitto(Child, u16);

impl Mosquitto {
    fn start(dir: &Path) -> Option<Mosquitto> {
        let bin = Path::new("/usr/sbin/mosquitto");
        if !bin.exists() {
            let _ = Command::new("sh")
                .args(["-c", "apt-get install -y -q mosquitto >/dev/null 2>&1"])
                .status();
        }
        if !bin.exists() {
            return None;
        }
        let port = sandstep_testkit::free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Mosquitto(child, port))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The gateway's package and the fleet's, built from this test's binaries.
fn build(out: &Path, version: &str) -> (PathBuf, PathBuf) {
    let fleet_bin = Path::new(env!("CARGO_BIN_EXE_sandstep")).with_file_name("sandstep-fleet");
    assert!(
        fleet_bin.is_file(),
        "{} is not built (a workspace `cargo test` builds it)",
        fleet_bin.display()
    );
    let o = run(Command::new(repo().join("scripts/package.sh"))
        .current_dir(repo())
        .args(["--bin", env!("CARGO_BIN_EXE_sandstep"), "--fleet-bin"])
        .arg(&fleet_bin)
        .args(["--version", version, "--out"])
        .arg(out));
    let t = text(&o);
    let mut lines = t.lines().rev().map(|l| PathBuf::from(l.trim()));
    let (fleet, gateway) = (lines.next().unwrap(), lines.next().unwrap());
    for deb in [&gateway, &fleet] {
        assert!(deb.exists(), "{}", deb.display());
    }
    (gateway, fleet)
}

/// The files a .deb holds.
fn contents(deb: &Path) -> String {
    text(&run(Command::new("dpkg-deb").arg("--contents").arg(deb)))
}

/// A one-step deployment (ADU's script protocol) signed by a root key the gateway trusts.
fn signed_deployment(dir: &Path, id: &str, version: &str) -> PathBuf {
    let script = std::fs::read(repo().join("examples/demo/files/preinstall.sh")).unwrap();
    let digest = {
        use sha2::Digest;
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            sha2::Sha256::digest(&script),
        )
    };
    let manifest = json!({
        "updateId": {"provider": "test", "name": "packaged", "version": version},
        "compatibility": [{"model": "gw"}],
        "instructions": {"steps": [{
            "handler": "microsoft/script:1",
            "files": ["preinstall.sh"],
            "handlerProperties": {"scriptFileName": "preinstall.sh", "arguments": "--check-space", "installedCriteria": id}
        }]},
        "files": {"preinstall.sh": {"fileName": "preinstall.sh", "sizeInBytes": script.len(), "hashes": {"sha256": digest}}},
        "manifestVersion": "5.0"
    });
    let m = dir.join(format!("{id}.json"));
    std::fs::write(&m, manifest.to_string()).unwrap();
    let doc = dir.join(format!("{id}.deployment.json"));
    run(installed()
        .args(["manifest", "sign"])
        .arg(&m)
        .arg("--key")
        .arg(dir.join("signing"))
        .arg("--root-key")
        .arg(dir.join("root"))
        .args(["--workflow-id", id, "--out"])
        .arg(&doc));
    doc
}

fn deploy(dir: &Path, id: &str, version: &str) -> Value {
    let doc = signed_deployment(dir, id, version);
    let result = dir.join(format!("{id}.result.json"));
    let out = run(installed()
        .arg("run")
        .arg("--deployment")
        .arg(&doc)
        .arg("--files")
        .arg(repo().join("examples/demo/files"))
        .arg("--result-file")
        .arg(&result));
    assert!(text(&out).contains("microsoft/script:1"), "{}", text(&out));
    serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap()
}

fn doctor() -> String {
    let out = installed().arg("doctor").output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "doctor failed:\n{t}");
    t
}

/// `handler new` from the installed package depends on the SDK the package ships, and that
/// workspace resolves (the build itself is tested from the source tree).
fn a_new_handler_project_uses_the_packaged_sdk(dir: &Path) {
    let project = dir.join("acme-probe");
    run(installed()
        .env_remove("SANDSTEP_SDK")
        .args(["handler", "new"])
        .arg(&project)
        .args(["--id", "acme/probe:1"]));
    // Cargo.toml names the SDK by version; this machine's copy is in .cargo/config.toml.
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(manifest.contains(r#"sandstep-sdk = "0.2""#), "{manifest}");
    let config = std::fs::read_to_string(project.join(".cargo/config.toml")).unwrap();
    assert!(
        config.contains(r#"sandstep-sdk = { path = "/usr/share/sandstep/rust/sdk" }"#),
        "{config}"
    );
    run(Command::new("cargo")
        .args(["metadata", "--offline", "--format-version", "1"])
        .current_dir(&project));
}

#[test]
fn the_package_installs_runs_a_deployment_upgrades_keeping_state_and_purges() {
    if let Some(why) = why_skip() {
        prerequisite_missing(&why);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(broker) = Mosquitto::start(dir) else {
        prerequisite_missing("mosquitto cannot be installed");
        return;
    };
    let (v1, fleet_v1) = build(&dir.join("v1"), "0.2.0~test1");
    // The gateway's package carries the agent only; the fleet's, the fleet side only.
    let (gw_files, fleet_files) = (contents(&v1), contents(&fleet_v1));
    assert!(!gw_files.contains("sandstep-fleet") && !gw_files.contains("sandstep-shadow"));
    assert!(!fleet_files.contains("usr/bin/sandstep\n") && !fleet_files.contains(".wasm"));
    let _purge = Purge;
    run(Command::new("dpkg").arg("-i").arg(&v1));

    // What the package put in place.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata("/var/lib/sandstep")
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(Path::new("/lib/systemd/system/sandstep-agent.service").exists());
    assert!(!Path::new("/lib/systemd/system/sandstep-shadow.service").exists());
    // A fleet command typed on a gateway without the fleet package says where it is.
    let o = installed().args(["rollout", "list"]).output().unwrap();
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("install the sandstep-fleet package"),
        "{o:?}"
    );
    assert!(
        Path::new("/usr/share/sandstep/trust/handlers/sandstep-development-UNSAFE.pub").exists()
    );
    a_new_handler_project_uses_the_packaged_sdk(dir);
    let listed = text(&run(installed().args(["handler", "list"])));
    for id in [
        "microsoft/apt:1",
        "microsoft/script:1",
        "sandstep/firmware:1",
        "microsoft/swupdate:1",
        "sandstep/component:1",
        "sandstep/files:1",
    ] {
        assert!(
            listed.contains(id),
            "{id} not registered by postinst:\n{listed}"
        );
    }

    // The operator points the agent at its broker (an edit the upgrade must keep).
    let config = std::fs::read_to_string("/etc/sandstep/config.toml").unwrap();
    assert!(
        config.contains("url = \"mqtt://127.0.0.1:1883\""),
        "{config}"
    );
    let edited = config.replace(
        "url = \"mqtt://127.0.0.1:1883\"",
        &format!("url = \"mqtt://127.0.0.1:{}\"", broker.1),
    );
    std::fs::write("/etc/sandstep/config.toml", &edited).unwrap();
    let report = doctor();
    for line in [
        "ok    config: /etc/sandstep/config.toml parses",
        "ok    wasm engine",
        "ok    handler microsoft/script:1: verified (signed by sandstep-development-UNSAFE)",
        "ok    broker",
    ] {
        assert!(report.contains(line), "no `{line}` in:\n{report}");
    }

    // Manifest keys, and a vendor handler signed by its own trusted key.
    run(installed()
        .args([
            "key",
            "generate",
            "--kind",
            "manifest-ed25519",
            "--kid",
            "pkg-root",
            "--out",
        ])
        .arg(dir.join("root")));
    run(installed()
        .args([
            "key",
            "generate",
            "--kind",
            "manifest-ed25519",
            "--kid",
            "pkg-signing",
            "--out",
        ])
        .arg(dir.join("signing")));
    run(installed()
        .args(["trust", "add", "root"])
        .arg(dir.join("root.pub"))
        .args(["--name", "pkg-root"]));
    run(installed()
        .args(["key", "generate", "--out"])
        .arg(dir.join("vendor.key")));
    run(installed()
        .args(["trust", "add", "handler"])
        .arg(dir.join("vendor.key.pub"))
        .args(["--name", "vendor"]));
    let vendor = dir.join("vendor.wasm");
    std::fs::copy(repo().join("target/wasm/vendor-handler.wasm"), &vendor).unwrap();
    run(installed()
        .args(["handler", "sign"])
        .arg(&vendor)
        .arg("--key")
        .arg(dir.join("vendor.key")));
    run(installed()
        .args(["handler", "install"])
        .arg(&vendor)
        .args(["--id", "contoso/config:1"]));

    let r = deploy(dir, "pkg-1", "1.0");
    assert_eq!(r["resultCode"], 700, "{r:#}");
    let journals: Vec<_> = std::fs::read_dir("/var/lib/sandstep/journal")
        .unwrap()
        .collect();
    assert!(!journals.is_empty(), "the deployment left its journal");

    // Upgrade to a rebuilt package; the operator keeps the edited config.
    let (v2, fleet_v2) = build(&dir.join("v2"), "0.2.0~test2");
    run(Command::new("dpkg")
        .args(["--force-confold", "-i"])
        .arg(&v2));
    let version = text(&run(Command::new("dpkg-query").args([
        "-W",
        "-f=${Version}",
        "sandstep",
    ])));
    assert_eq!(version, "0.2.0~test2");
    assert_eq!(
        std::fs::read_to_string("/etc/sandstep/config.toml").unwrap(),
        edited
    );
    let listed = text(&run(installed().args(["handler", "list"])));
    assert!(
        listed.contains("contoso/config:1"),
        "the vendor handler survived:\n{listed}"
    );
    assert_eq!(
        std::fs::read_dir("/var/lib/sandstep/journal")
            .unwrap()
            .count(),
        journals.len(),
        "journals survived"
    );
    doctor();
    let r = deploy(dir, "pkg-2", "2.0");
    assert_eq!(r["resultCode"], 700, "{r:#}");

    // The fleet package beside it: its config, its unit, its doctor, and the gateway's binary
    // runs it for the fleet commands.
    let _ = fleet_v1;
    run(Command::new("dpkg").arg("-i").arg(&fleet_v2));
    assert!(Path::new("/lib/systemd/system/sandstep-shadow.service").exists());
    assert!(Path::new("/etc/sandstep/fleet.toml").exists());
    let fleet_doctor = Command::new("/usr/bin/sandstep-fleet")
        .env_remove("SANDSTEP_CONFIG")
        .args(["doctor", "--broker-timeout", "5", "--data-dir"])
        .arg(dir.join("fleet-data"))
        .output()
        .unwrap();
    let report = text(&fleet_doctor);
    assert!(
        report.contains("ok    config: /etc/sandstep/fleet.toml parses")
            && report.contains("ok    replica store:"),
        "{report}"
    );
    let listed = text(&run(installed()
        .args(["rollout", "list", "--data-dir"])
        .arg(dir.join("fleet-data"))));
    assert!(listed.starts_with("ROLLOUT"), "{listed}");
    run(Command::new("dpkg").args(["--purge", "sandstep-fleet"]));
    assert!(!Path::new("/usr/bin/sandstep-fleet").exists());
    assert!(
        Path::new("/etc/sandstep/config.toml").exists(),
        "the gateway's config stays"
    );

    // Purge removes the program, the config and the data.
    run(Command::new("dpkg").args(["--purge", "sandstep"]));
    for p in [
        "/usr/bin/sandstep",
        "/etc/sandstep",
        "/var/lib/sandstep",
        "/usr/lib/sandstep",
        "/usr/share/sandstep/rust",
    ] {
        assert!(!Path::new(p).exists(), "{p} is left after purge");
    }
}
