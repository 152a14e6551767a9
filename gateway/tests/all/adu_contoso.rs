//! ADU's contoso virtual-vacuum demo, run by sandstep: the real install scripts, firmware data
//! files and component inventory from ADU's repository (tests/adu/contoso, origins in
//! tests/adu/ORIGIN.md), deployed as update 5.0 of the demo's CreateSampleMSOEUpdate-5.x.ps1.
//!
//! Under ADU's agent this update ends 700: every motor and camera runs its pre-install step and
//! then gets its firmware file copied from the script's `--work-folder` into the component's
//! directory; the steamers child update matches no component (604), or, with the demo's
//! inventory that names the unplugged steamer, fails at its firmware copy. Run again, every step's
//! is-installed answers 900 (603).

use crate::workflow::{file_entry, Env};
use sandstep::config::Config;
use sandstep::datadir::DataDir;
use sandstep::sandbox::{EngineOptions, Sandbox};
use sandstep::workflow::{Deployer, Outcome, Request};
use sandstep_model::inventory::Inventory;
use sandstep_model::journal::Status;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

const SCRIPT: &str = "microsoft/script:1";
const ARGS: &str = "--component-name --component-name-val --component-group --component-group-val --component-prop path --component-prop-val path";

pub fn contoso() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/adu/contoso")
}

/// A child update of CreateSampleMSOEUpdate-5.x.ps1: a pre-install step and a firmware step
/// for the components of `group`, with the `kind` script and `firmware` data file.
pub fn child(
    files_dir: &Path,
    kind: &str,
    group: &str,
    version: &str,
    firmware: &str,
    ic: &str,
) -> String {
    let script = format!("contoso-{kind}-installscript.sh");
    let mut files = serde_json::Map::new();
    for (name, dir) in [(&script, "scripts"), (&firmware.to_owned(), "data-files")] {
        let bytes = std::fs::read(contoso().join(dir).join(name)).unwrap();
        std::fs::write(files_dir.join(name), &bytes).unwrap();
        files.insert(name.clone(), file_entry(name, &bytes));
    }
    json!({
        "updateId": {"provider": "contoso", "name": format!("Virtual-Vacuum-virtual-{group}"), "version": version},
        "isDeployable": false,
        "compatibility": [{"group": group}],
        "instructions": {"steps": [
            {"handler": SCRIPT, "files": [script],
             "handlerProperties": {"scriptFileName": script, "installedCriteria": ic,
                                   "arguments": format!("--pre-install-sim-success {ARGS}")}},
            {"handler": SCRIPT, "files": [script, firmware],
             "handlerProperties": {"scriptFileName": script, "installedCriteria": ic,
                                   "arguments": format!("--firmware-file {firmware} {ARGS}")}}
        ]},
        "files": files,
        "manifestVersion": "5",
    })
    .to_string()
}

/// Update 5.0's three child updates (motors, cameras, steamers), their files written into
/// `files_dir`: (child manifest file name, its text).
pub fn children(files_dir: &Path) -> [(&'static str, String); 3] {
    [
        (
            "motors.json",
            child(
                files_dir,
                "motor",
                "motors",
                "3.0",
                "motor-firmware-1.2.json",
                "1.2",
            ),
        ),
        (
            "cameras.json",
            child(
                files_dir,
                "camera",
                "cameras",
                "3.0",
                "camera-firmware-2.1.json",
                "2.1",
            ),
        ),
        (
            "steamers.json",
            child(
                files_dir,
                "steamer",
                "steamers",
                "2.0",
                "steamer-firmware-2.0.json",
                "2.0",
            ),
        ),
    ]
}

/// A copy of demo-devices/contoso-devices and the text of its inventory `inventory_file`, with
/// the component paths pointing into the copy.
pub fn copy_devices(inventory_file: &str) -> (tempfile::TempDir, String) {
    let root = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(contoso().join("demo-devices/contoso-devices"))
        .arg(root.path())
        .status()
        .unwrap();
    assert!(status.success());
    let text =
        std::fs::read_to_string(root.path().join("contoso-devices").join(inventory_file)).unwrap();
    let text = text.replace(
        "\\/usr\\/local\\/contoso-devices",
        &root.path().join("contoso-devices").display().to_string(),
    );
    (root, text)
}

/// The demo device: a copy of demo-devices/contoso-devices and its inventory (`inventory_file`)
/// with the component paths pointing into the copy.
struct Device {
    env: Env,
    root: tempfile::TempDir,
    inventory: Inventory,
}

impl Device {
    fn new(inventory_file: &str) -> Device {
        let mut env = Env::new();
        env.install(SCRIPT, "script");
        let (root, text) = copy_devices(inventory_file);
        let inventory = Inventory::parse(&text).unwrap();
        for (name, text) in children(env.files.path()) {
            env.file(name, text.as_bytes());
        }
        Device {
            env,
            root,
            inventory,
        }
    }

    fn request(&self, id: &str) -> Request {
        let steps = ["motors.json", "cameras.json", "steamers.json"]
            .iter()
            .map(|f| json!({"type": "reference", "detachedManifestFileId": f}))
            .collect();
        let mut req = self.env.request(id, self.env.manifest(steps));
        req.inventory = Some(self.inventory.clone());
        req
    }

    async fn run(&self, id: &str) -> Outcome {
        self.run_observed(id, Arc::new(crate::workflow::Recorder::default()))
            .await
    }

    async fn run_observed(
        &self,
        id: &str,
        observer: Arc<dyn sandstep::workflow::events::Observer>,
    ) -> Outcome {
        let data = DataDir::open(self.env.data.path()).unwrap();
        let sandbox = Arc::new(Sandbox::new(&EngineOptions::default(), None).unwrap());
        let d = Deployer::new(sandbox, data, Config::default()).unwrap();
        d.run(self.request(id), observer, &CancellationToken::new())
            .await
            .unwrap()
    }

    /// The data file of a component, under its (rewritten) path.
    fn firmware(&self, rel: &str) -> Value {
        let p = self.root.path().join("contoso-devices/vacuum-1").join(rel);
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }
}

fn data_file(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(contoso().join("data-files").join(name)).unwrap())
        .unwrap()
}

/// (reference step, component id, child step) -> result code.
fn codes(out: &Outcome) -> Vec<(String, String, String, i32)> {
    let mut v = Vec::new();
    for (step, r) in &out.result.step_results {
        for (comp, c) in &r.components {
            for (child_step, cr) in &c.step_results {
                v.push((
                    step.clone(),
                    comp.clone(),
                    child_step.clone(),
                    cr.result_code,
                ));
            }
        }
    }
    v
}

const MOTORS: [&str; 3] = [
    "contoso-motor-serial-00000",
    "contoso-motor-serial-00001",
    "contoso-motor-serial-00002",
];
const CAMERAS: [&str; 2] = ["contoso-camera-serial-00000", "contoso-camera-serial-00001"];

#[tokio::test(flavor = "multi_thread")]
async fn contoso_update_5_installs_every_motor_and_camera_firmware_as_under_adu() {
    let device = Device::new("components-inventory.json");
    let out = device.run("wf-contoso-5").await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    assert_eq!(out.result.result_code, 700);
    let codes = codes(&out);
    for id in MOTORS.iter().chain(CAMERAS.iter()) {
        for step in ["step_0", "step_1"] {
            assert!(
                codes
                    .iter()
                    .any(|(_, c, s, code)| c == id && s == step && *code == 700),
                "{id} {step}: {codes:?}"
            );
        }
    }
    // The scripts copied `<work-folder>/<firmware file>` into each component's directory.
    for id in MOTORS {
        assert_eq!(
            device.firmware(&format!("motors/{id}/firmware.json")),
            data_file("motor-firmware-1.2.json"),
            "{id}"
        );
    }
    for id in CAMERAS {
        assert_eq!(
            device.firmware(&format!("cameras/{id}/firmware.json")),
            data_file("camera-firmware-2.1.json"),
            "{id}"
        );
    }
    // No steamer in this inventory: the steamers child update matches nothing (ADU's 604).
    assert_eq!(out.result.step_results["step_2"].result_code, 604);

    // Deployed again, every step is already installed.
    let again = device.run("wf-contoso-5-again").await;
    assert_eq!(again.status, Status::Succeeded, "{:#?}", again.result);
    let codes = crate::adu_contoso::codes(&again);
    assert_eq!(codes.len(), 10, "{codes:?}");
    assert!(codes.iter().all(|(.., code)| *code == 603), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inventory_naming_the_unplugged_steamer_fails_at_its_firmware_copy_as_under_adu() {
    // components-inventory-with-steamers.json places the steamer under vacuum-1/steamers, but
    // the demo device has it under unplugged-streamers: its is-installed answers a failure
    // (0x300001F6, "cannot communicate"), which ADU reads as not installed, the pre-install step
    // succeeds, and the firmware step's `cp` fails: the script reports 0x30501001 and the
    // deployment fails there, after motors and cameras were updated.
    let device = Device::new("components-inventory-with-steamers.json");
    let out = device.run("wf-contoso-5-steamers").await;
    assert_eq!(out.status, Status::Failed, "{:#?}", out.result);
    assert_eq!(out.result.extended_result_code as u32, 0x3050_1001);
    let steamer = &out.result.step_results["step_2"].components["contoso-steamer-serial-00000"];
    let first = &steamer.step_results["step_0"];
    assert_eq!(first.result_code, 700);
    assert_eq!(
        first.actions[0].result.extended_result_code as u32, 0x3000_01F6,
        "is-installed could not reach the component"
    );
    assert_eq!(steamer.step_results["step_1"].result_code, 0);
    assert_eq!(
        device.firmware("motors/contoso-motor-serial-00000/firmware.json"),
        data_file("motor-firmware-1.2.json")
    );
}

/// At the end of the deployment's last action (before the deployment gives its folders back),
/// overwrites every work-folder copy of `name`, then reads every `/payload` file of that name.
struct TamperAtTheEnd {
    data: PathBuf,
    name: &'static str,
    seen: std::sync::Mutex<(usize, Vec<Value>)>,
}

impl sandstep::workflow::events::Observer for TamperAtTheEnd {
    fn event(&self, e: &sandstep::workflow::events::Event) {
        let sandstep::workflow::events::Event::ActionFinished { .. } = e else {
            return;
        };
        let named = |dir: &str| -> Vec<PathBuf> {
            crate::workflow::walk(&self.data.join(dir))
                .into_iter()
                .filter(|p| p.file_name().is_some_and(|n| n == self.name))
                .collect()
        };
        let copies = named("work");
        for c in &copies {
            std::fs::write(c, b"tampered").unwrap();
        }
        let payload = named("payload")
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect();
        *self.seen.lock().unwrap() = (copies.len(), payload);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_script_does_to_its_work_folder_copy_never_reaches_the_verified_file() {
    // The firmware file in the work folder is a copy: a script that overwrites it changes
    // neither the download store nor what the next component's step is given.
    let device = Device::new("components-inventory.json");
    let observer = Arc::new(TamperAtTheEnd {
        data: device.env.data.path().to_owned(),
        name: "motor-firmware-1.2.json",
        seen: Default::default(),
    });
    let out = device
        .run_observed("wf-contoso-5-copy", observer.clone())
        .await;
    assert_eq!(out.status, Status::Succeeded);
    let (copies, payload) = std::mem::take(&mut *observer.seen.lock().unwrap());
    assert_eq!(copies, MOTORS.len(), "one copy per motor's firmware step");
    assert_eq!(payload.len(), MOTORS.len());
    for p in payload {
        assert_eq!(p, data_file("motor-firmware-1.2.json"));
    }
}
