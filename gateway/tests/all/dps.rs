//! Provisioning through the Device Provisioning Service (`[iothub.dps]`), against the test DPS of
//! `test_dps.rs` beside the test hub: the device registers (symmetric key, group enrollment's
//! derived key, X.509), connects to the hub DPS assigned, takes deployments there, keeps the
//! assignment across restarts, and registers again when the hub refuses it.

use crate::fleet::{sandstep, Fleet};
use crate::iothub::{hub_config, HubGateway};
use crate::support::wait_until;
use crate::test_dps::{derived, Enrollment, Outcome, TestDps};
use crate::test_hub::TestHub;
use serde_json::{json, Value};
use std::time::Duration;

const REGISTRATION: &str = "gw-dps";

/// A gateway provisioned through a test DPS, and the hub DPS assigns it to.
struct DpsGateway {
    g: HubGateway,
    dps: TestDps,
}

impl DpsGateway {
    /// A hub where the device has `key` (default: a random one), and a DPS with the enrollment
    /// `enrollment` makes of the hub, assigning the device `REGISTRATION` there after one
    /// `assigning` poll.
    fn new(enrollment: fn(&TestHub) -> Enrollment, key: Option<&str>) -> Option<DpsGateway> {
        let fleet = Fleet::new(REGISTRATION)?;
        let hub = match key {
            Some(k) => TestHub::start_with_key(fleet.broker.port, REGISTRATION, k),
            None => TestHub::start(fleet.broker.port, REGISTRATION),
        };
        let outcome = Outcome {
            hub: hub.host.to_owned(),
            device_id: REGISTRATION.to_owned(),
            polls: 1,
            fail: None,
        };
        let dps = TestDps::start(
            fleet.broker.port,
            hub.certs.path(),
            REGISTRATION,
            enrollment(&hub),
            outcome,
        );
        Some(DpsGateway {
            g: HubGateway { fleet, hub },
            dps,
        })
    }

    /// Writes the config: `iothub_lines` in `[iothub]`, then `[iothub.dps]` with `dps_lines`.
    fn configure(&self, iothub_lines: &str, dps_lines: &str) {
        let text = format!(
            "{}{}{dps_lines}",
            hub_config(&self.g.hub, iothub_lines),
            self.dps.table(REGISTRATION)
        );
        std::fs::write(&self.g.fleet.config, text).unwrap();
    }

    fn assignment(&self) -> Option<Value> {
        let path = self.g.fleet.data.join("dps-assignment.json");
        let bytes = std::fs::read(path).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    /// Runs the agent, which must stop at once with an error: what it said.
    fn agent_refusing(&self) -> String {
        let out = sandstep()
            .args(["agent", "--config"])
            .arg(&self.g.fleet.config)
            .arg("--data-dir")
            .arg(&self.g.fleet.data)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn registrations(&self) -> usize {
        self.dps.registrations.lock().unwrap().len()
    }
}

/// An individual enrollment whose key is the device's key in the hub (DPS creates the device
/// there with it).
fn individual(hub: &TestHub) -> Enrollment {
    Enrollment::Individual(hub.key.clone())
}

/// The group key of Microsoft's "Symmetric key attestation" example.
const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

/// An individual enrollment's key: doctor checks DPS takes the credentials without
/// registering; the agent registers (through a throttled answer and an `assigning` poll), keeps
/// the assignment, connects to the assigned hub with the same key and runs a deployment; a
/// restart connects without registering again.
#[test]
fn a_device_registers_with_dps_then_takes_a_deployment_over_the_assigned_hub() {
    let Some(d) = DpsGateway::new(individual, None) else {
        return;
    };
    d.configure("", &format!("symmetric-key = \"{}\"\n", d.g.hub.key));
    let out = d.g.doctor();
    assert!(
        out.contains(&format!(
            "ok    dps registration: {REGISTRATION} in ID scope 0ne0000SAND (symmetric key)"
        )) && out.contains("accepted the registration's credentials")
            && out.contains("ok    dps assignment: none yet"),
        "{out}"
    );
    assert_eq!(d.registrations(), 0, "doctor does not register");

    d.dps.throttle.store(1, std::sync::atomic::Ordering::SeqCst);
    let mut agent = d.g.start_agent();
    assert_eq!(
        d.dps.registrations.lock().unwrap().as_slice(),
        [json!({"registrationId": REGISTRATION,
                "payload": {"modelId": "dtmi:azure:iot:deviceUpdateModel;3"}})]
    );
    assert!(d.dps.polls.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    let admitted: Vec<_> = d.dps.admissions.lock().unwrap().clone();
    let a = admitted.iter().find(|a| a.refused.is_none()).unwrap();
    assert_eq!(
        a.user_name,
        format!("0ne0000SAND/registrations/{REGISTRATION}/api-version=2019-03-31")
    );
    assert!(
        a.password
            .starts_with("SharedAccessSignature sr=0ne0000SAND%2Fregistrations%2Fgw-dps&sig=")
            && a.password.ends_with("&skn=registration"),
        "{}",
        a.password
    );
    let kept = d.assignment().expect("the assignment is kept");
    assert_eq!(
        (&kept["assignedHub"], &kept["deviceId"], &kept["substatus"]),
        (
            &json!("localhost"),
            &json!(REGISTRATION),
            &json!("initialAssignment")
        )
    );
    d.g.deploy_one_and_wait("dps-1", "wf-dps-1");

    agent.kill();
    let _agent = d.g.fleet.agent();
    d.g.deploy_one_and_wait("dps-2", "wf-dps-2");
    assert_eq!(d.registrations(), 1, "a restart uses the kept assignment");
    let out = d.g.doctor();
    assert!(
        out.contains(&format!(
            "ok    dps assignment: device {REGISTRATION} on localhost"
        )) && out.contains("ok    iothub: localhost:"),
        "{out}"
    );
}

/// A group enrollment: the device holds only its derived key (`sandstep key dps-device-key`,
/// checked against an independent computation); DPS and the hub take it. The group key itself
/// is refused, and doctor says so.
#[test]
fn a_group_enrollments_device_registers_with_its_derived_key() {
    let group = GROUP_KEY;
    let device_key = derived(group, REGISTRATION);
    let Some(d) = DpsGateway::new(|_| Enrollment::Group(GROUP_KEY.into()), Some(&device_key))
    else {
        return;
    };
    let group_file = d.g.fleet.dir.path().join("group.key");
    std::fs::write(&group_file, format!("{group}\n")).unwrap();
    let out = sandstep()
        .args(["key", "dps-device-key", "--group-key-file"])
        .arg(&group_file)
        .args(["--registration-id", REGISTRATION])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), device_key);

    let key_file = d.g.fleet.dir.path().join("device.key");
    std::fs::write(&key_file, &device_key).unwrap();
    d.configure(
        "",
        &format!("symmetric-key-file = \"{}\"\n", key_file.display()),
    );
    let _agent = d.g.start_agent();
    d.g.deploy_one_and_wait("dps-g", "wf-dps-g");

    d.configure("", &format!("symmetric-key = \"{group}\"\n"));
    let out = d.g.doctor();
    assert!(
        out.lines().any(|l| l.starts_with("FAIL  dps: localhost:")
            && l.contains("refused the connection")),
        "{out}"
    );
    assert!(out.contains("sandstep key dps-device-key"), "{out}");
    let last = d.dps.admissions.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        last.refused.as_deref(),
        Some("signature does not match the device's key")
    );
}

/// X.509 attestation: no password at DPS nor at the hub, the test CA's certificate naming the
/// registration; deployments run.
#[test]
fn a_device_with_a_certificate_registers_without_a_password() {
    let Some(d) = DpsGateway::new(|_| Enrollment::X509, None) else {
        return;
    };
    let certs = d.g.hub.certs.path();
    d.configure(
        &format!(
            "client-cert = \"{}\"\nclient-key = \"{}\"\n",
            certs.join("client.pem").display(),
            certs.join("client.key").display()
        ),
        "",
    );
    let out = d.g.doctor();
    assert!(
        out.contains("(X.509 certificate)")
            && out.contains("accepted the registration's credentials"),
        "{out}"
    );
    let _agent = d.g.start_agent();
    d.g.deploy_one_and_wait("dps-x", "wf-dps-x");
    let a = d.dps.admissions.lock().unwrap();
    assert!(
        a.iter()
            .all(|a| a.refused.is_none() && a.password.is_empty()),
        "{a:?}"
    );
}

/// The hub stops knowing the device (DPS moved it: its device id changes): the hub's refusals
/// make the agent register again, and it goes on under the new assignment, kept for the next
/// start. A registration DPS fails is logged with DPS's reason and tried again.
#[test]
fn a_device_the_hub_refuses_registers_again_and_follows_the_new_assignment() {
    let Some(d) = DpsGateway::new(individual, None) else {
        return;
    };
    d.dps.outcome.lock().unwrap().fail = Some((400209, "Custom allocation failed".into()));
    d.configure("", &format!("symmetric-key = \"{}\"\n", d.g.hub.key));
    let agent = d.g.fleet.agent();
    wait_until("DPS's failure is logged", || {
        agent.output().contains(
            "DPS ended the registration as failed: Custom allocation failed (error 400209)",
        )
    });
    assert!(d.assignment().is_none(), "nothing is kept from a failure");
    d.dps.outcome.lock().unwrap().fail = None;
    d.g.hub.wait_agent("the startup report", |a| {
        a.get("deviceProperties").is_some()
    });
    d.g.deploy_one_and_wait("dps-a", "wf-dps-a");
    let before = d.registrations();

    let moved = "gw-dps-moved";
    d.dps.outcome.lock().unwrap().device_id = moved.into();
    d.g.hub.rename_device(moved);
    d.g.hub.cut(true);
    std::thread::sleep(Duration::from_millis(300));
    d.g.hub.cut(false);
    wait_until("a new registration", || d.registrations() > before);
    wait_until("the new assignment is kept", || {
        d.assignment().is_some_and(|a| a["deviceId"] == moved)
    });
    d.g.deploy_one_and_wait("dps-b", "wf-dps-b");
    let a = d.g.hub.admissions.lock().unwrap();
    assert!(
        a.iter()
            .any(|a| a.client_id == REGISTRATION && a.refused.is_some()),
        "the old id was refused: {a:?}"
    );
    assert!(a
        .iter()
        .any(|a| a.client_id == moved && a.refused.is_none()));
}

/// A `[iothub.dps]` table that cannot work stops the agent at start, naming the field; nothing
/// is registered and nothing kept.
#[test]
fn a_dps_table_that_cannot_work_stops_the_agent_at_start_naming_the_field() {
    let Some(d) = DpsGateway::new(individual, None) else {
        return;
    };
    let key = format!("symmetric-key = \"{}\"\n", d.g.hub.key);
    for (iothub, dps, field) in [
        (
            "",
            "symmetric-key = \"not base64!\"\n".to_owned(),
            "symmetric-key: not base64",
        ),
        (
            "connection-string = \"HostName=h;DeviceId=d;x509=true\"\n",
            key.clone(),
            "not both",
        ),
        ("", String::new(), "give symmetric-key"),
    ] {
        d.configure(iothub, &dps);
        let err = d.agent_refusing();
        assert!(err.contains(field), "{field}: {err}");
    }
    let text = std::fs::read_to_string(&d.g.fleet.config).unwrap().replace(
        &format!("registration-id = \"{REGISTRATION}\""),
        "registration-id = \"gw/../x\"",
    );
    std::fs::write(&d.g.fleet.config, text).unwrap();
    let err = d.agent_refusing();
    assert!(
        err.contains("[iothub.dps] registration-id `gw/../x`"),
        "{err}"
    );
    assert_eq!(d.registrations(), 0);
    assert!(d.assignment().is_none());
}
