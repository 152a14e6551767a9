//! The process capability: granted and refused, through a real guest.

use crate::support::{component, sandbox, setup, StepEnv};
use sandstep::capability::process::{ProcessPolicy, ProgramRule};
use sandstep::capability::Grants;
use sandstep::sandbox::Limits;
use sandstep_model::codes::{erc, result};
use sandstep_model::{Action, StepResult};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn grants() -> Grants {
    Grants {
        process: Some(ProcessPolicy {
            programs: vec![
                ProgramRule {
                    path: "/bin/echo".into(),
                    args: vec!["hello".into(), "{work}/*".into(), "--*".into()],
                    max_args: 8,
                    first: vec![],
                    any_path: false,
                    env: Default::default(),
                },
                ProgramRule {
                    path: "/bin/sh".into(),
                    args: vec!["-c".into(), "*".into()],
                    max_args: 2,
                    first: vec![],
                    any_path: false,
                    env: Default::default(),
                },
            ],
            ..ProcessPolicy::default()
        }),
        slot: None,
    }
}

async fn run(env: &StepEnv, grants: Grants, props: Value) -> StepResult {
    let sandbox = sandbox();
    let handler = sandbox
        .load("process-probe", component("process-probe"))
        .await
        .unwrap();
    let limits = Limits::default().with_all_time_limits(Duration::from_secs(20));
    let mut session = sandbox
        .session(&handler, setup(env, "test/process:1", grants, limits, None))
        .await
        .unwrap();
    session
        .call(
            Action::Install,
            &env.ctx("test/process:1", props),
            &CancellationToken::new(),
        )
        .await
}

fn output(r: &StepResult) -> Value {
    assert_eq!(r.result_code, result::INSTALL_SUCCESS, "{r:?}");
    serde_json::from_str(&r.result_details).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_importing_an_ungranted_capability_is_refused_naming_the_import() {
    let env = StepEnv::new();
    let sandbox = sandbox();
    let handler = sandbox
        .load("process-probe", component("process-probe"))
        .await
        .unwrap();
    let err = sandbox
        .session(
            &handler,
            setup(
                &env,
                "test/process:1",
                Grants::default(),
                Limits::default(),
                None,
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "handler `test/process:1` imports `sandstep:handler/process@0.1.0`: capability `process` is not granted to it by policy"
    );
    assert_eq!(err.to_step_result().erc(), erc::SANDBOX_CAPABILITY_DENIED);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_program_runs_in_the_work_folder_with_a_cleared_environment() {
    let env = StepEnv::new();
    let r = run(
        &env,
        grants(),
        json!({"op": "run", "program": "/bin/sh", "args": ["-c", "pwd; env | sort"]}),
    )
    .await;
    let out = output(&r);
    assert_eq!(out["exit_code"], 0);
    let work = env.path("work").canonicalize().unwrap();
    let stdout = out["stdout"].as_str().unwrap();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(work.to_str().unwrap()));
    let vars: Vec<&str> = lines
        .map(|l| l.split('=').next().unwrap())
        .filter(|v| *v != "PWD" && *v != "SHLVL" && *v != "_")
        .collect();
    assert_eq!(vars, vec!["LANG", "PATH"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_not_on_the_list_is_refused_with_the_rule() {
    let env = StepEnv::new();
    let r = run(
        &env,
        grants(),
        json!({"op": "run", "program": "/bin/rm", "args": ["-rf", "/tmp/x"]}),
    )
    .await;
    assert_eq!(r.result_code, result::FAILURE);
    assert_eq!(r.erc(), erc::SDK_CAPABILITY_FAILED);
    assert_eq!(
        r.result_details,
        "process: denied by policy: program `/bin/rm` is not on the allow list of handler `test/process:1` (policy: process.programs)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_argument_breaking_the_rule_is_refused_with_the_rule() {
    let env = StepEnv::new();
    let r = run(
        &env,
        grants(),
        json!({"op": "run", "program": "/bin/echo", "args": ["hello", "rm"]}),
    )
    .await;
    assert_eq!(
        r.result_details,
        "process: denied by policy: argument 1 `rm` of `/bin/echo` matches none of its allowed patterns (policy: process.programs.args)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_path_outside_the_granted_dirs_is_refused_with_the_rule() {
    let env = StepEnv::new();
    let r = run(
        &env,
        grants(),
        json!({"op": "run", "program": "/bin/echo", "args": ["--file=/etc/shadow"]}),
    )
    .await;
    assert_eq!(
        r.result_details,
        "process: denied by policy: argument 0 `--file=/etc/shadow` of `/bin/echo` is a path outside the step's directories (/payload, /work, /state)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_path_maps_sandbox_paths_and_refuses_others() {
    let env = StepEnv::new();
    let r = run(
        &env,
        grants(),
        json!({"op": "host-path", "path": "/work/out.txt"}),
    )
    .await;
    let work = env.path("work").canonicalize().unwrap();
    assert_eq!(r.result_details, work.join("out.txt").to_str().unwrap());

    let r = run(
        &env,
        grants(),
        json!({"op": "host-path", "path": "/etc/passwd"}),
    )
    .await;
    assert_eq!(r.result_code, result::FAILURE);
    assert_eq!(
        r.result_details,
        "process: bad path: `/etc/passwd` is not inside the step's directories (/payload, /work, /state)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_past_its_time_limit_is_killed_with_its_children() {
    let env = StepEnv::new();
    let r = run(
        &env,
        grants(),
        json!({"op": "run", "program": "/bin/sh", "args": ["-c", "sleep 30 & sleep 30"], "timeout_ms": 300}),
    )
    .await;
    let out = output(&r);
    assert_eq!(out["timed_out"], true);
    assert_eq!(out["signal"], 9);
    assert_eq!(out["exit_code"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn large_output_keeps_the_end_and_says_it_was_truncated() {
    let env = StepEnv::new();
    let mut g = grants();
    g.process.as_mut().unwrap().max_output_bytes = 100;
    let r = run(
        &env,
        g,
        json!({"op": "run", "program": "/bin/sh", "args": ["-c", "seq 1 100000"]}),
    )
    .await;
    let out = output(&r);
    assert_eq!(out["truncated"], true);
    let stdout = out["stdout"].as_str().unwrap();
    assert_eq!(stdout.len(), 100);
    assert!(stdout.ends_with("99999\n100000\n"), "{stdout}");
}
