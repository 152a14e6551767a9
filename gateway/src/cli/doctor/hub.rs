//! `doctor`'s checks with `source = "iothub"`: where the identity comes from (a connection
//! string, or DPS and the assignment it made), DPS accepting the registration's credentials
//! (without registering), and the hub accepting the device's and ADU's model id.

use super::Report;
use sandstep::config::Config;
use sandstep::datadir::DataDir;
use sandstep::iothub::config::{Credentials, IotHubConfig};
use sandstep::iothub::dps::{Attestation, DpsSetup};
use sandstep::iothub::{auth::ADU_MODEL_ID, provision, session};
use sandstep_transport::mqtt::{probe, ProbeError};
use std::time::Duration;

/// The identity, DPS (with `[iothub.dps]`) and the hub.
pub(super) async fn check(r: &mut Report, config: &Config, data: &DataDir, timeout: u64) {
    let hub = config.iothub.clone().unwrap_or_default();
    let id = match hub.credentials() {
        Err(e) => {
            return r.fail(
                "iothub identity",
                e,
                "set [iothub] connection-string, or connection-string-file (ADU's du-config.json works), or an [iothub.dps] table",
            )
        }
        Ok(Credentials::Connection(id)) => id,
        Ok(Credentials::Dps(setup)) => {
            check_dps(r, &hub, &setup, timeout).await;
            let Some(a) = provision::load(data.root(), &setup) else {
                return r.ok(
                    "dps assignment",
                    "none yet: the agent registers at its first start, then connects to the hub DPS assigns",
                );
            };
            r.ok(
                "dps assignment",
                format!(
                    "device {} on {} ({} in the data dir)",
                    a.device_id,
                    a.assigned_hub,
                    provision::ASSIGNMENT_FILE
                ),
            );
            hub.provisioned(&a, &setup)
        }
    };
    let c = &id.connection;
    let how = match c.shared_access_key {
        Some(_) => format!(
            "shared access key, tokens valid {} s",
            hub.sas_lifetime_secs
        ),
        None => "X.509 certificate".to_owned(),
    };
    r.ok(
        "iothub identity",
        format!("device {} on {} ({how})", c.client_id(), c.host_name),
    );
    let now = sandstep_transport::clock::now_ms() / 1000;
    let (mqtt, _) = match session::mqtt_config(&hub, &id, &config.mqtt, now) {
        Ok(m) => m,
        Err(e) => return r.fail("iothub", e, "correct the [iothub] settings it names"),
    };
    let target = format!("{}:{}", c.connect_host(), hub.port);
    match probe(&mqtt, &c.client_id(), Duration::from_secs(timeout)).await {
        Ok(()) => r.ok(
            "iothub",
            format!("{target} reachable; it accepted the device's credentials and the model id {ADU_MODEL_ID}"),
        ),
        Err(ProbeError::CredentialsRefused(e)) => r.fail(
            "iothub",
            format!("{target} refused the connection: {e}"),
            "check the device's key or certificate in the hub, and this machine's clock (a token is valid from now for sas-lifetime-secs)",
        ),
        Err(e) => unreachable(r, "iothub", &target, e),
    }
}

/// DPS reachable, and accepting the registration's credentials (a connection, no registration).
async fn check_dps(r: &mut Report, hub: &IotHubConfig, setup: &DpsSetup, timeout: u64) {
    let how = match setup.attestation {
        Attestation::SymmetricKey(_) => "symmetric key",
        Attestation::X509 => "X.509 certificate",
    };
    r.ok(
        "dps registration",
        format!(
            "{} in ID scope {} ({how})",
            setup.registration_id, setup.id_scope
        ),
    );
    let now = sandstep_transport::clock::now_ms() / 1000;
    let mqtt = match provision::mqtt_config(setup, &hub.tls_files(), now) {
        Ok(m) => m,
        Err(e) => return r.fail("dps", e, "correct the [iothub.dps] settings it names"),
    };
    let target = format!("{}:{}", setup.endpoint, setup.port);
    match probe(&mqtt, &setup.registration_id, Duration::from_secs(timeout)).await {
        Ok(()) => r.ok(
            "dps",
            format!("{target} reachable; it accepted the registration's credentials"),
        ),
        Err(ProbeError::CredentialsRefused(e)) => r.fail(
            "dps",
            format!("{target} refused the connection: {e}"),
            "check the enrollment and its key (a group enrollment's device key is derived: `sandstep key dps-device-key`) or certificate, the ID scope, and this machine's clock",
        ),
        Err(e) => unreachable(r, "dps", &target, e),
    }
}

/// A service that could not be talked to at all.
fn unreachable(r: &mut Report, what: &str, target: &str, e: ProbeError) {
    match e {
        ProbeError::Silent(_) => r.fail(
            what,
            format!("{target}: {e}"),
            "check the network path (port 8883 outbound)",
        ),
        _ => r.fail(
            what,
            format!("{target}: {e}"),
            "check the host name, the port, and [iothub] ca-file (the service's certificate must chain to it)",
        ),
    }
}
