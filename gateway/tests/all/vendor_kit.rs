//! The vendor's path, as the README tells it: `handler new`, the project's own native test,
//! `handler build`, `handler sign`, `dev run`, with nothing else on hand.

use crate::cli::{ok, sandstep};
use sandstep_testkit::repo_root;
use std::path::Path;
use std::process::Command;

/// The build shares the repository's target directory, so the standard library built for the
/// guests (Debian's toolchain builds it from source) is built once.
fn shared_target() -> std::path::PathBuf {
    repo_root().join("target")
}

#[test]
fn a_new_handler_project_tests_builds_signs_and_runs_from_its_readme_commands() {
    let t = tempfile::tempdir().unwrap();
    let project = t.path().join("acme-config");
    let out = ok(&sandstep()
        .args(["handler", "new"])
        .arg(&project)
        .args(["--id", "acme/config:1"])
        .output()
        .unwrap());
    assert!(out.contains("acme-config"), "{out}");
    for f in [
        "Cargo.toml",
        "src/lib.rs",
        "README.md",
        "manifest.json",
        "payload/app.conf",
    ] {
        assert!(project.join(f).is_file(), "handler new wrote no {f}");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["instructions"]["steps"][0]["handler"],
        "acme/config:1"
    );
    assert_eq!(manifest["files"]["app.conf"]["sizeInBytes"], 15);

    // The template's own native test passes.
    let test = Command::new("cargo")
        .args(["test", "--quiet"])
        .current_dir(&project)
        .env(
            "CARGO_TARGET_DIR",
            shared_target().join("vendor-kit-native"),
        )
        .output()
        .unwrap();
    ok(&test);

    let built = ok(&sandstep()
        .args(["handler", "build"])
        .arg(&project)
        .env("CARGO_TARGET_DIR", shared_target())
        .output()
        .unwrap());
    assert!(
        built.contains("capabilities: none needed"),
        "the template calls no capability: {built}"
    );
    let wasm = shared_target().join("wasm32-wasip2/guest/acme_config.wasm");
    let run = sign_and_dev_run(&project, &wasm);
    assert!(run.contains("apply -> 700"), "{run}");
    assert!(run.contains("app.conf installed"), "{run}");
}

fn sign_and_dev_run(project: &Path, wasm: &Path) -> String {
    let key = project.join("vendor.key");
    ok(&sandstep()
        .args(["key", "generate", "--out"])
        .arg(&key)
        .output()
        .unwrap());
    let signed = project.join("signed.wasm");
    ok(&sandstep()
        .args(["handler", "sign"])
        .arg(wasm)
        .arg("--key")
        .arg(&key)
        .arg("--out")
        .arg(&signed)
        .output()
        .unwrap());
    let out = sandstep()
        .args(["dev", "run", "manifest.json", "--handler"])
        .arg(&signed)
        .args(["--files", "payload"])
        .current_dir(project)
        .output()
        .unwrap();
    let text = ok(&out);
    text + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn handler_new_refuses_a_bad_id_and_a_directory_in_use() {
    let t = tempfile::tempdir().unwrap();
    let out = sandstep()
        .args(["handler", "new"])
        .arg(t.path().join("x"))
        .args(["--id", "no-version"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vendor/name:version"));
    std::fs::write(t.path().join("keep.txt"), b"mine").unwrap();
    let out = sandstep()
        .args(["handler", "new"])
        .arg(t.path())
        .args(["--id", "acme/x:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(std::fs::read(t.path().join("keep.txt")).unwrap(), b"mine");
}

/// PATH with the component toolchains scripts/guest-toolchains.sh installs (it runs in
/// scripts/test.sh); `None` when they are not there.
fn guest_toolchains_path() -> Option<String> {
    let tools = repo_root().join("target/tools");
    let py = tools.join("python/bin");
    let js = tools.join("js/node_modules/.bin");
    if !py.join("componentize-py").exists() || !js.join("componentize-js").exists() {
        return None;
    }
    let path = std::env::var("PATH").unwrap_or_default();
    Some(format!("{}:{}:{path}", py.display(), js.display()))
}

/// `handler new --lang`, `handler build`, `handler sign`, `dev run`: the output of `dev run`.
fn new_build_run(lang: &str, id: &str, path: &str) -> String {
    let t = tempfile::tempdir().unwrap();
    let project = t.path().join(format!("acme-{lang}"));
    ok(&sandstep()
        .args(["handler", "new"])
        .arg(&project)
        .args(["--id", id, "--lang", lang])
        .output()
        .unwrap());
    let built = ok(&sandstep()
        .args(["handler", "build"])
        .arg(&project)
        .env("PATH", path)
        .output()
        .unwrap());
    assert!(
        built.contains("capabilities: none needed"),
        "a {lang} handler built against the base world asks for no capability: {built}"
    );
    let wasm = project.join(format!("target/acme-{lang}.wasm"));
    sign_and_dev_run(&project, &wasm)
}

#[test]
fn python_and_javascript_handlers_build_with_their_official_toolchains_and_run() {
    let Some(path) = guest_toolchains_path() else {
        sandstep_testkit::prerequisite_missing(
            "componentize-py and componentize-js (scripts/guest-toolchains.sh installs them)",
        );
        return;
    };
    let py = new_build_run("python", "acme/pyconfig:1", &path);
    assert!(py.contains("install -> 600"), "{py}");
    assert!(py.contains("app.conf installed"), "{py}");
    assert!(py.contains("apply -> 700"), "{py}");
    let js = new_build_run("js", "acme/jscheck:1", &path);
    assert!(js.contains("is-installed -> 901"), "{js}");
    assert!(js.contains("running 0.9, want 1.0"), "{js}");
    assert!(
        js.contains("1 file(s) verified: app.conf (15 bytes)"),
        "{js}"
    );
    assert!(js.contains("apply -> 700"), "{js}");
}
