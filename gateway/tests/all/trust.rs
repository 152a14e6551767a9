//! Trust: handler signatures, the registry's checks on every load, the cache artefact check, and
//! manifest signatures. Each refusal is asserted exactly, with proof that nothing ran.

use crate::support::{component, signed, test_key, trust_test_key};
use crate::workflow::{stateful, Env, Recorder, PROBE};
use sandstep::config::Config;
use sandstep::datadir::DataDir;
use sandstep::loader::{LoadError, Loader};
use sandstep::policy::Policy;
use sandstep::registry::Registry;
use sandstep::sandbox::{EngineOptions, Sandbox};
use sandstep::trust::handler_sig::{self, HandlerSignatureError};
use sandstep::trust::{TrustStore, TrustedHandlerKey};
use sandstep::workflow::Deployer;
use sandstep_model::codes::erc;
use sandstep_model::journal::Status;
use sandstep_signing::jws::{Compact, PrivateJwk};
use serde_json::json;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

fn trusted(name: &str, pk: &wasmsign2::PublicKey) -> TrustedHandlerKey {
    TrustedHandlerKey {
        name: name.into(),
        key: pk.clone().attach_default_key_id(),
        scope: Vec::new(),
    }
}

fn test_trust() -> Vec<TrustedHandlerKey> {
    vec![trusted("test-vendor", &test_key().1)]
}

#[test]
fn a_signed_component_verifies_and_names_its_signer() {
    assert_eq!(
        handler_sig::verify(&signed("probe"), &test_trust()).unwrap(),
        ["test-vendor"]
    );
}

#[test]
fn an_unsigned_component_is_refused() {
    assert_eq!(
        handler_sig::verify(&component("probe"), &test_trust()).unwrap_err(),
        HandlerSignatureError::Unsigned
    );
}

#[test]
fn a_component_signed_by_an_untrusted_key_is_refused_naming_the_key() {
    let other = wasmsign2::KeyPair::generate();
    let bytes = handler_sig::sign(&component("probe"), &other.sk, &other.pk).unwrap();
    let id = hex::encode(other.pk.clone().attach_default_key_id().key_id().unwrap());
    assert_eq!(
        handler_sig::verify(&bytes, &test_trust()).unwrap_err(),
        HandlerSignatureError::Untrusted(id)
    );
}

#[test]
fn several_signers_are_allowed_and_the_trusted_one_is_reported() {
    let other = wasmsign2::KeyPair::generate();
    let twice = handler_sig::sign(&signed("probe"), &other.sk, &other.pk).unwrap();
    assert_eq!(
        handler_sig::verify(&twice, &test_trust()).unwrap(),
        ["test-vendor"]
    );
    let both = vec![
        trusted("test-vendor", &test_key().1),
        trusted("second", &other.pk),
    ];
    assert_eq!(
        handler_sig::verify(&twice, &both).unwrap(),
        ["test-vendor", "second"]
    );
}

#[test]
fn one_byte_flipped_anywhere_is_refused() {
    let bytes = signed("probe");
    let trust = test_trust();
    // The signature section is first; everything after it is what was signed.
    let module = wasmsign2::Module::deserialize(&mut std::io::Cursor::new(&bytes)).unwrap();
    let mut sig_len = Vec::new();
    module.sections[0].serialize(&mut sig_len).unwrap();
    let signed_start = 8 + sig_len.len();
    let mut checked = 0;
    for pos in (0..bytes.len())
        .step_by(97)
        .chain([8, signed_start, bytes.len() - 1])
    {
        let mut flipped = bytes.clone();
        flipped[pos] ^= 0x01;
        let err = handler_sig::verify(&flipped, &trust)
            .expect_err(&format!("byte {pos} flipped was accepted"));
        if pos >= signed_start {
            // Inside the signed content: either the digest changes, or the structure breaks.
            assert!(
                matches!(
                    err,
                    HandlerSignatureError::Tampered | HandlerSignatureError::Malformed(_)
                ),
                "byte {pos}: {err}"
            );
        }
        checked += 1;
    }
    assert!(checked > 1000, "{checked} positions");
    // A flip in the middle of the code is exactly "modified after signing".
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    assert_eq!(
        handler_sig::verify(&flipped, &trust).unwrap_err(),
        HandlerSignatureError::Tampered
    );
}

fn reorder(bytes: &[u8], f: impl FnOnce(&mut Vec<wasmsign2::Section>)) -> Vec<u8> {
    let mut module = wasmsign2::Module::deserialize(&mut std::io::Cursor::new(bytes)).unwrap();
    f(&mut module.sections);
    let mut out = Vec::new();
    module.serialize(&mut out).unwrap();
    out
}

#[test]
fn a_moved_or_duplicated_signature_section_is_refused() {
    let bytes = signed("probe");
    let moved = reorder(&bytes, |s| {
        let sig = s.remove(0);
        s.push(sig);
    });
    assert_eq!(
        handler_sig::verify(&moved, &test_trust()).unwrap_err(),
        HandlerSignatureError::Moved
    );
    let duplicated = reorder(&bytes, |s| {
        let sig = s[0].clone();
        s.push(sig);
    });
    assert_eq!(
        handler_sig::verify(&duplicated, &test_trust()).unwrap_err(),
        HandlerSignatureError::Duplicated(2)
    );
}

fn loader(data: &std::path::Path) -> Loader {
    let d = DataDir::open(data).unwrap();
    let trust = TrustStore::load(&d, &Default::default()).unwrap();
    let sandbox = Arc::new(
        Sandbox::new(
            &EngineOptions::default(),
            Some(d.component_cache().unwrap()),
        )
        .unwrap(),
    );
    Loader::new(
        Registry::open(d.handlers().unwrap()).unwrap(),
        trust,
        sandbox,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn install_refuses_unsigned_and_records_nothing() {
    let data = tempfile::tempdir().unwrap();
    trust_test_key(data.path());
    let l = loader(data.path());
    let err = l
        .install(
            PROBE,
            component("probe").to_vec(),
            "probe.wasm",
            &Policy::default(),
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "handler `test/probe:1` refused: unsigned: the component has no `signature` section"
    );
    assert!(l.registry().list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn install_refuses_a_component_importing_an_ungranted_capability() {
    let data = tempfile::tempdir().unwrap();
    trust_test_key(data.path());
    let l = loader(data.path());
    let err = l
        .install(
            "test/process:1",
            signed("process-probe"),
            "p.wasm",
            &Policy::default(),
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "handler `test/process:1` imports `sandstep:handler/process@0.1.0`: capability `process` is not granted to it by policy"
    );
    assert!(l.registry().list().unwrap().is_empty());
    // Refused before it was compiled: nothing in the precompiled cache.
    let cached = crate::workflow::walk(&data.path().join("cache"));
    assert!(cached.iter().all(|p| p.is_dir()), "{cached:?}");
    // With the grant, it installs.
    let config = Config::parse(
        "[handlers.\"test/process:1\"]\ncapabilities = [\"process\"]\n",
        "t",
    )
    .unwrap();
    l.install(
        "test/process:1",
        signed("process-probe"),
        "p.wasm",
        &config.policy(),
        0,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn install_with_no_trusted_keys_says_how_to_add_one() {
    let data = tempfile::tempdir().unwrap();
    let l = loader(data.path());
    let err = l
        .install(PROBE, signed("probe"), "probe.wasm", &Policy::default(), 0)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "handler `test/probe:1` refused: no trusted handler keys: add one with `sandstep trust add handler KEY.pub`");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_load_rechecks_the_signature_and_the_stored_bytes() {
    let data = tempfile::tempdir().unwrap();
    trust_test_key(data.path());
    let (entry, _) = loader(data.path())
        .install(PROBE, signed("probe"), "probe.wasm", &Policy::default(), 0)
        .await
        .unwrap();
    assert_eq!(entry.signers, ["test-vendor"]);
    loader(data.path())
        .load(PROBE, &Policy::default())
        .await
        .unwrap();

    // The key is no longer trusted: the next load refuses.
    std::fs::remove_file(data.path().join("trust/handlers/test-vendor.pub")).unwrap();
    let err = loader(data.path())
        .load(PROBE, &Policy::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Signature {
                cause: HandlerSignatureError::NoTrustedKeys,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.to_step_result().erc(), erc::SANDBOX_SIGNATURE_REFUSED);

    // The stored component changes: refused before any signature or cache use.
    trust_test_key(data.path());
    let stored = data
        .path()
        .join("handlers/components")
        .join(format!("{}.wasm", entry.digest));
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&stored, bytes).unwrap();
    let err = loader(data.path())
        .load(PROBE, &Policy::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("stored component for `test/probe:1` does not match its recorded digest {}: refusing to load it", entry.digest)
    );
}

/// The agent's loader lives as long as the agent: a component file changed under it (same
/// size, one byte flipped) is refused at the next load, though the loader verified and compiled
/// that handler before and keeps both in memory.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_lived_loader_refuses_a_component_file_changed_after_it_verified_it() {
    let data = tempfile::tempdir().unwrap();
    trust_test_key(data.path());
    let l = loader(data.path());
    let (entry, _) = l
        .install(PROBE, signed("probe"), "probe.wasm", &Policy::default(), 0)
        .await
        .unwrap();
    for _ in 0..3 {
        l.load(PROBE, &Policy::default()).await.unwrap();
    }
    let stored = data
        .path()
        .join("handlers/components")
        .join(format!("{}.wasm", entry.digest));
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&stored, bytes).unwrap();
    let err = l.load(PROBE, &Policy::default()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("does not match its recorded digest"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_cache_artefact_is_never_loaded() {
    let data = tempfile::tempdir().unwrap();
    trust_test_key(data.path());
    let (entry, _) = loader(data.path())
        .install(PROBE, signed("probe"), "probe.wasm", &Policy::default(), 0)
        .await
        .unwrap();
    let cache = data.path().join("cache/components");
    let artefact = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("install precompiled it");
    assert!(artefact
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with(&entry.digest));
    let good = std::fs::read(&artefact).unwrap();
    // Patch bytes in the middle of the machine code.
    let mut evil = good.clone();
    let mid = evil.len() / 2;
    for b in &mut evil[mid..mid + 16] {
        *b = 0xCC;
    }
    std::fs::write(&artefact, &evil).unwrap();
    // A fresh loader (as after a restart) refuses the artefact and compiles from the verified bytes.
    let h = loader(data.path())
        .load(PROBE, &Policy::default())
        .await
        .unwrap();
    assert_eq!(h.digest(), entry.digest);
    assert_ne!(
        std::fs::read(&artefact).unwrap(),
        evil,
        "the tampered artefact was replaced"
    );
}

/// The precompiled artefact (and its MAC sidecar) of `digest` in the data dir's cache.
fn artefact_of(data: &std::path::Path, digest: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let cache = data.join("cache/components");
    let art = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(digest) && name.ends_with(".cwasm")
        })
        .expect("install precompiled it");
    let mac = std::path::PathBuf::from(format!("{}.mac", art.display()));
    (art, mac)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swapped_cache_artefact_is_refused_before_it_is_mapped() {
    let data = tempfile::tempdir().unwrap();
    trust_test_key(data.path());
    let l = loader(data.path());
    let (probe, _) = l
        .install(PROBE, signed("probe"), "probe.wasm", &Policy::default(), 0)
        .await
        .unwrap();
    let (other, _) = l
        .install(
            "contoso/config:1",
            signed("vendor-handler"),
            "vendor-handler.wasm",
            &Policy::default(),
            0,
        )
        .await
        .unwrap();
    let (probe_art, probe_mac) = artefact_of(data.path(), &probe.digest);
    let (other_art, other_mac) = artefact_of(data.path(), &other.digest);
    // Another entry's artefact with its own valid sidecar, copied over the probe's: both files
    // are well formed, and each sidecar matches its bytes, but the MAC binds the digest.
    let swapped = std::fs::read(&other_art).unwrap();
    std::fs::copy(&other_art, &probe_art).unwrap();
    std::fs::copy(&other_mac, &probe_mac).unwrap();
    let h = loader(data.path())
        .load(PROBE, &Policy::default())
        .await
        .unwrap();
    assert_eq!(h.digest(), probe.digest);
    assert_ne!(
        std::fs::read(&probe_art).unwrap(),
        swapped,
        "compiled again from the probe"
    );
    // A sidecar made without the key (a crafted artefact's sha256, say) fails too.
    let good = std::fs::read(&probe_art).unwrap();
    std::fs::write(
        &probe_mac,
        hex::encode(sandstep::digest::Sha256::digest(&good)),
    )
    .unwrap();
    std::fs::write(&probe_art, &swapped).unwrap();
    loader(data.path())
        .load(PROBE, &Policy::default())
        .await
        .unwrap();
    assert_ne!(std::fs::read(&probe_art).unwrap(), swapped);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_step_with_an_unsigned_handler_fails_and_nothing_runs() {
    let env = Env::new();
    // Replace the registered probe with an unsigned copy, behind the loader's back.
    Registry::open(DataDir::open(env.data.path()).unwrap().handlers().unwrap())
        .unwrap()
        .install(PROBE, &component("probe"), "probe.wasm", vec![], 0)
        .unwrap();
    std::fs::write(env.files.path().join("f.txt"), b"x").unwrap();
    let mut env = env;
    env.file("f.txt", b"x");
    let m = env.manifest(vec![stateful("never", json!({}), &["f.txt"])]);
    let (out, _) = env.run(env.request("wf-unsigned-handler", m)).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(
        out.result.extended_result_code,
        erc::SANDBOX_SIGNATURE_REFUSED.raw()
    );
    assert_eq!(
        out.result.result_details,
        "handler `test/probe:1` refused: unsigned: the component has no `signature` section"
    );
    assert!(env.log("never").is_empty());
}

// ---- Manifest signatures.

struct Keys {
    root: PrivateJwk,
    signing: PrivateJwk,
}

fn keys(rsa: bool) -> Keys {
    if rsa {
        Keys {
            root: PrivateJwk::generate_rsa(2048, Some("root-rsa".into())).unwrap(),
            signing: PrivateJwk::generate_rsa(2048, None).unwrap(),
        }
    } else {
        Keys {
            root: PrivateJwk::generate_ed25519(Some("root-ed".into())),
            signing: PrivateJwk::generate_ed25519(None),
        }
    }
}

pub(crate) fn trust_root(env: &Env, root: &PrivateJwk) {
    let dir = env.data.path().join("trust/roots");
    std::fs::create_dir_all(&dir).unwrap();
    let kid = root.public().kid().unwrap().to_owned();
    std::fs::write(
        dir.join(format!("{kid}.pub")),
        root.public().to_value().to_string(),
    )
    .unwrap();
}

fn signature(manifest: &str, k: &Keys) -> String {
    let sjwk = sandstep_signing::manifest::sign_signing_key(&k.signing.public(), &k.root).unwrap();
    sandstep_signing::manifest::sign(manifest, &k.signing, &sjwk)
}

/// Runs a signed deployment (no --allow-unsigned) with `config`; returns the outcome and whether
/// the step's handler ran.
async fn deploy(
    env: &mut Env,
    config: Config,
    sign: impl FnOnce(&str) -> Option<String>,
) -> (sandstep::workflow::Outcome, bool) {
    env.file("f.txt", b"payload");
    let m = env.manifest(vec![stateful("guarded", json!({}), &["f.txt"])]);
    let mut req = env.request(&format!("wf-sig-{}", fastrand::u32(..)), m.clone());
    req.allow_unsigned = false;
    req.signature = sign(&m);
    let data = DataDir::open(env.data.path()).unwrap();
    let sandbox = Arc::new(Sandbox::new(&EngineOptions::default(), None).unwrap());
    let d = Deployer::new(sandbox, data, config).unwrap();
    let out = d
        .run(
            req,
            Arc::new(Recorder::default()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let ran = !env.log("guarded").is_empty();
    (out, ran)
}

fn assert_refused(out: &sandstep::workflow::Outcome, ran: bool, code: u32, details: &str) {
    assert_eq!(out.status, Status::Failed, "{:#?}", out.result);
    assert_eq!(
        out.result.extended_result_code as u32, code,
        "{}",
        out.result.result_details
    );
    assert_eq!(out.result.result_details, details);
    assert!(!ran, "the handler must not run");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_rs256_chain_is_accepted() {
    let mut env = Env::new();
    let k = keys(true);
    trust_root(&env, &k.root);
    let (out, ran) = deploy(&mut env, Config::default(), |m| Some(signature(m, &k))).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    assert!(ran);
    let j = out.result.workflow_id.clone();
    let journal = crate::workflow::Env::deployer(&env)
        .journals()
        .load(&j)
        .unwrap()
        .unwrap();
    assert_eq!(
        journal.signed_by,
        Some(format!(
            "root root-rsa / signing key {}",
            k.signing.public().thumbprint()
        ))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_eddsa_chain_is_accepted() {
    let mut env = Env::new();
    let k = keys(false);
    trust_root(&env, &k.root);
    let (out, ran) = deploy(&mut env, Config::default(), |m| Some(signature(m, &k))).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    assert!(ran);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_signature_is_refused_unless_allowed() {
    let mut env = Env::new();
    let (out, ran) = deploy(&mut env, Config::default(), |_| None).await;
    assert_refused(&out, ran, 0x8030_0001, "manifest signature is missing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_signed_by_an_untrusted_root_is_refused() {
    let mut env = Env::new();
    let trusted_keys = keys(false);
    trust_root(&env, &trusted_keys.root);
    let rogue = Keys {
        root: PrivateJwk::generate_ed25519(Some("rogue-root".into())),
        signing: PrivateJwk::generate_ed25519(None),
    };
    let (out, ran) = deploy(&mut env, Config::default(), |m| Some(signature(m, &rogue))).await;
    // ADU: RootKeyUtility_GetKeyForKid finds no key -> JWSResult_MissingRootKid (6).
    assert_refused(&out, ran, 0xA020_0006, "manifest signature: root key `rogue-root` is not trusted (no such key in the trusted roots)");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_root_with_a_trusted_kid_is_refused() {
    let mut env = Env::new();
    let k = keys(false);
    trust_root(&env, &k.root);
    let forger = Keys {
        root: PrivateJwk::generate_ed25519(Some("root-ed".into())),
        signing: PrivateJwk::generate_ed25519(None),
    };
    let (out, ran) = deploy(&mut env, Config::default(), |m| Some(signature(m, &forger))).await;
    assert_refused(
        &out,
        ran,
        // ADU: VerifyJWSWithKey over the sjwk -> JWSResult_InvalidSignature (4).
        0xA020_0004,
        "manifest signature: the signing key's signature by root `root-ed` does not verify",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disallowed_signing_key_is_refused() {
    let mut env = Env::new();
    let k = keys(false);
    trust_root(&env, &k.root);
    let thumb = k.signing.public().thumbprint();
    let mut config = Config::default();
    config.trust.disallowed_signing_keys.insert(thumb.clone());
    let (out, ran) = deploy(&mut env, config, |m| Some(signature(m, &k))).await;
    assert_refused(
        &out,
        ran,
        // ADU: ADUC_ERC_ROOTKEY_SIGNING_KEY_IS_DISABLED, the key named by its SPKI hash.
        0xA000_0005,
        &format!(
            "manifest signature: signing key {} is disabled",
            k.signing.public().spki_sha256()
        ),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_root_is_refused() {
    let mut env = Env::new();
    let k = keys(false);
    trust_root(&env, &k.root);
    let mut config = Config::default();
    config.trust.disabled_root_kids.insert("root-ed".into());
    let (out, ran) = deploy(&mut env, config, |m| Some(signature(m, &k))).await;
    assert_refused(
        &out,
        ran,
        0xA020_0005,
        "manifest signature: root key `root-ed` is disabled",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_bytes_changed_after_signing_are_refused() {
    let mut env = Env::new();
    let k = keys(false);
    trust_root(&env, &k.root);
    let (out, ran) = deploy(&mut env, Config::default(), |m| {
        // Sign a different text: one space more.
        Some(signature(&format!("{m} "), &k))
    })
    .await;
    assert_refused(
        &out,
        ran,
        0x8030_0001,
        "manifest hash mismatch: the manifest is not the one that was signed",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn none_and_hs256_signatures_are_refused() {
    use base64::Engine as _;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let k = keys(false);
    for alg in ["none", "HS256"] {
        let mut env = Env::new();
        trust_root(&env, &k.root);
        let sjwk =
            sandstep_signing::manifest::sign_signing_key(&k.signing.public(), &k.root).unwrap();
        let (out, ran) = deploy(&mut env, Config::default(), |m| {
            let header = json!({"alg": alg, "sjwk": sjwk});
            let payload = json!({"sha256": sandstep_signing::manifest::manifest_digest(m)});
            Some(format!(
                "{}.{}.{}",
                b64(&header),
                b64(&payload),
                if alg == "none" { "" } else { "c2ln" }
            ))
        })
        .await;
        assert_refused(
            &out,
            ran,
            // ADU: CryptoUtils_IsValidSignature knows only RS256 -> JWSResult_InvalidSignature.
            0xA020_0004,
            &format!(
                "manifest signature: algorithm `{alg}` is not accepted (only RS256 and EdDSA)"
            ),
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_signatures_are_bad_structure() {
    let mut env = Env::new();
    let (out, ran) = deploy(&mut env, Config::default(), |_| Some("not-a-jws".into())).await;
    assert_refused(
        &out,
        ran,
        0xA020_0002,
        "manifest signature: bad structure: not a compact JWS: 1 dot-separated parts, expected 3",
    );
    let mut env = Env::new();
    let k = keys(false);
    let (out, ran) = deploy(&mut env, Config::default(), |_| {
        // A JWS without sjwk.
        Some(Compact::sign(Default::default(), b"{}", &k.signing))
    })
    .await;
    assert_refused(
        &out,
        ran,
        0xA020_0002,
        "manifest signature: bad structure: the header has no `sjwk` (signing key)",
    );
}

// ---- Policy: extra directories and component directories.

async fn run_with_config(
    env: &Env,
    req: sandstep::workflow::Request,
    config: Config,
) -> sandstep::workflow::Outcome {
    let data = DataDir::open(env.data.path()).unwrap();
    let sandbox = Arc::new(Sandbox::new(&EngineOptions::default(), None).unwrap());
    let d = Deployer::new(sandbox, data, config).unwrap();
    d.run(
        req,
        Arc::new(Recorder::default()),
        &CancellationToken::new(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_dirs_are_the_only_extra_paths_a_handler_sees() {
    let mut env = Env::new();
    let granted = tempfile::tempdir().unwrap();
    env.file("f.txt", b"x");
    let write = |path: &str| json!({"handler": PROBE, "files": ["f.txt"], "handlerProperties": {"op": "write", "path": path}});
    let config = Config::parse(
        &format!("[handlers.\"{PROBE}\"]\ndirs = [{{ host = \"{}\", guest = \"/srv/app\", writable = true }}]\n", granted.path().display()),
        "t",
    )
    .unwrap();
    let m = env.manifest(vec![write("/srv/app/out.txt")]);
    let out = run_with_config(&env, env.request("wf-dirs", m), config.clone()).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    assert_eq!(
        std::fs::read(granted.path().join("out.txt")).unwrap(),
        b"probe was here"
    );

    // Without the policy entry the same path does not exist for the handler.
    let m = env.manifest(vec![write("/srv/app/again.txt")]);
    let out = run_with_config(&env, env.request("wf-no-dirs", m), Config::default()).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(
        out.result.result_details,
        "/srv/app/again.txt: Capabilities insufficient (os error 76)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn component_dirs_map_only_paths_under_the_policy_root() {
    let root = tempfile::tempdir().unwrap();
    let devices = root.path().join("devices");
    std::fs::create_dir_all(devices.join("cam-1")).unwrap();
    std::os::unix::fs::symlink("/etc", devices.join("sneaky")).unwrap();
    let config = Config::parse(
        &format!(
            "[handlers.\"{PROBE}\"]\ncomponent-dirs = [{{ property = \"path\", guest = \"/component\", writable = true, under = \"{}\" }}]\n",
            devices.display()
        ),
        "t",
    )
    .unwrap();
    let run = |path: String, wf: &'static str| {
        let config = config.clone();
        async move {
            let mut env = Env::new();
            let mut files = serde_json::Map::new();
            files.insert("f.txt".into(), crate::workflow::file_entry("f.txt", b"x"));
            std::fs::write(env.files.path().join("f.txt"), b"x").unwrap();
            let child = json!({
                "updateId": {"provider": "t", "name": "c", "version": "1.0"},
                "compatibility": [{"group": "cams"}],
                "instructions": {"steps": [{"handler": PROBE, "files": ["f.txt"], "handlerProperties": {"op": "write", "path": "/component/fw.bin"}}]},
                "files": files,
                "manifestVersion": "4.0"
            })
            .to_string();
            env.file("child.json", child.as_bytes());
            env.file("f.txt", b"x");
            let m = env.manifest(vec![
                json!({"type": "reference", "detachedManifestFileId": "child.json"}),
            ]);
            let mut req = env.request(wf, m);
            req.inventory = Some(
                sandstep_model::inventory::Inventory::parse(
                    &json!({"components": [{"id": "cam-1", "group": "cams", "properties": {"path": path}}]}).to_string(),
                )
                .unwrap(),
            );
            run_with_config(&env, req, config).await
        }
    };
    let ok = run(devices.join("cam-1").display().to_string(), "wf-comp-ok").await;
    assert_eq!(ok.status, Status::Succeeded, "{:#?}", ok.result);
    assert_eq!(
        std::fs::read(devices.join("cam-1/fw.bin")).unwrap(),
        b"probe was here"
    );

    for (path, wf) in [
        ("/etc".to_string(), "wf-comp-etc"),
        (devices.join("sneaky").display().to_string(), "wf-comp-link"),
    ] {
        let out = run(path.clone(), wf).await;
        assert_eq!(out.status, Status::Failed);
        assert_eq!(
            out.result.extended_result_code,
            erc::SANDBOX_SETUP_FAILED.raw()
        );
        let real = devices.canonicalize().unwrap();
        assert_eq!(
            out.result.result_details,
            format!(
                "component `cam-1`: properties.path `{path}` is not a directory under {} (policy handlers.\"{PROBE}\".component-dirs)",
                real.display()
            )
        );
    }
}
