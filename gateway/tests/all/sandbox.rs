//! The sandbox against real guests built from source: the normal path and hostile acts.

use crate::support::{call_once, component, sandbox, setup, StepEnv};
use sandstep::capability::Grants;
use sandstep::sandbox::{EngineOptions, HandlerEvent, Limits, Sandbox, SandboxError};
use sandstep_model::codes::{erc, result};
use sandstep_model::Action;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn quick_limits() -> Limits {
    Limits::default().with_all_time_limits(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread")]
async fn handler_reads_its_payload_and_writes_work_output() {
    let env = StepEnv::new();
    env.add_payload("a.txt", b"hello");
    env.add_payload("b.bin", &[0u8; 1000]);
    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "summarize"}),
        Limits::default(),
    )
    .await;
    assert_eq!(r.result_code, result::INSTALL_SUCCESS, "{r:?}");
    assert_eq!(r.result_details, "summarized 2 files");
    let summary = std::fs::read_to_string(env.path("work").join("summary.txt")).unwrap();
    assert_eq!(summary, "a.txt a.txt 5\nb.bin b.bin 1000\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_loop_is_stopped_at_the_deadline() {
    let env = StepEnv::new();
    let limits = Limits::default().with_all_time_limits(Duration::from_millis(300));
    let started = Instant::now();
    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "loop"}),
        limits,
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.result_code, result::FAILURE);
    assert_eq!(r.erc(), erc::SANDBOX_TIME_LIMIT);
    assert_eq!(
        r.result_details,
        "handler `test/probe:1` stopped in `install`: time limit of 300ms for `install` exceeded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bomb_is_stopped_at_the_cap() {
    let env = StepEnv::new();
    let limits = Limits {
        memory_bytes: 32 << 20,
        ..quick_limits()
    };
    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "alloc"}),
        limits,
    )
    .await;
    assert_eq!(r.result_code, result::FAILURE);
    assert_eq!(r.erc(), erc::SANDBOX_MEMORY_LIMIT);
    assert!(
        r.result_details.starts_with(
            "handler `test/probe:1` stopped in `install`: memory limit of 33554432 bytes exceeded"
        ),
        "{}",
        r.result_details
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_etc_passwd_is_denied() {
    let env = StepEnv::new();
    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "read", "path": "/etc/passwd"}),
        quick_limits(),
    )
    .await;
    assert_eq!(r.result_code, result::FAILURE);
    // WASI's ENOTCAPABLE (76): no preopen covers /etc.
    assert_eq!(r.extended_result_code, 76);
    assert_eq!(
        r.result_details,
        "/etc/passwd: Capabilities insufficient (os error 76)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn writing_into_payload_is_denied_and_the_file_is_unchanged() {
    let env = StepEnv::new();
    env.add_payload("firmware.bin", b"original");
    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "write", "path": "/payload/firmware.bin"}),
        quick_limits(),
    )
    .await;
    assert_eq!(r.result_code, result::FAILURE);
    assert_eq!(
        r.result_details,
        "/payload/firmware.bin: Operation not permitted (os error 63)"
    );
    assert_eq!(
        std::fs::read(env.path("payload").join("firmware.bin")).unwrap(),
        b"original"
    );

    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "write", "path": "/payload/new.bin"}),
        quick_limits(),
    )
    .await;
    assert_eq!(r.result_code, result::FAILURE);
    assert!(!env.path("payload").join("new.bin").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn dot_dot_escape_from_work_is_denied() {
    let env = StepEnv::new();
    std::fs::write(env.root.path().join("outside.txt"), b"secret").unwrap();
    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "read", "path": "/work/../outside.txt"}),
        quick_limits(),
    )
    .await;
    assert_eq!(r.result_code, result::FAILURE);
    assert_eq!(
        r.result_details,
        "/work/../outside.txt: Operation not permitted (os error 63)"
    );

    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "write", "path": "/work/../../escaped.txt"}),
        quick_limits(),
    )
    .await;
    assert_eq!(r.result_code, result::FAILURE);
    assert_eq!(
        r.result_details,
        "/work/../../escaped.txt: Operation not permitted (os error 63)"
    );
    assert!(!env
        .root
        .path()
        .parent()
        .unwrap()
        .join("escaped.txt")
        .exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn symlink_in_payload_pointing_outside_is_not_followed() {
    let env = StepEnv::new();
    let secret = env.root.path().join("secret.txt");
    std::fs::write(&secret, b"top secret").unwrap();
    std::os::unix::fs::symlink(&secret, env.path("payload").join("link")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", env.path("payload").join("relative-link")).unwrap();
    for path in ["/payload/link", "/payload/relative-link"] {
        let r = call_once(
            "probe",
            Action::Install,
            &env,
            json!({"op": "read", "path": path}),
            quick_limits(),
        )
        .await;
        assert_eq!(r.result_code, result::FAILURE, "{path}: {r:?}");
        assert_eq!(
            r.result_details,
            format!("{path}: Operation not permitted (os error 63)")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trapping_guest_gives_a_clean_failure_and_the_host_keeps_running() {
    let env = StepEnv::new();
    let sandbox = sandbox();
    let handler = sandbox.load("probe", component("probe")).await.unwrap();
    let mut session = sandbox
        .session(
            &handler,
            setup(
                &env,
                "test/probe:1",
                Grants::default(),
                quick_limits(),
                None,
            ),
        )
        .await
        .unwrap();
    let ctx = env.ctx("test/probe:1", json!({"op": "panic"}));
    let r = session
        .call(Action::Install, &ctx, &CancellationToken::new())
        .await;
    assert_eq!(r.result_code, result::FAILURE);
    assert_eq!(r.erc(), erc::SANDBOX_TRAP);
    assert!(
        r.result_details.starts_with("handler `test/probe:1` trapped in `install`: wasm trap: wasm `unreachable` instruction executed (panic: panicked at"),
        "{}",
        r.result_details
    );
    assert!(
        r.result_details.contains("probe panicked on purpose"),
        "{}",
        r.result_details
    );

    // The trapped instance is not reused...
    assert!(session.is_broken());
    let again = session
        .call(Action::Apply, &ctx, &CancellationToken::new())
        .await;
    assert_eq!(again.erc(), erc::SANDBOX_TRAP);
    assert!(again
        .result_details
        .contains("cannot be called again in this session"));

    // ...but the sandbox carries on with a fresh session.
    let env2 = StepEnv::new();
    let mut fresh = sandbox
        .session(
            &handler,
            setup(
                &env2,
                "test/probe:1",
                Grants::default(),
                quick_limits(),
                None,
            ),
        )
        .await
        .unwrap();
    let ok = fresh
        .call(
            Action::Install,
            &env2.ctx("test/probe:1", json!({"op": "summarize"})),
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(ok.result_code, result::INSTALL_SUCCESS);
}

#[tokio::test(flavor = "multi_thread")]
async fn properties_that_do_not_parse_give_the_sdk_error_result() {
    let env = StepEnv::new();
    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "needs-field"}),
        quick_limits(),
    )
    .await;
    assert_eq!(r.result_code, result::FAILURE);
    assert_eq!(r.erc(), erc::SDK_INVALID_PROPERTIES);
    assert_eq!(
        r.result_details,
        "handlerProperties: missing field `required_number`"
    );

    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "teleport"}),
        quick_limits(),
    )
    .await;
    assert_eq!(r.erc(), erc::SDK_INVALID_PROPERTIES);
    assert!(
        r.result_details
            .starts_with("handlerProperties: unknown variant `teleport`"),
        "{}",
        r.result_details
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_stops_a_running_call_with_result_minus_one() {
    let env = StepEnv::new();
    let sandbox = sandbox();
    let handler = sandbox.load("probe", component("probe")).await.unwrap();
    let mut session = sandbox
        .session(
            &handler,
            setup(
                &env,
                "test/probe:1",
                Grants::default(),
                Limits::default(),
                None,
            ),
        )
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.cancel();
    });
    let ctx = env.ctx("test/probe:1", json!({"op": "loop"}));
    let r = session.call(Action::Install, &ctx, &cancel).await;
    assert_eq!(r.result_code, result::FAILURE_CANCELLED);
    assert_eq!(r.erc(), erc::SANDBOX_CANCELLED);
    assert_eq!(
        r.result_details,
        "`install` of handler `test/probe:1` was stopped: the deployment was cancelled"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn is_installed_must_answer_900_or_901() {
    let env = StepEnv::new();
    let r = call_once(
        "probe",
        Action::IsInstalled,
        &env,
        json!({"op": "installed"}),
        quick_limits(),
    )
    .await;
    assert_eq!(r.result_code, result::IS_INSTALLED_INSTALLED);

    let r = call_once(
        "probe",
        Action::IsInstalled,
        &env,
        json!({"op": "return", "code": 700, "erc": 0, "details": ""}),
        quick_limits(),
    )
    .await;
    assert_eq!(r.result_code, result::FAILURE);
    assert_eq!(r.erc(), erc::SANDBOX_INVALID_RESULT);
    assert_eq!(
        r.result_details,
        "is-installed returned result code 700; expected 900 (installed), 901 (not installed) or a failure"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_range_result_codes_are_refused_and_extreme_failures_kept() {
    let env = StepEnv::new();
    for code in [12345, i32::MAX, 2, 602, 1102] {
        let r = call_once(
            "probe",
            Action::Install,
            &env,
            json!({"op": "return", "code": code, "erc": 0, "details": ""}),
            quick_limits(),
        )
        .await;
        assert_eq!(r.result_code, result::FAILURE, "{code}");
        assert_eq!(r.erc(), erc::SANDBOX_INVALID_RESULT, "{code}");
        assert_eq!(
            r.result_details,
            format!("install returned result code {code}, which is neither a failure (<= 0) nor a success code ADU defines")
        );
    }
    // Any code <= 0 is a failure, with the handler's extended code, whatever its value.
    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "return", "code": i32::MIN, "erc": -1, "details": "x"}),
        quick_limits(),
    )
    .await;
    assert_eq!((r.result_code, r.extended_result_code), (i32::MIN, -1));
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_result_details_are_clamped_to_1024_bytes() {
    let env = StepEnv::new();
    let r = call_once(
        "probe",
        Action::Apply,
        &env,
        json!({"op": "return", "code": 700, "erc": 0, "details": "x".repeat(5000)}),
        quick_limits(),
    )
    .await;
    assert_eq!(r.result_code, 700);
    assert_eq!(r.result_details.len(), 1024);
    assert!(r.result_details.ends_with('…'));
}

/// Runs the probe's install with `props`, recording every event with its workflow id.
async fn install_recording_events(
    env: &StepEnv,
    props: serde_json::Value,
) -> (Vec<(String, HandlerEvent)>, sandstep_model::StepResult) {
    let seen: Arc<Mutex<Vec<(String, HandlerEvent)>>> = Arc::default();
    let s = seen.clone();
    let sink: sandstep::sandbox::EventSink = Arc::new(move |tags, ev| {
        s.lock()
            .unwrap()
            .push((tags.workflow_id.clone(), ev.clone()));
    });
    let sandbox = sandbox();
    let handler = sandbox.load("probe", component("probe")).await.unwrap();
    let mut session = sandbox
        .session(
            &handler,
            setup(
                env,
                "test/probe:1",
                Grants::default(),
                quick_limits(),
                Some(sink),
            ),
        )
        .await
        .unwrap();
    let r = session
        .call(
            Action::Install,
            &env.ctx("test/probe:1", props),
            &CancellationToken::new(),
        )
        .await;
    let seen = seen.lock().unwrap().clone();
    (seen, r)
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_and_log_events_reach_the_sink_tagged() {
    let env = StepEnv::new();
    env.add_payload("a.txt", b"x");
    let (seen, r) = install_recording_events(&env, json!({"op": "summarize"})).await;
    assert!(r.is_success());
    assert!(seen.contains(&(
        "wf-test".to_owned(),
        HandlerEvent::Progress {
            percent: 100,
            message: "summarized".into()
        }
    )));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_importing_an_unknown_interface_is_refused_naming_it() {
    let env = StepEnv::new();
    let sandbox = sandbox();
    let wat = std::fs::read(sandstep_testkit::repo_root().join("tests/hostile/unknown-import.wat"))
        .unwrap();
    let handler = sandbox
        .load("unknown-import.wat", wat.into())
        .await
        .unwrap();
    let err = sandbox
        .session(
            &handler,
            setup(
                &env,
                "evil/thing:1",
                Grants::default(),
                quick_limits(),
                None,
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "handler `evil/thing:1` imports `evil:exfiltrate/network@1.0.0`, which sandstep does not provide"
    );
    assert_eq!(err.to_step_result().erc(), erc::SANDBOX_CAPABILITY_DENIED);
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_that_are_not_a_component_are_refused_at_load() {
    let sandbox = sandbox();
    let err = sandbox
        .load("junk.wasm", b"\0asm junk".to_vec().into())
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::Compile { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("`junk.wasm` is not a valid handler component: "),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_base_world_component_imports_no_capability() {
    let sandbox = sandbox();
    let handler = sandbox.load("probe", component("probe")).await.unwrap();
    assert!(handler.capabilities().is_empty(), "{:?}", handler.imports());
    let vendor = sandbox
        .load("vendor-handler", component("vendor-handler"))
        .await
        .unwrap();
    assert!(vendor.capabilities().is_empty(), "{:?}", vendor.imports());
}

#[tokio::test(flavor = "multi_thread")]
async fn precompiled_components_are_cached_and_a_corrupt_entry_is_recompiled() {
    let cache_root = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let dir = |p: &std::path::Path| {
        cap_std::fs::Dir::open_ambient_dir(p, cap_std::ambient_authority()).unwrap()
    };
    let open = || sandstep::sandbox::CacheDirs {
        artefacts: dir(cache_root.path()),
        key: dir(keys.path()),
    };
    let bytes = component("probe");
    let first = Sandbox::new(&EngineOptions::default(), Some(open())).unwrap();
    let handler = first.load("probe", bytes.clone()).await.unwrap();
    let entry = cache_root
        .path()
        .join(first.cache().unwrap().unwrap().entry_name(handler.digest()));
    assert!(entry.exists(), "artefact written to {}", entry.display());

    // Garble the artefact: the next load discards it and compiles again.
    std::fs::write(&entry, b"garbage").unwrap();
    let second = Sandbox::new(&EngineOptions::default(), Some(open())).unwrap();
    let again = second.load("probe", bytes).await.unwrap();
    assert_eq!(again.digest(), handler.digest());
    assert!(
        std::fs::read(&entry).unwrap().len() > 1000,
        "artefact rewritten"
    );

    let env = StepEnv::new();
    let mut session = second
        .session(
            &again,
            setup(
                &env,
                "test/probe:1",
                Grants::default(),
                quick_limits(),
                None,
            ),
        )
        .await
        .unwrap();
    let r = session
        .call(
            Action::Install,
            &env.ctx("test/probe:1", json!({"op": "summarize"})),
            &CancellationToken::new(),
        )
        .await;
    assert!(r.is_success(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn vendor_example_handler_runs_its_whole_lifecycle() {
    let env = StepEnv::new();
    env.add_payload("app.conf", b"level=2\n");
    let sandbox = sandbox();
    let handler = sandbox
        .load("vendor-handler", component("vendor-handler"))
        .await
        .unwrap();
    let props = json!({"target": "app.conf", "installedCriteria": "app-conf-2"});
    let ctx = env.ctx("contoso/config:1", props);
    let cancel = CancellationToken::new();
    let mut session = sandbox
        .session(
            &handler,
            setup(
                &env,
                "contoso/config:1",
                Grants::default(),
                quick_limits(),
                None,
            ),
        )
        .await
        .unwrap();
    let codes: Vec<i32> = {
        let mut v = Vec::new();
        for a in [
            Action::IsInstalled,
            Action::Download,
            Action::Backup,
            Action::Install,
            Action::Apply,
            Action::IsInstalled,
        ] {
            v.push(session.call(a, &ctx, &cancel).await.result_code);
        }
        v
    };
    assert_eq!(codes, vec![901, 500, 1000, 600, 700, 900]);
    assert_eq!(
        std::fs::read(env.path("state").join("app.conf")).unwrap(),
        b"level=2\n"
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("state").join("installed.json")).unwrap())
            .unwrap();
    assert_eq!(record, json!({"app.conf": "app-conf-2"}));
}

#[cfg(feature = "dev-tools")]
#[tokio::test(flavor = "multi_thread")]
async fn the_benchmark_guest_computes_the_same_crc_as_the_host() {
    // sandbox_vs_native asserts that the handler's output equals the native run's.
    let r = sandstep::bench::sandbox_vs_native(&component("bench-guest"), 2, 1).await;
    assert_eq!(r.payload_bytes, 2 << 20);
    assert!(r.ratio > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_directories_do_not_blind_the_quota() {
    // The walk once opened every directory at once: ~1500 of them exhausted its descriptors,
    // the measurement failed, and the quota was not enforced. Now it holds one descriptor per
    // level, and a folder it cannot measure stops the call (fail closed).
    let env = StepEnv::new();
    let limits = Limits {
        work_bytes: 4 << 20,
        ..Limits::default()
    };
    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "fill-work", "dirs_first": 3000, "total_kib": 16 << 10, "then_sleep_ms": 30_000}),
        limits,
    )
    .await;
    assert_eq!(
        r.extended_result_code,
        erc::SANDBOX_WORK_QUOTA.raw(),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_filling_work_past_its_quota_is_stopped_while_running() {
    let env = StepEnv::new();
    let limits = Limits {
        work_bytes: 4 << 20,
        ..Limits::default()
    };
    // Writes 16 MiB, then lingers: the running call is stopped by the quota's poll.
    let started = Instant::now();
    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "fill-work", "total_kib": 16 << 10, "then_sleep_ms": 300_000}),
        limits,
    )
    .await;
    assert_eq!(r.result_code, result::FAILURE, "{r:?}");
    assert_eq!(
        r.extended_result_code,
        erc::SANDBOX_WORK_QUOTA.raw(),
        "{r:?}"
    );
    assert!(
        r.result_details.contains("its /work holds ")
            && r.result_details.contains("quota of 4194304 bytes"),
        "{}",
        r.result_details
    );
    // Far below the handler's 300 s linger, whatever the machine's load.
    assert!(
        started.elapsed() < Duration::from_secs(240),
        "not stopped while running"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_returning_with_work_over_its_quota_fails_the_step() {
    let env = StepEnv::new();
    let limits = Limits {
        work_bytes: 1 << 20,
        ..Limits::default()
    };
    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "fill-work", "total_kib": 2048}),
        limits.clone(),
    )
    .await;
    assert_eq!(
        r.extended_result_code,
        erc::SANDBOX_WORK_QUOTA.raw(),
        "{r:?}"
    );
    // Under the quota, the same handler succeeds.
    let env = StepEnv::new();
    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "fill-work", "total_kib": 512}),
        limits,
    )
    .await;
    assert_eq!(r.result_code, result::INSTALL_SUCCESS, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn log_and_progress_floods_are_rate_limited_and_truncated() {
    let env = StepEnv::new();
    let (seen, r) = install_recording_events(
        &env,
        json!({"op": "flood", "logs": 20_000, "progress": 20_000, "len": 10_000}),
    )
    .await;
    assert_eq!(r.result_code, result::INSTALL_SUCCESS, "{r:?}");
    let logs: Vec<_> = seen
        .iter()
        .filter_map(|(_, e)| match e {
            HandlerEvent::Log { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    let progress: Vec<_> = seen
        .iter()
        .filter_map(|(_, e)| match e {
            HandlerEvent::Progress { percent, message } => Some((*percent, message)),
            _ => None,
        })
        .collect();
    // A burst of 2000 lines plus what the limit earns back while the flood runs (50 a second).
    assert!(
        (2000..2600).contains(&logs.len()),
        "{} log lines passed",
        logs.len()
    );
    assert!(logs.iter().all(|m| m.len() <= 4096 + '…'.len_utf8()));
    // Progress passes at most every 100 ms, and the final 100% always.
    assert!(
        progress.len() < 200,
        "{} progress events passed",
        progress.len()
    );
    assert_eq!(progress.last().map(|p| p.0), Some(100));
}

/// Progress reported faster than it is passed on is coalesced, not lost: the last one a call
/// reported reaches the sink when the call ends, and no warning is logged for a fast action.
#[tokio::test(flavor = "multi_thread")]
async fn fast_progress_is_coalesced_and_the_last_one_arrives() {
    let env = StepEnv::new();
    let (seen, r) = install_recording_events(&env, json!({"op": "steps", "last": 90})).await;
    assert_eq!(r.result_code, result::INSTALL_SUCCESS, "{r:?}");
    let progress: Vec<(u8, String)> = seen
        .iter()
        .filter_map(|(_, e)| match e {
            HandlerEvent::Progress { percent, message } => Some((*percent, message.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(progress.first(), Some(&(10, "step 10".to_owned())));
    assert_eq!(
        progress.last(),
        Some(&(90, "step 90".to_owned())),
        "{progress:?}"
    );
    assert!(progress.len() < 9, "held back in between: {progress:?}");
}

/// Runs one probe action over `env`, with `dirs` (env's standard ones plus any extra).
async fn call_with_dirs(
    env: &StepEnv,
    dirs: sandstep::sandbox::dirs::StepDirs,
    props: serde_json::Value,
    limits: Limits,
) -> sandstep_model::StepResult {
    let sandbox = sandbox();
    let handler = sandbox.load("probe", component("probe")).await.unwrap();
    let mut s = setup(env, "test/probe:1", Default::default(), limits, None);
    s.dirs = dirs;
    let mut session = sandbox.session(&handler, s).await.unwrap();
    session
        .call(
            Action::Install,
            &env.ctx("test/probe:1", props),
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_filling_state_or_a_writable_mapped_dir_is_stopped_naming_the_folder() {
    let env = StepEnv::new();
    let limits = Limits {
        state_bytes: 1 << 20,
        dir_growth_bytes: 1 << 20,
        ..Limits::default()
    };
    let r = call_with_dirs(
        &env,
        env.dirs(),
        json!({"op": "fill-work", "dir": "/state", "total_kib": 4096}),
        limits.clone(),
    )
    .await;
    assert_eq!(
        r.extended_result_code,
        erc::SANDBOX_WORK_QUOTA.raw(),
        "{r:?}"
    );
    assert!(
        r.result_details.contains("its /state holds")
            && r.result_details.contains("(limits state-bytes)"),
        "{}",
        r.result_details
    );

    // A writable mapped dir may grow by dir-growth-bytes over what it held at the start.
    let mapped = tempfile::tempdir().unwrap();
    std::fs::write(mapped.path().join("existing.bin"), vec![1u8; 3 << 20]).unwrap();
    let with_mapped = |env: &StepEnv| {
        let mut dirs = env.dirs();
        dirs.extra.push(sandstep::sandbox::dirs::Preopen::new(
            cap_std::fs::Dir::open_ambient_dir(mapped.path(), cap_std::ambient_authority())
                .unwrap(),
            "/data",
            true,
        ));
        dirs
    };
    let env = StepEnv::new();
    let small = json!({"op": "fill-work", "dir": "/data", "total_kib": 512});
    let r = call_with_dirs(&env, with_mapped(&env), small, limits.clone()).await;
    assert_eq!(r.result_code, result::INSTALL_SUCCESS, "{r:?}");
    let env = StepEnv::new();
    let big = json!({"op": "fill-work", "dir": "/data", "total_kib": 4096});
    let r = call_with_dirs(&env, with_mapped(&env), big, limits).await;
    assert_eq!(
        r.extended_result_code,
        erc::SANDBOX_WORK_QUOTA.raw(),
        "{r:?}"
    );
    assert!(
        r.result_details.contains("its /data holds")
            && r.result_details.contains("(limits dir-growth-bytes)"),
        "{}",
        r.result_details
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_holding_more_handles_than_its_limit_is_stopped_naming_the_limit() {
    let env = StepEnv::new();
    env.add_payload("f.txt", b"x");
    let limits = Limits {
        open_handles: 64,
        ..Limits::default()
    };
    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "open-many", "path": "/payload/f.txt", "count": 100_000}),
        limits.clone(),
    )
    .await;
    assert_eq!(
        r.extended_result_code,
        erc::SANDBOX_HANDLE_LIMIT.raw(),
        "{r:?}"
    );
    assert!(
        r.result_details.contains("more than 64 handles")
            && r.result_details.contains("(limits open-handles)"),
        "{}",
        r.result_details
    );
    // Within the limit, the same handler succeeds.
    let r = call_once(
        "probe",
        Action::Install,
        &env,
        json!({"op": "open-many", "path": "/payload/f.txt", "count": 32}),
        limits,
    )
    .await;
    assert_eq!(r.result_code, result::INSTALL_SUCCESS, "{r:?}");
    assert_eq!(r.result_details, "holds 32 handles");
}

/// The imports read from a component's binary (before it is compiled, to refuse it by policy
/// first) are the ones wasmtime finds when it compiles it, for every component built here;
/// a module or garbage reads as nothing.
#[tokio::test(flavor = "multi_thread")]
async fn imports_read_from_the_binary_match_the_compiled_components() {
    let sb = Sandbox::new(&EngineOptions::default(), None).unwrap();
    for name in [
        "probe",
        "process-probe",
        "bench-guest",
        "vendor-handler",
        "apt",
        "script",
        "firmware",
        "files",
        "component",
    ] {
        let bytes = component(name);
        let read = sandstep::wasm_binary::component_imports(&bytes)
            .unwrap_or_else(|| panic!("{name}: not read"));
        let compiled = sb.load(name, bytes).await.unwrap();
        let mut a = read.clone();
        let mut b = compiled.imports().to_vec();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{name}");
    }
    assert_eq!(
        sandstep::wasm_binary::component_imports(b"\0asm\x01\0\0\0"),
        None
    );
    assert_eq!(sandstep::wasm_binary::component_imports(b"garbage"), None);
}
