//! The agent as a drop-in for ADU's agent (`[agent] source = "iothub"`), against the test IoT
//! Hub of `test_hub.rs` (IoT Hub's documented MQTT device protocol played on a real mosquitto
//! with TLS). What ADU's agent reports is cited beside each check (Azure/iot-hub-device-update).

use crate::fleet::{sandstep, Fleet};
use crate::test_hub::TestHub;
use crate::workflow::stateful;
use sandstep_testkit::Proc;
use sandstep_transport::mqtt::MqttEvent;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const DEVICE: &str = "gw-hub";

/// A gateway whose agent talks to a test IoT Hub, configured through ADU's own du-config.json.
pub struct HubGateway {
    pub fleet: Fleet,
    pub hub: TestHub,
}

/// The config of an agent talking to `hub`, with `iothub_lines` in its `[iothub]` table (and
/// after it, any tables those lines open).
pub fn hub_config(hub: &TestHub, iothub_lines: &str) -> String {
    format!(
        "[agent]\nsource = \"iothub\"\nprogress-interval-ms = 100\nshutdown-grace-secs = 1\nreboot-command = [\"/bin/true\"]\n\
         [mqtt]\nreconnect-min-ms = 100\nreconnect-max-ms = 1000\n\
         [iothub]\nport = {}\nca-file = \"{}\"\nresponse-timeout-ms = 3000\n{iothub_lines}",
        hub.port,
        hub.ca().display()
    )
}

impl HubGateway {
    fn new(iothub_extra: &str) -> Option<HubGateway> {
        let fleet = Fleet::new(DEVICE)?;
        let hub = TestHub::start(fleet.broker.port, DEVICE);
        // ADU's du-config.json, in the shape of ADU's src/extensions/step_handlers/
        // script_handler/tests/testdata/script_handler_test_config/du-config.json.
        let du_config = fleet.dir.path().join("du-config.json");
        let doc = json!({
            "schemaVersion": "1.0",
            "aduShellTrustedUsers": ["adu"],
            "manufacturer": "contoso",
            "model": "gw",
            "agents": [{
                "name": "main", "runas": "adu",
                "connectionSource": {"connectionType": "string",
                                     "connectionData": hub.connection_string()},
                "manufacturer": "contoso", "model": "gw"
            }]
        });
        std::fs::write(&du_config, doc.to_string()).unwrap();
        let lines = format!(
            "connection-string-file = \"{}\"\n{iothub_extra}",
            du_config.display()
        );
        std::fs::write(&fleet.config, hub_config(&hub, &lines)).unwrap();
        Some(HubGateway { fleet, hub })
    }

    /// A deployment document for `manifest`, signed by the fleet's keys (`sandstep manifest
    /// sign --out`), as the Device Update service puts it in `deviceUpdate.service`.
    pub fn signed(&self, manifest: &Path, workflow: &str) -> Value {
        let out = self
            .fleet
            .dir
            .path()
            .join(format!("{workflow}.deployment.json"));
        let status = sandstep()
            .args(["manifest", "sign", "--key"])
            .arg(&self.fleet.signing)
            .arg("--root-key")
            .arg(&self.fleet.root)
            .args(["--workflow-id", workflow, "--files-url"])
            .arg(self.fleet.server.base())
            .arg("--out")
            .arg(&out)
            .arg(manifest)
            .status()
            .unwrap();
        assert!(status.success());
        serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap()
    }

    /// `sandstep doctor`'s output.
    pub fn doctor(&self) -> String {
        let out = sandstep()
            .args(["doctor", "--broker-timeout", "10", "--config"])
            .arg(&self.fleet.config)
            .arg("--data-dir")
            .arg(&self.fleet.data)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the agent and waits for its startup report.
    pub fn start_agent(&self) -> Proc {
        let agent = self.fleet.agent();
        self.hub.wait_agent("the startup report", |a| {
            a.get("deviceProperties").is_some()
        });
        agent
    }

    /// Deploys `steps` (a manifest named `name`) as workflow `workflow`.
    pub fn deploy(&self, name: &str, steps: Vec<Value>, workflow: &str) {
        let m = self.fleet.manifest(name, steps);
        self.hub.deploy(&self.signed(&m, workflow));
    }

    /// Deploys one step as `workflow` and waits for its success.
    pub fn deploy_one_and_wait(&self, name: &str, workflow: &'static str) -> Value {
        self.deploy(name, vec![stateful(name, json!({}), &["f.txt"])], workflow);
        self.hub.wait_agent(workflow, |a| {
            a["workflow"]["id"] == workflow && a["state"] == 0
        })
    }

    /// Waits until the probe step `name` has logged `action`.
    fn wait_logged(&self, name: &str, action: &str) {
        let t = std::time::Instant::now();
        while !self.fleet.log(name).iter().any(|l| l == action) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{name} never logged {action}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `workflow` is reported in progress.
    fn wait_in_progress(&self, workflow: &'static str) {
        self.hub.wait_agent("in progress", |a| {
            a["workflow"]["id"] == workflow && a["state"] == 6
        });
    }

    /// The raw reported patches carrying `deviceUpdate.<property>`.
    fn patches(&self, property: &str) -> Vec<Value> {
        let t = self.hub.twin.lock().unwrap();
        t.patches
            .iter()
            .filter_map(|p| p.pointer(&format!("/deviceUpdate/{property}")).cloned())
            .collect()
    }
}

fn adu_dir() -> std::path::PathBuf {
    sandstep_testkit::repo_root().join("tests/adu")
}

#[test]
fn a_real_adu_deployment_over_iot_hub_is_reported_as_adus_agent_reports_it() {
    let Some(g) = HubGateway::new("") else {
        return;
    };
    // The gateway trusts ADU's production roots (tests/adu/rootkeys, from root_key_list.c).
    let roots = g.fleet.data.join("trust/roots");
    std::fs::copy(
        adu_dir().join("rootkeys/adu-production.rootkeys.json"),
        roots.join("adu-production.rootkeys.json"),
    )
    .unwrap();
    // The hub throttles the first reported patch: it is sent again, nothing is lost.
    g.hub.throttle.store(1, std::sync::atomic::Ordering::SeqCst);
    let _agent = g.fleet.agent();

    // Startup (adu_core_interface.c `ReportStartupMsg`): deviceProperties with the contract
    // model, compatPropertyNames; and the deviceInformation component.
    g.hub.wait_reported("the startup reports", |r| {
        r.pointer("/deviceUpdate/agent/deviceProperties").is_some()
            && r.get("deviceInformation").is_some()
    });
    let startup = g.patches("agent");
    let props = startup
        .iter()
        .find(|p| p.get("deviceProperties").is_some())
        .unwrap();
    let aduver = props["deviceProperties"]["aduVer"].as_str().unwrap();
    assert!(aduver.starts_with("sandstep;agent/"), "{props}");
    assert_eq!(
        props,
        &json!({"deviceProperties": {"manufacturer": "contoso", "model": "gw",
                 "interfaceId": null,
                 "contractModelId": "dtmi:azure:iot:deviceUpdateContractModel;3",
                 "aduVer": aduver},
                "compatPropertyNames": "manufacturer,model"})
    );
    let info = g.hub.wait_reported("deviceInformation", |r| {
        r.get("deviceInformation").is_some()
    });
    assert_eq!(info["deviceInformation"]["manufacturer"], "contoso");
    assert_eq!(
        info["deviceInformation"]["processorArchitecture"],
        std::env::consts::ARCH
    );
    {
        let a = g.hub.admissions.lock().unwrap();
        assert!(
            a[0].user_name.ends_with(
                "/?api-version=2021-04-12&model-id=dtmi%3Aazure%3Aiot%3AdeviceUpdateModel%3B3"
            ),
            "{:?}",
            a[0]
        );
    }

    // ADU's own deployment document (tests/adu/desired/updateActionForActionBundle.json). Its
    // manifest was edited after signing; ADU's agent refuses it in `workflow_init` with
    // ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_MANIFEST_VALIDATION_FAILED (0x80300001).
    let doc: Value = serde_json::from_slice(
        &std::fs::read(adu_dir().join("desired/updateActionForActionBundle.json")).unwrap(),
    )
    .unwrap();
    let id = doc["workflow"]["id"].as_str().unwrap().to_owned();
    g.hub.deploy(&doc);
    let agent = g
        .hub
        .wait_agent("the deployment's end", |a| a["state"] == 255);
    // What ADU's agent sends, in order (adu_core_interface.c): DeploymentInProgress from
    // `ReportPreDeploymentProcessingState` (result 400, stepResults cleared), then Failed
    // with the result (`ADUC_Workflow_HandlePropertyUpdate`).
    let reports: Vec<Value> = g
        .patches("agent")
        .into_iter()
        .filter(|p| p["workflow"]["id"] == id.as_str())
        .collect();
    assert_eq!(
        reports[0],
        json!({"state": 6, "workflow": {"action": 3, "id": id},
               "lastInstallResult": {"resultCode": 400, "extendedResultCodes": "00000000",
                                     "resultDetails": null, "stepResults": null}}),
        "{reports:#?}"
    );
    let last = reports.last().unwrap();
    assert_eq!(last["state"], 255, "{last}");
    assert_eq!(last["workflow"], json!({"action": 3, "id": id}));
    assert_eq!(last["lastInstallResult"]["resultCode"], 0, "{last}");
    assert_eq!(
        last["lastInstallResult"]["extendedResultCodes"], "80300001",
        "{last}"
    );
    assert!(last.get("installedUpdateId").is_none(), "{last}");
    // The twin the service reads, merged from those reports.
    assert_eq!(agent["workflow"], json!({"action": 3, "id": id}));
    assert_eq!(
        agent["lastInstallResult"]["extendedResultCodes"],
        "80300001"
    );

    // The acknowledgement (`OrchestratorUpdateCallback`): the desired value with its signature
    // and file URLs nulled, ac 200, ad "", av the desired version.
    let acks = g.patches("service");
    assert_eq!(acks.len(), 1, "{acks:#?}");
    let mut value = doc.clone();
    value["updateManifestSignature"] = Value::Null;
    value["fileUrls"] = Value::Null;
    assert_eq!(
        acks[0],
        json!({"value": value, "ac": 200, "ad": "", "av": 1})
    );
}

#[test]
fn deployments_restarts_retries_replacements_and_cancels_over_the_twin_behave_as_adus_agent() {
    let Some(g) = HubGateway::new("") else {
        return;
    };
    let mut agent = g.start_agent();
    let m = g.fleet.manifest(
        "hub-ok",
        vec![
            stateful("hub-a", json!({}), &["f.txt"]),
            stateful("hub-b", json!({}), &["f.txt"]),
        ],
    );
    let doc = g.signed(&m, "wf-1");
    g.hub.deploy(&doc);
    let done = |w: &'static str| move |a: &Value| a["workflow"]["id"] == w && a["state"] == 0;
    let a = g.hub.wait_agent("wf-1's success", done("wf-1"));
    // Success: Idle, the installed update id (a JSON string, as ADU's
    // `workflow_get_expected_update_id_string`), each step's result under `step_<i>`.
    assert_eq!(
        a["installedUpdateId"],
        "{\"provider\":\"test\",\"name\":\"hub-ok\",\"version\":\"1.0\"}"
    );
    let steps = a["lastInstallResult"]["stepResults"].as_object().unwrap();
    assert_eq!(
        steps.keys().collect::<Vec<_>>(),
        ["step_0", "step_1"],
        "{a}"
    );
    assert!(
        a["lastInstallResult"]["resultCode"].as_i64().unwrap() > 0,
        "{a}"
    );
    let installs = |name: &str| g.fleet.log(name).iter().filter(|l| *l == "install").count();
    assert_eq!(installs("hub-a"), 1);

    // A restart: the agent asks for the whole twin again, which still holds wf-1; it is not
    // run again, nor acknowledged again (agent_workflow.c: "Ignore duplicate deployment").
    let gets = g.hub.twin.lock().unwrap().gets;
    agent.kill();
    let mut agent = g.fleet.agent();
    g.hub.wait_reported("the twin asked for again", |_| {
        g.hub.twin.lock().unwrap().gets > gets
    });
    std::thread::sleep(Duration::from_secs(2));
    let starts =
        |agent: &sandstep_testkit::Proc| agent.output().matches("deployment starts").count();
    assert_eq!(starts(&agent), 0, "wf-1 ran again after a restart");
    assert_eq!(installs("hub-a"), 1);
    assert_eq!(
        g.patches("service").len(),
        2,
        "one acknowledgement per start"
    );

    // A retry: the same workflow with a new retryTimestamp runs again
    // (`AgentOrchestration_IsRetryApplicable`); its steps, installed already, are skipped
    // after is-installed, as ADU's steps handler skips them.
    let mut retry = doc.clone();
    retry["workflow"]["retryTimestamp"] = json!("2026-12-01T10:00:00Z");
    g.hub.deploy(&retry);
    g.hub.wait_agent("the retry", |a| {
        a["workflow"]["retryTimestamp"] == "2026-12-01T10:00:00Z" && a["state"] == 0
    });
    assert_eq!(starts(&agent), 1, "the retry ran");
    assert_eq!(installs("hub-a"), 1);

    // A new deployment while one runs replaces it: the running step is cancelled, and the
    // replaced deployment's end is not reported (ADU goes on to the replacement).
    let slow = |name: &str| vec![stateful(name, json!({"sleep_ms": 60000}), &["f.txt"])];
    g.deploy("hub-slow", slow("hub-slow"), "wf-slow");
    g.wait_in_progress("wf-slow");
    g.wait_logged("hub-slow", "install");
    g.deploy_one_and_wait("hub-next", "wf-next");
    assert_eq!(
        g.fleet.log("hub-slow").last().map(String::as_str),
        Some("cancel")
    );
    assert!(
        !g.patches("agent")
            .iter()
            .any(|p| p["workflow"]["id"] == "wf-slow" && p["state"] != 6),
        "the replaced deployment's end was reported: {:#?}",
        g.patches("agent")
    );

    // A cancel while a step runs: back to Idle, the step cancelled.
    g.deploy("hub-slow2", slow("hub-slow2"), "wf-slow2");
    g.wait_in_progress("wf-slow2");
    g.wait_logged("hub-slow2", "install");
    g.hub.set_desired(json!({"deviceUpdate": {"service": {
        "workflow": {"action": 255, "id": "wf-slow2"},
        "updateManifest": null, "updateManifestSignature": null, "fileUrls": null}}}));
    let a = g.hub.wait_agent("the cancel", |a| {
        a["workflow"]["action"] == 255 && a["state"] == 0
    });
    assert_eq!(a["workflow"]["id"], "wf-slow2");
    // goal-state-support.md: "report to the cloud a result code of ADUC_Result_Failure_Cancelled
    // (-1) and transition to Idle state".
    assert_eq!(a["lastInstallResult"]["resultCode"], -1, "{a}");
    assert_eq!(
        g.fleet.log("hub-slow2").last().map(String::as_str),
        Some("cancel")
    );
    agent.kill();
}

#[test]
fn the_hub_refuses_expired_or_forged_tokens_and_the_agent_renews_its_own() {
    let Some(g) = HubGateway::new("sas-lifetime-secs = 10\n") else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let resource = format!("{}/devices/{DEVICE}", g.hub.host);
    let expired = sandstep::iothub::auth::sas_token(&resource, &g.hub.key, now - 5).unwrap();
    assert!(
        matches!(g.hub.try_connect(&expired), MqttEvent::Disconnected(_)),
        "an expired token was accepted"
    );
    let forged = sandstep::iothub::auth::sas_token(&resource, "Zm9yZ2Vk", now + 600).unwrap();
    assert!(matches!(
        g.hub.try_connect(&forged),
        MqttEvent::Disconnected(_)
    ));
    let valid = sandstep::iothub::auth::sas_token(&resource, &g.hub.key, now + 600).unwrap();
    assert_eq!(g.hub.try_connect(&valid), MqttEvent::Connected);
    let refusals: Vec<String> = g
        .hub
        .admissions
        .lock()
        .unwrap()
        .iter()
        .filter_map(|a| a.refused.clone())
        .collect();
    assert!(refusals[0].starts_with("token expired"), "{refusals:?}");
    assert!(g
        .hub
        .admissions
        .lock()
        .unwrap()
        .iter()
        .all(|a| a.client_id == DEVICE));
    assert_eq!(refusals[1], "signature does not match the device's key");

    // The agent's tokens live 10 s; it reconnects with a new one at 8 s, and each is accepted.
    let before = g.hub.accepted_connections();
    let _agent = g.start_agent();
    let t = std::time::Instant::now();
    while g.hub.accepted_connections() < before + 3 {
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "the agent did not renew its token: {:?}",
            g.hub.admissions.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        g.hub
            .admissions
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.refused.is_some())
            .count(),
        2,
        "every token the agent made was accepted"
    );
    // And it still takes deployments.
    g.deploy_one_and_wait("hub-r", "wf-r");
}

/// `sandstep doctor` with `source = "iothub"`: the identity, the hub reachable over TLS, the
/// credentials and the model id accepted; a wrong key fails, saying the hub refused it.
#[test]
fn doctor_checks_the_hub_connection_and_the_devices_credentials() {
    let Some(g) = HubGateway::new("") else {
        return;
    };
    let out = g.doctor();
    assert!(
        out.contains(&format!(
            "ok    iothub identity: device {DEVICE} on localhost (shared access key, tokens valid 3600 s)"
        )),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("ok    iothub: localhost:")
            && l.ends_with("accepted the device's credentials and the model id dtmi:azure:iot:deviceUpdateModel;3")),
        "{out}"
    );
    // Another key than the hub's.
    let du_config = g.fleet.dir.path().join("du-config.json");
    let text = std::fs::read_to_string(&du_config)
        .unwrap()
        .replace(&g.hub.key, "d3Jvbmcga2V5");
    std::fs::write(&du_config, text).unwrap();
    let out = g.doctor();
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL  iothub: localhost:")
                && l.contains("refused the connection")),
        "{out}"
    );
    assert_eq!(
        g.hub
            .admissions
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .refused
            .as_deref(),
        Some("signature does not match the device's key")
    );
}

/// A deployment that ends while the network is down has its result delivered once it is back
/// (the outbox); one made while the device is away arrives with the whole twin after the
/// reconnection; a step that asks for a reboot has the agent reboot, and the next start
/// resumes it and reports the end, as ADU's agent does after its reboot (nothing is reported
/// while the reboot is pending: ApplyStarted is not a state ADU sends).
#[test]
fn results_survive_a_network_cut_and_a_reboot_is_resumed_and_reported() {
    let Some(g) = HubGateway::new("") else {
        return;
    };
    let mut agent = g.start_agent();
    g.deploy(
        "hub-net",
        vec![stateful("hub-net", json!({"sleep_ms": 3000}), &["f.txt"])],
        "wf-net",
    );
    g.wait_in_progress("wf-net");
    g.hub.cut(true);
    g.wait_logged("hub-net", "apply");
    std::thread::sleep(Duration::from_secs(1));
    let before = g.patches("agent").len();
    g.hub.cut(false);
    let a = g.hub.wait_agent("wf-net's result after the cut", |a| {
        a["workflow"]["id"] == "wf-net" && a["state"] == 0
    });
    assert!(g.patches("agent").len() > before);
    assert_eq!(
        a["lastInstallResult"]["stepResults"]["step_0"]["resultCode"], 700,
        "{a}"
    );

    // A deployment the service makes while the device is away: its desired patch never
    // reaches the device, the whole twin asked for after the reconnection brings it.
    let gets = g.hub.twin.lock().unwrap().gets;
    g.hub.cut(true);
    std::thread::sleep(Duration::from_millis(500));
    g.deploy(
        "hub-away",
        vec![stateful("hub-away", json!({}), &["f.txt"])],
        "wf-away",
    );
    std::thread::sleep(Duration::from_millis(500));
    g.hub.cut(false);
    g.hub.wait_agent("wf-away", |a| {
        a["workflow"]["id"] == "wf-away" && a["state"] == 0
    });
    assert!(g.hub.twin.lock().unwrap().gets > gets);

    // A step asking for an immediate reboot (705): the agent runs reboot-command and exits.
    g.deploy(
        "hub-reboot",
        vec![
            stateful("hub-fw", json!({"apply_code": 705}), &["f.txt"]),
            stateful("hub-after", json!({}), &["f.txt"]),
        ],
        "wf-boot",
    );
    let t = std::time::Instant::now();
    while agent.is_running() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the agent did not exit to reboot"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let states: Vec<Value> = g
        .patches("agent")
        .iter()
        .filter(|p| p["workflow"]["id"] == "wf-boot")
        .map(|p| p["state"].clone())
        .collect();
    assert_eq!(
        states,
        [json!(6)],
        "only DeploymentInProgress before the reboot"
    );
    // "After the reboot": the agent starts again and resumes.
    let _agent = g.fleet.agent();
    let a = g.hub.wait_agent("wf-boot's end after the reboot", |a| {
        a["workflow"]["id"] == "wf-boot" && a["state"] == 0
    });
    assert_eq!(
        a["lastInstallResult"]["stepResults"]["step_0"]["resultDetails"],
        "confirmed installed after the requested reboot or restart"
    );
    assert_eq!(
        a["installedUpdateId"],
        "{\"provider\":\"test\",\"name\":\"hub-reboot\",\"version\":\"1.0\"}"
    );
}

/// A device authenticated by an X.509 certificate (`x509=true` in its connection string, with
/// `client-cert` and `client-key`): no password, the certificate signed by the CA the hub
/// trusts with the device id as its subject; doctor says so, and deployments run.
#[test]
fn a_device_with_an_x509_certificate_connects_without_a_key() {
    let Some(g) = HubGateway::new("") else {
        return;
    };
    let du_config = g.fleet.dir.path().join("du-config.json");
    let text = std::fs::read_to_string(&du_config)
        .unwrap()
        .replace(&format!("SharedAccessKey={}", g.hub.key), "x509=true");
    std::fs::write(&du_config, text).unwrap();
    let certs = g.hub.certs.path();
    let mut config = std::fs::read_to_string(&g.fleet.config).unwrap();
    config.push_str(&format!(
        "client-cert = \"{}\"\nclient-key = \"{}\"\n",
        certs.join("client.pem").display(),
        certs.join("client.key").display()
    ));
    std::fs::write(&g.fleet.config, config).unwrap();
    let out = g.doctor();
    assert!(
        out.contains(&format!(
            "ok    iothub identity: device {DEVICE} on localhost (X.509 certificate)"
        )) && out.contains("accepted the device's credentials"),
        "{out}"
    );
    let _agent = g.start_agent();
    g.deploy_one_and_wait("hub-x", "wf-x509");
    let a = g.hub.admissions.lock().unwrap();
    assert!(a.iter().all(|a| a.refused.is_none()), "{a:?}");
}
