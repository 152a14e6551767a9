//! Root key packages deployments bring (`rootKeyPackageUrl`): ADU's published package checked as
//! ADU's agent checks it, then rotation and revocation through real deployments whose package is
//! served over loopback HTTP. Every refusal is asserted with its code, with proof that nothing
//! ran and the stored package did not change.

use crate::adu_compat::{adu_dir, trust_with};
use crate::http::TestServer;
use crate::trust::trust_root;
use crate::workflow::{stateful, Env};
use sandstep::config::Config;
use sandstep::trust::rotation::{self, Refusal};
use sandstep::workflow::Outcome;
use sandstep_model::codes::erc;
use sandstep_model::journal::Status;
use sandstep_signing::jws::PrivateJwk;
use sandstep_signing::rootkeys::{self, Contents};
use serde_json::json;

fn published_package() -> String {
    std::fs::read_to_string(adu_dir().join("rootkeys/prod-rootkeys.signed.json")).unwrap()
}

#[test]
fn adus_published_package_verifies_against_its_production_roots() {
    let trust = trust_with(&["adu-production.rootkeys.json"]);
    let ok = rotation::verify(&published_package(), &trust.package_signers, false).unwrap();
    let kids: Vec<_> = ok.package.roots.iter().filter_map(|r| r.kid()).collect();
    assert_eq!(kids, ["ADU.200702.R", "ADU.200703.R"]);
    assert_eq!(ok.package.published, Some(1675972876));
}

#[test]
fn adus_published_package_edited_after_signing_is_refused_with_adus_codes() {
    let trust = trust_with(&["adu-production.rootkeys.json"]);
    let signers = &trust.package_signers;
    let text = published_package();
    // One more disabled root: the protected part is no longer what was signed.
    let forged = text.replacen(
        "\"disabledRootKeys\": []",
        "\"disabledRootKeys\": [\"ADU.200703.R\"]",
        1,
    );
    assert_ne!(forged, text);
    let r = rotation::verify(&forged, signers, false).unwrap_err();
    assert_eq!(r, Refusal::BadSignature("ADU.200702.R".into()));
    assert_eq!(r.erc(), erc::ROOTKEY_SIGNATURE_INVALID);
    // The second root's signature dropped: ADU requires every root it holds to have signed.
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let protected = rootkeys::split(&text).unwrap().protected;
    let one = format!(
        "{{\"protected\": {protected}, \"signatures\": [{}]}}",
        v["signatures"][0]
    );
    assert!(rotation::verify(&one, &signers[..1], false).is_ok());
    let r = rotation::verify(&one, signers, false).unwrap_err();
    assert_eq!(r, Refusal::Unsigned("ADU.200703.R".into()));
    assert_eq!(r.erc().raw() as u32, 0x8060_0003);
    // An agent holding ADU's test roots finds no signature of theirs.
    let test = trust_with(&["adu-test.rootkeys.json"]);
    let r = rotation::verify(&text, &test.package_signers, false).unwrap_err();
    assert_eq!(r, Refusal::Unsigned("ADU.200702.R.T".into()));
}

/// An operator's root, the signing keys under it, and a gateway trusting it.
struct Fleet {
    env: Env,
    server: TestServer,
    anchor: PrivateJwk,
    n: u32,
}

fn rsa(kid: &str) -> PrivateJwk {
    PrivateJwk::generate_rsa(2048, Some(kid.into())).unwrap()
}

impl Fleet {
    fn new() -> Fleet {
        let mut env = Env::new();
        env.file("f.txt", b"payload");
        let anchor = rsa("anchor");
        trust_root(&env, &anchor);
        Fleet {
            env,
            server: TestServer::start(),
            anchor,
            n: 0,
        }
    }

    /// A package signed by the anchor, served at `name`; its URL.
    fn serve(&self, name: &str, c: Contents) -> String {
        let mut roots = vec![self.anchor.public()];
        roots.extend(c.roots);
        let c = Contents { roots, ..c };
        let text =
            rootkeys::sign(&c.protected().unwrap(), std::slice::from_ref(&self.anchor)).unwrap();
        self.server.put(name, text.as_bytes());
        self.server.url(name)
    }

    /// Deploys a manifest signed by `signing` under `root`, naming `url`; the outcome and
    /// whether the step ran.
    async fn deploy(
        &mut self,
        root: &PrivateJwk,
        signing: &PrivateJwk,
        url: Option<String>,
        config: Config,
    ) -> (Outcome, bool) {
        self.n += 1;
        let step = format!("guarded-{}", self.n);
        let m = self
            .env
            .manifest(vec![stateful(&step, json!({}), &["f.txt"])]);
        let mut req = self.env.request(&format!("wf-rk-{}", self.n), m.clone());
        req.allow_unsigned = false;
        let sjwk = sandstep_signing::manifest::sign_signing_key(&signing.public(), root).unwrap();
        req.signature = Some(sandstep_signing::manifest::sign(&m, signing, &sjwk));
        req.root_key_package_url = url;
        let (out, _) = self.env.run_with(config, req).await;
        let ran = !self.env.log(&step).is_empty();
        (out, ran)
    }

    fn stored(&self) -> Option<String> {
        std::fs::read_to_string(self.env.data.path().join("trust/fetched/rootkeys.json")).ok()
    }
}

fn assert_failed(out: &Outcome, ran: bool, code: u32) {
    assert_eq!(out.status, Status::Failed, "{:#?}", out.result);
    assert_eq!(
        out.result.extended_result_code as u32, code,
        "{}",
        out.result.result_details
    );
    assert!(!ran, "nothing may run");
}

/// A package listing `root` besides the signer, published at `published`.
fn adding(root: &PrivateJwk, published: u64) -> Contents {
    Contents {
        roots: vec![root.public()],
        ..contents(published)
    }
}

fn contents(published: u64) -> Contents {
    Contents {
        version: 1,
        published,
        ..Contents::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_a_deployments_package_adds_then_vouches_for_manifests_across_restarts() {
    let mut f = Fleet::new();
    let (next, signing) = (rsa("next-root"), rsa("s1"));
    // Before any package, the new root is unknown.
    let (out, ran) = f.deploy(&next, &signing, None, Config::default()).await;
    assert_failed(&out, ran, 0xA020_0006);
    let url = f.serve("rk1.json", adding(&next, 100));
    let (out, ran) = f
        .deploy(&next, &signing, Some(url.clone()), Config::default())
        .await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    assert!(ran);
    assert_eq!(out.result.extended_result_codes, "00000000,A0000008");
    assert!(f.stored().is_some());
    // The same package again: nothing to store, ADU's "unchanged" reported beside the result.
    let (out, _) = f
        .deploy(&next, &signing, Some(url), Config::default())
        .await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    assert_eq!(out.result.extended_result_codes, "00000000,A0000FFF");
    // A new deployer (an agent restart) reads the stored package back.
    let (out, ran) = f.deploy(&next, &signing, None, Config::default()).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    assert!(ran);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_package_forged_under_the_anchors_kid_fails_the_deployment_and_stores_nothing() {
    let mut f = Fleet::new();
    let forger = rsa("anchor");
    let next = rsa("next-root");
    let c = Contents {
        roots: vec![forger.public(), next.public()],
        ..contents(5)
    };
    let text = rootkeys::sign(&c.protected().unwrap(), &[forger]).unwrap();
    f.server.put("forged.json", text.as_bytes());
    let url = f.server.url("forged.json");
    let (out, ran) = f
        .deploy(&next, &rsa("s"), Some(url), Config::default())
        .await;
    assert_failed(&out, ran, 0x8060_0004);
    assert!(
        out.result
            .result_details
            .contains("signature by root `anchor` does not verify"),
        "{}",
        out.result.result_details
    );
    assert_eq!(f.stored(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_signing_keys_and_roots_are_refused_once_a_package_says_so() {
    let mut f = Fleet::new();
    let (next, s1, s2) = (rsa("next-root"), rsa("s1"), rsa("s2"));
    let url = f.serve(
        "rk1.json",
        Contents {
            disabled_signing_keys: vec![s1.public().spki_sha256()],
            ..adding(&next, 10)
        },
    );
    let (out, ran) = f.deploy(&next, &s1, Some(url), Config::default()).await;
    assert_failed(&out, ran, erc::SIGNING_KEY_IS_DISABLED.raw() as u32);
    // The package was taken before the manifest was judged: it stays taken.
    assert!(f.stored().is_some());
    let (out, ran) = f.deploy(&next, &s2, None, Config::default()).await;
    assert!(ran && out.status == Status::Succeeded, "{:#?}", out.result);
    let url = f.serve(
        "rk2.json",
        Contents {
            disabled_root_kids: vec!["next-root".into()],
            ..adding(&next, 20)
        },
    );
    let (out, ran) = f.deploy(&next, &s2, Some(url), Config::default()).await;
    assert_failed(&out, ran, 0xA020_0005);
    // Roots the package does not disable still vouch.
    let (out, ran) = f
        .deploy(&f.anchor.clone(), &s2, None, Config::default())
        .await;
    assert!(ran && out.status == Status::Succeeded, "{:#?}", out.result);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_package_cannot_take_back_a_revocation() {
    let mut f = Fleet::new();
    let (next, s1) = (rsa("next-root"), rsa("s1"));
    let old = f.serve("old.json", adding(&next, 10));
    let new = f.serve(
        "new.json",
        Contents {
            disabled_signing_keys: vec![s1.public().spki_sha256()],
            ..adding(&next, 20)
        },
    );
    let (out, _) = f
        .deploy(&next, &rsa("s0"), Some(new), Config::default())
        .await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    let stored = f.stored();
    let (out, ran) = f.deploy(&next, &s1, Some(old), Config::default()).await;
    assert_failed(&out, ran, erc::WORKFLOW_ROOTKEY_PACKAGE_OLDER.raw() as u32);
    assert_eq!(f.stored(), stored);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_package_that_no_longer_verifies_refuses_manifests_until_a_good_one_comes() {
    let mut f = Fleet::new();
    let (next, s) = (rsa("next-root"), rsa("s"));
    let url = f.serve("rk.json", adding(&next, 10));
    let (out, _) = f
        .deploy(&next, &s, Some(url.clone()), Config::default())
        .await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    let path = f.env.data.path().join("trust/fetched/rootkeys.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"version\": 1", "\"version\": 2", 1)).unwrap();
    let (out, ran) = f
        .deploy(&f.anchor.clone(), &s, None, Config::default())
        .await;
    assert_failed(&out, ran, erc::ROOTKEY_STORE_LOAD_FAILED.raw() as u32);
    let (out, ran) = f.deploy(&next, &s, Some(url), Config::default()).await;
    assert!(ran && out.status == Status::Succeeded, "{:#?}", out.result);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[tokio::test(flavor = "multi_thread")]
async fn adus_published_package_is_taken_where_adus_roots_are_the_named_signers() {
    let mut f = Fleet::new();
    let roots = f.env.data.path().join("trust/roots");
    std::fs::copy(
        adu_dir().join("rootkeys/adu-production.rootkeys.json"),
        roots.join("adu-production.rootkeys.json"),
    )
    .unwrap();
    f.server.put("prod.json", published_package().as_bytes());
    let url = f.server.url("prod.json");
    // Every trusted root must sign by default, and the operator's own anchor did not.
    let (out, ran) = f
        .deploy(
            &f.anchor.clone(),
            &rsa("s"),
            Some(url.clone()),
            Config::default(),
        )
        .await;
    assert_failed(&out, ran, 0x8060_0003);
    let mut config = Config::default();
    config.trust.root_package_signers = ["ADU.200702.R", "ADU.200703.R"].map(String::from).into();
    let (out, ran) = f
        .deploy(&f.anchor.clone(), &rsa("s"), Some(url), config)
        .await;
    assert!(ran && out.status == Status::Succeeded, "{:#?}", out.result);
    assert_eq!(out.result.extended_result_codes, "00000000,A0000008");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_or_oversized_package_fails_the_deployment_before_anything_runs() {
    let mut f = Fleet::new();
    let mut config = Config::default();
    config.download.attempts = 1;
    let missing = f.server.url("missing.json");
    let (out, ran) = f
        .deploy(&f.anchor.clone(), &rsa("s"), Some(missing), config.clone())
        .await;
    assert_failed(&out, ran, erc::ROOTKEY_DOWNLOAD_FAILED.raw() as u32);
    f.server
        .put("big.json", &vec![b' '; rootkeys::MAX_PACKAGE_BYTES + 1]);
    let big = f.server.url("big.json");
    let (out, ran) = f
        .deploy(&f.anchor.clone(), &rsa("s"), Some(big), config)
        .await;
    assert_failed(&out, ran, erc::ROOTKEY_DOWNLOAD_FAILED.raw() as u32);
    assert!(
        out.result.result_details.contains("byte limit"),
        "{}",
        out.result.result_details
    );
}

/// The README's walk-through: a root key package from `sandstep key root-package`, named by
/// `sandstep manifest sign --root-key-package-url`, taken by `sandstep run --deployment`.
#[test]
fn the_cli_makes_a_package_that_adds_a_root_and_a_gateway_takes_it() {
    use crate::cli::{
        data_dir, manifest_key, manifest_sign, ok, sandstep, trust_root_file, write_manifest,
    };
    let server = TestServer::start();
    let data = data_dir();
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str, kind: &str| manifest_key(dir.path(), name, kind, Some(name));
    let (anchor, next) = (key("anchor", "manifest-rsa"), key("next", "manifest-rsa"));
    let signing = key("signing", "manifest-ed25519");
    trust_root_file(data.path(), &dir.path().join("anchor.pub"));
    let package = dir.path().join("rootkeys.json");
    let made = ok(&sandstep()
        .args(["key", "root-package", "--sign-with"])
        .arg(&anchor)
        .arg("--root")
        .arg(dir.path().join("next.pub"))
        .arg("--out")
        .arg(&package)
        .output()
        .unwrap());
    assert!(made.contains("signed by anchor"), "{made}");
    server.put("rootkeys.json", &std::fs::read(&package).unwrap());
    let m = write_manifest(
        dir.path(),
        vec![stateful("rotated", json!({}), &["f.txt"])],
        &[("f.txt", b"payload")],
    );
    let doc = dir.path().join("deployment.json");
    ok(&manifest_sign(&m, &signing, &next)
        .args(["--root-key-package-url", &server.url("rootkeys.json")])
        .arg("--out")
        .arg(&doc)
        .output()
        .unwrap());
    let result = dir.path().join("result.json");
    ok(&sandstep()
        .args(["run", "--deployment"])
        .arg(&doc)
        .arg("--files")
        .arg(dir.path())
        .arg("--result-file")
        .arg(&result)
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap());
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    assert_eq!(r["resultCode"], 700, "{r:#}");
    assert_eq!(r["extendedResultCodes"], "00000000,A0000008");
    let listed = ok(&sandstep()
        .args(["trust", "list", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap());
    assert!(
        listed.contains("(from a deployment's root key package)")
            && listed.contains("root key package from deployments: published"),
        "{listed}"
    );
}

/// The agent's path: a deployment fetched by HTTP polling names a package adding a root, and the
/// manifest signed under that root runs; the report carries ADU's "package changed" code.
#[test]
fn the_agent_takes_the_package_a_polled_deployment_names() {
    use crate::support::{signed, trust_test_key};
    use crate::workflow::file_entry;
    use sandstep::datadir::DataDir;
    use sandstep::registry::Registry;
    use std::time::{Duration, Instant};
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    trust_test_key(&data);
    Registry::open(DataDir::open(&data).unwrap().handlers().unwrap())
        .unwrap()
        .install(
            "sandstep/files:1",
            &signed("files"),
            "files.wasm",
            vec!["test-vendor".into()],
            0,
        )
        .unwrap();
    let (anchor, next, signing) = (rsa("anchor"), rsa("next"), rsa("s"));
    std::fs::create_dir_all(data.join("trust/roots")).unwrap();
    std::fs::write(
        data.join("trust/roots/anchor.pub"),
        anchor.public().to_value().to_string(),
    )
    .unwrap();
    let package = Contents {
        roots: vec![anchor.public(), next.public()],
        ..contents(7)
    };
    let package =
        rootkeys::sign(&package.protected().unwrap(), std::slice::from_ref(&anchor)).unwrap();
    server.put("rootkeys.json", package.as_bytes());
    let content = b"print('rotated')\n";
    server.put("proj/v1/main.py", content);
    let m = json!({
        "updateId": {"provider": "test", "name": "rk", "version": "1.0"},
        "compatibility": [{"model": "mpy"}],
        "instructions": {"steps": [{"handler": "sandstep/files:1", "files": ["main.py"],
            "handlerProperties": {"destination": "/dest/app/main.py", "installedCriteria": "rotated-1"}}]},
        "files": {"main.py": file_entry("main.py", content)},
        "manifestVersion": "5.0"
    })
    .to_string();
    let sjwk = sandstep_signing::manifest::sign_signing_key(&signing.public(), &next).unwrap();
    let doc = json!({"workflow": {"action": 3, "id": "ignored"}, "updateManifest": m,
        "updateManifestSignature": sandstep_signing::manifest::sign(&m, &signing, &sjwk),
        "fileUrls": {"main.py": server.url("proj/v1/main.py")},
        "rootKeyPackageUrl": server.url("rootkeys.json")});
    server.put("proj/v1/deployment.json", doc.to_string().as_bytes());
    server.put("proj/version", b"v1\n");
    let device = dir.path().join("device");
    std::fs::create_dir(&device).unwrap();
    let _agent = crate::fleet::polling_agent(&server, dir.path(), &data, &device);
    let t = Instant::now();
    let last = loop {
        let r: serde_json::Value = std::fs::read(data.join("reported.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let last = &r["state"]["reported"]["lastInstallResult"];
        if last["resultCode"].as_i64().is_some_and(|c| c != 400) {
            break last.clone();
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no result: {r:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(last["resultCode"], 700, "{last:#}");
    assert_eq!(last["extendedResultCodes"], "00000000,A0000008", "{last:#}");
    assert_eq!(std::fs::read(device.join("main.py")).unwrap(), content);
}
