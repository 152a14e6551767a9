//! `microsoft/script:1`: ADU's script protocol, with the seed's camera example.

use crate::workflow::{file_entry, Env};
use sandstep::config::Config;
use sandstep::datadir::DataDir;
use sandstep::sandbox::{EngineOptions, Sandbox};
use sandstep::workflow::{Deployer, Outcome};
use sandstep_model::codes::erc;
use sandstep_model::inventory::Inventory;
use sandstep_model::journal::Status;
use sandstep_testkit::repo_root;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

const SCRIPT: &str = "microsoft/script:1";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("tests/fixtures/scripts").join(name)).unwrap()
}

async fn run(env: &Env, req: sandstep::workflow::Request) -> Outcome {
    let data = DataDir::open(env.data.path()).unwrap();
    let sandbox = Arc::new(Sandbox::new(&EngineOptions::default(), None).unwrap());
    let d = Deployer::new(sandbox, data, Config::default()).unwrap();
    d.run(
        req,
        Arc::new(crate::workflow::Recorder::default()),
        &CancellationToken::new(),
    )
    .await
    .unwrap()
}

/// The seed's child update (contoso/virtual-camera 1.2), as a device receives it, with
/// `scriptFileName` of the firmware step as given (a file the step does not have) or fixed.
fn camera_child(fix_firmware_step: bool) -> String {
    let args = "--component-name --component-name-val --component-group --component-group-val --component-prop path --component-prop-val path";
    let script = "contoso-camera-installscript.sh";
    let firmware_script = if fix_firmware_step {
        script
    } else {
        "missing-contoso-camera-installscript.sh"
    };
    let mut files = serde_json::Map::new();
    files.insert(script.into(), file_entry(script, &fixture(script)));
    files.insert(
        "camera-firmware-1.1.json".into(),
        file_entry("camera-firmware-1.1.json", br#"{"firmware": "1.1"}"#),
    );
    json!({
        "updateId": {"provider": "contoso", "name": "virtual-camera", "version": "1.2"},
        "isDeployable": false,
        "compatibility": [{"group": "cameras"}],
        "instructions": {"steps": [
            {"description": "Cameras Update - preinstall step", "handler": SCRIPT, "files": [script],
             "handlerProperties": {"scriptFileName": script, "arguments": format!("--pre-install-sim-success {args}"),
                                   "installedCriteria": "contoso-virtual-camera-1.2-step-0"}},
            {"description": "Cameras Update - firmware installation", "handler": SCRIPT, "files": [script, "camera-firmware-1.1.json"],
             "handlerProperties": {"scriptFileName": firmware_script, "arguments": format!("--firmware-file camera-firmware-1.1.json {args}"),
                                   "installedCriteria": "contoso-virtual-camera-1.2-step-1"}},
            {"description": "Cameras Update - postinstall step", "handler": SCRIPT, "files": [script],
             "handlerProperties": {"scriptFileName": script, "arguments": format!("--post-install-sim-success {args}"),
                                   "installedCriteria": "contoso-virtual-camera-1.2-step-2"}}
        ]},
        "referencedBy": [{"provider": "DU-Client-Eng", "name": "MSOE-Update-Demo", "version": "3.1"}],
        "files": files,
        "manifestVersion": "4.0",
        "createdDateTime": "2021-11-17T07:22:09.2232968Z",
        "etag": "\"ad7a553d-24a8-492b-9885-9af424d44d58\""
    })
    .to_string()
}

struct Cameras {
    env: Env,
    dirs: tempfile::TempDir,
}

impl Cameras {
    fn new(fix: bool) -> (Cameras, sandstep::workflow::Request) {
        let mut env = Env::new();
        env.install(SCRIPT, "script");
        env.file(
            "contoso-camera-installscript.sh",
            &fixture("contoso-camera-installscript.sh"),
        );
        env.file("camera-firmware-1.1.json", br#"{"firmware": "1.1"}"#);
        env.file("virtual-camera-1.2.json", camera_child(fix).as_bytes());
        let m = env.manifest(vec![json!({"type": "reference", "description": "Cameras Firmware Update", "detachedManifestFileId": "virtual-camera-1.2.json"})]);
        let dirs = tempfile::tempdir().unwrap();
        let mut comps = Vec::new();
        for (id, name, group) in [
            ("cam-1", "front", "cameras"),
            ("cam-2", "rear", "cameras"),
            ("motor-1", "left", "motors"),
        ] {
            let d = dirs.path().join(id);
            std::fs::create_dir(&d).unwrap();
            comps.push(json!({"id": id, "name": name, "group": group, "manufacturer": "contoso", "model": "virtual", "version": "1.1",
                              "properties": {"path": d.display().to_string()}}));
        }
        let mut req = env.request(if fix { "wf-cams-fixed" } else { "wf-cams" }, m);
        req.inventory = Some(Inventory::parse(&json!({"components": comps}).to_string()).unwrap());
        (Cameras { env, dirs }, req)
    }

    fn log(&self, id: &str) -> Vec<String> {
        std::fs::read_to_string(self.dirs.path().join(id).join("log"))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_camera_update_fails_on_its_missing_script_before_anything_is_installed() {
    // As under ADU's agent: the download phase reaches the firmware step's missing script
    // before the install phase starts, so no camera is touched.
    let (cams, req) = Cameras::new(false);
    let out = run(&cams.env, req).await;
    assert_eq!(out.status, Status::Failed, "{:#?}", out.result);
    let cam1 = &out.result.step_results["step_0"].components["cam-1"];
    assert!(
        !cam1.step_results.contains_key("step_0"),
        "the pre-install step was downloaded, never installed"
    );
    let firmware = &cam1.step_results["step_1"];
    assert_eq!(firmware.result_code, 0);
    // ADU: ADUC_ERC_SCRIPT_HANDLER_DOWNLOAD_FAILURE_GET_PRIMARY_FILE_ENTITY.
    assert_eq!(firmware.extended_result_code, 0x3050_0103);
    assert_eq!(
        firmware.result_details,
        "scriptFileName `missing-contoso-camera-installscript.sh` is not one of the step's files (contoso-camera-installscript.sh, camera-firmware-1.1.json)"
    );
    assert!(
        !cam1.step_results.contains_key("step_2"),
        "the deployment stopped at the failure"
    );
    assert!(cams.log("cam-1").is_empty(), "nothing was installed");
    assert!(
        cams.log("cam-2").is_empty(),
        "the second camera never started"
    );
    assert!(cams.log("motor-1").is_empty(), "the motor is not a camera");
    assert_eq!(
        out.result.result_details, firmware.result_details,
        "the failing step's details become the root's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_camera_update_with_its_script_fixed_runs_pre_firmware_post_on_each_camera() {
    let (cams, req) = Cameras::new(true);
    let out = run(&cams.env, req).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    for (id, name) in [("cam-1", "front"), ("cam-2", "rear")] {
        assert_eq!(
            cams.log(id),
            [
                format!("install pre-install {name}"),
                format!("apply pre-install {name}"),
                format!("install firmware {name}"),
                format!("apply firmware {name}"),
                format!("install post-install {name}"),
                format!("apply post-install {name}"),
            ]
        );
    }
    // Applying again finds every step installed (the script's is-installed answers 900).
    let (cams2, _) = (cams, ());
    let mut again = cams2.env.request(
        "wf-cams-again",
        cams2.env.manifest(vec![
            json!({"type": "reference", "detachedManifestFileId": "virtual-camera-1.2.json"}),
        ]),
    );
    let comps: Vec<Value> = ["cam-1", "cam-2"]
        .iter()
        .map(|id| json!({"id": id, "group": "cameras", "properties": {"path": cams2.dirs.path().join(id).display().to_string()}}))
        .collect();
    again.inventory = Some(Inventory::parse(&json!({ "components": comps }).to_string()).unwrap());
    let out = run(&cams2.env, again).await;
    assert_eq!(out.result.step_results["step_0"].result_code, 603);
}

/// One inline step running `result-kinds.sh --mode <mode>` for `action`.
async fn script_result(mode: &str, extra: Value) -> sandstep_model::results::StepReport {
    let mut env = Env::new();
    env.install(SCRIPT, "script");
    env.file("result-kinds.sh", &fixture("result-kinds.sh"));
    let mut props = json!({"scriptFileName": "result-kinds.sh", "arguments": format!("--mode {mode}"), "installedCriteria": "kinds-1"});
    props
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    // is-installed must answer 900/901: route it to a mode that does not, so only install matters.
    let m = env.manifest(vec![
        json!({"handler": SCRIPT, "files": ["result-kinds.sh"], "handlerProperties": props}),
    ]);
    let out = run(&env, env.request(&format!("wf-kind-{mode}"), m)).await;
    out.result.step_results["step_0"].clone()
}

fn is_installed_then(report: &sandstep_model::results::StepReport) -> Vec<(String, i32)> {
    report
        .actions
        .iter()
        .map(|a| (a.action.name().to_owned(), a.result.result_code))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_script_result_maps_as_adu_does() {
    // Each mode answers every action the same way. is-installed's answer is not 900, so, as in
    // ADU's steps handler, the step goes on to download, where the mode's mapping decides the
    // step (600 is no answer to download either: the sandbox refuses it).
    // "success" answers 600 everywhere: no answer to is-installed (the sandbox refuses it, and a
    // refused answer is "not installed"), a success for the rest, so the step ends with apply's.
    let r = script_result("success", json!({})).await;
    assert_eq!(
        r.actions[0].result.extended_result_code,
        erc::SANDBOX_INVALID_RESULT.raw(),
        "{r:#?}"
    );
    assert_eq!((r.result_code, r.result_details.as_str()), (600, "fine"));
    assert_eq!(r.actions.last().unwrap().action.name(), "apply");

    for (mode, code, erc_value, details_start) in [
        ("fail-with-erc", 0, 805306625, "broken"),
        ("fail-no-erc", 0, 0x3050_0206, "broken"),
        (
            "no-result",
            0,
            0x3050_0205,
            "result-kinds.sh: no result file action_download_aduc_result.json",
        ),
        (
            "garbage",
            0,
            0x3050_0205,
            "result-kinds.sh: result file action_download_aduc_result.json does not parse",
        ),
        (
            "exit3",
            0,
            0x3050_1003,
            "result-kinds.sh exited with status 3; last output:\nsomething went wrong",
        ),
    ] {
        let r = script_result(mode, json!({})).await;
        assert_eq!(
            (r.result_code, r.extended_result_code),
            (code, erc_value),
            "{mode}: {r:#?}"
        );
        assert!(
            r.result_details.starts_with(details_start),
            "{mode}: {}",
            r.result_details
        );
        assert_eq!(
            is_installed_then(&r),
            [
                ("is-installed".to_owned(), code),
                ("download".to_owned(), code)
            ],
            "{mode}: is-installed's failure means not installed; download failed"
        );
    }
    let r = script_result("chatty-fail", json!({})).await;
    assert_eq!(
        r.result_details, "bad\nlast output:\nline 4\nline 5\nline 6\nline 7\nline 8",
        "the end of the output is kept, in the order it was written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_line_follows_the_protocol_for_both_api_versions() {
    let r = script_result("echo-args", json!({})).await;
    // is-installed answered 901 with the command line it saw as details.
    let args = &r.actions[0].result.result_details;
    assert!(
        args.starts_with("--action-is-installed --mode echo-args --work-folder /"),
        "{args}"
    );
    assert!(
        args.contains(" --result-file /")
            && args.contains("/action_is-installed_aduc_result.json --installed-criteria kinds-1"),
        "{args}"
    );
    let r = script_result("echo-args", json!({"apiVersion": "1.1"})).await;
    let args = &r.actions[0].result.result_details;
    assert!(
        args.starts_with("--action is-installed --mode echo-args"),
        "{args}"
    );
    // ADU's ScriptHandler_PerformAction has no branch for other versions: no action option.
    let r = script_result("echo-args", json!({"apiVersion": "2.0"})).await;
    let args = &r.actions[0].result.result_details;
    assert!(args.starts_with("--mode echo-args --work-folder"), "{args}");
}

#[tokio::test(flavor = "multi_thread")]
async fn arguments_are_split_on_single_spaces_as_adu_splits_them() {
    // ADU: ADUC::StringUtils::Split(arguments, ' '), empty pieces dropped, quotes meaning nothing.
    let r = script_result(
        "echo-argv",
        json!({"arguments": "--mode echo-argv  'two words' --component-name-val"}),
    )
    .await;
    let argv = &r.actions[0].result.result_details;
    assert!(
        argv.starts_with("--action-is-installed|--mode|echo-argv|'two|words'|n/a|--work-folder|"),
        "{argv}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_answers_800_without_running_the_script() {
    // ADU's ScriptHandlerImpl::Cancel requests the workflow's cancellation and answers 800; it
    // never runs the script (the host has already stopped the running action).
    use crate::support::{component, sandbox, setup, StepEnv};
    let env = StepEnv::new();
    let marker = env.path("work").join("ran");
    env.add_payload(
        "cancel-me.sh",
        format!("#!/bin/sh\ntouch {}\n", marker.display()).as_bytes(),
    );
    let sandbox = sandbox();
    let handler = sandbox.load("script", component("script")).await.unwrap();
    let grants = Config::default().policy().grants(SCRIPT);
    let mut session = sandbox
        .session(
            &handler,
            setup(&env, SCRIPT, grants, Default::default(), None),
        )
        .await
        .unwrap();
    let r = session
        .call(
            sandstep_model::Action::Cancel,
            &env.ctx(SCRIPT, json!({"scriptFileName": "cancel-me.sh"})),
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(
        r.result_code,
        sandstep_model::codes::result::CANCEL_SUCCESS,
        "{r:?}"
    );
    assert!(!marker.exists(), "the script did not run");
}
