//! Whole deployments in-process: ordering, skipping, failure and restore, reference steps,
//! reboots, cancellation, resumption, hostile names.

use crate::support::{signed, trust_test_key};
use base64::Engine as _;
use sandstep::config::Config;
use sandstep::datadir::DataDir;
use sandstep::registry::Registry;
use sandstep::sandbox::{EngineOptions, Sandbox};
use sandstep::workflow::events::{Event, Observer};
use sandstep::workflow::{Deployer, Outcome, Request};
use sandstep_model::codes::{erc, result};
use sandstep_model::inventory::Inventory;
use sandstep_model::journal::{FileSource, Status};
use sandstep_model::Action;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

pub const PROBE: &str = "test/probe:1";

/// Records every event.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Event>>);

impl Observer for Recorder {
    fn event(&self, e: &Event) {
        self.0.lock().unwrap().push(e.clone());
    }
}

/// A manifest file entry for `bytes`.
pub fn file_entry(name: &str, bytes: &[u8]) -> Value {
    json!({
        "fileName": name,
        "sizeInBytes": bytes.len(),
        "hashes": {"sha256": base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))}
    })
}

/// A stateful probe step (see tests/guests/probe).
pub fn stateful(name: &str, extra: Value, files: &[&str]) -> Value {
    let mut props = json!({"op": "stateful", "name": name});
    if let Value::Object(m) = extra {
        props.as_object_mut().unwrap().extend(m);
    }
    json!({"handler": PROBE, "files": files, "handlerProperties": props})
}

/// A test deployment: a data dir with the probe registered, and a files dir.
pub struct Env {
    pub data: tempfile::TempDir,
    pub files: tempfile::TempDir,
    pub file_entries: serde_json::Map<String, Value>,
}

impl Env {
    pub fn new() -> Env {
        let data = tempfile::tempdir().unwrap();
        trust_test_key(data.path());
        let reg = Registry::open(DataDir::open(data.path()).unwrap().handlers().unwrap()).unwrap();
        let signer = vec!["test-vendor".to_string()];
        reg.install(PROBE, &signed("probe"), "probe.wasm", signer.clone(), 0)
            .unwrap();
        reg.install(
            "contoso/config:1",
            &signed("vendor-handler"),
            "vendor-handler.wasm",
            signer,
            0,
        )
        .unwrap();
        Env {
            data,
            files: tempfile::tempdir().unwrap(),
            file_entries: Default::default(),
        }
    }

    /// Registers the signed component `name` as handler `id`.
    pub fn install(&self, id: &str, name: &str) {
        Registry::open(DataDir::open(self.data.path()).unwrap().handlers().unwrap())
            .unwrap()
            .install(id, &signed(name), name, vec!["test-vendor".into()], 0)
            .unwrap();
    }

    /// Adds a payload file (to the files dir and the manifest's `files`).
    pub fn file(&mut self, name: &str, bytes: &[u8]) {
        std::fs::write(self.files.path().join(name), bytes).unwrap();
        self.file_entries
            .insert(name.into(), file_entry(name, bytes));
    }

    pub fn manifest(&self, steps: Vec<Value>) -> String {
        let mut files = self.file_entries.clone();
        if files.is_empty() {
            files.insert("unused.txt".into(), file_entry("unused.txt", b"x"));
        }
        serde_json::to_string_pretty(&json!({
            "updateId": {"provider": "test", "name": "deploy", "version": "1.0"},
            "compatibility": [{"manufacturer": "test", "model": "gateway"}],
            "instructions": {"steps": steps},
            "files": files,
            "manifestVersion": "5.0"
        }))
        .unwrap()
    }

    pub fn request(&self, workflow_id: &str, manifest: String) -> Request {
        Request {
            workflow_id: workflow_id.into(),
            retry_timestamp: None,
            manifest,
            source: FileSource::Directory(self.files.path().display().to_string()),
            inventory: None,
            force: false,
            signature: None,
            allow_unsigned: true,
            root_key_package_url: None,
        }
    }

    pub fn deployer(&self) -> Deployer {
        self.deployer_with(Config::default())
    }

    pub fn deployer_with(&self, config: Config) -> Deployer {
        let data = DataDir::open(self.data.path()).unwrap();
        let sandbox = Arc::new(
            Sandbox::new(
                &EngineOptions::default(),
                Some(data.component_cache().unwrap()),
            )
            .unwrap(),
        );
        Deployer::new(sandbox, data, config).unwrap()
    }

    pub async fn run(&self, req: Request) -> (Outcome, Arc<Recorder>) {
        self.run_with(Config::default(), req).await
    }

    /// Runs `req` with `config` (its `[health]`, say).
    pub async fn run_with(&self, config: Config, req: Request) -> (Outcome, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let out = self
            .deployer_with(config)
            .run(req, rec.clone(), &CancellationToken::new())
            .await
            .unwrap();
        (out, rec)
    }

    /// The lines a stateful probe step logged.
    pub fn log(&self, name: &str) -> Vec<String> {
        let state = self.data.path().join("state");
        let Some(dir) = std::fs::read_dir(&state).ok().and_then(|mut d| {
            d.find(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("test_probe_1")
            })
        }) else {
            return Vec::new();
        };
        std::fs::read_to_string(dir.unwrap().path().join(format!("{name}.log")))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

fn codes(out: &Outcome) -> Vec<(String, i32)> {
    out.result
        .step_results
        .iter()
        .map(|(k, v)| (k.clone(), v.result_code))
        .collect()
}

const LIFECYCLE: [&str; 4] = ["download", "backup", "install", "apply"];

#[tokio::test(flavor = "multi_thread")]
async fn inline_steps_run_in_order_and_the_result_file_says_so() {
    let mut env = Env::new();
    env.file("a.txt", b"alpha");
    let m = env.manifest(vec![
        stateful("first", json!({}), &["a.txt"]),
        stateful("second", json!({}), &["a.txt"]),
    ]);
    let (out, rec) = env.run(env.request("wf-order", m)).await;
    assert_eq!(out.status, Status::Succeeded);
    assert_eq!(out.result.result_code, result::APPLY_SUCCESS);
    assert_eq!(out.result.extended_result_codes, "00000000");
    assert_eq!(
        codes(&out),
        vec![("step_0".into(), 700), ("step_1".into(), 700)]
    );
    assert_eq!(
        out.result.installed_update_id.as_deref(),
        Some(r#"{"provider":"test","name":"deploy","version":"1.0"}"#)
    );
    assert_eq!(env.log("first"), LIFECYCLE);
    assert_eq!(env.log("second"), LIFECYCLE);
    // Step 0's actions ran before step 1's.
    let order: Vec<(usize, Action)> = rec
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::ActionStarted { unit, action } => Some((*unit, *action)),
            _ => None,
        })
        .collect();
    // As ADU's steps handler: a download phase over every step, then an install phase.
    use Action::*;
    assert_eq!(
        order,
        [
            (0, IsInstalled),
            (0, Download),
            (1, IsInstalled),
            (1, Download),
            (0, IsInstalled),
            (0, Backup),
            (0, Install),
            (0, Apply),
            (1, IsInstalled),
            (1, Backup),
            (1, Install),
            (1, Apply)
        ]
    );
    // Over, the deployment gives back its folders and store files (ADU: SandboxDestroy when
    // idle); the journal stays.
    for dir in ["work", "payload", "downloads"] {
        assert_eq!(
            walk(&env.data.path().join(dir)),
            Vec::<PathBuf>::new(),
            "{dir}/ is empty once the deployment is over"
        );
    }
    assert_eq!(walk(&env.data.path().join("journal")).len(), 1);
}

fn find_file(root: &Path, name: &str) -> PathBuf {
    for entry in walk(root) {
        if entry.file_name().is_some_and(|n| n == name) {
            return entry;
        }
    }
    panic!("{name} not under {}", root.display())
}

pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn an_installed_step_is_skipped_with_603() {
    let env = Env::new();
    let m = with_unused(&env, vec![stateful("s", json!({}), &[])]);
    let (first, _) = env.run(env.request("wf-1", m.clone())).await;
    assert_eq!(first.status, Status::Succeeded);
    let (second, _) = env.run(env.request("wf-2", m)).await;
    assert_eq!(second.status, Status::Succeeded);
    assert_eq!(
        codes(&second),
        vec![(
            "step_0".into(),
            result::INSTALL_SKIPPED_UPDATE_ALREADY_INSTALLED
        )]
    );
    assert_eq!(env.log("s"), LIFECYCLE, "nothing ran the second time");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_is_installed_failure_means_not_installed_and_the_step_runs() {
    // ADU steps_handler.cpp: only 900 skips; any other answer, a failure included, goes on.
    let env = Env::new();
    let m = with_unused(
        &env,
        vec![
            stateful(
                "failing",
                json!({"is_installed_code": result::FAILURE}),
                &[],
            ),
            stateful(
                "odd",
                json!({"is_installed_code": result::APPLY_SUCCESS}),
                &[],
            ),
        ],
    );
    let (out, _) = env.run(env.request("wf-isinst", m)).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    assert_eq!(env.log("failing"), LIFECYCLE);
    assert_eq!(env.log("odd"), LIFECYCLE);
    assert_eq!(
        codes(&out),
        vec![
            ("step_0".into(), result::APPLY_SUCCESS),
            ("step_1".into(), result::APPLY_SUCCESS)
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_install_answering_603_skips_apply_and_the_deployment_goes_on() {
    // ADU steps_handler.cpp, StepsHandler_Install: install 603/604 -> skip the 'apply' phase.
    let env = Env::new();
    let m = with_unused(
        &env,
        vec![
            stateful(
                "skipper",
                json!({"install_code": result::INSTALL_SKIPPED_UPDATE_ALREADY_INSTALLED}),
                &[],
            ),
            stateful("next", json!({}), &[]),
        ],
    );
    let (out, _) = env.run(env.request("wf-603", m)).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    assert_eq!(env.log("skipper"), ["download", "backup", "install"]);
    assert_eq!(env.log("next"), LIFECYCLE);
    assert_eq!(
        codes(&out),
        vec![
            (
                "step_0".into(),
                result::INSTALL_SKIPPED_UPDATE_ALREADY_INSTALLED
            ),
            ("step_1".into(), result::APPLY_SUCCESS)
        ]
    );
}

fn with_unused(env: &Env, steps: Vec<Value>) -> String {
    std::fs::write(env.files.path().join("unused.txt"), b"x").unwrap();
    env.manifest(
        steps
            .into_iter()
            .map(|mut v| {
                if v.get("files")
                    .is_some_and(|f| f.as_array().unwrap().is_empty())
                {
                    v["files"] = json!(["unused.txt"]);
                }
                v
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_install_failure_runs_restore_reports_it_and_aborts() {
    let env = Env::new();
    let m = with_unused(
        &env,
        vec![
            stateful("one", json!({}), &[]),
            stateful("two", json!({"fail": "install"}), &[]),
            stateful("three", json!({}), &[]),
        ],
    );
    let (out, _) = env.run(env.request("wf-fail", m)).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(out.result.result_code, result::FAILURE);
    assert_eq!(out.result.extended_result_code, 0x3200_0042);
    assert_eq!(out.result.result_details, "two: install failed on purpose");
    assert_eq!(out.result.extended_result_codes, "32000042");
    assert!(out.result.installed_update_id.is_none());
    let step1 = &out.result.step_results["step_1"];
    let restore = step1
        .actions
        .iter()
        .find(|a| a.action == Action::Restore)
        .expect("restore ran");
    assert_eq!(restore.result.result_code, result::RESTORE_SUCCESS);
    assert_eq!(env.log("two"), ["download", "backup", "install", "restore"]);
    assert_eq!(
        env.log("three"),
        ["download"],
        "the step after the failure was downloaded (download phase) and never installed"
    );
    assert!(!out.result.step_results.contains_key("step_2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_handler_fails_its_step_naming_the_id_and_the_fix() {
    let env = Env::new();
    let m = with_unused(
        &env,
        vec![json!({"handler": "nobody/nothing:1", "files": [], "handlerProperties": {}})],
    );
    let (out, _) = env.run(env.request("wf-unknown", m)).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(
        out.result.extended_result_code,
        erc::SANDBOX_HANDLER_NOT_FOUND.raw()
    );
    assert_eq!(
        out.result.result_details,
        "no handler is registered as `nobody/nothing:1`; install one with `sandstep handler install <COMPONENT.wasm> --id nobody/nothing:1`"
    );
}

fn child_manifest(
    steps: Vec<Value>,
    compatibility: Value,
    files: serde_json::Map<String, Value>,
) -> String {
    serde_json::to_string(&json!({
        "updateId": {"provider": "test", "name": "child", "version": "2.0"},
        "compatibility": compatibility,
        "instructions": {"steps": steps},
        "files": files,
        "manifestVersion": "4.0"
    }))
    .unwrap()
}

fn inventory() -> Inventory {
    Inventory::parse(
        &json!({"components": [
            {"id": "cam-1", "name": "front", "group": "cameras", "manufacturer": "contoso", "model": "c", "version": "1.0", "properties": {"path": "/dev/cam1"}},
            {"id": "cam-2", "name": "rear", "group": "cameras", "manufacturer": "contoso", "model": "c", "version": "1.0"},
            {"id": "motor-1", "name": "left", "group": "motors", "manufacturer": "contoso", "model": "m", "version": "1.0"}
        ]})
        .to_string(),
    )
    .unwrap()
}

/// Adds a child update file to `env` and returns the parent manifest referencing it.
fn parent_with_child(env: &mut Env, child: &str, before: Vec<Value>) -> String {
    env.file("child.json", child.as_bytes());
    std::fs::write(env.files.path().join("unused.txt"), b"x").unwrap();
    env.file_entries
        .insert("unused.txt".into(), file_entry("unused.txt", b"x"));
    let mut steps = before;
    steps.push(json!({"type": "reference", "detachedManifestFileId": "child.json"}));
    env.manifest(steps)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reference_step_runs_every_child_step_for_each_matching_component() {
    let mut env = Env::new();
    env.file("cfg.txt", b"setting=1\n");
    let mut files = serde_json::Map::new();
    files.insert("cfg.txt".into(), file_entry("cfg.txt", b"setting=1\n"));
    let child = child_manifest(
        vec![
            json!({"handler": "contoso/config:1", "files": ["cfg.txt"], "handlerProperties": {"target": "cfg.txt", "installedCriteria": "cfg-1"}}),
            json!({"handler": "contoso/config:1", "files": ["cfg.txt"], "handlerProperties": {"target": "copy.txt", "installedCriteria": "copy-1"}}),
        ],
        json!([{"group": "cameras"}, {"group": "motors"}]),
        files,
    );
    let m = parent_with_child(&mut env, &child, vec![]);
    let mut req = env.request("wf-ref", m);
    req.inventory = Some(inventory());
    let (out, rec) = env.run(req).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    let step = &out.result.step_results["step_0"];
    assert_eq!(step.result_code, 700);
    assert_eq!(
        step.components.keys().collect::<Vec<_>>(),
        ["cam-1", "cam-2"],
        "only the first compatibility entry selects"
    );
    for c in step.components.values() {
        assert_eq!(
            c.step_results.keys().collect::<Vec<_>>(),
            ["step_0", "step_1"]
        );
    }
    // One component after the other, all of a component's steps together.
    let started: Vec<String> = rec
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::UnitStarted { label, .. } => Some(label.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        started,
        ["0/cam-1/0", "0/cam-1/1", "0/cam-2/0", "0/cam-2/1"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn component_tokens_reach_the_handler_as_the_selected_component() {
    let mut env = Env::new();
    let child = child_manifest(
        vec![
            json!({"handler": PROBE, "files": ["unused.txt"], "handlerProperties": {"op": "stateful", "name": "per-component"}}),
        ],
        json!([{"group": "motors"}]),
        {
            let mut f = serde_json::Map::new();
            f.insert("unused.txt".into(), file_entry("unused.txt", b"x"));
            f
        },
    );
    let m = parent_with_child(&mut env, &child, vec![]);
    let mut req = env.request("wf-comp", m);
    req.inventory = Some(inventory());
    let (out, _) = env.run(req).await;
    assert_eq!(out.status, Status::Succeeded);
    assert_eq!(
        out.result.step_results["step_0"]
            .components
            .keys()
            .collect::<Vec<_>>(),
        ["motor-1"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_matching_component_gives_604_and_is_not_a_failure() {
    let mut env = Env::new();
    let child = child_manifest(
        vec![
            json!({"handler": PROBE, "files": ["unused.txt"], "handlerProperties": {"op": "stateful", "name": "x"}}),
        ],
        json!([{"group": "printers"}]),
        {
            let mut f = serde_json::Map::new();
            f.insert("unused.txt".into(), file_entry("unused.txt", b"x"));
            f
        },
    );
    let m = parent_with_child(&mut env, &child, vec![]);
    let mut req = env.request("wf-nomatch", m);
    req.inventory = Some(inventory());
    let (out, _) = env.run(req).await;
    assert_eq!(out.status, Status::Succeeded);
    let step = &out.result.step_results["step_0"];
    assert_eq!(
        step.result_code,
        result::INSTALL_SKIPPED_NO_MATCHING_COMPONENTS
    );
    assert_eq!(
        step.result_details,
        r#"no component of the inventory matches {"group":"printers"}"#
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_inventory_a_reference_step_runs_its_child_once_for_the_host() {
    // ADU steps_handler.cpp, HandleComponents: no component enumerator -> the child's steps run
    // once, with no selected component.
    let mut env = Env::new();
    let child = child_manifest(
        vec![
            json!({"handler": PROBE, "files": ["unused.txt"], "handlerProperties": {"op": "stateful", "name": "host-a"}}),
            json!({"handler": PROBE, "files": ["unused.txt"], "handlerProperties": {"op": "stateful", "name": "host-b"}}),
        ],
        json!([{"group": "printers"}]),
        {
            let mut f = serde_json::Map::new();
            f.insert("unused.txt".into(), file_entry("unused.txt", b"x"));
            f
        },
    );
    let m = parent_with_child(&mut env, &child, vec![]);
    let req = env.request("wf-host", m);
    assert!(req.inventory.is_none());
    let (out, _) = env.run(req).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    assert_eq!(env.log("host-a"), LIFECYCLE);
    assert_eq!(env.log("host-b"), LIFECYCLE);
    let host = &out.result.step_results["step_0"].components["(host)"];
    assert_eq!(
        host.step_results["step_0"].result_code,
        result::APPLY_SUCCESS
    );
    assert_eq!(
        host.step_results["step_1"].result_code,
        result::APPLY_SUCCESS
    );
}

/// A parent manifest whose content is detached into `detached.json` holding `inner`.
fn detached_parent(env: &mut Env, inner: &str) -> String {
    let file = json!({ "updateManifest": inner }).to_string();
    std::fs::write(env.files.path().join("detached.json"), &file).unwrap();
    serde_json::to_string(&json!({
        "manifestVersion": "5",
        "updateId": {"provider": "test", "name": "detached", "version": "1.0"},
        "compatibility": [{"manufacturer": "test", "model": "gateway"}],
        "detachedManifestFileId": "m0",
        "files": {"m0": file_entry("detached.json", file.as_bytes())}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_detached_manifest_is_fetched_and_run_in_place_of_the_parent() {
    // ADU workflow_utils.c, DownloadAndUseDetachedManifest: a top-level detachedManifestFileId
    // names the file holding the real manifest as {"updateManifest": "<json>"}.
    let mut env = Env::new();
    let inner = with_unused(&env, vec![stateful("detached", json!({}), &[])]);
    let m = detached_parent(&mut env, &inner);
    let (out, _) = env.run(env.request("wf-detached", m)).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    assert_eq!(env.log("detached"), LIFECYCLE);
    assert_eq!(
        out.result.update_id.name, "deploy",
        "the detached manifest's update id"
    );

    // A file that holds no `updateManifest`: ADU's 0x8030000F, before anything runs.
    let mut env = Env::new();
    let m = detached_parent(&mut env, "{}");
    let file = b"{\"notTheManifest\": 1}";
    std::fs::write(env.files.path().join("detached.json"), file).unwrap();
    let mut v: Value = serde_json::from_str(&m).unwrap();
    v["files"]["m0"] = file_entry("detached.json", file);
    let (out, _) = env.run(env.request("wf-detached-bad", v.to_string())).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(
        out.result.extended_result_code as u32, 0x8030_000F,
        "{:#?}",
        out.result
    );
    // A detached file too large for a manifest is refused before it is fetched.
    let mut env = Env::new();
    let mut v: Value = serde_json::from_str(&detached_parent(&mut env, "{}")).unwrap();
    v["files"]["m0"]["sizeInBytes"] = json!(3 << 20);
    let (out, _) = env
        .run(env.request("wf-detached-huge", v.to_string()))
        .await;
    assert_eq!(
        out.result.extended_result_code as u32, 0x8030_000C,
        "{:#?}",
        out.result
    );
    // A detached id that names no file: ADU's 0x8030000B.
    let mut env = Env::new();
    let mut v: Value = serde_json::from_str(&detached_parent(&mut env, "{}")).unwrap();
    v["detachedManifestFileId"] = json!("nope");
    let (out, _) = env
        .run(env.request("wf-detached-none", v.to_string()))
        .await;
    assert_eq!(
        out.result.extended_result_code as u32, 0x8030_000B,
        "{:#?}",
        out.result
    );
}

/// `manifest` with its update version and compatibility replaced, and `extra` top-level members.
fn versioned(manifest: &str, version: &str, compat: Value, extra: Value) -> String {
    let mut v: Value = serde_json::from_str(manifest).unwrap();
    v["updateId"]["version"] = json!(version);
    v["compatibility"] = compat;
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_update_or_one_for_another_model_is_refused_before_anything_runs() {
    let env = Env::new();
    let m = with_unused(&env, vec![stateful("v", json!({}), &[])]);
    let compat = json!([{"manufacturer": "test", "model": "gateway"}]);
    let (out, _) = env
        .run(env.request("wf-v2", versioned(&m, "2.0", compat.clone(), json!({}))))
        .await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    // A replayed older update, under a new workflow id: refused, nothing runs.
    let before = env.log("v").len();
    let (out, _) = env
        .run(env.request("wf-v1", versioned(&m, "1.9", compat.clone(), json!({}))))
        .await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(
        out.result.extended_result_code,
        erc::WORKFLOW_DOWNGRADE.raw(),
        "{:#?}",
        out.result
    );
    assert!(
        out.result.result_details.contains("older than 2.0"),
        "{}",
        out.result.result_details
    );
    assert_eq!(env.log("v").len(), before, "nothing ran");
    // Signed as an explicit downgrade, it runs.
    let allowed = versioned(
        &m,
        "1.9",
        compat.clone(),
        json!({"sandstep": {"allowDowngrade": true}}),
    );
    let (out, _) = env.run(env.request("wf-v1-allowed", allowed)).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);

    // A device that says what it is refuses another model's update.
    let mut config = Config::default();
    config
        .device
        .properties
        .insert("model".into(), "gateway".into());
    let other = versioned(&m, "3.0", json!([{"model": "camera"}]), json!({}));
    let d = Deployer::new(
        Arc::new(Sandbox::new(&EngineOptions::default(), None).unwrap()),
        DataDir::open(env.data.path()).unwrap(),
        config,
    )
    .unwrap();
    let out = d
        .run(
            env.request("wf-other-model", other),
            Arc::new(Recorder::default()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(out.status, Status::Failed);
    assert_eq!(
        out.result.extended_result_code,
        erc::WORKFLOW_INCOMPATIBLE.raw(),
        "{:#?}",
        out.result
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_update_with_a_reference_step_is_refused() {
    let mut env = Env::new();
    let mut files = serde_json::Map::new();
    files.insert(
        "grandchild.json".into(),
        file_entry("grandchild.json", b"{}"),
    );
    let child = child_manifest(
        vec![json!({"type": "reference", "detachedManifestFileId": "grandchild.json"})],
        json!([{"group": "cameras"}]),
        files,
    );
    let m = parent_with_child(&mut env, &child, vec![]);
    let (out, _) = env.run(env.request("wf-nested", m)).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(
        out.result.extended_result_code,
        erc::WORKFLOW_CHILD_MANIFEST_INVALID.raw()
    );
    assert_eq!(
        out.result.result_details,
        "instructions.steps[0]: child update `child.json`: instructions.steps[0]: a child update may not contain reference steps"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_child_manifest_fails_with_the_hash_mismatch_code() {
    let mut env = Env::new();
    let child = child_manifest(
        vec![json!({"handler": PROBE, "files": ["unused.txt"], "handlerProperties": {}})],
        json!([{"group": "cameras"}]),
        {
            let mut f = serde_json::Map::new();
            f.insert("unused.txt".into(), file_entry("unused.txt", b"x"));
            f
        },
    );
    let m = parent_with_child(&mut env, &child, vec![]);
    // Same size, different bytes.
    let tampered = child.replacen("cameras", "CAMERAS", 1);
    std::fs::write(env.files.path().join("child.json"), tampered).unwrap();
    let (out, _) = env.run(env.request("wf-tamper", m)).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(out.result.extended_result_code, 0x4000_000C);
    assert!(
        out.result
            .result_details
            .starts_with("`child.json`: sha256 mismatch"),
        "{}",
        out.result.result_details
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payload_with_the_wrong_hash_fails_its_step_before_the_handler_sees_it() {
    let mut env = Env::new();
    env.file("fw.bin", b"good firmware");
    let m = env.manifest(vec![
        stateful("fw", json!({}), &["fw.bin"]),
        stateful("after", json!({}), &["fw.bin"]),
    ]);
    std::fs::write(env.files.path().join("fw.bin"), b"evil firmware").unwrap();
    let (out, _) = env.run(env.request("wf-hash", m)).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(out.result.extended_result_code, 0x4000_000C);
    assert!(env.log("fw").is_empty(), "the handler never ran");
    assert!(env.log("after").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_immediate_reboot_stops_the_deployment_and_the_next_run_resumes() {
    let env = Env::new();
    let m = with_unused(
        &env,
        vec![
            stateful("fw", json!({"apply_code": 705}), &[]),
            stateful("after", json!({}), &[]),
        ],
    );
    let (first, _) = env.run(env.request("wf-reboot", m.clone())).await;
    assert_eq!(first.status, Status::RebootRequired);
    assert_eq!(
        first.result.result_code,
        result::APPLY_REQUIRED_IMMEDIATE_REBOOT
    );
    assert_eq!(
        env.log("after"),
        ["download"],
        "downloaded in the download phase, nothing installed before the reboot"
    );

    // ADU's per-action result files are in the work folder, kept while the deployment waits.
    let work = find_file(
        &env.data.path().join("work"),
        "action_apply_aduc_result.json",
    );
    let v: Value = serde_json::from_slice(&std::fs::read(work).unwrap()).unwrap();
    assert_eq!(v["resultCode"], 705);

    let (second, rec) = env.run(env.request("wf-reboot", m)).await;
    assert_eq!(second.status, Status::Succeeded);
    assert!(matches!(
        rec.0.lock().unwrap()[0],
        Event::Planned { resumed: true, .. }
    ));
    assert_eq!(second.result.step_results["step_0"].result_code, 700);
    assert_eq!(
        second.result.step_results["step_0"].result_details,
        "confirmed installed after the requested reboot or restart"
    );
    assert_eq!(
        env.log("fw"),
        LIFECYCLE,
        "the rebooted step was re-checked, not re-run"
    );
    assert_eq!(env.log("after"), LIFECYCLE);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deferred_reboot_is_requested_after_the_last_step() {
    let env = Env::new();
    let m = with_unused(
        &env,
        vec![
            stateful("a", json!({"apply_code": 706}), &[]),
            stateful("b", json!({}), &[]),
        ],
    );
    let (first, _) = env.run(env.request("wf-later", m.clone())).await;
    assert_eq!(first.status, Status::RebootRequired);
    assert_eq!(first.result.result_code, result::APPLY_REQUIRED_REBOOT);
    assert_eq!(env.log("b"), LIFECYCLE, "the remaining steps ran first");
    let (second, _) = env.run(env.request("wf-later", m)).await;
    assert_eq!(second.status, Status::Succeeded);
    assert_eq!(env.log("a"), LIFECYCLE);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_workflow_is_reported_not_rerun_unless_forced() {
    let env = Env::new();
    let m = with_unused(&env, vec![stateful("once", json!({}), &[])]);
    let (first, _) = env.run(env.request("wf-done", m.clone())).await;
    assert!(!first.already_done);
    let (again, _) = env.run(env.request("wf-done", m.clone())).await;
    assert!(again.already_done);
    assert_eq!(again.result, first.result);
    let mut forced = env.request("wf-done", m);
    forced.force = true;
    let (f, _) = env.run(forced).await;
    assert!(!f.already_done);
    assert_eq!(
        f.result.step_results["step_0"].result_code, 603,
        "forced run re-checks, finds it installed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_stops_the_step_calls_cancel_and_records_minus_one() {
    let env = Env::new();
    let m = with_unused(
        &env,
        vec![
            stateful("slow", json!({"sleep_ms": 30000}), &[]),
            stateful("never", json!({}), &[]),
        ],
    );
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    // Cancel once the handler is inside install.
    let rec = Arc::new(Recorder::default());
    let r = rec.clone();
    tokio::spawn(async move {
        loop {
            let installing = r.0.lock().unwrap().iter().any(|e| {
                matches!(
                    e,
                    Event::ActionStarted {
                        action: Action::Install,
                        ..
                    }
                )
            });
            if installing {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                c.cancel();
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    let out = env
        .deployer()
        .run(env.request("wf-cancel", m), rec, &cancel)
        .await
        .unwrap();
    assert_eq!(out.status, Status::Cancelled, "{:#?}", out.result);
    assert_eq!(out.result.result_code, result::FAILURE_CANCELLED);
    assert_eq!(
        out.result.extended_result_code,
        erc::WORKFLOW_CANCELLED.raw()
    );
    let step = &out.result.step_results["step_0"];
    let cancel_call = step
        .actions
        .iter()
        .find(|a| a.action == Action::Cancel)
        .expect("cancel was called");
    assert_eq!(cancel_call.result.result_code, result::CANCEL_SUCCESS);
    assert_eq!(env.log("slow").last().map(String::as_str), Some("cancel"));
    assert_eq!(env.log("never"), ["download"], "never installed");
    let journal = env
        .deployer()
        .journals()
        .load("wf-cancel")
        .unwrap()
        .unwrap();
    assert_eq!(journal.status, Status::Cancelled);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_workflow_and_component_ids_stay_inside_the_data_dir() {
    let outer = tempfile::tempdir().unwrap();
    let mut env = Env::new();
    // Put the data dir one level down so an escape would show up beside it.
    let data_path = outer.path().join("data");
    std::fs::rename(env.data.path(), &data_path).unwrap();
    let child = child_manifest(
        vec![
            json!({"handler": PROBE, "files": ["unused.txt"], "handlerProperties": {"op": "stateful", "name": "h"}}),
        ],
        json!([{"group": "evil"}]),
        {
            let mut f = serde_json::Map::new();
            f.insert("unused.txt".into(), file_entry("unused.txt", b"x"));
            f
        },
    );
    let m = parent_with_child(&mut env, &child, vec![]);
    let mut req = env.request("../../escape/../../etc", m);
    req.inventory = Some(Inventory::parse(&json!({"components": [{"id": "../../../../tmp/evil", "group": "evil"}, {"id": "/etc/passwd", "group": "evil"}]}).to_string()).unwrap());
    let data = DataDir::open(&data_path).unwrap();
    let sandbox = Arc::new(Sandbox::new(&EngineOptions::default(), None).unwrap());
    let deployer = Deployer::new(sandbox, data, Config::default()).unwrap();
    let out = deployer
        .run(
            req,
            Arc::new(Recorder::default()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    let beside: Vec<_> = std::fs::read_dir(outer.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["data"], "nothing was created outside the data dir");
    for p in walk(&data_path) {
        let rel = p.strip_prefix(&data_path).unwrap();
        assert!(
            rel.components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
            "{}",
            rel.display()
        );
        assert!(!rel.to_string_lossy().contains(".."), "{}", rel.display());
    }
    std::fs::rename(&data_path, env.data.path()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_journal_is_reported_and_kept_aside() {
    let env = Env::new();
    let m = with_unused(&env, vec![stateful("x", json!({"apply_code": 705}), &[])]);
    let (first, _) = env.run(env.request("wf-corrupt", m.clone())).await;
    assert_eq!(first.status, Status::RebootRequired);
    let journal_dir = env.data.path().join("journal");
    let file = std::fs::read_dir(&journal_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 40);
    std::fs::write(&file, &bytes).unwrap();
    let err = env
        .deployer()
        .run(
            env.request("wf-corrupt", m),
            Arc::new(Recorder::default()),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("journal for workflow `wf-corrupt`: journal checksum mismatch: the file is torn or corrupted (kept as "), "{err}");
    assert!(std::fs::read_dir(&journal_dir).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".corrupt")));
}

#[tokio::test(flavor = "multi_thread")]
async fn files_come_from_a_base_url_or_a_url_per_file_id() {
    let server = crate::http::TestServer::start();
    let mut env = Env::new();
    env.file("a.txt", b"from the server");
    server.put("a.txt", b"from the server");
    let m = env.manifest(vec![stateful("web", json!({}), &["a.txt"])]);
    let mut req = env.request("wf-http", m.clone());
    req.source = FileSource::BaseUrl(server.base());
    let (out, _) = env.run(req).await;
    assert_eq!(out.status, Status::Succeeded);
    assert_eq!(
        out.result.step_results["step_0"].files[0].result_code,
        result::DOWNLOAD_SUCCESS
    );

    // A finished deployment gave its store copy back: the next one fetches the file again,
    // once for both of its steps (the second finds it in the store: 502).
    let m = env.manifest(vec![
        stateful("web-2", json!({}), &["a.txt"]),
        stateful("web-3", json!({}), &["a.txt"]),
    ]);
    let mut req = env.request("wf-http-2", m);
    req.source = FileSource::Urls([("a.txt".to_string(), server.url("a.txt"))].into());
    let (out, _) = env.run(req).await;
    assert_eq!(out.status, Status::Succeeded);
    let file_code = |step: &str| out.result.step_results[step].files[0].result_code;
    assert_eq!(file_code("step_0"), result::DOWNLOAD_SUCCESS);
    assert_eq!(file_code("step_1"), result::DOWNLOAD_SKIPPED_FILE_EXISTS);
    assert_eq!(server.requests("a.txt").len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn journals_named_by_an_older_sandstep_are_found_and_renamed() {
    // Names now carry 128 bits of the id's digest (ids are chosen by whoever sends a
    // deployment); a data dir from before, with 32-bit names, carries over.
    let env = Env::new();
    let m = with_unused(&env, vec![stateful("old", json!({}), &[])]);
    let (out, _) = env.run(env.request("wf-legacy", m)).await;
    assert_eq!(out.status, Status::Succeeded);
    let journals = env.data.path().join("journal");
    let new = format!("{}.journal", sandstep::datadir::safe_name("wf-legacy"));
    let legacy = format!(
        "{}.journal",
        sandstep::datadir::legacy_safe_name("wf-legacy")
    );
    std::fs::rename(journals.join(&new), journals.join(&legacy)).unwrap();
    let j = env
        .deployer()
        .journals()
        .load("wf-legacy")
        .unwrap()
        .unwrap();
    assert_eq!(j.status, Status::Succeeded);
    assert!(journals.join(&new).exists() && !journals.join(&legacy).exists());
}

fn health(text: &str) -> Config {
    Config::parse(&format!("[health]\n{text}"), "test").unwrap()
}

/// A reboot or restart asked for at once or after the last step: either way, the health checks
/// run before the deployment is confirmed, and a failure (no slot to roll back) fails it with
/// the check's words, the steps after it not run.
#[tokio::test(flavor = "multi_thread")]
async fn health_checks_gate_every_reboot_or_restart_and_a_failure_names_the_check() {
    let failing =
        health("programs = [[\"/bin/sh\", \"-c\", \"echo queue stuck; exit 1\"]]\ntries = 1\n");
    for (code, wf) in [(705, "wf-now"), (706, "wf-later"), (707, "wf-restart")] {
        let env = Env::new();
        let m = with_unused(
            &env,
            vec![
                stateful("fw", json!({ "apply_code": code }), &[]),
                stateful("after", json!({}), &[]),
            ],
        );
        let (first, _) = env
            .run_with(failing.clone(), env.request(wf, m.clone()))
            .await;
        assert!(
            matches!(
                first.status,
                Status::RebootRequired | Status::RestartRequired
            ),
            "{code}: {:#?}",
            first.result
        );
        let (second, _) = env.run_with(failing.clone(), env.request(wf, m)).await;
        assert_eq!(
            second.status,
            Status::Failed,
            "{code}: {:#?}",
            second.result
        );
        assert_eq!(
            second.result.extended_result_code,
            erc::WORKFLOW_HEALTH_CHECK_FAILED.raw(),
            "{code}"
        );
        assert_eq!(
            second.result.result_details,
            "health check program `/bin/sh -c echo queue stuck; exit 1` failed (try 1 of 1): exit status 1; output: queue stuck",
            "{code}"
        );
        if code != 706 {
            assert_eq!(
                env.log("after"),
                ["download"],
                "{code}: not installed after a failed check"
            );
        }
    }
}

/// A deployment's own checks are read from its signed manifest and refused, naming step and
/// field, before anything runs; the handler never sees sandstep's `health` key.
#[tokio::test(flavor = "multi_thread")]
async fn a_deployments_health_checks_are_refused_by_field_before_anything_runs() {
    let env = Env::new();
    let m = with_unused(
        &env,
        vec![stateful(
            "s",
            json!({"health": {"urls": ["http://192.0.2.7/ready"]}}),
            &[],
        )],
    );
    let (out, _) = env.run(env.request("wf-bad-health", m)).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(
        out.result.extended_result_code,
        erc::WORKFLOW_HEALTH_INVALID.raw()
    );
    assert_eq!(
        out.result.result_details,
        "step 0: handlerProperties.health.urls[0]: `http://192.0.2.7/ready`: a deployment's health URLs must be on this device (localhost, 127.0.0.0/8 or ::1)"
    );
    assert!(env.log("s").is_empty(), "nothing ran");
    // Allowed checks pass through to the deployment's end, and the probe (which refuses
    // properties it does not know) never saw them.
    let m = with_unused(
        &env,
        vec![stateful(
            "ok",
            json!({"apply_code": 705, "health": {"programs": [["/bin/true"]], "tries": 2}}),
            &[],
        )],
    );
    let config = Config::parse(
        "[health.process]\nprograms = [{ path = \"/bin/true\", forms = [{}] }]\n",
        "test",
    )
    .unwrap();
    let (first, _) = env
        .run_with(config.clone(), env.request("wf-good-health", m.clone()))
        .await;
    assert_eq!(first.status, Status::RebootRequired, "{:#?}", first.result);
    let (second, _) = env.run_with(config, env.request("wf-good-health", m)).await;
    assert_eq!(second.status, Status::Succeeded, "{:#?}", second.result);
}

/// A unit check is `systemctl is-active -- UNIT`, run as a held program; on this machine (no
/// systemd as init) it fails, and the report carries what systemctl said.
#[tokio::test(flavor = "multi_thread")]
async fn a_unit_check_asks_systemctl_and_reports_its_answer() {
    assert!(
        std::path::Path::new("/usr/bin/systemctl").exists(),
        "systemctl (Debian's systemd) is a prerequisite of this test"
    );
    let env = Env::new();
    let m = with_unused(&env, vec![stateful("svc", json!({"apply_code": 707}), &[])]);
    let config = health("units = [\"mosquitto.service\"]\ntries = 1\n");
    let (first, _) = env
        .run_with(config.clone(), env.request("wf-unit", m.clone()))
        .await;
    assert_eq!(first.status, Status::RestartRequired);
    let (second, _) = env.run_with(config, env.request("wf-unit", m)).await;
    assert_eq!(second.status, Status::Failed, "{:#?}", second.result);
    let details = &second.result.result_details;
    assert!(
        details
            .starts_with("health check unit `mosquitto.service` failed (try 1 of 1): exit status "),
        "{details}"
    );
    assert!(details.contains("output: "), "{details}");
}
