//! The ADU compatibility suite: real Device Update content from ADU's public repository
//! (tests/adu, with each file's origin and licence in tests/adu/ORIGIN.md). Each case states what
//! ADU's agent does with the content, with the ADU code that decides it, and asserts sandstep
//! does the same.

use sandstep::config::Config;
use sandstep::datadir::DataDir;
use sandstep::trust::manifest_sig::{self, SignatureRefusal};
use sandstep::trust::TrustStore;
use sandstep_model::codes::erc;
use sandstep_model::manifest::Manifest;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub(crate) fn adu_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/adu")
}

/// A real deployment: (`updateManifest`, `updateManifestSignature`).
fn deployment(file: &str) -> (String, String) {
    let path = adu_dir().join("deployments").join(file);
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    (
        v["updateManifest"].as_str().unwrap().to_owned(),
        v["updateManifestSignature"].as_str().unwrap().to_owned(),
    )
}

/// The trust store of a gateway whose root directory holds these files of tests/adu/rootkeys
/// (each as `sandstep trust add root` keeps a package).
pub(crate) fn trust_with(packages: &[&str]) -> TrustStore {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(&tmp.path().join("data")).unwrap();
    let roots = data.trust_roots().unwrap();
    for p in packages {
        let bytes = std::fs::read(adu_dir().join("rootkeys").join(p)).unwrap();
        let stem = p.trim_end_matches(".json").trim_end_matches(".rootkeys");
        roots.write(format!("{stem}.rootkeys.json"), bytes).unwrap();
    }
    TrustStore::load(&data, &Config::default().trust).unwrap()
}

/// What ADU's agent does with a deployment's signature.
#[derive(Debug)]
enum Adu {
    /// Accepted: the signing key chains to this root.
    Accepted(&'static str),
    /// Refused with this extended result code.
    Refused(u32),
}

/// ADU's `workflow_validate_update_manifest_signature` (src/utils/workflow_utils/src/
/// workflow_utils.c): `VerifyJWSWithSJWK`, then `Json_ValidateManifestHash`.
const HASH_MISMATCH: u32 = 0x8030_0001; // ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_MANIFEST_VALIDATION_FAILED
const NO_ROOT_FOR_KID: u32 = 0xA020_0006; // JWSResult_MissingRootKid packed by the workflow
const DISABLED_ROOT: u32 = 0xA020_0005; // JWSResult_DisallowedRootKid
const DISABLED_SIGNING_KEY: u32 = 0xA000_0005; // ADUC_ERC_ROOTKEY_SIGNING_KEY_IS_DISABLED

fn check(trust: &TrustStore, cases: &[(&str, Adu)]) {
    for (file, expected) in cases {
        let (manifest, signature) = deployment(file);
        let got = manifest_sig::verify(&manifest, &signature, trust);
        match (expected, got) {
            (Adu::Accepted(root), Ok(v)) => assert_eq!(v.root_kid, *root, "{file}"),
            (Adu::Refused(code), Err(r)) => {
                assert_eq!(r.erc().raw() as u32, *code, "{file}: {r}")
            }
            (expected, got) => panic!("{file}: ADU's agent: {expected:?}; sandstep: {got:?}"),
        }
    }
}

#[test]
fn every_signed_adu_deployment_is_judged_as_adus_production_agent_judges_it() {
    // A production agent trusts ADU.200702.R and ADU.200703.R (root_key_list.c, #else branch).
    let trust = trust_with(&["adu-production.rootkeys.json"]);
    check(
        &trust,
        &[
            // ADU's tests edited these manifests after signing: the chain verifies, the hash not.
            (
                "00-swupdate-v2-filecopy-a.json",
                Adu::Refused(HASH_MISMATCH),
            ),
            (
                "01-swupdate-v2-filecopy-b.json",
                Adu::Refused(HASH_MISMATCH),
            ),
            (
                "02-core-export-helpers-v4.json",
                Adu::Accepted("ADU.200702.R"),
            ),
            ("03-workflow-utils-motors.json", Adu::Refused(HASH_MISMATCH)),
            ("04-simulator-v2.json", Adu::Refused(HASH_MISMATCH)),
            ("05-replacement-v5.json", Adu::Refused(HASH_MISMATCH)),
            (
                "06-script-handler-filecopy-a.json",
                Adu::Refused(HASH_MISMATCH),
            ),
            (
                "07-core-export-helpers-v2.json",
                Adu::Accepted("ADU.200702.R"),
            ),
            // Signed under the test root, which a production agent does not hold.
            (
                "08-workflow-utils-bundle-v3-testroot.json",
                Adu::Refused(NO_ROOT_FOR_KID),
            ),
            (
                "09-startup-workflow-v2-testroot.json",
                Adu::Refused(NO_ROOT_FOR_KID),
            ),
            (
                "10-get-update-file-delta-v5.json",
                Adu::Accepted("ADU.200702.R"),
            ),
            (
                "11-script-handler-filecopy-b.json",
                Adu::Refused(HASH_MISMATCH),
            ),
        ],
    );
}

#[test]
fn test_root_deployments_verify_where_adus_test_roots_are_trusted() {
    // An agent built with EMBED_TEST_ROOT_KEYS holds only the test roots.
    let trust = trust_with(&["adu-test.rootkeys.json"]);
    check(
        &trust,
        &[
            (
                "08-workflow-utils-bundle-v3-testroot.json",
                Adu::Accepted("ADU.200702.R.T"),
            ),
            (
                "09-startup-workflow-v2-testroot.json",
                Adu::Accepted("ADU.200702.R.T"),
            ),
            (
                "02-core-export-helpers-v4.json",
                Adu::Refused(NO_ROOT_FOR_KID),
            ),
        ],
    );
}

#[test]
fn adus_package_disabling_its_production_root_refuses_what_that_root_signed() {
    // disabledRootKeyProd.json, unchanged: ADU.200702.R disabled (RootKeyUtility_GetKeyForKid).
    let trust = trust_with(&["disabledRootKeyProd.json"]);
    assert!(trust.roots.iter().any(|r| r.kid() == Some("ADU.200703.R")));
    check(
        &trust,
        &[
            (
                "02-core-export-helpers-v4.json",
                Adu::Refused(DISABLED_ROOT),
            ),
            (
                "10-get-update-file-delta-v5.json",
                Adu::Refused(DISABLED_ROOT),
            ),
        ],
    );
}

#[test]
fn a_disabled_signing_key_is_refused_with_adus_code_before_the_manifest_hash() {
    // VerifySJWK checks disabledSigningKeys before the outer signature and the manifest hash:
    // even the edited manifests (00) are refused for the key, not the hash.
    let trust = trust_with(&["disabled-signing-key-210609.rootkeys.json"]);
    check(
        &trust,
        &[
            (
                "02-core-export-helpers-v4.json",
                Adu::Refused(DISABLED_SIGNING_KEY),
            ),
            (
                "00-swupdate-v2-filecopy-a.json",
                Adu::Refused(DISABLED_SIGNING_KEY),
            ),
            // Signed by ADU.200702.R.S, which is not disabled.
            (
                "07-core-export-helpers-v2.json",
                Adu::Accepted("ADU.200702.R"),
            ),
        ],
    );
    // The real ADU test package disables another key: nothing of ours is refused for it.
    let trust = trust_with(&["disabledSigningKeyProd.json"]);
    check(
        &trust,
        &[(
            "02-core-export-helpers-v4.json",
            Adu::Accepted("ADU.200702.R"),
        )],
    );
}

#[test]
fn the_signing_key_hash_is_adus_spki_sha256() {
    // root_key_utils_signing_key_ut.cpp: sha256_hash_pubkey of ADU.210609.R.S.
    let (_, signature) = deployment("02-core-export-helpers-v4.json");
    let outer = sandstep_signing::jws::Compact::parse(&signature).unwrap();
    let inner =
        sandstep_signing::jws::Compact::parse(outer.header["sjwk"].as_str().unwrap()).unwrap();
    let v: Value = serde_json::from_slice(&inner.payload).unwrap();
    // The real key's `n` is in the standard alphabet (`+`, `/`) inside a base64url JWS.
    assert!(v["n"].as_str().unwrap().contains(['+', '/']));
    let key = sandstep_signing::jws::PublicJwk::from_value(&v).unwrap();
    assert_eq!(
        key.spki_sha256(),
        "Y0jA4rDItwp5NIZYPUP8jAQoXIRPSKCDo4xtiWjyvig"
    );
}

#[test]
fn accepted_deployments_below_manifest_version_4_are_refused_with_adus_code() {
    // 07 verifies, then ADU's _workflow_init_helper reads manifestVersion "2.0" with atoi: 2 < 4,
    // ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_UNSUPPORTED_UPDATE_MANIFEST_VERSION (0x8030000A).
    let (manifest, _) = deployment("07-core-export-helpers-v2.json");
    let err = Manifest::parse(&manifest).unwrap_err();
    assert!(err.is_unsupported_version(), "{err}");
    assert_eq!(erc::UNSUPPORTED_MANIFEST_VERSION.raw() as u32, 0x8030_000A);
    // The accepted v4 and v5 ones parse.
    for file in [
        "02-core-export-helpers-v4.json",
        "10-get-update-file-delta-v5.json",
    ] {
        let (manifest, _) = deployment(file);
        Manifest::parse(&manifest).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

#[test]
fn a_signature_refusal_names_its_reason() {
    let trust = trust_with(&["adu-production.rootkeys.json"]);
    let (manifest, signature) = deployment("08-workflow-utils-bundle-v3-testroot.json");
    let r = manifest_sig::verify(&manifest, &signature, &trust).unwrap_err();
    assert_eq!(r, SignatureRefusal::UnknownRoot("ADU.200702.R.T".into()));
}

/// `sandstep run --deployment` on a real ADU deployment, with workflow id `id`; returns the
/// events it printed.
fn run_real_deployment(data: &Path, file: &str, id: &str) -> Vec<Value> {
    let (manifest, signature) = deployment(file);
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("deployment.json");
    let body = serde_json::json!({
        "workflow": {"action": 3, "id": id},
        "updateManifest": manifest,
        "updateManifestSignature": signature,
        "fileUrls": {},
    });
    std::fs::write(&doc, body.to_string()).unwrap();
    let out = crate::cli::sandstep()
        .args(["run", "--json", "--deployment"])
        .arg(&doc)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn trust_add_root_takes_adus_root_key_package_and_real_deployments_verify_against_it() {
    let data = tempfile::tempdir().unwrap();
    let out = crate::cli::trust_root_file(
        data.path(),
        &adu_dir().join("rootkeys/adu-production.rootkeys.json"),
    );
    assert!(out.contains("root key ADU.200702.R"), "{out}");
    assert!(out.contains("root key ADU.200703.R"), "{out}");
    assert!(out.trim_end().ends_with("trusted adu-production"), "{out}");
    let listed = crate::cli::ok(
        &crate::cli::sandstep()
            .args(["trust", "list", "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap(),
    );
    assert!(listed.contains("root ADU.200702.R "), "{listed}");

    // Signed by ADU's test root: refused before anything is planned, with ADU's code.
    let events = run_real_deployment(
        data.path(),
        "08-workflow-utils-bundle-v3-testroot.json",
        "wf-08",
    );
    let last = events.last().unwrap();
    assert_eq!(last["status"], "failed", "{events:?}");
    assert_eq!(
        last["result"]["extendedResultCode"], 0xA020_0006u32 as i32,
        "{last}"
    );
    assert!(
        !events.iter().any(|e| e["event"] == "planned"),
        "{events:?}"
    );

    // Production-signed and unedited: the signature holds, and the deployment goes on to fetch
    // its reference step's child manifest (which this deployment gives no URL for).
    let events = run_real_deployment(data.path(), "02-core-export-helpers-v4.json", "wf-02");
    let last = events.last().unwrap();
    let details = last["result"]["resultDetails"].as_str().unwrap();
    assert!(
        details.contains("contoso.contoso-virtual-motors.1.1.updatemanifest.json"),
        "{last}"
    );
}

/// ADU's extended result codes by value, from ADU's own code table (result_codes.json).
fn adu_codes() -> std::collections::BTreeMap<u32, String> {
    let v: Value =
        serde_json::from_slice(&std::fs::read(adu_dir().join("result_codes.json")).unwrap())
            .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for f in v["facilities"].as_array().unwrap() {
        let facility = f["code"].as_u64().unwrap() as u32;
        for c in f["components"].as_array().into_iter().flatten() {
            let component = c["code"].as_u64().unwrap() as u32;
            for r in c["results"].as_array().into_iter().flatten() {
                let value =
                    (facility << 28) | (component << 20) | r["value"].as_u64().unwrap() as u32;
                out.insert(value, r["name"].as_str().unwrap().to_owned());
            }
        }
    }
    out
}

#[test]
fn codes_reported_under_adus_names_have_adus_values() {
    let adu = adu_codes();
    assert!(adu.len() > 250, "ADU's table has {} codes", adu.len());
    for (name, code) in erc::ADU_NAMED {
        assert_eq!(
            adu.get(&(code.raw() as u32)).map(String::as_str),
            Some(*name),
            "{code}"
        );
    }
}

#[test]
fn no_sandstep_only_code_is_one_of_adus() {
    let adu = adu_codes();
    // ADU leaves facility 11 empty; every sandstep-only code lives there.
    assert!(
        !adu.keys().any(|v| v >> 28 == 11),
        "ADU now uses facility 11"
    );
    for code in erc::SANDSTEP_ONLY {
        assert_eq!(code.facility(), 11, "{code}");
        assert!(
            !adu.contains_key(&(code.raw() as u32)),
            "{code} is ADU's {}",
            adu[&(code.raw() as u32)]
        );
    }
    // The signature refusals are ADU's JWS codes (facility 10, component 2, JWSResult number).
    for r in [
        SignatureRefusal::UnknownRoot("k".into()),
        SignatureRefusal::DisabledRoot("k".into()),
        SignatureRefusal::InvalidSignature,
        SignatureRefusal::BadStructure(String::new()),
    ] {
        assert_eq!(r.erc().raw() as u32 >> 20, 0xA02, "{r}");
    }
}

#[test]
fn adus_own_apt_manifests_parse_as_adus_parser_reads_them() {
    use sandstep_model::apt::AptManifest;
    let read = |name: &str| std::fs::read(adu_dir().join("apt").join(name)).unwrap();
    // ADU's docs write them with a UTF-8 byte order mark.
    for name in [
        "libcurl4-doc-apt-manifest.json",
        "libcurl4-doc-7.58-apt-manifest.json",
        "libcurl4-doc-remove-apt-manifest.json",
    ] {
        let bytes = read(name);
        assert!(bytes.starts_with(b"\xEF\xBB\xBF"), "{name}");
        let m = AptManifest::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.packages.len(), 1, "{name}");
    }
    let m = AptManifest::parse(&read("libcurl4-doc-7.58-apt-manifest.json")).unwrap();
    assert_eq!(m.packages[0].spec(), "libcurl4-doc=7.58.0-2ubuntu3.12");
    let m = AptManifest::parse(&read("libcurl4-doc-remove-apt-manifest.json")).unwrap();
    assert!(m.packages[0].is_removal());
    // The contoso demo's "bad" manifest has no packages: it parses (and fails at download).
    let m = AptManifest::parse(&read("bad-apt-manifest-1.0.json")).unwrap();
    assert!(m.packages.is_empty());
    // ADU's agent package implies an agent restart (and this one also says so).
    let m = AptManifest::parse(&read("sample_apt_manifest.json")).unwrap();
    assert!(m.agent_restart_required);
    let m = AptManifest::parse(&read("apt-manifest-tree-1.0.json")).unwrap();
    assert!(!m.agent_restart_required);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_contoso_bad_apt_manifest_fails_at_download_with_adus_code() {
    // CreateSampleMSOEUpdate-1.x.ps1, "Simulating a failure during an install task ... by
    // intentionally using mal-formed APT manifest file": ADU's adu-shell aborts the download
    // ("No packages specified"), reported as ADUC_ERC_APT_HANDLER_PACKAGE_DOWNLOAD_FAILURE.
    let mut env = crate::workflow::Env::new();
    env.install("microsoft/apt:1", "apt");
    let name = "bad-apt-manifest-1.0.json";
    env.file(
        name,
        &std::fs::read(adu_dir().join("apt").join(name)).unwrap(),
    );
    let m = env.manifest(vec![serde_json::json!({
        "handler": "microsoft/apt:1", "files": [name],
        "handlerProperties": {"installedCriteria": "apt-update-test-1.0"}
    })]);
    let (out, _) = env.run(env.request("wf-bad-apt", m)).await;
    assert_eq!(out.status, sandstep_model::journal::Status::Failed);
    assert_eq!(
        out.result.extended_result_code as u32, 0x3020_0100,
        "{:#?}",
        out.result
    );
    let actions: Vec<&str> = out.result.step_results["step_0"]
        .actions
        .iter()
        .map(|a| a.action.name())
        .collect();
    assert_eq!(actions, ["is-installed", "download"]);
}

#[test]
fn a_real_adu_desired_document_parses_and_is_judged_as_adu_judges_it() {
    use sandstep_model::deployment::Deployment;
    let text = std::fs::read_to_string(adu_dir().join("desired/updateActionForActionBundle.json"))
        .unwrap();
    let d = Deployment::parse(&text).unwrap();
    assert_eq!(d.workflow.action, 3);
    assert_eq!(d.workflow.id, "e99c69ca-3188-43a3-80af-310616c7751d");
    assert_eq!(d.file_urls.len(), 4);
    let trust = trust_with(&["adu-production.rootkeys.json"]);
    let r = manifest_sig::verify(
        d.update_manifest.as_deref().unwrap(),
        d.update_manifest_signature.as_deref().unwrap(),
        &trust,
    )
    .unwrap_err();
    assert_eq!(r.erc().raw() as u32, HASH_MISMATCH, "{r}");
    // `rootKeyPackageUrl` is read beside `workflow`, where ADU's agent reads it
    // (`workflow_parse_peek_unprotected_workflow_properties`); members it does not read are
    // ignored, as there.
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["workflow"]["rootKeyPackageUrl"] = serde_json::json!("http://example.invalid/other.json");
    v["rootKeyPackageUrl"] = serde_json::json!("http://example.invalid/rootkeys.json");
    let d = Deployment::parse(&v.to_string()).unwrap();
    assert_eq!(
        d.root_key_package_url.as_deref(),
        Some("http://example.invalid/rootkeys.json")
    );
}

#[test]
fn adus_delta_manifest_names_its_download_handler_and_sandstep_says_it_takes_the_full_file() {
    let (manifest, _) = deployment("10-get-update-file-delta-v5.json");
    let m = Manifest::parse(&manifest).unwrap();
    let f = m.file("f54d16eca3561a1e0").unwrap();
    assert_eq!(f.download_handler.as_deref(), Some("microsoft/delta:1"));
    assert_eq!(f.file_name, "in2.FIT_RECOMPRESSED_and_RE-SIGNED.swu");
}

/// ADU's agent without the delta handler (`ExtensionManager::Download`,
/// `ProcessDownloadHandlerExtensibility`): the full file is downloaded and the deployment goes
/// on, `ADUC_ERC_DOWNLOAD_HANDLER_EXTENSION_MANAGER_CREATE_FAILURE_CREATE` reported beside the
/// result. The file entry is ADU's delta entry's shape (relatedFiles, downloadHandler).
#[tokio::test(flavor = "multi_thread")]
async fn a_file_with_a_download_handler_is_downloaded_whole_and_the_missing_handler_reported() {
    use crate::workflow::{file_entry, stateful, Env};
    let mut env = Env::new();
    env.file("full.swu", b"the whole image");
    let mut entry = file_entry("full.swu", b"the whole image");
    entry["relatedFiles"] = serde_json::json!({"rel": {
        "fileName": "delta.dat", "sizeInBytes": 5,
        "hashes": {"sha256": "2MIldV8LkdKenjJasgTHuYi+apgtNQ9FeL2xsV3ikHY="},
        "properties": {"microsoft.sourceFileHashAlgorithm": "sha256",
                       "microsoft.sourceFileHash": "YmFYwnEUddq2nZsBAn5v7gCRKdHx+TUntMz5tLwU+24="}}});
    entry["downloadHandler"] = serde_json::json!({"id": "microsoft/delta:1"});
    env.file_entries.insert("full.swu".into(), entry);
    let m = env.manifest(vec![stateful("img", serde_json::json!({}), &["full.swu"])]);
    let (out, _) = env.run(env.request("wf-delta", m)).await;
    assert_eq!(
        out.status,
        sandstep_model::journal::Status::Succeeded,
        "{:#?}",
        out.result
    );
    assert_eq!(out.result.extended_result_codes, "00000000,90000001");
    assert_eq!(
        out.result.step_results["step_0"].files[0].result_code, 500,
        "downloaded whole"
    );
}
