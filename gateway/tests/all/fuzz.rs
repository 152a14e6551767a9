//! The fuzz smoke run: every fuzz target (sandstep::fuzzing) over its committed seeds, its
//! regressions (crashes a fuzzer found, kept as inputs), and a few thousand deterministic mutations
//! of them. `scripts/fuzz.sh` runs the same targets under libFuzzer for as long as asked.
//!
//! `SANDSTEP_WRITE_FUZZ_SEEDS=1 cargo test ... fuzz::` rewrites fuzz/seeds from the examples and
//! the fixed fuzzing keys (signed seeds must be regenerated if the keys or formats change).

use sandstep::fuzzing::{self, TARGETS};
use sandstep::trust::{handler_sig, manifest_sig};
use sandstep_testkit::repo_root;
use serde_json::json;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

const MUTATIONS_PER_TARGET: usize = 5000;

fn inputs_in(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    out.sort();
    out
}

/// One mutation in the style of libFuzzer's: flips, interesting bytes, cuts, inserts, splices.
fn mutate(rng: &mut fastrand::Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.usize(1..4) {
        let len = v.len();
        match rng.u8(0..7) {
            0 if len > 0 => v[rng.usize(0..len)] ^= 1 << rng.u8(0..8),
            1 if len > 0 => {
                v[rng.usize(0..len)] = *rng
                    .choice(&[
                        0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'}', b'\\', b'\n', b'0', 0xc3,
                    ])
                    .unwrap()
            }
            2 if len > 0 => v.truncate(rng.usize(0..len)),
            3 => {
                let at = rng.usize(0..=len);
                let extra: Vec<u8> = (0..rng.usize(1..16)).map(|_| rng.u8(..)).collect();
                v.splice(at..at, extra);
            }
            4 if len > 0 => {
                let a = rng.usize(0..len);
                let b = rng.usize(a..=len.min(a + 64));
                let chunk = v[a..b].to_vec();
                let at = rng.usize(0..=v.len());
                v.splice(at..at, chunk);
            }
            5 if !other.is_empty() => {
                let cut = rng.usize(0..=len);
                let from = rng.usize(0..other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                let a = rng.usize(0..len);
                let b = rng.usize(a..=len);
                v.drain(a..b);
            }
            _ => v.push(rng.u8(..)),
        }
    }
    v
}

/// Runs `target` on `input`; a panic fails the test, with the input saved for a regression.
fn run_one(name: &str, target: fuzzing::Target, input: &[u8], origin: &str) {
    if std::panic::catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
        let dir = repo_root().join("target/fuzz-smoke-failures").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(hex::encode(&sandstep::digest::Sha256::digest(input)[..8]));
        std::fs::write(&path, input).unwrap();
        panic!(
            "fuzz target {name} panicked on {origin}; the input is saved at {} (copy it to \
             fuzz/regressions/{name}/ once fixed)",
            path.display()
        );
    }
}

#[test]
fn every_fuzz_target_survives_its_seeds_regressions_and_mutations() {
    if std::env::var_os("SANDSTEP_WRITE_FUZZ_SEEDS").is_some() {
        write_seeds();
    }
    let fuzz = repo_root().join("fuzz");
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for &(name, target) in TARGETS {
        let seeds = inputs_in(&fuzz.join("seeds").join(name));
        assert!(
            !seeds.is_empty(),
            "fuzz/seeds/{name} is empty: every target needs seeds"
        );
        assert!(
            fuzz.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{name}.rs is missing: cargo-fuzz could not run {name}"
        );
        let regressions = inputs_in(&fuzz.join("regressions").join(name));
        let all: Vec<_> = seeds.iter().chain(&regressions).collect();
        for (path, bytes) in &all {
            run_one(name, target, bytes, &path.display().to_string());
        }
        for i in 0..MUTATIONS_PER_TARGET {
            let base = &rng.choice(&all).unwrap().1;
            let other = &rng.choice(&all).unwrap().1;
            let input = mutate(&mut rng, base, other);
            run_one(name, target, &input, &format!("mutation {i}"));
        }
    }
}

/// Signed seeds must verify, or the fuzzer never reaches the code behind a good signature.
#[test]
fn the_signed_fuzz_seeds_verify_with_the_fuzzing_keys() {
    let seeds = repo_root().join("fuzz/seeds");
    let sig = std::fs::read(seeds.join("manifest_signature/signed-demo")).unwrap();
    let nul = sig.iter().position(|&b| b == 0).unwrap();
    let trust = sandstep::trust::TrustStore {
        roots: vec![fuzzing::root_key().public()],
        ..Default::default()
    };
    manifest_sig::verify(
        std::str::from_utf8(&sig[..nul]).unwrap(),
        std::str::from_utf8(&sig[nul + 1..]).unwrap(),
        &trust,
    )
    .expect("the signed manifest seed verifies");
    let component = std::fs::read(seeds.join("handler_signature/signed-component")).unwrap();
    let trusted = [sandstep::trust::TrustedHandlerKey {
        name: "fuzz".into(),
        key: fuzzing::handler_key().pk.clone(),
        scope: Vec::new(),
    }];
    assert_eq!(
        handler_sig::verify(&component, &trusted).unwrap(),
        vec!["fuzz".to_string()]
    );
}

fn write_seeds() {
    let root = repo_root();
    let seeds = root.join("fuzz/seeds");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = seeds.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let demo = std::fs::read_to_string(root.join("examples/demo/manifest.json")).unwrap();
    let file = |name: &str| {
        json!({"fileName": name, "sizeInBytes": 3,
               "hashes": {"sha256": "LCa0a2j/xo/5m0U8HTBBNBNCLXBkg7+g+YpeiGJm564="}})
    };
    let child = json!({
        "updateId": {"provider": "contoso", "name": "virtual-camera", "version": "1.2"},
        "isDeployable": false,
        "compatibility": [{"group": "cameras"}],
        "instructions": {"steps": [
            {"description": "pre-install", "handler": "microsoft/script:1", "files": ["f1"],
             "handlerProperties": {"scriptFileName": "install.sh",
               "arguments": "--pre-install --component-name --component-name-val",
               "installedCriteria": "camera-1.2-0"}},
            {"handler": "microsoft/swupdate:1", "files": ["f1", "f2"],
             "handlerProperties": {"installedCriteria": "camera-1.2-1"}}
        ]},
        "referencedBy": [{"provider": "contoso", "name": "gateway", "version": "3.1"}],
        "files": {"f1": file("install.sh"), "f2": file("firmware.swu")},
        "manifestVersion": "5.0",
        "importedOn": "2022-01-01T00:00:00Z",
        "createdDateTime": "2022-01-01T00:00:00Z"
    });
    let parent = json!({
        "updateId": {"provider": "contoso", "name": "gateway", "version": "3.1"},
        "isDeployable": true,
        "compatibility": [{"manufacturer": "contoso", "model": "gateway"}],
        "instructions": {"steps": [
            {"type": "inline", "handler": "microsoft/apt:1", "files": ["f3"],
             "handlerProperties": {"installedCriteria": "apt-1"}},
            {"type": "reference", "detachedManifestFileId": "f4"}
        ]},
        "files": {"f3": file("apt-manifest.json"), "f4": file("camera.importmanifest.json")},
        "manifestVersion": "5.0",
        "importedOn": "2022-01-01T00:00:00Z",
        "createdDateTime": "2022-01-01T00:00:00Z"
    });
    put("manifest", "demo", demo.as_bytes());
    put(
        "manifest",
        "parent-with-reference",
        parent.to_string().as_bytes(),
    );
    put("manifest", "camera-child", child.to_string().as_bytes());
    put(
        "manifest",
        "wrapped-child",
        json!({"updateManifest": child.to_string()})
            .to_string()
            .as_bytes(),
    );

    let sjwk = sandstep_signing::manifest::sign_signing_key(
        &fuzzing::signing_key().public(),
        fuzzing::root_key(),
    )
    .unwrap();
    let signature = sandstep_signing::manifest::sign(&demo, fuzzing::signing_key(), &sjwk);
    let mut signed = demo.clone().into_bytes();
    signed.push(0);
    signed.extend_from_slice(signature.as_bytes());
    put("manifest_signature", "signed-demo", &signed);
    put(
        "manifest_signature",
        "public-jwk",
        fuzzing::signing_key()
            .public()
            .to_value()
            .to_string()
            .as_bytes(),
    );

    put(
        "root_key_package",
        "adu-published",
        &std::fs::read(repo_root().join("tests/adu/rootkeys/prod-rootkeys.signed.json")).unwrap(),
    );

    let workflow = json!({"action": 3, "id": "wf-1", "retryTimestamp": "2026-01-01T00:00:00Z"});
    let deployment = json!({
        "workflow": workflow,
        "updateManifest": demo,
        "updateManifestSignature": signature,
        "fileUrls": {"f1": "http://127.0.0.1:8080/files/app.conf"}
    });
    put(
        "deployment",
        "signed-demo",
        deployment.to_string().as_bytes(),
    );
    put(
        "deployment",
        "cancel",
        json!({"workflow": {"action": 255, "id": "wf-1"}})
            .to_string()
            .as_bytes(),
    );
    put(
        "desired_state",
        "desired",
        json!({"state": {"desired": deployment}, "version": 7, "timestamp": 1700000000})
            .to_string()
            .as_bytes(),
    );
    put(
        "desired_state",
        "delta",
        json!({"state": deployment, "version": 8, "timestamp": 1700000001})
            .to_string()
            .as_bytes(),
    );
    put(
        "desired_state",
        "shadow",
        json!({"state": {"desired": {"workflow": {"action": 255, "id": "wf-1"}},
                          "reported": {"state": 6, "installedUpdateId": "{}"}},
               "version": 9})
        .to_string()
        .as_bytes(),
    );

    let wasm = wat::parse_str("(component (core module (func (export \"f\"))))").unwrap();
    let kp = fuzzing::handler_key();
    let signed = handler_sig::sign(&wasm, &kp.sk, &kp.pk).unwrap();
    put("handler_signature", "signed-component", &signed);
    put("handler_signature", "unsigned-component", &wasm);
    let module = wat::parse_str("(module (@custom \"name\" \"x\") (func))").unwrap();
    put(
        "handler_signature",
        "signed-module",
        &handler_sig::sign(&module, &kp.sk, &kp.pk).unwrap(),
    );

    put(
        "script_result",
        "success",
        br#"{"resultCode":700,"extendedResultCode":0,"resultDetails":""}"#,
    );
    put(
        "script_result",
        "failure",
        br#"{"resultCode":0,"extendedResultCode":810549760,"resultDetails":"failed \u00e9"}"#,
    );
    put("script_result", "installed", br#"{"resultCode":900}"#);

    put(
        "apt_manifest",
        "install-and-remove",
        br#"{"name":"contoso-tools","version":"1.0","packages":[{"name":"hello","version":"2.10-3"},{"name":"old-tool-"}],"agentRestartRequired":true}"#,
    );
    put(
        "apt_manifest",
        "plain",
        br#"{"name":"x","version":"1","packages":[{"name":"libfoo1"}]}"#,
    );

    put(
        "inventory",
        "cameras-and-motors",
        json!({"components": [
            {"id": "cam-1", "name": "front", "group": "cameras", "manufacturer": "contoso", "model": "c", "version": "1.0", "properties": {"path": "/dev/cam1"}},
            {"id": "motor-1", "name": "left", "group": "motors", "manufacturer": "contoso", "model": "m", "version": "1.0"}
        ]})
        .to_string()
        .as_bytes(),
    );

    for (name, path) in [
        ("config", "examples/config.toml"),
        ("agent", "examples/agent.toml"),
        ("default-policy", "gateway/src/default-policy.toml"),
    ] {
        put("config", name, &std::fs::read(root.join(path)).unwrap());
    }
}
