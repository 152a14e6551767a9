//! The fleet loop against a real mosquitto broker on loopback: operator CLI -> replica -> agent ->
//! handlers -> reported state -> `sandstep-fleet status`. And HTTP polling against a loopback server.

use crate::support::{signed, trust_test_key};
use crate::workflow::{file_entry, stateful, PROBE};
use sandstep::datadir::DataDir;
use sandstep::registry::Registry;
use sandstep_signing::jws::PrivateJwk;
use sandstep_testkit::{Broker, Proc};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn sandstep() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sandstep"));
    c.env_remove("RUST_LOG");
    c
}

/// `sandstep-fleet`'s path, built beside `sandstep` (a workspace `cargo test`, as
/// scripts/test.sh runs, builds both).
pub fn fleet_bin() -> std::path::PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_sandstep")).with_file_name("sandstep-fleet");
    assert!(
        exe.is_file(),
        "{} is not built: the fleet tests run both halves (`cargo test` in the workspace, or \
         `cargo build -p sandstep-fleet` first)",
        exe.display()
    );
    exe
}

/// `sandstep-fleet`, without the caller's RUST_LOG.
pub fn fleet_cli() -> Command {
    let mut c = Command::new(fleet_bin());
    c.env_remove("RUST_LOG");
    c
}

/// One gateway and its operator: config, data dir (handlers and trust), files, keys.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub data: PathBuf,
    pub files: PathBuf,
    /// The loopback HTTP server the gateway downloads from (a deployment from the network may
    /// only name http(s) URLs).
    pub server: crate::http::TestServer,
    pub root: PathBuf,
    pub signing: PathBuf,
    pub broker: Broker,
}

impl Fleet {
    pub fn new(device: &str) -> Option<Fleet> {
        let broker = Broker::start()?;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        trust_test_key(&data);
        let reg = Registry::open(DataDir::open(&data).unwrap().handlers().unwrap()).unwrap();
        reg.install(
            PROBE,
            &signed("probe"),
            "probe.wasm",
            vec!["test-vendor".into()],
            0,
        )
        .unwrap();
        // Manifest keys: the root is trusted by the gateway.
        let root = PrivateJwk::generate_ed25519(Some("fleet-root".into()));
        let signing = PrivateJwk::generate_ed25519(None);
        std::fs::create_dir_all(data.join("trust/roots")).unwrap();
        std::fs::write(
            data.join("trust/roots/fleet-root.pub"),
            root.public().to_value().to_string(),
        )
        .unwrap();
        let (root_path, signing_path) =
            (dir.path().join("root.jwk"), dir.path().join("signing.jwk"));
        std::fs::write(&root_path, root.to_value().to_string()).unwrap();
        std::fs::write(&signing_path, signing.to_value().to_string()).unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir(&files).unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\ndevice-id = \"{device}\"\ngroups = [\"testers\"]\nprogress-interval-ms = 100\nshutdown-grace-secs = 1\nconfirm-timeout-ms = 1000\nreboot-command = [\"/bin/true\"]\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nreconnect-min-ms = 100\nreconnect-max-ms = 1000\n",
                broker.port
            ),
        )
        .unwrap();
        Some(Fleet {
            dir,
            config,
            data,
            files,
            server: crate::http::TestServer::start(),
            root: root_path,
            signing: signing_path,
            broker,
        })
    }

    pub fn agent(&self) -> Proc {
        self.agent_with_env(&[])
    }

    pub fn agent_with_env(&self, env: &[(&str, &std::ffi::OsStr)]) -> Proc {
        let mut c = sandstep();
        c.envs(env.iter().copied());
        c.args(["--log", "info", "agent", "--config"])
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data);
        Proc::spawn(
            c,
            self.dir
                .path()
                .join(format!("agent-{}.log", fastrand::u32(..))),
        )
    }

    pub fn replica(&self) -> Proc {
        let mut c = fleet_cli();
        c.args(["--log", "info", "shadow", "--config"])
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.dir.path().join("replica"));
        Proc::spawn(c, self.dir.path().join("replica.log"))
    }

    /// Writes a manifest of probe steps (one file each) and returns its path.
    pub fn manifest(&self, name: &str, steps: Vec<Value>) -> PathBuf {
        std::fs::write(self.files.join("f.txt"), b"payload").unwrap();
        self.server.put("f.txt", b"payload");
        let m = json!({
            "updateId": {"provider": "test", "name": name, "version": "1.0"},
            "compatibility": [{"model": "gw"}],
            "instructions": {"steps": steps},
            "files": {"f.txt": file_entry("f.txt", b"payload")},
            "manifestVersion": "5.0"
        });
        let p = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&p, serde_json::to_string_pretty(&m).unwrap()).unwrap();
        p
    }

    pub fn deploy(&self, device: &str, manifest: &Path, workflow: &str, extra: &[&str]) {
        self.deploy_from(device, manifest, workflow, &self.server.base(), extra);
    }

    /// `deploy` with the files' base URL as the device sees it (a virtual machine reaches the
    /// host's server at another address).
    pub fn deploy_from(
        &self,
        device: &str,
        manifest: &Path,
        workflow: &str,
        files_url: &str,
        extra: &[&str],
    ) {
        let out = fleet_cli()
            .arg("deploy")
            .arg("--config")
            .arg(&self.config)
            .args(["--device", device, "--workflow-id", workflow, "--manifest"])
            .arg(manifest)
            .arg("--files-url")
            .arg(files_url)
            .arg("--sign-key")
            .arg(&self.signing)
            .arg("--root-key")
            .arg(&self.root)
            .args(extra)
            .output()
            .unwrap();
        crate::cli::ok(&out);
    }

    /// Publishes `payload` on `topic` as a client of its own (an operator, or anyone) and waits
    /// for the broker's acknowledgement.
    pub fn publish_raw(&self, topic: &str, payload: &[u8]) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let cfg = sandstep_transport::mqtt::MqttConfig {
                url: format!("mqtt://127.0.0.1:{}", self.broker.port),
                ..Default::default()
            };
            let id = format!("test-raw-{:08x}", fastrand::u32(..));
            let mut c = sandstep_transport::mqtt::Mqtt::connect(&cfg, &id).unwrap();
            loop {
                match c.recv().await.unwrap() {
                    sandstep_transport::mqtt::MqttEvent::Connected => {
                        c.publish(topic, payload.to_vec(), false).await.unwrap()
                    }
                    sandstep_transport::mqtt::MqttEvent::PubAck { .. } => break,
                    _ => {}
                }
            }
        });
    }

    pub fn status(&self) -> Value {
        let out = fleet_cli()
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        crate::cli::ok(&out);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until the device's reported state satisfies `f`; returns it.
    pub fn wait_for(&self, device: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(device, what, Duration::from_secs(90), f)
    }

    /// As `wait_for`, for up to `limit`.
    pub fn wait_for_within(
        &self,
        device: &str,
        what: &str,
        limit: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let t = Instant::now();
        loop {
            let all = self.status();
            if let Some(r) = all.get(device).and_then(|d| d.pointer("/state/reported")) {
                if f(r) {
                    return r.clone();
                }
            }
            assert!(
                t.elapsed() < limit,
                "timed out waiting for {what}; last status: {all:#}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn log(&self, name: &str) -> Vec<String> {
        crate::workflow::walk(&self.data.join("state"))
            .into_iter()
            .find(|p| p.ends_with(format!("{name}.log")))
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn done(workflow: &str) -> impl Fn(&Value) -> bool + '_ {
    move |r| {
        r.pointer("/workflow/id").and_then(Value::as_str) == Some(workflow)
            && matches!(r["status"].as_str(), Some("completed" | "failed"))
    }
}

#[test]
fn a_deployment_goes_from_the_cli_through_the_replica_to_the_agent_and_back_to_status() {
    let Some(fleet) = Fleet::new("gw-1") else {
        return;
    };
    let _replica = fleet.replica();
    let _agent = fleet.agent();
    // At start the agent reports what it has installed.
    let r = fleet.wait_for("gw-1", "the start report", |r| r["status"] == "standBy");
    assert_eq!(r["handlers"][0]["id"], PROBE);
    assert_eq!(r["groups"], json!(["testers"]));

    let m = fleet.manifest(
        "ok",
        vec![
            stateful("a", json!({}), &["f.txt"]),
            stateful("b", json!({}), &["f.txt"]),
        ],
    );
    fleet.deploy("gw-1", &m, "wf-ok", &[]);
    let r = fleet.wait_for("gw-1", "the result", done("wf-ok"));
    assert_eq!(r["status"], "completed", "{r:#}");
    assert_eq!(r["state"], 0);
    assert_eq!(r["lastInstallResult"]["resultCode"], 700);
    assert_eq!(
        r["lastInstallResult"]["stepResults"]["step_1"]["resultCode"],
        700
    );
    assert_eq!(
        r["installedUpdateId"],
        r#"{"provider":"test","name":"ok","version":"1.0"}"#
    );
    assert_eq!(
        r["ack"],
        json!({"jobId": "wf-ok", "status": "SUCCESS"}),
        "the acknowledgement reached the replica"
    );

    let table = fleet_cli()
        .args(["status", "--config"])
        .arg(&fleet.config)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.lines().any(|l| l.starts_with("gw-1")
            && l.contains("completed")
            && l.contains("wf-ok")
            && l.contains("700 00000000")),
        "{table}"
    );

    // A failing step is reported with its codes.
    let m = fleet.manifest(
        "bad",
        vec![stateful("c", json!({"fail": "install"}), &["f.txt"])],
    );
    fleet.deploy("gw-1", &m, "wf-bad", &[]);
    let r = fleet.wait_for("gw-1", "the failure", done("wf-bad"));
    assert_eq!(r["status"], "failed");
    assert_eq!(r["state"], 255);
    assert_eq!(r["lastInstallResult"]["resultCode"], 0);
    assert_eq!(r["lastInstallResult"]["extendedResultCodes"], "32000042");
    assert_eq!(
        r["lastInstallResult"]["resultDetails"],
        "c: install failed on purpose"
    );
    assert_eq!(r["ack"]["status"], "FAILURE");
}

#[test]
fn duplicates_are_ignored_retries_run_again_replacements_cancel_and_cancel_cancels() {
    let Some(fleet) = Fleet::new("gw-2") else {
        return;
    };
    let _replica = fleet.replica();
    let _agent = fleet.agent();
    fleet.wait_for("gw-2", "the start report", |r| r["status"] == "standBy");
    let m = fleet.manifest("once", vec![stateful("once", json!({}), &["f.txt"])]);
    fleet.deploy("gw-2", &m, "wf-1", &[]);
    fleet.wait_for("gw-2", "wf-1", done("wf-1"));
    // The same deployment again: reported, not re-run.
    fleet.deploy("gw-2", &m, "wf-1", &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        fleet.log("once").iter().filter(|l| *l == "apply").count(),
        1
    );
    // A retry (new retryTimestamp) runs again; the step is installed already: 603.
    fleet.deploy("gw-2", &m, "wf-1", &["--retry"]);
    let r = fleet.wait_for("gw-2", "the retry", |r| {
        r.pointer("/workflow/retryTimestamp").is_some() && r["status"] == "completed"
    });
    assert_eq!(
        r["lastInstallResult"]["stepResults"]["step_0"]["resultCode"],
        603
    );

    // Replacement: a new id while one runs cancels it and runs the new one.
    let slow = fleet.manifest(
        "slow",
        vec![stateful("slow", json!({"sleep_ms": 60000}), &["f.txt"])],
    );
    fleet.deploy("gw-2", &slow, "wf-slow", &[]);
    fleet.wait_for("gw-2", "the slow step", |r| {
        r.pointer("/progress/action").and_then(Value::as_str) == Some("install")
    });
    let next = fleet.manifest("next", vec![stateful("next", json!({}), &["f.txt"])]);
    fleet.deploy("gw-2", &next, "wf-next", &[]);
    let r = fleet.wait_for("gw-2", "the replacement", done("wf-next"));
    assert_eq!(r["status"], "completed");
    assert_eq!(
        fleet.log("slow").last().map(String::as_str),
        Some("cancel"),
        "the replaced step's handler was cancelled"
    );

    // Cancel.
    let slow2 = fleet.manifest(
        "slow2",
        vec![stateful("slow2", json!({"sleep_ms": 60000}), &["f.txt"])],
    );
    fleet.deploy("gw-2", &slow2, "wf-slow2", &[]);
    fleet.wait_for("gw-2", "the second slow step", |r| {
        r.pointer("/progress/handler").is_some()
            && r.pointer("/workflow/id").and_then(Value::as_str) == Some("wf-slow2")
    });
    // Typed at the gateway's binary, as before the split: it runs sandstep-fleet.
    let out = sandstep()
        .args(["cancel", "--device", "gw-2", "--config"])
        .arg(&fleet.config)
        .output()
        .unwrap();
    crate::cli::ok(&out);
    let r = fleet.wait_for("gw-2", "the cancel", |r| {
        r.pointer("/lastInstallResult/resultCode") == Some(&json!(-1))
    });
    assert_eq!(r["status"], "standBy");
    assert_eq!(
        r["workflow"],
        json!({"action": 255, "id": "wf-slow2"}),
        "the cancel request is acknowledged"
    );
    assert_eq!(r["ack"], json!({"jobId": "wf-slow2", "status": "FAILURE"}));
    assert_eq!(
        fleet.log("slow2").last().map(String::as_str),
        Some("cancel")
    );
}

/// The broker goes away for many times the agent's reconnect cap (1 s in the test config, 30 s
/// by default: a 15 s outage here stands for minutes), across the end of a deployment.
#[test]
fn the_broker_gone_for_many_reconnect_periods_mid_deployment_loses_no_report() {
    let Some(mut fleet) = Fleet::new("gw-3") else {
        return;
    };
    let _replica = fleet.replica();
    let _agent = fleet.agent();
    fleet.wait_for("gw-3", "the start report", |r| r["status"] == "standBy");
    let m = fleet.manifest(
        "slowish",
        vec![stateful("s", json!({"sleep_ms": 3000}), &["f.txt"])],
    );
    fleet.deploy("gw-3", &m, "wf-restart", &[]);
    fleet.wait_for("gw-3", "the step", |r| {
        r.pointer("/workflow/id").and_then(Value::as_str) == Some("wf-restart")
    });
    fleet.broker.stop();
    // The deployment finishes while the broker is away; the agent keeps retrying at its cap.
    std::thread::sleep(Duration::from_secs(15));
    fleet.broker.restart();
    let r = fleet.wait_for(
        "gw-3",
        "the result after the broker came back",
        done("wf-restart"),
    );
    assert_eq!(r["status"], "completed");
    assert_eq!(r["lastInstallResult"]["resultCode"], 700);
}

/// A deployment stored while the agent is away from a broker that restarted without persistence
/// (its delta published to nobody) reaches the agent when it reconnects: it asks for its whole
/// document on every connection.
#[test]
fn a_deployment_stored_while_the_agent_reconnects_to_a_restarted_broker_still_reaches_it() {
    let Some(mut fleet) = Fleet::new("gw-8") else {
        return;
    };
    let replica = fleet.replica();
    let agent = fleet.agent();
    fleet.wait_for("gw-8", "the start report", |r| r["status"] == "standBy");
    // The agent is held (as a machine that is slow to come back would be) while the broker
    // restarts, empty, and the replica reconnects and stores a deployment.
    agent.signal(libc::SIGSTOP);
    fleet.broker.restart();
    let t = Instant::now();
    while replica.output().matches("replica connected").count() < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the replica never reconnected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its subscription follows the log line: give it time to reach the broker.
    std::thread::sleep(Duration::from_secs(1));
    let m = fleet.manifest("missed", vec![stateful("m", json!({}), &["f.txt"])]);
    fleet.deploy("gw-8", &m, "wf-missed", &[]);
    agent.signal(libc::SIGCONT);
    let r = fleet.wait_for(
        "gw-8",
        "the deployment after reconnecting",
        done("wf-missed"),
    );
    assert_eq!(r["status"], "completed", "{r:#}");
    assert_eq!(fleet.log("m").iter().filter(|l| *l == "apply").count(), 1);
}

#[test]
fn a_replica_started_after_the_agent_or_restarted_mid_deployment_still_gets_every_report() {
    let Some(fleet) = Fleet::new("gw-7") else {
        return;
    };
    let agent = fleet.agent();
    // The start report goes to a broker with nobody subscribed: the broker acknowledges it and
    // drops it.
    agent.wait_for_output("connected");
    std::thread::sleep(Duration::from_millis(300));
    let mut replica = fleet.replica();
    let r = fleet.wait_for("gw-7", "the start report sent again", |r| {
        r["status"] == "standBy"
    });
    assert_eq!(r["handlers"][0]["id"], PROBE);

    let m = fleet.manifest(
        "unwatched",
        vec![stateful("u", json!({"sleep_ms": 2000}), &["f.txt"])],
    );
    fleet.deploy("gw-7", &m, "wf-unwatched", &[]);
    fleet.wait_for("gw-7", "the step", |r| {
        r.pointer("/progress/action").and_then(Value::as_str) == Some("install")
    });
    replica.kill();
    // The result is reported while no replica listens.
    let t = Instant::now();
    while !fleet.log("u").iter().any(|l| l == "apply") {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the step never applied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let _replica = fleet.replica();
    let r = fleet.wait_for("gw-7", "the result sent again", done("wf-unwatched"));
    assert_eq!(r["status"], "completed", "{r:#}");
    assert_eq!(r["lastInstallResult"]["resultCode"], 700);
    assert_eq!(r["ack"]["status"], "SUCCESS");
}

#[test]
fn desired_state_in_the_software_update_patterns_shape_is_refused_and_its_delta_closed() {
    let Some(fleet) = Fleet::new("gw-8") else {
        return;
    };
    let _replica = fleet.replica();
    let _agent = fleet.agent();
    fleet.wait_for("gw-8", "the start report", |r| r["status"] == "standBy");
    // The seed's own "software update" desired state, as an operator of that pattern sends it.
    let doc = json!({"state": {"desired": {"softwareURL": "http://127.0.0.1:1/fw-2.0.bin"}}});
    fleet.publish_raw("state/gw-8/update", doc.to_string().as_bytes());
    let r = fleet.wait_for("gw-8", "the refusal", |r| {
        r.pointer("/lastError/message")
            .and_then(Value::as_str)
            .is_some_and(|m| m.contains("not applied: softwareURL"))
    });
    assert!(r["lastError"]["message"]
        .as_str()
        .unwrap()
        .contains("sandstep expects ADU's deployment message"));
    // Acknowledged: the replica's delta for it is closed, not open forever.
    let t = Instant::now();
    loop {
        let all = fleet.status();
        let delta = all["gw-8"]
            .pointer("/state/delta")
            .cloned()
            .unwrap_or(json!({}));
        if delta.as_object().is_some_and(|d| d.is_empty()) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the delta stays open: {all:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn status_hides_devices_not_heard_from_and_says_when_each_last_reported() {
    let Some(fleet) = Fleet::new("gw-7") else {
        return;
    };
    let _replica = fleet.replica();
    let mut agent = fleet.agent();
    fleet.wait_for("gw-7", "the start report", |r| r["status"] == "standBy");
    agent.kill();
    std::thread::sleep(Duration::from_millis(2500));
    let status = |extra: &[&str]| {
        let out = fleet_cli()
            .args(["status", "--config"])
            .arg(&fleet.config)
            .args(extra)
            .output()
            .unwrap();
        crate::cli::ok(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = status(&[]);
    assert!(
        shown.contains("LAST SEEN") && shown.contains("gw-7"),
        "{shown}"
    );
    let hidden = status(&["--stale-after", "1"]);
    assert!(!hidden.lines().any(|l| l.starts_with("gw-7")), "{hidden}");
    assert!(
        hidden.contains("1 device(s) not heard from within 1s hidden (--all shows them)"),
        "{hidden}"
    );
    let all = status(&["--stale-after", "1", "--all"]);
    let line = all.lines().find(|l| l.starts_with("gw-7")).expect("listed");
    assert!(line.trim_end().ends_with("s ago"), "{all}");
}

#[test]
fn a_deploy_succeeds_only_once_the_replica_stored_it() {
    let Some(fleet) = Fleet::new("gw-9") else {
        return;
    };
    let m = fleet.manifest("unstored", vec![stateful("u", json!({}), &["f.txt"])]);
    // No replica: the broker takes the publish, but nothing keeps it.
    let deploy = || {
        fleet_cli()
            .arg("deploy")
            .arg("--config")
            .arg(&fleet.config)
            .args([
                "--device",
                "gw-9",
                "--workflow-id",
                "wf-unstored",
                "--manifest",
            ])
            .arg(&m)
            .arg("--files-url")
            .arg(fleet.server.base())
            .arg("--sign-key")
            .arg(&fleet.signing)
            .arg("--root-key")
            .arg(&fleet.root)
            .args(["--confirm-timeout", "2"])
            .output()
            .unwrap()
    };
    let out = deploy();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no shadow service confirmed the desired state of gw-9 within 2s"),
        "{err}"
    );
    // With the replica running, the same deploy is confirmed, and the desired state is there.
    let _replica = fleet.replica();
    std::thread::sleep(Duration::from_millis(500));
    let out = deploy();
    let text = String::from_utf8_lossy(&out.stdout);
    crate::cli::ok(&out);
    assert!(text.contains("(stored by the shadow service)"), "{text}");
    let all = fleet.status();
    assert_eq!(
        all["gw-9"].pointer("/state/desired/workflow/id"),
        Some(&json!("wf-unstored")),
        "{all:#}"
    );
}

#[test]
fn an_agent_killed_mid_deployment_resumes_and_reports_once() {
    let Some(fleet) = Fleet::new("gw-4") else {
        return;
    };
    let _replica = fleet.replica();
    let mut agent = fleet.agent();
    fleet.wait_for("gw-4", "the start report", |r| r["status"] == "standBy");
    let m = fleet.manifest(
        "killed",
        vec![
            stateful("k", json!({"sleep_ms": 4000}), &["f.txt"]),
            stateful("k2", json!({}), &["f.txt"]),
        ],
    );
    fleet.deploy("gw-4", &m, "wf-killed", &[]);
    fleet.wait_for("gw-4", "install", |r| {
        r.pointer("/progress/action").and_then(Value::as_str) == Some("install")
    });
    agent.kill();
    let _agent = fleet.agent();
    let r = fleet.wait_for("gw-4", "the resumed result", done("wf-killed"));
    assert_eq!(r["status"], "completed", "{r:#}");
    assert_eq!(fleet.log("k").iter().filter(|l| *l == "apply").count(), 1);
    assert_eq!(fleet.log("k2"), ["download", "backup", "install", "apply"]);
}

#[test]
fn malformed_and_oversized_desired_documents_are_reported_and_the_agent_carries_on() {
    let Some(fleet) = Fleet::new("gw-5") else {
        return;
    };
    let _replica = fleet.replica();
    let mut agent = fleet.agent();
    fleet.wait_for("gw-5", "the start report", |r| r["status"] == "standBy");
    let pub_raw = |payload: &[u8]| fleet.publish_raw("state/gw-5/update/delta", payload);
    pub_raw(br#"{"state": {"workflow": {"action": 7, "id": "wf-weird"}, "updateManifest": "{}"}}"#);
    let r = fleet.wait_for("gw-5", "the refusal", |r| {
        r.pointer("/lastError/message").is_some()
    });
    assert_eq!(r["lastError"]["message"], "deployment document: workflow.action: 7 is not supported; expected 3 (process) or 255 (cancel)");
    let big = format!(
        r#"{{"state": {{"workflow": {{"action": 3, "id": "wf-big"}}, "updateManifest": "{}"}}}}"#,
        "x".repeat(3 << 20)
    );
    pub_raw(big.as_bytes());
    let r = fleet.wait_for("gw-5", "the size refusal", |r| {
        r.pointer("/lastError/message")
            .and_then(Value::as_str)
            .is_some_and(|m| m.starts_with("desired document is"))
    });
    assert_eq!(
        r["lastError"]["message"],
        format!(
            "desired document is {} bytes; the limit is {}",
            big.len(),
            sandstep_model::deployment::MAX_DEPLOYMENT_BYTES
        )
    );
    // A deployment naming a local path (here a FIFO, which would block a reader for good) is
    // refused before anything opens it, and the refusal says nothing of the path.
    let fifo = fleet.dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let hostile = json!({"state": {
        "workflow": {"action": 3, "id": "wf-file-url"},
        "updateManifest": "{}",
        "fileUrls": {"f": format!("file://{}", fifo.display())}
    }});
    pub_raw(hostile.to_string().as_bytes());
    let r = fleet.wait_for("gw-5", "the file URL refusal", |r| {
        r.pointer("/lastError/message")
            .and_then(Value::as_str)
            .is_some_and(|m| m.contains("fileUrls"))
    });
    assert_eq!(
        r["lastError"]["message"],
        "deployment document: fileUrls: `f`: a deployment from the network may only name http(s) URLs"
    );
    assert!(agent.is_running());
    // Still working.
    let m = fleet.manifest("after", vec![stateful("after", json!({}), &["f.txt"])]);
    fleet.deploy("gw-5", &m, "wf-after", &[]);
    assert_eq!(
        fleet.wait_for("gw-5", "the next deployment", done("wf-after"))["status"],
        "completed"
    );
}

/// An agent polling `server`'s project `proj` every second as device `mpy-1`, with `device`
/// mapped at `/dest/app` for `sandstep/files:1`; its config (`agent.toml`) and log in `dir`.
/// The test key trusted in `data`, and `sandstep/files:1` installed there, signed by it.
pub(crate) fn install_files_handler(data: &Path) {
    trust_test_key(data);
    let reg = Registry::open(DataDir::open(data).unwrap().handlers().unwrap()).unwrap();
    reg.install(
        "sandstep/files:1",
        &signed("files"),
        "files.wasm",
        vec!["test-vendor".into()],
        0,
    )
    .unwrap();
}

pub(crate) fn polling_agent(
    server: &crate::http::TestServer,
    dir: &Path,
    data: &Path,
    device: &Path,
) -> Proc {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndevice-id = \"mpy-1\"\nsource = \"http-poll\"\n[http-poll]\nbase-url = \"{}\"\nproject = \"proj\"\ninterval-secs = 1\n[handlers.\"sandstep/files:1\"]\ndirs = [{{ host = \"{}\", guest = \"/dest/app\", writable = true }}]\n",
            server.base(),
            device.display()
        ),
    )
    .unwrap();
    let mut c = sandstep();
    c.args(["--log", "info", "agent", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data);
    Proc::spawn(c, dir.join("agent.log"))
}

#[test]
fn http_polling_follows_the_version_tag_including_a_rollback() {
    let server = crate::http::TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    install_files_handler(&data);
    let root = PrivateJwk::generate_ed25519(Some("poll-root".into()));
    let signing = PrivateJwk::generate_ed25519(None);
    std::fs::create_dir_all(data.join("trust/roots")).unwrap();
    std::fs::write(
        data.join("trust/roots/poll-root.pub"),
        root.public().to_value().to_string(),
    )
    .unwrap();
    let device = dir.path().join("device");
    std::fs::create_dir(&device).unwrap();
    // The server: project/version, and per tag a signed deployment placing main.py.
    let publish = |tag: &str, content: &[u8]| {
        let name = format!("main-{tag}.py");
        server.put(&format!("proj/{tag}/{name}"), content);
        let m = json!({
            "updateId": {"provider": "test", "name": "poll", "version": "1.0"},
            "compatibility": [{"model": "mpy"}],
            "instructions": {"steps": [{"handler": "sandstep/files:1", "files": [name.clone()],
                "handlerProperties": {"destination": "/dest/app/main.py", "installedCriteria": format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(content)))}}]},
            "files": {name.clone(): file_entry(&name, content)},
            "manifestVersion": "5.0"
        })
        .to_string();
        let sjwk = sandstep_signing::manifest::sign_signing_key(&signing.public(), &root).unwrap();
        let sig = sandstep_signing::manifest::sign(&m, &signing, &sjwk);
        let doc = json!({"workflow": {"action": 3, "id": "ignored"}, "updateManifest": m, "updateManifestSignature": sig,
                         "fileUrls": {name.clone(): server.url(&format!("proj/{tag}/{name}"))}});
        server.put(
            &format!("proj/{tag}/deployment.json"),
            doc.to_string().as_bytes(),
        );
    };
    publish("v1", b"print('v1')\n");
    publish("v2", b"print('v2')\n");
    server.put("proj/version", b"v1\n");
    let _agent = polling_agent(&server, dir.path(), &data, &device);
    let wait_main = |want: &str| {
        let t = Instant::now();
        while std::fs::read_to_string(device.join("main.py")).unwrap_or_default() != want {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "main.py never became {want:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_main("print('v1')\n");
    std::fs::write(device.join("boot.py"), b"# the device's own\n").unwrap();
    server.put("proj/version", b"v2\n");
    wait_main("print('v2')\n");
    // Rollback: the server points back at v1.
    server.put("proj/version", b"v1\n");
    wait_main("print('v1')\n");
    let reported: Value = {
        let t = Instant::now();
        loop {
            let r: Value =
                serde_json::from_slice(&std::fs::read(data.join("reported.json")).unwrap())
                    .unwrap();
            // main.py is in place before the step's result is reported: wait for the
            // deployment's end, not only its id.
            if done("proj-v1-3")(&r["state"]["reported"]) {
                break r;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "{r:#}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert_eq!(
        reported["state"]["reported"]["lastInstallResult"]["resultCode"],
        700
    );
    // fileSets lists what is at the destinations after the deployment, including a file that
    // sandstep did not write.
    let sets = &reported["state"]["reported"]["fileSets"];
    assert_eq!(
        sets["/dest/app/main.py"]["sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"print('v1')\n")),
        "{reported:#}"
    );
    assert!(sets.get("/dest/app/boot.py").is_some(), "{reported:#}");
    // A tag whose deployment fails (its file on the server is not what the manifest says) is
    // reported with its retry, and tried again with backoff, without a new tag.
    publish("v3", b"print('v3')\n");
    server.put("proj/v3/main-v3.py", b"print('not v3')\n");
    server.put("proj/version", b"v3\n");
    let read = || -> Value {
        serde_json::from_slice(&std::fs::read(data.join("reported.json")).unwrap()).unwrap()
    };
    let t = Instant::now();
    let failed = loop {
        let r = read();
        if r.pointer("/state/reported/retry/tag") == Some(&json!("v3")) {
            break r;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{r:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let reported = &failed["state"]["reported"];
    assert!(
        reported["lastInstallResult"]["resultCode"]
            .as_i64()
            .unwrap()
            <= 0,
        "{failed:#}"
    );
    assert!(
        reported["retry"]["nextAtMs"].as_u64().is_some(),
        "{failed:#}"
    );
    server.put("proj/v3/main-v3.py", b"print('v3')\n");
    wait_main("print('v3')\n");
    let t = Instant::now();
    // The retry is cleared when the tag runs again; wait for that run's end too.
    while read().pointer("/state/reported/retry") != Some(&Value::Null)
        || read().pointer("/state/reported/status") != Some(&json!("completed"))
    {
        assert!(t.elapsed() < Duration::from_secs(30), "{:#}", read());
        std::thread::sleep(Duration::from_millis(200));
    }
    // `sandstep status` on the gateway shows its own reported state.
    let out = sandstep()
        .args(["status", "--json", "--config"])
        .arg(dir.path().join("agent.toml"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    crate::cli::ok(&out);
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        all["mpy-1"]["state"]["reported"]["status"], "completed",
        "{all:#}"
    );
}

/// The wall clock steps back a day and then forward a year while a step runs (an NTP step, a
/// dead RTC battery): timeouts and rate limits run on the monotonic clock, so the deployment
/// finishes once, and its result is reported and confirmed. Needs libfaketime (Debian's
/// `faketime`; the harness installs it when missing and root).
#[test]
fn the_wall_clock_jumping_back_and_forward_mid_deployment_changes_nothing() {
    let Some(lib) = faketime() else {
        sandstep_testkit::prerequisite_missing(
            "libfaketime is not installed (apt-get install faketime)",
        );
        return;
    };
    let Some(fleet) = Fleet::new("gw-clock") else {
        return;
    };
    let _replica = fleet.replica();
    let clock = fleet.dir.path().join("clock");
    std::fs::write(&clock, "+0\n").unwrap();
    let agent = fleet.agent_with_env(&[
        ("LD_PRELOAD", lib.as_os_str()),
        ("FAKETIME_TIMESTAMP_FILE", clock.as_os_str()),
        ("FAKETIME_NO_CACHE", "1".as_ref()),
        ("DONT_FAKE_MONOTONIC", "1".as_ref()),
    ]);
    fleet.wait_for("gw-clock", "the start report", |r| r["status"] == "standBy");
    let m = fleet.manifest(
        "clock",
        vec![
            stateful("c1", json!({"sleep_ms": 1500}), &["f.txt"]),
            stateful("c2", json!({"sleep_ms": 1500}), &["f.txt"]),
        ],
    );
    fleet.deploy("gw-clock", &m, "wf-clock", &[]);
    fleet.wait_for("gw-clock", "the first step", |r| {
        r.pointer("/workflow/id").and_then(Value::as_str) == Some("wf-clock")
    });
    std::fs::write(&clock, "-1d\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&clock, "+365d\n").unwrap();
    let r = fleet.wait_for("gw-clock", "the result", done("wf-clock"));
    assert_eq!(r["status"], "completed");
    assert_eq!(r["lastInstallResult"]["resultCode"], 700);
    for step in ["c1", "c2"] {
        assert_eq!(fleet.log(step).iter().filter(|l| *l == "apply").count(), 1);
    }
    drop(agent);
    // The agent did see the jumps: its journal finished a year from now.
    let journal = crate::workflow::walk(&fleet.data.join("journal"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "journal"))
        .unwrap();
    let j = sandstep_model::journal::Journal::decode(&std::fs::read(journal).unwrap()).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        j.finished_at_ms.unwrap() > now_ms + 300 * 86_400_000,
        "{j:?}"
    );
}

fn faketime() -> Option<PathBuf> {
    let lib = PathBuf::from("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1");
    if !lib.exists() && unsafe { libc::geteuid() } == 0 {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-q", "faketime"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    lib.exists().then_some(lib)
}

/// The messages `client` sees within `wait`, as (topic, payload) pairs.
async fn collect(
    client: &mut sandstep_transport::mqtt::Mqtt,
    wait: Duration,
) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, client.recv()).await {
        if let sandstep_transport::mqtt::MqttEvent::Message { topic, payload, .. } = ev {
            seen.push((topic, String::from_utf8_lossy(&payload).into_owned()));
        }
    }
    seen
}

/// A mosquitto with examples/mosquitto.acl, no anonymous access, and accounts `gw-1` (pw-1)
/// and `sandstep-replica` (pw-r). The temporary dir holds its password file and the ACL.
fn acl_broker() -> Option<(Broker, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    for (user, pass, create) in [("gw-1", "pw-1", true), ("sandstep-replica", "pw-r", false)] {
        let mut c = Command::new("mosquitto_passwd");
        if create {
            c.arg("-c");
        }
        assert!(c
            .arg("-b")
            .arg(&passwd)
            .args([user, pass])
            .status()
            .unwrap()
            .success());
    }
    // Beside the password file: mosquitto reads both as its own user, which may not reach a
    // checkout in a private directory (a clone under `mktemp -d`).
    let acl = dir.path().join("mosquitto.acl");
    std::fs::copy(
        sandstep_testkit::repo_root().join("examples/mosquitto.acl"),
        &acl,
    )
    .unwrap();
    let broker = Broker::start_with(&format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\n",
        passwd.display(),
        acl.display()
    ))?;
    Some((broker, dir))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_acl_keeps_each_device_to_its_own_topics() {
    // examples/mosquitto.acl on a real mosquitto: the replica's account may join the replicas'
    // shared subscription, a device cannot publish desired state for another device, and
    // anonymous clients are refused.
    let Some((broker, _dir)) = acl_broker() else {
        return;
    };
    let cfg = |user: Option<(&str, &str)>| sandstep_transport::mqtt::MqttConfig {
        url: format!("mqtt://127.0.0.1:{}", broker.port),
        username: user.map(|u| u.0.to_owned()),
        password: user.map(|u| u.1.to_owned()),
        ..Default::default()
    };
    let mut replica = sandstep_transport::mqtt::Mqtt::connect(
        &cfg(Some(("sandstep-replica", "pw-r"))),
        "replica",
    )
    .unwrap();
    loop {
        if let Some(sandstep_transport::mqtt::MqttEvent::Connected) = replica.recv().await {
            // As `sandstep shadow` subscribes: through the replicas' shared subscription.
            let filter = sandstep_fleet::replica::subscription(
                &sandstep_model::shadow::Topics::replica(),
                Some("sandstep"),
            );
            replica.subscribe(&filter).await.unwrap();
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut device =
        sandstep_transport::mqtt::Mqtt::connect(&cfg(Some(("gw-1", "pw-1"))), "gw-1").unwrap();
    let mut acked = 0;
    while acked < 2 {
        match device.recv().await.unwrap() {
            sandstep_transport::mqtt::MqttEvent::Connected => {
                for (topic, body) in [("state/gw-2/update", "evil"), ("state/gw-1/update", "own")] {
                    device
                        .publish(topic, body.as_bytes().to_vec(), false)
                        .await
                        .unwrap();
                }
            }
            sandstep_transport::mqtt::MqttEvent::PubAck { .. } => acked += 1,
            _ => {}
        }
    }
    let seen = collect(&mut replica, Duration::from_secs(2)).await;
    assert!(
        seen.contains(&("state/gw-1/update".into(), "own".into())),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|(t, _)| t == "state/gw-2/update"),
        "{seen:?}"
    );
    // No account, no connection.
    let mut anonymous = sandstep_transport::mqtt::Mqtt::connect(&cfg(None), "anon").unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), anonymous.recv())
        .await
        .unwrap();
    assert!(
        // The broker refuses who it is (CONNACK: not authorized), not merely the connection.
        matches!(first, Some(sandstep_transport::mqtt::MqttEvent::Refused)),
        "{first:?}"
    );
}

/// `sandstep doctor`'s output for a gateway `gw-1` on `port` (with `account`, if any).
fn doctor(port: u16, account: Option<(&str, &str)>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let creds = account
        .map(|(u, p)| format!("username = \"{u}\"\npassword = \"{p}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "[agent]\ndevice-id = \"gw-1\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n{creds}"
        ),
    )
    .unwrap();
    let out = crate::cli::sandstep()
        .arg("doctor")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn doctor_warns_when_anyone_may_publish_desired_state() {
    // A broker that lets anyone in and has no ACL.
    let Some(open) = Broker::start() else {
        return;
    };
    let out = doctor(open.port, None);
    assert!(out.contains("warn  anonymous clients: "), "{out}");
    assert!(
        out.contains(
            "warn  delta topics: this device's account may publish another device's delta"
        ),
        "{out}"
    );
    // The shipped ACL: anonymous clients refused, and a device's account cannot publish
    // another device's delta (mosquitto says so in its MQTT 5 PUBACK).
    let Some((closed, _dir)) = acl_broker() else {
        return;
    };
    let out = doctor(closed.port, Some(("gw-1", "pw-1")));
    assert!(out.contains("ok    anonymous clients: refused"), "{out}");
    assert!(
        out.contains("ok    delta topics: this device's account may not publish another device's delta (NotAuthorized)"),
        "{out}"
    );
}
