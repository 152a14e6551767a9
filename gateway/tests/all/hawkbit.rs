//! The hawkBit source against a DDI server played from hawkBit's published API
//! (`ddi_server.rs`): update actions run and report feedback, failures and refusals close their
//! action with the reason, a cancel stops the running deployment and is confirmed, the device's
//! attributes go where the server asks, and the token never leaves the configured server.

use crate::ddi_server::{DdiServer, TENANT};
use crate::fleet::{sandstep, Fleet};
use crate::workflow::stateful;
use serde_json::{json, Value};
use sha2::Digest;
use std::time::{Duration, Instant};

const TOKEN: &str = "s3cr3t-target-token";

/// A gateway `device` whose source is `ddi` (token `token`).
fn gateway(device: &str, ddi: &DdiServer, token: &str) -> Option<Fleet> {
    let fleet = Fleet::new(device)?;
    std::fs::write(
        &fleet.config,
        format!(
            "[agent]\ndevice-id = \"{device}\"\nsource = \"hawkbit\"\nprogress-interval-ms = 100\n\
             shutdown-grace-secs = 1\nreboot-command = [\"/bin/true\"]\n\
             [hawkbit]\nbase-url = \"{}\"\ntenant = \"{TENANT}\"\ntarget-token = \"{token}\"\n\
             poll-interval-secs = 1\n[device]\nproperties = {{ model = \"gw\", hwRevision = \"2\" }}\n",
            ddi.base()
        ),
    )
    .unwrap();
    Some(fleet)
}

/// Publishes a signed deployment of `steps` as update action `id`: its deployment document and
/// payload as artifacts on the fleet's file server (another origin, as a CDN would be).
fn publish(fleet: &Fleet, ddi: &DdiServer, id: u64, steps: Vec<Value>, tamper: bool) {
    let name = format!("action-{id}");
    let manifest = std::fs::read_to_string(fleet.manifest(&name, steps)).unwrap();
    let key = |p: &std::path::Path| {
        let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        sandstep_signing::jws::PrivateJwk::from_value(&v).unwrap()
    };
    let (root, signing) = (key(&fleet.root), key(&fleet.signing));
    let sjwk = sandstep_signing::manifest::sign_signing_key(&signing.public(), &root).unwrap();
    let signature = sandstep_signing::manifest::sign(&manifest, &signing, &sjwk);
    let manifest = if tamper {
        manifest.replace("\"1.0\"", "\"6.6\"")
    } else {
        manifest
    };
    let doc = json!({"workflow": {"action": 3, "id": "set-by-the-agent"},
                     "updateManifest": manifest, "updateManifestSignature": signature, "fileUrls": {}});
    let doc_name = format!("{name}.deployment.json");
    fleet.server.put(&doc_name, doc.to_string().as_bytes());
    let sha = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
    ddi.assign(
        id,
        vec![
            (
                doc_name.clone(),
                fleet.server.url(&doc_name),
                sha(doc.to_string().as_bytes()),
            ),
            ("f.txt".into(), fleet.server.url("f.txt"), sha(b"payload")),
        ],
    );
}

/// Waits until the action's feedback includes one whose execution is `execution`.
fn feedback_until(ddi: &DdiServer, path: &str, execution: &str) -> Vec<Value> {
    let t = Instant::now();
    loop {
        let posted = ddi.posted(path);
        if posted.iter().any(|b| b["status"]["execution"] == execution) {
            return posted;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no `{execution}` feedback on {path}: {posted:#?}\n{:?}",
            ddi.requests()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn reported(fleet: &Fleet) -> Value {
    let bytes = std::fs::read(fleet.data.join("reported.json")).unwrap_or_default();
    serde_json::from_slice::<Value>(&bytes).unwrap_or_default()["state"]["reported"].clone()
}

#[test]
fn an_action_runs_with_proceeding_feedback_then_closes_with_success_once() {
    let ddi = DdiServer::start(TOKEN);
    let Some(fleet) = gateway("hb-1", &ddi, TOKEN) else {
        return;
    };
    publish(
        &fleet,
        &ddi,
        7,
        vec![stateful("hb", json!({}), &["f.txt"])],
        false,
    );
    ddi.ask_config();
    let agent = fleet.agent();
    let posted = feedback_until(&ddi, "deploymentBase/7/feedback", "closed");
    let last = posted.last().unwrap();
    assert_eq!(
        last["status"]["result"]["finished"], "success",
        "{posted:#?}"
    );
    assert!(
        posted
            .iter()
            .any(|b| b["status"]["execution"] == "proceeding"),
        "{posted:#?}"
    );
    let details = last["status"]["details"].to_string();
    assert!(details.contains("resultCode 700"), "{details}");
    assert!(ddi.is_closed(7));
    let ran = ["download", "backup", "install", "apply"];
    assert_eq!(fleet.log("hb"), ran);
    // The attributes the server asked for: the device's properties and sandstep's version.
    let config = ddi.posted("configData");
    assert_eq!(config[0]["mode"], "merge");
    assert_eq!(config[0]["data"]["hwRevision"], "2");
    assert!(config[0]["data"]["sandstep"].is_string());
    // The gateway keeps its reported state (`sandstep status`): the workflow is the action's.
    let r = reported(&fleet);
    assert_eq!(r["workflow"]["id"], "hawkbit-7", "{r:#}");
    assert_eq!(r["status"], "completed", "{r:#}");
    // Closed: not run again, however long the agent keeps polling.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fleet.log("hb"), ran);
    let closings = ddi
        .posted("deploymentBase/7/feedback")
        .iter()
        .filter(|b| b["status"]["execution"] == "closed")
        .count();
    assert_eq!(closings, 1);
    drop(agent);
}

#[test]
fn a_failing_step_and_a_forged_manifest_close_their_actions_with_the_reason() {
    let ddi = DdiServer::start(TOKEN);
    let Some(fleet) = gateway("hb-2", &ddi, TOKEN) else {
        return;
    };
    publish(
        &fleet,
        &ddi,
        8,
        vec![stateful("bad", json!({"fail": "install"}), &["f.txt"])],
        false,
    );
    let _agent = fleet.agent();
    let posted = feedback_until(&ddi, "deploymentBase/8/feedback", "closed");
    let last = posted.last().unwrap();
    assert_eq!(last["status"]["result"]["finished"], "failure");
    let details = last["status"]["details"].to_string();
    assert!(details.contains("install failed on purpose"), "{details}");
    // A manifest changed after it was signed never runs.
    publish(
        &fleet,
        &ddi,
        9,
        vec![stateful("forged", json!({}), &["f.txt"])],
        true,
    );
    let posted = feedback_until(&ddi, "deploymentBase/9/feedback", "closed");
    let last = posted.last().unwrap();
    assert_eq!(last["status"]["result"]["finished"], "failure");
    let details = last["status"]["details"].to_string();
    assert!(
        details.contains("the manifest is not the one that was signed"),
        "{details}"
    );
    assert!(fleet.log("forged").is_empty());
}

#[test]
fn a_cancel_stops_the_running_action_and_is_confirmed() {
    let ddi = DdiServer::start(TOKEN);
    let Some(fleet) = gateway("hb-3", &ddi, TOKEN) else {
        return;
    };
    publish(
        &fleet,
        &ddi,
        10,
        vec![stateful("slow", json!({"sleep_ms": 60000}), &["f.txt"])],
        false,
    );
    let _agent = fleet.agent();
    let t = Instant::now();
    while !reported(&fleet)["progress"]["handler"].is_string() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the slow step never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ddi.cancel(11, 10);
    let posted = feedback_until(&ddi, "cancelAction/11/feedback", "closed");
    assert_eq!(
        posted.last().unwrap()["status"]["result"]["finished"],
        "success"
    );
    assert!(ddi.is_closed(10));
    assert!(
        t.elapsed() < Duration::from_secs(50),
        "stopped, not run out"
    );
    assert_eq!(fleet.log("slow").last().map(String::as_str), Some("cancel"));
}

#[test]
fn the_token_goes_to_the_configured_server_only_and_a_wrong_one_is_reported() {
    // Links to another origin: the agent does not follow them (the token would go there).
    let ddi = DdiServer::start(TOKEN);
    let elsewhere = DdiServer::start(TOKEN);
    ddi.foreign_links(&elsewhere.base());
    let Some(fleet) = gateway("hb-4", &ddi, TOKEN) else {
        return;
    };
    publish(
        &fleet,
        &ddi,
        12,
        vec![stateful("x", json!({}), &["f.txt"])],
        false,
    );
    let agent = fleet.agent();
    let t = Instant::now();
    while !reported(&fleet)["lastError"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("another server"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{:#}",
            reported(&fleet)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        elsewhere.requests().is_empty(),
        "{:?}",
        elsewhere.requests()
    );
    drop(agent);
    // A token the server refuses: reported, naming the answer; `doctor` fails on it.
    let ddi = DdiServer::start(TOKEN);
    let Some(fleet) = gateway("hb-5", &ddi, "wrong") else {
        return;
    };
    let _agent = fleet.agent();
    let t = Instant::now();
    while !reported(&fleet)["lastError"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("HTTP 401"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{:#}",
            reported(&fleet)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = sandstep()
        .args(["doctor", "--config"])
        .arg(&fleet.config)
        .arg("--data-dir")
        .arg(&fleet.data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("FAIL  hawkbit") && text.contains("HTTP 401"),
        "{text}"
    );
}

#[test]
fn a_hawkbit_source_without_its_table_or_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let run = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let out = sandstep()
            .args(["agent", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run("[agent]\ndevice-id = \"d\"\nsource = \"hawkbit\"\n");
    assert!(
        !ok && err.contains("[agent] source = \"hawkbit\" needs a [hawkbit] table"),
        "{err}"
    );
    let (ok, err) = run(
        "[agent]\ndevice-id = \"d\"\nsource = \"hawkbit\"\n[hawkbit]\nbase-url = \"http://127.0.0.1:9\"\n",
    );
    assert!(
        !ok && err.contains("give target-token, gateway-token or token-file"),
        "{err}"
    );
}
