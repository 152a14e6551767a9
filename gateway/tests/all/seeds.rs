//! The seeds' flows end to end with real parts: a mosquitto broker, the replica, the agent as a
//! process, the loopback HTTP server, file-backed slots. The ADU multi-step, shadow-replica and
//! micropython-ota flows are in fleet.rs, adu_compat.rs and adu_contoso.rs; these are the
//! firmware A/B flow (seed 000) and the Degu file-set flow (seed 003), each with its failures.

use crate::fleet::Fleet;
use crate::support::signed;
use crate::workflow::file_entry;
use sandstep::datadir::DataDir;
use sandstep::registry::Registry;
use sandstep_testkit::Proc;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const FW: &str = "sandstep/firmware:1";
const FILES: &str = "sandstep/files:1";

fn install(fleet: &Fleet, id: &str, component: &str) {
    Registry::open(DataDir::open(&fleet.data).unwrap().handlers().unwrap())
        .unwrap()
        .install(
            id,
            &signed(component),
            &format!("{component}.wasm"),
            vec!["test-vendor".into()],
            0,
        )
        .unwrap();
}

fn append_config(fleet: &Fleet, text: &str) {
    let mut config = std::fs::read_to_string(&fleet.config).unwrap();
    config.push_str(text);
    std::fs::write(&fleet.config, config).unwrap();
}

/// A signed-deployable manifest of `steps` with `files` (served by the fleet's HTTP server).
fn manifest(
    fleet: &Fleet,
    name: &str,
    version: &str,
    steps: Value,
    files: &[(&str, &[u8])],
) -> PathBuf {
    let mut entries = serde_json::Map::new();
    for (file, bytes) in files {
        fleet.server.put(file, bytes);
        entries.insert(file.to_string(), file_entry(file, bytes));
    }
    let m = json!({
        "updateId": {"provider": "test", "name": name, "version": version},
        "compatibility": [{"model": "gw"}],
        "instructions": {"steps": steps},
        "files": entries,
        "manifestVersion": "5.0"
    });
    let p = fleet.dir.path().join(format!("{name}-{version}.json"));
    std::fs::write(&p, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    p
}

fn ended(workflow: &str) -> impl Fn(&Value) -> bool + '_ {
    move |r| {
        r.pointer("/workflow/id").and_then(Value::as_str) == Some(workflow)
            && matches!(r["status"].as_str(), Some("completed" | "failed"))
    }
}

fn waiting_for_reboot(workflow: &str) -> impl Fn(&Value) -> bool + '_ {
    move |r| {
        r.pointer("/workflow/id").and_then(Value::as_str) == Some(workflow)
            && r["status"] == "rebooting"
    }
}

fn exits(agent: &mut Proc) {
    let t = Instant::now();
    while agent.is_running() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the agent did not exit for the reboot"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn firmware(fleet: &Fleet, version: &str, image: &[u8]) -> PathBuf {
    let file = format!("fw-{version}.img");
    manifest(
        fleet,
        "firmware",
        version,
        json!([{"handler": FW, "files": [file], "handlerProperties": {"installedCriteria": version}}]),
        &[(&file, image)],
    )
}

fn image(seed: u8) -> Vec<u8> {
    (0..200_000u32).map(|i| (i % 251) as u8 ^ seed).collect()
}

fn erc(r: &Value) -> &str {
    r["lastInstallResult"]["extendedResultCodes"]
        .as_str()
        .unwrap_or_default()
}

/// Seed 000: the firmware update in stages, reported as `status` with a timestamp per stage,
/// through a reboot into the new slot; then an agent restart that is not a reboot (the
/// selection is undone and reported), and a boot loader that falls back to the old slot.
#[test]
fn seed_firmware_ab_goes_through_its_stages_and_a_reboot_and_fails_safely_without_one() {
    let Some(fleet) = Fleet::new("gw-fw") else {
        return;
    };
    install(&fleet, FW, "firmware");
    let slots = crate::handlers::firmware::Device::new();
    append_config(&fleet, &slots.config_text());
    let _replica = fleet.replica();
    let mut agent = fleet.agent();
    fleet.wait_for("gw-fw", "the start report", |r| r["status"] == "standBy");

    let v2 = image(2);
    fleet.deploy("gw-fw", &firmware(&fleet, "2.0", &v2), "wf-fw-2", &[]);
    let r = fleet.wait_for(
        "gw-fw",
        "the reboot into 2.0",
        waiting_for_reboot("wf-fw-2"),
    );
    let at = |stage: &str| {
        r[format!("{stage}At")]
            .as_u64()
            .unwrap_or_else(|| panic!("no {stage}At: {r:#}"))
    };
    assert!(at("downloading") <= at("applying") && at("applying") <= at("rebooting"));
    assert_eq!(slots.env()["boot_slot"], "b");
    exits(&mut agent);
    slots.reboot_into("b");
    let mut agent = fleet.agent();
    let r = fleet.wait_for("gw-fw", "2.0 committed", ended("wf-fw-2"));
    assert_eq!(r["status"], "completed", "{r:#}");
    assert!(r["completedAt"].as_u64().is_some(), "{r:#}");
    assert!(
        r["installedUpdateId"].as_str().unwrap().contains("\"2.0\""),
        "{r:#}"
    );
    assert_eq!(std::fs::read(slots.path("b.img")).unwrap(), v2);
    assert_eq!(slots.env()["upgrade_available"], "0");

    // Restarted without the reboot (a crash, a service restart): the selection is undone, so
    // the boot loader and the report agree.
    fleet.deploy("gw-fw", &firmware(&fleet, "3.0", &image(3)), "wf-fw-3", &[]);
    fleet.wait_for(
        "gw-fw",
        "the reboot into 3.0",
        waiting_for_reboot("wf-fw-3"),
    );
    assert_eq!(slots.env()["boot_slot"], "a");
    exits(&mut agent);
    let mut agent = fleet.agent();
    let r = fleet.wait_for("gw-fw", "3.0 given up", ended("wf-fw-3"));
    assert_eq!(
        (r["status"].as_str(), erc(&r)),
        (Some("failed"), "BA000104"),
        "{r:#}"
    );
    assert!(r["failedAt"].as_u64().is_some(), "{r:#}");
    assert_eq!(slots.env()["boot_slot"], "b", "the running slot boots next");

    // The new slot fails to boot: the boot loader falls back to slot B; the step fails as a
    // rollback and slot A is marked bad.
    fleet.deploy(
        "gw-fw",
        &firmware(&fleet, "3.0", &image(3)),
        "wf-fw-3b",
        &[],
    );
    fleet.wait_for(
        "gw-fw",
        "the reboot into 3.0",
        waiting_for_reboot("wf-fw-3b"),
    );
    exits(&mut agent);
    slots.reboot_into("b");
    let _agent = fleet.agent();
    let r = fleet.wait_for("gw-fw", "the rollback", ended("wf-fw-3b"));
    assert_eq!(
        (r["status"].as_str(), erc(&r)),
        (Some("failed"), "BA000103"),
        "{r:#}"
    );
    assert_eq!(slots.env().get("slot_a_bad").map(String::as_str), Some("1"));
    assert!(
        r["installedUpdateId"].as_str().unwrap().contains("\"2.0\""),
        "{r:#}"
    );
}

fn md5(bytes: &[u8]) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(bytes))
}

/// Degu's desired state as a deployment: one files step per (file, MD5).
fn file_set(fleet: &Fleet, version: &str, set: &[(&str, &[u8], String)]) -> PathBuf {
    let steps: Vec<Value> = set
        .iter()
        .map(|(name, _, md5)| json!({"handler": FILES, "files": [format!("{version}-{name}")],
            "handlerProperties": {"destination": format!("/dest/app/{name}"), "installedCriteria": format!("md5:{md5}")}}))
        .collect();
    let files: Vec<(String, &[u8])> = set
        .iter()
        .map(|(name, bytes, _)| (format!("{version}-{name}"), *bytes))
        .collect();
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    manifest(fleet, "degu", version, Value::Array(steps), &files)
}

fn reported_md5(r: &Value, name: &str) -> String {
    r["fileSets"][format!("/dest/app/{name}")]["md5"]
        .as_str()
        .unwrap_or_else(|| panic!("no fileSets entry for {name}: {r:#}"))
        .to_owned()
}

/// Seed 003: the device reports the MD5 of each file; a new desired set replaces only what
/// differs (an unchanged file is not even downloaded); a set that fails half-way is put back
/// as a whole and the report says which files were restored.
#[test]
fn seed_degu_file_set_replaces_what_differs_and_a_failed_set_is_put_back_whole() {
    let Some(fleet) = Fleet::new("degu-1") else {
        return;
    };
    install(&fleet, FILES, "files");
    let device = fleet.dir.path().join("device");
    std::fs::create_dir(&device).unwrap();
    let (main_v1, config, fw_v1) = (&b"print('v1')\n"[..], &b"interval=60\n"[..], &b"fw 1.0"[..]);
    for (name, bytes) in [
        ("main.py", main_v1),
        ("CONFIG", config),
        ("firmware.bin", fw_v1),
    ] {
        std::fs::write(device.join(name), bytes).unwrap();
    }
    append_config(
        &fleet,
        &format!("[handlers.\"{FILES}\"]\nfetch-after-is-installed = true\ndirs = [{{ host = \"{}\", guest = \"/dest/app\", writable = true }}]\n", device.display()),
    );
    let _replica = fleet.replica();
    let _agent = fleet.agent();
    // At start the device reports what it has, as Degu does at boot.
    let r = fleet.wait_for("degu-1", "fileSets at start", |r| {
        r.get("fileSets").is_some()
    });
    assert_eq!(reported_md5(&r, "firmware.bin"), md5(fw_v1));

    let (main_v2, fw_v2) = (&b"print('v2')\n"[..], &b"fw 2.0, better"[..]);
    let set = file_set(
        &fleet,
        "2.0",
        &[
            ("main.py", main_v2, md5(main_v2)),
            ("CONFIG", config, md5(config)),
            ("firmware.bin", fw_v2, md5(fw_v2)),
        ],
    );
    fleet.deploy("degu-1", &set, "wf-degu-2", &[]);
    let r = fleet.wait_for("degu-1", "set 2", ended("wf-degu-2"));
    assert_eq!(r["status"], "completed", "{r:#}");
    assert_eq!(
        r["lastInstallResult"]["stepResults"]["step_1"]["resultCode"],
        603
    );
    assert!(
        fleet.server.requests("2.0-CONFIG").is_empty(),
        "CONFIG was in place: not fetched"
    );
    assert_eq!(fleet.server.requests("2.0-firmware.bin").len(), 1);
    assert_eq!(reported_md5(&r, "main.py"), md5(main_v2));
    assert_eq!(reported_md5(&r, "firmware.bin"), md5(fw_v2));

    // Set 3: main.py and a new lib.py are placed, then the firmware's MD5 does not match its
    // file: everything goes back.
    let (main_v3, lib) = (&b"print('v3')\n"[..], &b"def f(): pass\n"[..]);
    let set = file_set(
        &fleet,
        "3.0",
        &[
            ("main.py", main_v3, md5(main_v3)),
            ("lib.py", lib, md5(lib)),
            ("firmware.bin", b"fw 3.0", md5(b"not fw 3.0")),
        ],
    );
    fleet.deploy("degu-1", &set, "wf-degu-3", &[]);
    let r = fleet.wait_for("degu-1", "set 3", ended("wf-degu-3"));
    assert_eq!(
        (r["status"].as_str(), erc(&r)),
        (Some("failed"), "BA000304"),
        "{r:#}"
    );
    assert_eq!(
        r["lastInstallResult"]["stepResults"]["step_2"]["restore"]["resultDetails"],
        "restored /dest/app/firmware.bin, /dest/app/main.py; removed /dest/app/lib.py (new in this deployment)",
        "{r:#}"
    );
    let steps = &r["lastInstallResult"]["stepResults"];
    assert_eq!(
        (&steps["step_0"]["resultCode"], &steps["step_0"]["undoneBy"]),
        (&json!(700), &json!("step_2")),
        "{r:#}"
    );
    assert_eq!(steps["step_1"]["undoneBy"], "step_2", "{r:#}");
    assert_eq!(std::fs::read(device.join("main.py")).unwrap(), main_v2);
    assert_eq!(std::fs::read(device.join("firmware.bin")).unwrap(), fw_v2);
    assert!(!device.join("lib.py").exists());
    assert_eq!(reported_md5(&r, "main.py"), md5(main_v2));
    assert!(r["fileSets"].get("/dest/app/lib.py").is_none(), "{r:#}");
    // Nothing of the finished deployments is left in the data dir but journals and results.
    let store = crate::workflow::walk(&fleet.data.join("downloads"));
    assert!(store.is_empty(), "{store:?}");
}

/// Seed 002: ADU's ordered multi-step execution with reference steps, as ADU's contoso demo
/// deploys it (update 5.0 of CreateSampleMSOEUpdate-5.x.ps1, ADU's own scripts and data files),
/// through the replica and the agent with the gateway's component inventory: each motor and
/// camera gets its firmware; the steamers' child update matches no component (604).
#[test]
fn seed_adu_multi_step_with_reference_steps_runs_through_the_agent_as_under_adu() {
    use crate::adu_contoso::{children, copy_devices};
    let Some(fleet) = Fleet::new("vacuum-1") else {
        return;
    };
    install(&fleet, "microsoft/script:1", "script");
    let (root, inventory) = copy_devices("components-inventory.json");
    let inventory_file = fleet.dir.path().join("inventory.json");
    std::fs::write(&inventory_file, inventory).unwrap();
    // The inventory belongs in [agent]: put it right after the table's header.
    let config = std::fs::read_to_string(&fleet.config).unwrap().replacen(
        "[agent]\n",
        &format!("[agent]\ninventory = \"{}\"\n", inventory_file.display()),
        1,
    );
    std::fs::write(&fleet.config, config).unwrap();
    let children = children(&fleet.files);
    for (name, text) in &children {
        std::fs::write(fleet.files.join(name), text).unwrap();
    }
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for e in std::fs::read_dir(&fleet.files).unwrap() {
        let p = e.unwrap().path();
        files.push((
            p.file_name().unwrap().to_string_lossy().into_owned(),
            std::fs::read(&p).unwrap(),
        ));
    }
    for (name, bytes) in &files {
        fleet.server.put(name, bytes);
    }
    let steps: Vec<Value> = children
        .iter()
        .map(|(f, _)| json!({"type": "reference", "detachedManifestFileId": f}))
        .collect();
    let child_files: Vec<(&str, &[u8])> =
        children.iter().map(|(n, t)| (*n, t.as_bytes())).collect();
    let parent = manifest(
        &fleet,
        "Virtual-Vacuum",
        "5.0",
        Value::Array(steps),
        &child_files,
    );

    let _replica = fleet.replica();
    let _agent = fleet.agent();
    fleet.wait_for("vacuum-1", "the start report", |r| r["status"] == "standBy");
    fleet.deploy("vacuum-1", &parent, "wf-contoso", &[]);
    let r = fleet.wait_for("vacuum-1", "the contoso update", ended("wf-contoso"));
    assert_eq!(r["status"], "completed", "{r:#}");
    assert_eq!(r["lastInstallResult"]["resultCode"], 700, "{r:#}");
    let steps = &r["lastInstallResult"]["stepResults"];
    assert_eq!(steps["step_0"]["resultCode"], 700, "{r:#}");
    assert_eq!(steps["step_1"]["resultCode"], 700, "{r:#}");
    assert_eq!(steps["step_2"]["resultCode"], 604, "{r:#}");
    // Each component's outcome of a reference step is reported, beside ADU's folded result.
    let motors = steps["step_0"]["components"]
        .as_object()
        .expect("components");
    assert_eq!(motors.len(), 3, "{r:#}");
    assert!(motors.values().all(|c| c["resultCode"] == 700), "{r:#}");
    assert!(steps["step_1"]["components"]["contoso-camera-serial-00001"].is_object());
    let devices = root.path().join("contoso-devices/vacuum-1");
    let firmware = |rel: &str| -> Value {
        serde_json::from_slice(&std::fs::read(devices.join(rel)).unwrap()).unwrap()
    };
    let data = |name: &str| -> Value {
        serde_json::from_slice(
            &std::fs::read(crate::adu_contoso::contoso().join("data-files").join(name)).unwrap(),
        )
        .unwrap()
    };
    for motor in 0..3 {
        assert_eq!(
            firmware(&format!(
                "motors/contoso-motor-serial-0000{motor}/firmware.json"
            )),
            data("motor-firmware-1.2.json")
        );
    }
    for camera in 0..2 {
        assert_eq!(
            firmware(&format!(
                "cameras/contoso-camera-serial-0000{camera}/firmware.json"
            )),
            data("camera-firmware-2.1.json")
        );
    }
}
