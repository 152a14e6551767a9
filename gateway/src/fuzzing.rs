//! The fuzz targets' bodies: each takes arbitrary bytes and feeds them to one parser exactly as
//! sandstep calls it. `fuzz/` wraps them for cargo-fuzz (libFuzzer), and the test suite replays
//! every target's corpus, its regressions and a few thousand mutations of them on each run, so a
//! target that starts to panic fails CI even where no fuzzer runs.
//!
//! Keys here are fixed (derived from constant seeds) so that corpus entries signed with them stay
//! valid and the fuzzer reaches the code behind a good signature. They are for fuzzing only and are
//! never trusted by a gateway.

use crate::config::Config;
use crate::trust::{handler_sig, manifest_sig, TrustStore, TrustedHandlerKey};
use sandstep_model::apt::AptManifest;
use sandstep_model::deployment::Deployment;
use sandstep_model::inventory::Inventory;
use sandstep_model::journal::{Journal, JOURNAL_VERSION, MAGIC};
use sandstep_model::manifest::Manifest;
use sandstep_model::script_result::ScriptResult;
use sandstep_model::shadow::Document;
use sandstep_signing::jws::PrivateJwk;
use std::sync::OnceLock;

/// A fuzz target: bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target, by the name its cargo-fuzz binary and corpus directory carry.
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest", manifest),
    ("deployment", deployment),
    ("manifest_signature", manifest_signature),
    ("root_key_package", root_key_package),
    ("handler_signature", handler_signature),
    ("script_result", script_result),
    ("apt_manifest", apt_manifest),
    ("inventory", inventory),
    ("config", config),
    ("desired_state", desired_state),
    ("journal", journal),
];

/// The root key the manifest-signature target trusts (kid `fuzz-root`).
pub fn root_key() -> &'static PrivateJwk {
    static KEY: OnceLock<PrivateJwk> = OnceLock::new();
    KEY.get_or_init(|| ed25519_jwk([0x52; 32], "fuzz-root"))
}

/// The signing key the corpus's manifest signatures use (signed by [`root_key`]).
pub fn signing_key() -> &'static PrivateJwk {
    static KEY: OnceLock<PrivateJwk> = OnceLock::new();
    KEY.get_or_init(|| ed25519_jwk([0x53; 32], "fuzz-signing"))
}

/// The handler-signing key pair the handler-signature target trusts.
pub fn handler_key() -> &'static wasmsign2::KeyPair {
    static KEY: OnceLock<wasmsign2::KeyPair> = OnceLock::new();
    KEY.get_or_init(|| {
        let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([0x48; 32]));
        wasmsign2::KeyPair {
            pk: wasmsign2::PublicKey {
                pk: kp.pk,
                key_id: None,
            },
            sk: wasmsign2::SecretKey { sk: kp.sk },
        }
    })
}

fn ed25519_jwk(seed: [u8; 32], kid: &str) -> PrivateJwk {
    PrivateJwk::Ed25519 {
        kp: ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed)),
        kid: Some(kid.to_owned()),
    }
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Splits at the first NUL: two inputs from one.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// The manifest parser and validator, as a deployment's manifest and as a child manifest file.
pub fn manifest(data: &[u8]) {
    if let Some(t) = text(data) {
        let _ = Manifest::parse(t);
        let _ = Manifest::parse_child(t);
    }
}

/// The deployment document (HTTP polling and `sandstep run --deployment`).
pub fn deployment(data: &[u8]) {
    if let Some(t) = text(data) {
        if let Ok(d) = Deployment::parse(t) {
            if let Some(m) = d.update_manifest.as_deref() {
                let _ = Manifest::parse(m);
            }
        }
    }
}

/// JWS compact parsing, the `sjwk` chain and JWK decoding: `manifest NUL signature`.
pub fn manifest_signature(data: &[u8]) {
    static TRUST: OnceLock<TrustStore> = OnceLock::new();
    let trust = TRUST.get_or_init(|| TrustStore {
        roots: vec![root_key().public()],
        ..TrustStore::default()
    });
    let (manifest, signature) = split(data);
    if let (Some(m), Some(s)) = (text(manifest), text(signature)) {
        let _ = manifest_sig::verify(m, s, trust);
    }
    // The whole input as a JWK, as key files and `sjwk` payloads are read.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = sandstep_signing::jws::PublicJwk::from_value(&v);
        let _ = PrivateJwk::from_value(&v);
    }
}

/// A root key package from a deployment's `rootKeyPackageUrl`: split, parsed strictly, and its
/// signatures checked against ADU's production roots (which sign the corpus's real package).
pub fn root_key_package(data: &[u8]) {
    static SIGNERS: OnceLock<Vec<sandstep_signing::jws::PublicJwk>> = OnceLock::new();
    let signers = SIGNERS.get_or_init(|| {
        let text = include_str!("../../tests/adu/rootkeys/adu-production.rootkeys.json");
        let v = serde_json::from_str(text).expect("ADU's roots are JSON");
        crate::trust::root_package::parse(&v)
            .expect("ADU's roots parse")
            .roots
    });
    if let Some(t) = text(data) {
        if let Ok(offered) = crate::trust::rotation::verify(t, signers, true) {
            let _ = crate::trust::rotation::decide(&offered, Some(&offered));
        }
    }
}

/// The handler signature check: the section walker, wasmsign2's reader, and the key matching.
pub fn handler_signature(data: &[u8]) {
    static TRUSTED: OnceLock<Vec<TrustedHandlerKey>> = OnceLock::new();
    let trusted = TRUSTED.get_or_init(|| {
        vec![TrustedHandlerKey {
            name: "fuzz".into(),
            key: handler_key().pk.clone(),
            scope: Vec::new(),
        }]
    });
    let _ = handler_sig::verify(data, trusted);
}

/// The result file a script writes.
pub fn script_result(data: &[u8]) {
    let _ = ScriptResult::parse(data);
}

/// The apt handler's manifest.
pub fn apt_manifest(data: &[u8]) {
    if let Ok(m) = AptManifest::parse(data) {
        for p in &m.packages {
            let _ = p.spec();
        }
    }
}

/// The component inventory (the enumerator's output).
pub fn inventory(data: &[u8]) {
    if let Some(t) = text(data) {
        let _ = Inventory::parse(t);
    }
}

/// The configuration file.
pub fn config(data: &[u8]) {
    if let Some(t) = text(data) {
        if let Ok(c) = Config::parse(t, "fuzz.toml") {
            let _ = c.agent.resolved_device_id();
        }
    }
}

/// An MQTT desired-state payload, as the agent reads it, and as the replica stores documents.
pub fn desired_state(data: &[u8]) {
    if let Ok(fields) = crate::agent::source::shadow::desired_fields(data) {
        if let Some(Ok(d)) = crate::agent::deployment_of(&fields) {
            if let Some(m) = d.update_manifest.as_deref() {
                let _ = Manifest::parse(m);
            }
        }
    }
    let _ = Document::parse(data);
}

/// The journal decoder (a torn or garbled journal must be refused, never misread): the input as
/// a whole file, and as a body behind a matching checksum, so the fuzzer gets past the header.
pub fn journal(data: &[u8]) {
    let decoded = Journal::decode(data).or_else(|_| {
        let digest = hex::encode(crate::digest::Sha256::digest(data));
        let mut file = format!("{MAGIC} {JOURNAL_VERSION} sha256={digest}\n").into_bytes();
        file.extend_from_slice(data);
        Journal::decode(&file)
    });
    if let Ok(j) = decoded {
        let _ = sandstep_model::results::result_file(&j);
        let _ = sandstep_model::results::step_reports(&j);
        let _ = j.next_unit();
        // A decoded journal must encode back to something that decodes to the same journal.
        assert_eq!(Journal::decode(&j.encode()).as_ref(), Ok(&j));
    }
}
