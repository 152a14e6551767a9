//! MQTT over TLS against a real mosquitto with a throwaway CA (scripts/test-ca.sh): the server's
//! certificate checked against `ca-file`, and X.509 client certificates (how IoT Hub devices
//! without a key authenticate).

use sandstep_testkit::Broker;
use sandstep_transport::mqtt::{Mqtt, MqttConfig, MqttEvent};
use std::path::Path;
use std::time::Duration;

fn make_ca(dir: &Path) {
    sandstep_testkit::test_ca(dir, None);
    // mosquitto started as root reads its certificates as the `mosquitto` user: the throwaway
    // directory and server key must be readable to it.
    use std::os::unix::fs::PermissionsExt;
    for (p, mode) in [(dir.to_path_buf(), 0o755), (dir.join("server.key"), 0o644)] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// The first event that says whether the connection came up.
async fn outcome(cfg: &MqttConfig) -> MqttEvent {
    let mut c = Mqtt::connect(cfg, &format!("tls-{:08x}", fastrand::u32(..))).unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(15), c.recv()).await {
            Ok(Some(ev @ (MqttEvent::Connected | MqttEvent::Disconnected(_)))) => return ev,
            Ok(Some(_)) => {}
            other => panic!("no answer: {other:?}"),
        }
    }
}

fn tls_broker(certs: &Path, require_client_cert: bool) -> Option<Broker> {
    Broker::start_with(&format!(
        "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nrequire_certificate {1}\nallow_anonymous true\n",
        certs.display(),
        require_client_cert
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtts_checks_the_brokers_certificate_against_the_configured_ca() {
    let certs = tempfile::tempdir().unwrap();
    make_ca(certs.path());
    let Some(broker) = tls_broker(certs.path(), false) else {
        return;
    };
    let cfg = |ca: Option<&Path>| MqttConfig {
        url: format!("mqtts://127.0.0.1:{}", broker.port),
        ca_file: ca.map(Path::to_path_buf),
        ..Default::default()
    };
    let ca = certs.path().join("ca.pem");
    assert_eq!(outcome(&cfg(Some(&ca))).await, MqttEvent::Connected);
    match outcome(&cfg(None)).await {
        MqttEvent::Disconnected(why) => assert!(why.contains("UnknownIssuer"), "{why}"),
        other => panic!("a certificate from an unknown CA was accepted: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_signed_by_the_brokers_ca_is_the_devices_credential() {
    let certs = tempfile::tempdir().unwrap();
    make_ca(certs.path());
    let Some(broker) = tls_broker(certs.path(), true) else {
        return;
    };
    let c = certs.path();
    let cfg = |client: bool| MqttConfig {
        url: format!("mqtts://127.0.0.1:{}", broker.port),
        ca_file: Some(c.join("ca.pem")),
        client_cert: client.then(|| c.join("client.pem")),
        client_key: client.then(|| c.join("client.key")),
        ..Default::default()
    };
    assert_eq!(outcome(&cfg(true)).await, MqttEvent::Connected);
    assert!(
        matches!(outcome(&cfg(false)).await, MqttEvent::Disconnected(_)),
        "no client certificate, no connection"
    );
}
