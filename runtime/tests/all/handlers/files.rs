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
