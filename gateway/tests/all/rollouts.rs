//! Phased rollouts from the operator's CLI (`sandstep-fleet rollout`) through a real replica and
//! mosquitto to real agents. The store itself is tested in the fleet crate (fleet/tests/all).

use crate::fleet::{fleet_cli, sandstep, Fleet};
use crate::workflow::stateful;
use sandstep_testkit::Proc;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn second_agent(f: &Fleet, device: &str) -> (PathBuf, PathBuf) {
    let data = f.dir.path().join(format!("data-{device}"));
    let status = Command::new("cp")
        .arg("-a")
        .arg(&f.data)
        .arg(&data)
        .status()
        .unwrap();
    assert!(status.success());
    for leftover in ["journal", "outbox", "reported.json", "agent.lock"] {
        let _ = std::fs::remove_dir_all(data.join(leftover));
        let _ = std::fs::remove_file(data.join(leftover));
    }
    let config = f.dir.path().join(format!("{device}.toml"));
    let text = std::fs::read_to_string(&f.config).unwrap();
    let device_line = text
        .lines()
        .find(|l| l.starts_with("device-id"))
        .unwrap()
        .to_owned();
    std::fs::write(
        &config,
        text.replace(&device_line, &format!("device-id = \"{device}\"")),
    )
    .unwrap();
    (config, data)
}

fn cli(f: &Fleet, args: &[&str]) -> std::process::Output {
    fleet_cli()
        .args(args)
        .arg("--config")
        .arg(&f.config)
        .arg("--data-dir")
        .arg(f.dir.path().join("replica"))
        .output()
        .unwrap()
}

/// The operator's flow: `rollout create` to a group of real agents in two phases, one of them
/// coming online only after the rollout started; `status --rollout` until it finished, then
/// controls refused on a finished rollout.
#[test]
fn a_rollout_from_the_cli_reaches_a_group_phase_by_phase_a_late_device_too_and_status_counts_it() {
    let Some(f) = Fleet::new("ro-a") else { return };
    let (config_b, data_b) = second_agent(&f, "ro-b");
    let _replica = f.replica();
    let _a = f.agent();
    f.wait_for("ro-a", "the start report", |r| r["status"] == "standBy");
    let manifest = f.manifest("rolled", vec![stateful("a", json!({}), &["f.txt"])]);
    let (root, signing) = (f.root.clone(), f.signing.clone());
    let out = cli(
        &f,
        &[
            "rollout",
            "create",
            "--group",
            "testers",
            "--id",
            "ro-1",
            "--phases",
            "50%,100%",
            "--soak",
            "1s",
            "--max-failure-rate",
            "50%",
            "--manifest",
            manifest.to_str().unwrap(),
            "--files-url",
            &f.server.base(),
            "--sign-key",
            signing.to_str().unwrap(),
            "--root-key",
            root.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(1 device(s) now)"));
    // The second gateway comes online after the rollout started: it joins its phase.
    let mut b = sandstep();
    b.args(["--log", "info", "agent", "--config"])
        .arg(&config_b)
        .arg("--data-dir")
        .arg(&data_b);
    let _b = Proc::spawn(b, f.dir.path().join("agent-b.log"));
    let t = Instant::now();
    let status = loop {
        let out = cli(&f, &["status", "--rollout", "ro-1", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["state"] == "finished" {
            break v;
        }
        assert!(t.elapsed() < Duration::from_secs(90), "not finished: {v:#}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let phases = status["phaseCounts"].as_array().unwrap();
    let sum = |k: &str| phases.iter().map(|p| p[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("devices"), sum("succeeded")), (2, 2), "{status:#}");
    assert!(phases[0]["succeeded"].as_u64() >= Some(1), "{status:#}");
    let all = f.status();
    for d in ["ro-a", "ro-b"] {
        assert_eq!(all[d]["state"]["reported"]["workflow"]["id"], "ro-1");
        assert_eq!(all[d]["state"]["reported"]["status"], "completed");
    }
    let table = cli(&f, &["rollout", "status", "ro-1"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("finished (phase 2 of 2)"));
    let refused = cli(&f, &["rollout", "pause", "ro-1"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("rollout ro-1 is finished"));
    let list = cli(&f, &["rollout", "list", "--json"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("\"id\":\"ro-1\""));
}

/// Bad rollout options are refused naming the option, and nothing is stored.
#[test]
fn bad_rollout_options_are_refused_with_the_reason_and_nothing_is_stored() {
    let Some(f) = Fleet::new("ro-bad") else {
        return;
    };
    let manifest = f.manifest("bad", vec![stateful("a", json!({}), &["f.txt"])]);
    for (opt, val, why) in [
        (
            "--phases",
            "50%,10%,100%",
            "each phase covers more of the group",
        ),
        ("--phases", "10%,50%", "the last phase is 100%"),
        ("--max-failure-rate", "120%", "between 0% and 100%"),
        ("--soak", "ten minutes", "expected a duration"),
    ] {
        let out = cli(
            &f,
            &[
                "rollout",
                "create",
                "--group",
                "g",
                "--unsigned",
                "--files-url",
                "http://127.0.0.1:1/",
                "--manifest",
                manifest.to_str().unwrap(),
                opt,
                val,
            ],
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(opt) && err.contains(why), "{opt} {val}: {err}");
    }
    let list = cli(&f, &["rollout", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
}

/// The operator's controls on a running rollout: pause, resume, abort, each shown by `status
/// --rollout` with who did it; a second abort is refused.
#[test]
fn pause_resume_and_abort_change_a_running_rollout_and_say_who() {
    let Some(f) = Fleet::new("ro-ctl") else {
        return;
    };
    let manifest = f.manifest("ctl", vec![stateful("a", json!({}), &["f.txt"])]);
    let out = cli(
        &f,
        &[
            "rollout",
            "create",
            "--group",
            "nobody-yet",
            "--id",
            "ro-ctl",
            "--soak",
            "1h",
            "--unsigned",
            "--files-url",
            &f.server.base(),
            "--manifest",
            manifest.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = || {
        let out = cli(&f, &["status", "--rollout", "ro-ctl", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (v["state"].as_str().unwrap().to_owned(), v["reason"].clone())
    };
    assert_eq!(state().0, "running");
    for (cmd, want, reason) in [
        ("pause", "paused", json!("paused by the operator")),
        ("resume", "running", Value::Null),
        ("abort", "aborted", json!("aborted by the operator")),
    ] {
        let out = cli(&f, &["rollout", cmd, "ro-ctl"]);
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(state(), (want.to_owned(), reason), "after {cmd}");
    }
    let again = cli(&f, &["rollout", "abort", "ro-ctl"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("rollout ro-ctl is aborted"));
    let missing = cli(&f, &["rollout", "pause", "ro-none"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no rollout `ro-none`"));
    // Every action is in the audit log, newest first, with who did it.
    let out = cli(&f, &["rollout", "status", "ro-ctl", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let actions: Vec<&str> = v["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "rollout-abort",
            "rollout-resume",
            "rollout-pause",
            "rollout-create"
        ]
    );
    assert!(v["audit"][0]["who"].as_str().unwrap().starts_with("cli:"));
    let table =
        String::from_utf8_lossy(&cli(&f, &["rollout", "status", "ro-ctl"]).stdout).into_owned();
    assert!(table.contains("rollout-pause  now paused"), "{table}");
}

/// A device row made unreadable outside sandstep (its reported state not a JSON object) costs
/// that device's update and deployment only: the replica refuses the update on the device's
/// `rejected` topic, naming the problem, stores the other devices' updates, deploys a rollout
/// to the others, writes nothing over the row, and keeps running.
#[test]
fn an_unreadable_device_row_costs_only_that_devices_update_and_deployment_and_the_replica_carries_on(
) {
    let Some(f) = Fleet::new("row-x") else { return };
    let mut replica = f.replica();
    let report = |d: &str, n: u32| {
        f.publish_raw(
            &format!("state/{d}/update"),
            json!({"state": {"reported": {"n": n, "groups": ["rows"]}}})
                .to_string()
                .as_bytes(),
        )
    };
    let reported_n = |d: &str| f.status()[d]["state"]["reported"]["n"].clone();
    // Sent again until stored: the replica may not have subscribed yet.
    let t = Instant::now();
    while reported_n("row-bad") != 1 || reported_n("row-good") != 1 {
        assert!(t.elapsed() < Duration::from_secs(30), "{:#}", f.status());
        report("row-bad", 1);
        report("row-good", 1);
        std::thread::sleep(Duration::from_millis(500));
    }
    // A hand edit of the replica's SQLite file.
    let db = rusqlite::Connection::open(f.dir.path().join("replica/shadow.sqlite")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute(
        "UPDATE devices SET reported = '[1]' WHERE id = 'row-bad'",
        [],
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut watcher = rt.block_on(async {
        let cfg = sandstep_transport::mqtt::MqttConfig {
            url: format!("mqtt://127.0.0.1:{}", f.broker.port),
            ..Default::default()
        };
        let mut c = sandstep_transport::mqtt::Mqtt::connect(&cfg, "row-watcher").unwrap();
        while c.recv().await != Some(sandstep_transport::mqtt::MqttEvent::Connected) {}
        c.subscribe("state/row-bad/update/rejected").await.unwrap();
        while c.recv().await != Some(sandstep_transport::mqtt::MqttEvent::SubAck) {}
        c
    });
    report("row-bad", 2);
    report("row-good", 2);
    let refusal = rt.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), watcher.recv()).await {
                Ok(Some(sandstep_transport::mqtt::MqttEvent::Message { payload, .. })) => {
                    break serde_json::from_slice::<Value>(&payload).unwrap()
                }
                Ok(Some(_)) => {}
                other => panic!("no refusal: {other:?}"),
            }
        }
    });
    let message = refusal["message"].as_str().unwrap();
    assert!(
        message.starts_with("not stored: the replica cannot read this device's stored state")
            && message.contains("not a JSON object"),
        "{refusal}"
    );
    let t = Instant::now();
    while reported_n("row-good") != 2 {
        assert!(t.elapsed() < Duration::from_secs(30), "{:#}", f.status());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(replica.is_running(), "the replica exited");

    // A rollout to their group: the readable device gets the deployment, the other is left out.
    let manifest = f.manifest("rows", vec![stateful("a", json!({}), &["f.txt"])]);
    let out = cli(
        &f,
        &[
            "rollout",
            "create",
            "--group",
            "rows",
            "--id",
            "ro-rows",
            "--phases",
            "100%",
            "--manifest",
            manifest.to_str().unwrap(),
            "--files-url",
            &f.server.base(),
            "--sign-key",
            f.signing.to_str().unwrap(),
            "--root-key",
            f.root.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    while f.status()["row-good"]["state"]["desired"]["workflow"]["id"] != "ro-rows" {
        assert!(t.elapsed() < Duration::from_secs(30), "{:#}", f.status());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(replica.is_running(), "the replica exited");
    // Nothing was written over the unreadable row.
    let (stored, desired): (String, String) = db
        .query_row(
            "SELECT reported, desired FROM devices WHERE id = 'row-bad'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(stored, "[1]");
    assert!(!desired.contains("ro-rows"), "{desired}");
}
