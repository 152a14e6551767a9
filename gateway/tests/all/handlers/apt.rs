//! `microsoft/apt:1` against the real dpkg and apt-get of this machine, with .deb packages the
//! test builds (dpkg-deb) and installs from the step's payload. Needs root; skipped otherwise.

use crate::workflow::{Env, Recorder};
use sandstep::config::Config;
use sandstep::datadir::DataDir;
use sandstep::sandbox::{EngineOptions, Sandbox};
use sandstep::workflow::{Deployer, Outcome};
use sandstep_model::journal::Status;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

const APT: &str = "microsoft/apt:1";
const PKG: &str = "sandstep-test-hello";

/// dpkg has one lock: apt tests run one at a time.
static DPKG: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = [
        "/usr/bin/apt-get",
        "/usr/bin/dpkg-deb",
        "/usr/bin/dpkg-query",
    ]
    .iter()
    .all(|p| Path::new(p).exists());
    if !(root && tools) {
        sandstep_testkit::prerequisite_missing("the apt tests need root and dpkg/apt-get");
    }
    root && tools
}

/// Builds `<PKG>_<version>_all.deb` installing /usr/share/<PKG>/hello.txt.
fn build_deb(dir: &Path, version: &str) -> Vec<u8> {
    build_deb_with(dir, version, None)
}

/// As [`build_deb`], with a `postinst` maintainer script.
fn build_deb_with(dir: &Path, version: &str, postinst: Option<&str>) -> Vec<u8> {
    let root = dir.join(format!("pkg-{version}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    if let Some(script) = postinst {
        use std::os::unix::fs::PermissionsExt;
        let path = root.join("DEBIAN/postinst");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::create_dir_all(root.join(format!("usr/share/{PKG}"))).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!("Package: {PKG}\nVersion: {version}\nArchitecture: all\nMaintainer: sandstep tests <tests@sandstep.invalid>\nDescription: sandstep apt handler test package\n"),
    )
    .unwrap();
    std::fs::write(
        root.join(format!("usr/share/{PKG}/hello.txt")),
        format!("hello {version}\n"),
    )
    .unwrap();
    let out = dir.join(format!("{PKG}_{version}_all.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&root)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    std::fs::read(out).unwrap()
}

fn installed_version() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status} ${Version}", PKG])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.strip_prefix("installed ").map(str::to_owned)
}

fn purge() {
    let _ = Command::new("dpkg").args(["--purge", PKG]).output();
}

async fn run(env: &Env, req: sandstep::workflow::Request) -> Outcome {
    let data = DataDir::open(env.data.path()).unwrap();
    let sandbox = Arc::new(Sandbox::new(&EngineOptions::default(), None).unwrap());
    Deployer::new(sandbox, data, Config::default())
        .unwrap()
        .run(
            req,
            Arc::new(Recorder::default()),
            &CancellationToken::new(),
        )
        .await
        .unwrap()
}

/// A deployment of one apt step: the apt manifest plus the given .deb files.
fn apt_step(
    env: &mut Env,
    tag: &str,
    packages: serde_json::Value,
    debs: &[(String, Vec<u8>)],
    restart: bool,
    criteria: Option<&str>,
) -> String {
    let manifest = json!({"name": format!("hello-{tag}"), "version": "1.0", "packages": packages, "agentRestartRequired": restart});
    let mname = format!("apt-manifest-{tag}.json");
    env.file(&mname, manifest.to_string().as_bytes());
    let mut files = vec![mname];
    for (name, bytes) in debs {
        env.file(name, bytes);
        files.push(name.clone());
    }
    let mut props = json!({});
    if let Some(c) = criteria {
        props["installedCriteria"] = json!(c);
    }
    env.manifest(vec![
        json!({"handler": APT, "files": files, "handlerProperties": props}),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn install_upgrade_and_remove_a_package_from_the_payload_with_real_dpkg() {
    if !can_run() {
        return;
    }
    let _lock = DPKG.lock().await;
    purge();
    let build = tempfile::tempdir().unwrap();
    let v1 = (format!("{PKG}_1.0_all.deb"), build_deb(build.path(), "1.0"));
    let v2 = (format!("{PKG}_2.0_all.deb"), build_deb(build.path(), "2.0"));

    let mut env = Env::new();
    env.install(APT, "apt");
    // Install 1.0 from the payload (no repository needed).
    let m = apt_step(
        &mut env,
        "v1",
        json!([{"name": PKG, "version": "1.0"}]),
        std::slice::from_ref(&v1),
        false,
        Some("hello-1.0"),
    );
    let out = run(&env, env.request("wf-apt-1", m.clone())).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    assert_eq!(installed_version().as_deref(), Some("1.0"));
    assert_eq!(
        std::fs::read_to_string(format!("/usr/share/{PKG}/hello.txt")).unwrap(),
        "hello 1.0\n"
    );

    // The same step again: recorded AND dpkg agrees -> 603.
    let out = run(&env, env.request("wf-apt-1-again", m.clone())).await;
    assert_eq!(out.result.step_results["step_0"].result_code, 603);

    // Someone changes the system behind sandstep's back: the record alone does not fool it.
    purge();
    let out = run(&env, env.request("wf-apt-1-drift", m)).await;
    assert_eq!(out.status, Status::Succeeded);
    let is_installed = &out.result.step_results["step_0"].actions[0];
    assert_eq!(is_installed.result.result_code, 901);
    assert_eq!(
        is_installed.result.result_details,
        format!("recorded as installed, but {PKG}=1.0 is not installed")
    );
    assert_eq!(installed_version().as_deref(), Some("1.0"), "reinstalled");

    // Upgrade to 2.0.
    let m = apt_step(
        &mut env,
        "v2",
        json!([{"name": PKG, "version": "2.0"}]),
        std::slice::from_ref(&v2),
        false,
        Some("hello-2.0"),
    );
    let out = run(&env, env.request("wf-apt-2", m)).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    assert_eq!(installed_version().as_deref(), Some("2.0"));

    // Remove (a trailing `-`), with an agent restart asked for.
    let m = apt_step(
        &mut env,
        "rm",
        json!([{"name": format!("{PKG}-")}]),
        &[],
        true,
        Some("hello-removed"),
    );
    let out = run(&env, env.request("wf-apt-rm", m)).await;
    assert_eq!(out.status, Status::RestartRequired, "{:#?}", out.result);
    assert_eq!(out.result.result_code, 707);
    assert_eq!(installed_version(), None);
    purge();
}

#[tokio::test(flavor = "multi_thread")]
async fn apt_steps_without_criteria_or_with_two_manifests_fail_with_adu_codes() {
    if !can_run() {
        return;
    }
    let _lock = DPKG.lock().await;
    let mut env = Env::new();
    env.install(APT, "apt");
    let m = apt_step(&mut env, "nocrit", json!([{"name": PKG}]), &[], false, None);
    let out = run(&env, env.request("wf-apt-nocrit", m)).await;
    assert_eq!(out.result.extended_result_code, 0x3020_0007);
    assert_eq!(
        out.result.result_details,
        "handlerProperties.installedCriteria is required"
    );

    let mut env = Env::new();
    env.install(APT, "apt");
    env.file(
        "apt-manifest-a.json",
        br#"{"name":"a","version":"1","packages":[]}"#,
    );
    env.file(
        "apt-manifest-b.json",
        br#"{"name":"b","version":"1","packages":[]}"#,
    );
    let m = env.manifest(vec![json!({"handler": APT, "files": ["apt-manifest-a.json", "apt-manifest-b.json"], "handlerProperties": {"installedCriteria": "x"}})]);
    let out = run(&env, env.request("wf-apt-two", m)).await;
    assert_eq!(out.result.extended_result_code, 0x3020_0004);
    assert_eq!(
        out.result.result_details,
        "an apt step needs exactly one apt manifest beside its .deb files, it has 2 (apt-manifest-a.json, apt-manifest-b.json)"
    );

    let mut env = Env::new();
    env.install(APT, "apt");
    let m = apt_step(
        &mut env,
        "evil",
        json!([{"name": "-oAPT::Update::Pre-Invoke::=touch /tmp/pwned"}]),
        &[],
        false,
        Some("evil"),
    );
    let out = run(&env, env.request("wf-apt-evil", m)).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(
        out.result.result_details,
        "apt-manifest-evil.json: `-oAPT::Update::Pre-Invoke::=touch /tmp/pwned` is not a Debian package name and version"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_apt_get_reports_its_status_and_output() {
    if !can_run() {
        return;
    }
    let _lock = DPKG.lock().await;
    let mut env = Env::new();
    env.install(APT, "apt");
    let m = apt_step(
        &mut env,
        "missing",
        json!([{"name": "sandstep-no-such-package", "version": "9.9"}]),
        &[],
        false,
        Some("nope"),
    );
    let out = run(&env, env.request("wf-apt-missing", m)).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(
        out.result.extended_result_code, 0x3020_0100,
        "ADU's ADUC_ERC_APT_HANDLER_PACKAGE_DOWNLOAD_FAILURE"
    );
    assert!(
        out.result
            .result_details
            .starts_with("apt-get --download-only install failed (status 100):"),
        "{}",
        out.result.result_details
    );
    assert!(
        out.result
            .result_details
            .contains("sandstep-no-such-package"),
        "{}",
        out.result.result_details
    );
}

fn dpkg_status() -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", PKG])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The process group of the first process whose command line holds `marker`.
fn group_of(marker: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        if !String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(marker)
        {
            return None;
        }
        let pid = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        sandstep::capability::ledger::parse_stat(pid, &stat).map(|p| p.pgrp)
    })
}

#[test]
fn a_dpkg_transaction_cut_by_a_crash_is_repaired_before_the_step_runs_again() {
    if !can_run() {
        return;
    }
    let _lock = DPKG.blocking_lock();
    purge();
    let build = tempfile::tempdir().unwrap();
    let mark = build.path().join("configured-once");
    // The first configure hangs (so the crash lands inside dpkg's transaction); later ones pass.
    let postinst = format!(
        "#!/bin/sh\nif [ ! -e {m} ]; then touch {m}; exec sleep 60.0917; fi\nexit 0\n",
        m = mark.display()
    );
    let deb = (
        format!("{PKG}_1.0_all.deb"),
        build_deb_with(build.path(), "1.0", Some(&postinst)),
    );
    let mut env = Env::new();
    env.install(APT, "apt");
    let m = apt_step(
        &mut env,
        "crash",
        json!([{"name": PKG, "version": "1.0"}]),
        std::slice::from_ref(&deb),
        false,
        Some("hello-crash"),
    );
    let manifest = build.path().join("manifest.json");
    std::fs::write(&manifest, m).unwrap();
    let config = build.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    let result = build.path().join("result.json");
    let agent = || {
        let mut c = crate::cli::sandstep();
        c.arg("run")
            .arg(&manifest)
            .arg("--allow-unsigned")
            .arg("--files")
            .arg(env.files.path())
            .arg("--data-dir")
            .arg(env.data.path())
            .arg("--config")
            .arg(&config)
            .arg("--result-file")
            .arg(&result)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    let mut first = agent().spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let group = loop {
        if let Some(g) = group_of("sleep 60.0917") {
            break g;
        }
        assert!(std::time::Instant::now() < deadline, "postinst never ran");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // A power cut: the agent and apt-get's whole transaction die at once.
    first.kill().unwrap();
    first.wait().unwrap();
    // SAFETY: signalling the process group of the apt-get this test started.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    assert!(crate::process::wait_gone("sleep 60.0917"));
    assert_eq!(dpkg_status(), "half-configured", "dpkg was interrupted");

    let status = agent().status().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    assert!(status.success(), "{status:?} {r:#}");
    assert_eq!(dpkg_status(), "installed");
    assert_eq!(installed_version().as_deref(), Some("1.0"));
    let details = r["resultDetails"].as_str().unwrap();
    assert!(
        details.contains("`/usr/bin/apt-get` of handler microsoft/apt:1 was interrupted")
            && details.contains("`/usr/bin/dpkg --configure -a` repaired what it left"),
        "{details}"
    );
    purge();
}
