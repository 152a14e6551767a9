//! The vendor's path, as a generated project's README tells it: `handler new`, then every
//! command of the README's `sh` blocks run as written with bash (the native tests, `handler
//! build`, `handler sign`, `dev run` under the project's gateway.toml granting /config, `--twice`
//! and `--cancel-during install`), in each of the three languages.

use crate::cli::{ok, sandstep};
use sandstep_testkit::repo_root;
use std::path::Path;
use std::process::Command;

/// The commands of a README's `sh` blocks, one per line, without their comments.
fn readme_commands(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && !l.is_empty() => {
                out.push(l.split("  #").next().unwrap_or(l).trim().to_owned())
            }
            _ => {}
        }
    }
    out
}

/// Runs each README command in `project` with bash, sandstep and the component toolchains on
/// PATH and a dev cache of the test's own; each command with what it printed.
fn walk_readme(project: &Path, cache: &Path, path: &str) -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    let commands = readme_commands(&readme);
    assert!(commands.len() >= 8, "{commands:?}");
    commands
        .into_iter()
        .map(|c| {
            let out = Command::new("bash")
                .args(["-c", &c])
                .current_dir(project)
                .env("PATH", path)
                .env("XDG_CACHE_HOME", cache)
                .env_remove("RUST_LOG")
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "`{c}` failed:\n{text}");
            (c, text)
        })
        .collect()
}

/// What the command starting with `prefix` printed (the first such command).
fn printed<'a>(walked: &'a [(String, String)], prefix: &str) -> &'a str {
    walked
        .iter()
        .find(|(c, _)| c.starts_with(prefix))
        .map(|(_, out)| out.as_str())
        .unwrap_or_else(|| panic!("no command `{prefix}...` in the README"))
}

/// What the command ending with `suffix` printed.
fn ending<'a>(walked: &'a [(String, String)], suffix: &str) -> &'a str {
    walked
        .iter()
        .find(|(c, _)| c.ends_with(suffix))
        .map(|(_, out)| out.as_str())
        .unwrap_or_else(|| panic!("no command `... {suffix}` in the README"))
}

/// `handler new` in a fresh directory, then its README walked; the commands and their output.
fn new_and_walk(lang: &str, id: &str, path: &str) -> Vec<(String, String)> {
    let t = tempfile::tempdir().unwrap();
    let project = t.path().join(format!("acme-{lang}"));
    ok(&sandstep()
        .args(["handler", "new"])
        .arg(&project)
        .args(["--id", id, "--lang", lang])
        .output()
        .unwrap());
    if lang == "rust" {
        // The build shares the repository's target directory, so the standard library built
        // for the guests (Debian's toolchain builds it from source) is built once.
        std::os::unix::fs::symlink(repo_root().join("target"), project.join("target")).unwrap();
    }
    walk_readme(&project, &t.path().join("cache"), path)
}

/// Each language's README walk must show the same handler doing the same things.
fn assert_the_walk_shows_the_handler_working(lang: &str, walked: &[(String, String)]) {
    let built = printed(walked, "sandstep handler build");
    assert!(
        built.contains("capabilities: none needed"),
        "{lang}: the handler asks for no capability: {built}"
    );
    let run = printed(walked, "sandstep dev run");
    for want in [
        "backup -> 1001",
        "install -> 600",
        "app.conf installed",
        "apply -> 700",
        "dev cache: compiled",
    ] {
        assert!(run.contains(want), "{lang}: no `{want}` in:\n{run}");
    }
    assert_eq!(
        printed(walked, "cat device/config/app.conf"),
        "greeting=hello\n",
        "{lang}: the handler wrote into the granted directory"
    );
    let twice = ending(walked, "--twice");
    for want in [
        "dev cache: the compiled component was reused",
        "603  00000000",
        "already installed: 1.0 is installed",
        "--twice: already installed",
    ] {
        assert!(twice.contains(want), "{lang}: no `{want}` in:\n{twice}");
    }
    let cancelled = ending(walked, "--cancel-during install");
    for want in [
        "cancelling as install begins",
        "cancel -> 800",
        "Cancelled, result -1",
    ] {
        assert!(
            cancelled.contains(want),
            "{lang}: no `{want}` in:\n{cancelled}"
        );
    }
}

/// PATH with sandstep and the component toolchains scripts/guest-toolchains.sh installs (it
/// runs in scripts/test.sh); `None` when they are not there.
fn kit_path() -> Option<String> {
    let tools = repo_root().join("target/tools");
    let py = tools.join("python/bin");
    let js = tools.join("js/node_modules/.bin");
    if !py.join("componentize-py").exists() || !js.join("componentize-js").exists() {
        return None;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_sandstep")).parent().unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    Some(format!(
        "{}:{}:{}:{path}",
        bin.display(),
        py.display(),
        js.display()
    ))
}

#[test]
fn a_rust_handler_projects_readme_commands_work_as_written() {
    let bin = Path::new(env!("CARGO_BIN_EXE_sandstep")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let walked = new_and_walk("rust", "acme/config:1", &path);
    let tests = printed(&walked, "sandstep handler test");
    assert!(tests.contains("test result: ok. 3 passed"), "{tests}");
    assert_the_walk_shows_the_handler_working("rust", &walked);
}

#[test]
fn python_and_javascript_handler_projects_readme_commands_work_as_written() {
    let Some(path) = kit_path() else {
        sandstep_testkit::prerequisite_missing(
            "componentize-py and componentize-js (scripts/guest-toolchains.sh installs them)",
        );
        return;
    };
    let py = new_and_walk("python", "acme/pyconfig:1", &path);
    let tests = printed(&py, "sandstep handler test");
    assert!(
        tests.contains("Ran 3 tests") && tests.contains("OK"),
        "{tests}"
    );
    assert_the_walk_shows_the_handler_working("python", &py);

    let js = new_and_walk("js", "acme/jsconfig:1", &path);
    let tests = printed(&js, "sandstep handler test");
    assert!(
        tests.contains("# pass 3") && tests.contains("# fail 0"),
        "{tests}"
    );
    assert_the_walk_shows_the_handler_working("js", &js);
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

#[test]
fn the_readme_command_reader_takes_sh_blocks_only_without_comments() {
    let readme = "x\n```sh\nsandstep a   # why\n\nb\n```\n```text\nnot run\n```\n";
    assert_eq!(readme_commands(readme), ["sandstep a", "b"]);
}

/// The Python and JavaScript kits' own tests (sdk/python/test_sandstep.py,
/// sdk/js/sandstep.test.js): typed codes, refused codes, errno failures, the native harness.
#[test]
fn the_python_and_javascript_kits_pass_their_own_tests() {
    let py = Command::new("python3")
        .args(["-m", "unittest", "-v"])
        .current_dir(repo_root().join("sdk/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&py.stderr);
    assert!(
        py.status.success() && text.contains("Ran 6 tests"),
        "{text}"
    );
    let js = Command::new("node")
        .args(["--import", "./sandstep-hooks.js", "--test"])
        .current_dir(repo_root().join("sdk/js"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&js.stdout);
    assert!(
        js.status.success() && text.contains("# pass 5") && text.contains("# fail 0"),
        "{text}"
    );
}
