//! `sandstep/component:1` and `sandstep/files:1`: files into component directories and into
//! policy-mapped destinations.

use crate::workflow::{file_entry, Env, Recorder};
use sandstep::config::Config;
use sandstep::datadir::DataDir;
use sandstep::sandbox::{EngineOptions, Sandbox};
use sandstep::workflow::{Deployer, Outcome};
use sandstep_model::inventory::Inventory;
use sandstep_model::journal::Status;
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

async fn run(env: &Env, config: Config, req: sandstep::workflow::Request) -> Outcome {
    let data = DataDir::open(env.data.path()).unwrap();
    let sandbox = Arc::new(Sandbox::new(&EngineOptions::default(), None).unwrap());
    Deployer::new(sandbox, data, config)
        .unwrap()
        .run(
            req,
            Arc::new(Recorder::default()),
            &CancellationToken::new(),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_update_for_one_group_updates_only_those_components() {
    let root = tempfile::tempdir().unwrap();
    let mut comps = Vec::new();
    for (id, group) in [
        ("cam-1", "cameras"),
        ("cam-2", "cameras"),
        ("motor-1", "motors"),
        ("temp-1", "sensors"),
    ] {
        let d = root.path().join(id);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join(".sandstep-version"), "1.0").unwrap();
        comps.push(json!({"id": id, "name": id, "group": group, "manufacturer": "contoso", "model": "m", "version": "1.0",
                          "properties": {"path": d.display().to_string()}}));
    }
    let config = Config::parse(
        &format!(
            "[handlers.\"sandstep/component:1\"]\ncomponent-dirs = [{{ property = \"path\", guest = \"/component\", writable = true, under = \"{}\" }}]\n",
            root.path().display()
        ),
        "t",
    )
    .unwrap();
    let mut env = Env::new();
    env.install("sandstep/component:1", "component");
    let mut files = serde_json::Map::new();
    for (name, bytes) in [
        ("cam-fw.bin", &b"camera firmware 2.0"[..]),
        ("cam.conf", &b"fps=30\n"[..]),
    ] {
        env.file(name, bytes);
        files.insert(name.into(), file_entry(name, bytes));
    }
    let child = json!({
        "updateId": {"provider": "contoso", "name": "cameras", "version": "2.0"},
        "compatibility": [{"group": "cameras"}],
        "instructions": {"steps": [{"handler": "sandstep/component:1", "files": ["cam-fw.bin", "cam.conf"], "handlerProperties": {"installedCriteria": "2.0"}}]},
        "files": files,
        "manifestVersion": "5.0"
    })
    .to_string();
    env.file("cameras-2.0.json", child.as_bytes());
    let m = env.manifest(vec![
        json!({"type": "reference", "detachedManifestFileId": "cameras-2.0.json"}),
    ]);
    let inventory = Inventory::parse(&json!({ "components": comps }).to_string()).unwrap();
    let mut req = env.request("wf-comp", m.clone());
    req.inventory = Some(inventory.clone());
    let out = run(&env, config.clone(), req).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    for cam in ["cam-1", "cam-2"] {
        let d = root.path().join(cam);
        assert_eq!(
            std::fs::read(d.join("cam-fw.bin")).unwrap(),
            b"camera firmware 2.0"
        );
        assert_eq!(
            std::fs::read_to_string(d.join(".sandstep-version")).unwrap(),
            "2.0"
        );
        assert_eq!(
            out.result.step_results["step_0"].components[cam].result_details,
            format!("{cam} ({cam}) now at 2.0")
        );
    }
    for other in ["motor-1", "temp-1"] {
        let d = root.path().join(other);
        assert!(!d.join("cam-fw.bin").exists(), "{other} untouched");
        assert_eq!(
            std::fs::read_to_string(d.join(".sandstep-version")).unwrap(),
            "1.0"
        );
    }
    let mut again = env.request("wf-comp-again", m);
    again.inventory = Some(inventory);
    let out = run(&env, config, again).await;
    assert_eq!(
        out.result.step_results["step_0"].result_code, 603,
        "both cameras report 2.0 already"
    );
}

fn md5_hex(bytes: &[u8]) -> String {
    let out = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn stamp(p: &Path) -> (u64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (m.ino(), m.mtime_nsec())
}

/// Degu's device shadow: URL + MD5 per file (user script, config, firmware). The device has the
/// first two already; only the firmware differs, so only it is replaced.
#[tokio::test(flavor = "multi_thread")]
async fn the_degu_file_set_replaces_only_the_changed_file_and_keeps_the_previous_one() {
    let device = tempfile::tempdir().unwrap();
    let (main_py, config_txt, firmware_old, firmware_new) = (
        &b"print('hello')\n"[..],
        &b"interval=60\n"[..],
        &b"fw 1.0"[..],
        &b"fw 2.0, better"[..],
    );
    std::fs::write(device.path().join("main.py"), main_py).unwrap();
    std::fs::write(device.path().join("CONFIG"), config_txt).unwrap();
    std::fs::write(device.path().join("firmware.bin"), firmware_old).unwrap();
    let before = (
        stamp(&device.path().join("main.py")),
        stamp(&device.path().join("CONFIG")),
    );

    let config = Config::parse(
        &format!("[handlers.\"sandstep/files:1\"]\ndirs = [{{ host = \"{}\", guest = \"/dest/app\", writable = true }}]\n", device.path().display()),
        "t",
    )
    .unwrap();
    let mut env = Env::new();
    env.install("sandstep/files:1", "files");
    let mut steps = Vec::new();
    for (name, bytes) in [
        ("main.py", main_py),
        ("CONFIG", config_txt),
        ("firmware.bin", firmware_new),
    ] {
        env.file(name, bytes);
        steps.push(json!({"handler": "sandstep/files:1", "files": [name],
                          "handlerProperties": {"destination": format!("/dest/app/{name}"), "installedCriteria": format!("md5:{}", md5_hex(bytes))}}));
    }
    let m = env.manifest(steps);
    let out = run(&env, config.clone(), env.request("wf-degu", m)).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    let codes: Vec<i32> = out
        .result
        .step_results
        .values()
        .map(|s| s.result_code)
        .collect();
    assert_eq!(codes, [603, 603, 700], "only the firmware changed");
    assert_eq!(
        out.result.step_results["step_2"].result_details,
        format!(
            "/dest/app/firmware.bin md5={} sha256={}",
            md5_hex(firmware_new),
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(firmware_new))
        )
    );
    assert_eq!(
        std::fs::read(device.path().join("firmware.bin")).unwrap(),
        firmware_new
    );
    assert_eq!(
        (
            stamp(&device.path().join("main.py")),
            stamp(&device.path().join("CONFIG"))
        ),
        before,
        "unchanged files were not touched"
    );
    // The previous firmware is kept for rollback.
    let previous = crate::workflow::walk(&env.data.path().join("state"))
        .into_iter()
        .find(|p| {
            p.to_string_lossy()
                .ends_with("previous/_dest_app_firmware.bin")
        })
        .expect("previous version kept");
    assert_eq!(std::fs::read(previous).unwrap(), firmware_old);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_outside_the_mapped_dirs_is_unreachable() {
    let mut env = Env::new();
    env.install("sandstep/files:1", "files");
    env.file("x.conf", b"x");
    let m = env.manifest(vec![json!({"handler": "sandstep/files:1", "files": ["x.conf"],
                                     "handlerProperties": {"destination": "/etc/x.conf", "installedCriteria": "v1"}})]);
    let out = run(&env, Config::default(), env.request("wf-files-etc", m)).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(
        out.result.result_details,
        "/etc/x.conf: Capabilities insufficient (os error 76)"
    );
    assert!(!Path::new("/etc/x.conf").exists());
}

/// A criteria that names a digest but is not one (`sha256:x`) is refused on the device, as
/// `sandstep manifest new` refuses it (the same rules, `step-rules`), not taken as a label:
/// nothing is placed.
#[tokio::test(flavor = "multi_thread")]
async fn a_criteria_naming_a_digest_that_is_not_one_is_refused_and_nothing_placed() {
    let (device, config, mut env) = file_set_device(&[]);
    env.file("main.py", b"print(1)\n");
    let m = env.manifest(vec![json!({"handler": "sandstep/files:1", "files": ["main.py"],
        "handlerProperties": {"destination": "/dest/app/main.py", "installedCriteria": "sha256:x"}})]);
    let out = run(&env, config, env.request("wf-files-notdigest", m)).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(
        out.result.extended_result_codes.split(',').next(),
        Some("BA000305"),
        "{:#?}",
        out.result
    );
    assert!(
        out.result
            .result_details
            .contains("`sha256:x` is not a sha256 digest"),
        "{}",
        out.result.result_details
    );
    assert!(!device.path().join("main.py").exists());
}

/// A file set's device directory, its config (`dirs` + `fetch-after-is-installed`), and an
/// environment with the files handler installed.
fn file_set_device(files: &[(&str, &[u8])]) -> (tempfile::TempDir, Config, Env) {
    let device = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(device.path().join(name), bytes).unwrap();
    }
    let config = Config::parse(
        &format!("[handlers.\"sandstep/files:1\"]\nfetch-after-is-installed = true\ndirs = [{{ host = \"{}\", guest = \"/dest/app\", writable = true }}]\n", device.path().display()),
        "t",
    )
    .unwrap();
    let env = Env::new();
    env.install("sandstep/files:1", "files");
    (device, config, env)
}

/// The restore that ran for `step`.
fn restore_of<'a>(out: &'a Outcome, step: &str) -> &'a sandstep_model::journal::ActionRecord {
    out.result.step_results[step]
        .actions
        .iter()
        .find(|a| a.action == sandstep_model::Action::Restore)
        .expect("restore ran")
}

/// One files step per (name, bytes, md5 wanted).
fn file_set_steps(env: &mut Env, set: &[(&str, &[u8], String)]) -> String {
    let mut steps = Vec::new();
    for (name, bytes, md5) in set {
        env.file(name, bytes);
        steps.push(json!({"handler": "sandstep/files:1", "files": [name],
                          "handlerProperties": {"destination": format!("/dest/app/{name}"), "installedCriteria": format!("md5:{md5}")}}));
    }
    env.manifest(steps)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_already_in_place_is_not_downloaded() {
    let (main_py, config_txt) = (&b"print('hello')\n"[..], &b"interval=60\n"[..]);
    let (device, config, mut env) =
        file_set_device(&[("main.py", main_py), ("CONFIG", b"interval=5\n")]);
    let m = file_set_steps(
        &mut env,
        &[
            ("main.py", main_py, md5_hex(main_py)),
            ("CONFIG", config_txt, md5_hex(config_txt)),
        ],
    );
    let server = crate::http::TestServer::start();
    server.put("CONFIG", config_txt);
    let mut req = env.request("wf-degu-fetch", m);
    req.source = sandstep_model::journal::FileSource::BaseUrl(server.base());
    let out = run(&env, config, req).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    assert_eq!(out.result.step_results["step_0"].result_code, 603);
    assert!(
        server.requests("main.py").is_empty(),
        "main.py is in place: never fetched"
    );
    assert_eq!(server.requests("CONFIG").len(), 1);
    assert_eq!(
        std::fs::read(device.path().join("CONFIG")).unwrap(),
        config_txt
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_file_set_deployment_puts_every_file_back_and_says_which() {
    let (old_main, old_config) = (&b"print('v1')\n"[..], &b"interval=60\n"[..]);
    let (device, config, mut env) =
        file_set_device(&[("main.py", old_main), ("CONFIG", old_config)]);
    let (new_main, new_lib, new_config) = (
        &b"print('v2')\n"[..],
        &b"def f(): pass\n"[..],
        &b"interval=5\n"[..],
    );
    // CONFIG's installedCriteria names other content: its install fails (BA000304) after
    // main.py and lib.py were placed.
    let m = file_set_steps(
        &mut env,
        &[
            ("main.py", new_main, md5_hex(new_main)),
            ("lib.py", new_lib, md5_hex(new_lib)),
            ("CONFIG", new_config, md5_hex(b"something else")),
        ],
    );
    let out = run(&env, config, env.request("wf-degu-fail", m)).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(out.result.extended_result_code as u32, 0xBA00_0304);
    let read = |n: &str| std::fs::read(device.path().join(n)).ok();
    assert_eq!(read("main.py").as_deref(), Some(old_main));
    assert_eq!(read("CONFIG").as_deref(), Some(old_config));
    assert_eq!(
        read("lib.py"),
        None,
        "new in the failed deployment: removed"
    );
    let restore = restore_of(&out, "step_2");
    assert_eq!(
        restore.result.result_details,
        "restored /dest/app/CONFIG, /dest/app/main.py; removed /dest/app/lib.py (new in this deployment)"
    );
    // Each earlier step keeps its own 700, as ADU reports it, and says it was undone.
    for step in ["step_0", "step_1"] {
        let s = &out.result.step_results[step];
        assert_eq!(
            (s.result_code, s.undone_by.as_deref()),
            (700, Some("step_2")),
            "{s:#?}"
        );
    }
    assert_eq!(out.result.step_results["step_2"].undone_by, None);
    // The installed digests say what is there again.
    let digests = crate::workflow::walk(&env.data.path().join("state"))
        .into_iter()
        .find(|p| p.ends_with("digests.json"))
        .unwrap();
    let digests: serde_json::Value =
        serde_json::from_slice(&std::fs::read(digests).unwrap()).unwrap();
    assert_eq!(
        digests["digests"]["/dest/app/main.py"]["md5"],
        md5_hex(old_main)
    );
    assert!(digests["digests"].get("/dest/app/lib.py").is_none());
}

/// A set whose last file lands where the policy maps a directory read-only: that file's
/// install fails, and restore still puts the set back whole, going past the file it never
/// placed (removing it would fail on the read-only mapping, as it did before and stopped the
/// restore there, leaving main.py new and lib.py behind).
#[tokio::test(flavor = "multi_thread")]
async fn a_set_failing_on_a_read_only_destination_is_still_put_back_whole() {
    let old_main = &b"print('v1')\n"[..];
    let (device, _, mut env) = file_set_device(&[("main.py", old_main)]);
    let etc = tempfile::tempdir().unwrap();
    let config = Config::parse(
        &format!("[handlers.\"sandstep/files:1\"]\nfetch-after-is-installed = true\ndirs = [{{ host = \"{}\", guest = \"/dest/app\", writable = true }}, {{ host = \"{}\", guest = \"/dest/etc\" }}]\n", device.path().display(), etc.path().display()),
        "t",
    )
    .unwrap();
    let mut steps = Vec::new();
    for (name, bytes, dir) in [
        ("main.py", &b"print('v3')\n"[..], "app"),
        ("lib.py", b"def f(): pass\n", "app"),
        ("sys.conf", b"x=1\n", "etc"),
    ] {
        env.file(name, bytes);
        steps.push(json!({"handler": "sandstep/files:1", "files": [name], "handlerProperties":
            {"destination": format!("/dest/{dir}/{name}"), "installedCriteria": format!("md5:{}", md5_hex(bytes))}}));
    }
    let m = env.manifest(steps);
    let out = run(&env, config, env.request("wf-read-only", m)).await;
    assert_eq!(out.status, Status::Failed);
    assert!(
        out.result.result_details.contains("/dest/etc/sys.conf"),
        "{:#?}",
        out.result
    );
    let read = |n: &str| std::fs::read(device.path().join(n)).ok();
    assert_eq!(read("main.py").as_deref(), Some(old_main));
    assert_eq!(read("lib.py"), None);
    assert!(!etc.path().join("sys.conf").exists());
    let restore = restore_of(&out, "step_2");
    assert_eq!(
        restore.result.result_details,
        "restored /dest/app/main.py; removed /dest/app/lib.py (new in this deployment)"
    );
    assert!(restore.result.result_code > 0, "{restore:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_set_with_a_file_missing_half_way_changes_nothing() {
    let old_main = &b"print('v1')\n"[..];
    let (device, config, mut env) = file_set_device(&[("main.py", old_main)]);
    let before = stamp(&device.path().join("main.py"));
    let (new_main, new_config) = (&b"print('v2')\n"[..], &b"interval=5\n"[..]);
    let m = file_set_steps(
        &mut env,
        &[
            ("main.py", new_main, md5_hex(new_main)),
            ("CONFIG", new_config, md5_hex(new_config)),
        ],
    );
    std::fs::remove_file(env.files.path().join("CONFIG")).unwrap();
    let out = run(&env, config, env.request("wf-degu-missing", m)).await;
    assert_eq!(out.status, Status::Failed);
    assert!(
        out.result.result_details.contains("CONFIG"),
        "{}",
        out.result.result_details
    );
    // Every file is fetched before any is placed (ADU's download phase).
    assert_eq!(stamp(&device.path().join("main.py")), before);
    assert!(!device.path().join("CONFIG").exists());
}
