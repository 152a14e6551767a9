//! `microsoft/swupdate:2` (ADU's `swupdate_handler_v2.cpp`) with Debian's real `swupdate`: a
//! `.swu` built and signed here as SWUpdate expects (a CMS signature of `sw-description`, checked
//! against the signer's certificate), installed by a v2-protocol script under the kernel's hold.

use crate::workflow::Env;
use sandstep::config::Config;
use sandstep_model::codes::erc;
use sandstep_model::journal::Status;
use sandstep_testkit::{prerequisite_missing, repo_root};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use tokio_util::sync::CancellationToken;

const SWUPDATE: &str = "microsoft/swupdate:2";
const SCRIPT: &str = "swupdate-v2-install.sh";
const SWU: &str = "app-2.0.swu";
pub(crate) const HWREVISION: &str = "sandstep-test:1.0";

/// SWUpdate binds the abstract socket `@NotifyServer`: one runs at a time on a machine (a second
/// one beside it exits 1 after its install), so these tests take turns.
static ONE_SWUPDATE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `req` with `config` while no other SWUpdate test runs, and returns once no swupdate
/// process is left; the outcome and what the observer saw.
pub(crate) async fn run_alone(
    env: &Env,
    config: Config,
    req: sandstep::workflow::Request,
) -> (
    sandstep::workflow::Outcome,
    std::sync::Arc<crate::workflow::Recorder>,
) {
    let _turn = ONE_SWUPDATE_AT_A_TIME.lock().await;
    let d = env.deployer_with(config);
    let rec = std::sync::Arc::new(crate::workflow::Recorder::default());
    let out = d
        .run(req, rec.clone(), &CancellationToken::new())
        .await
        .unwrap();
    until_no_swupdate_runs().await;
    (out, rec)
}

/// Waits (up to 20 s) until no live `swupdate` process is left, so the next one finds the abstract
/// socket free.
async fn until_no_swupdate_runs() {
    for _ in 0..200 {
        // A zombie holds no socket: only live processes count.
        let running = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read_to_string(e.path().join("stat")).is_ok_and(|stat| {
                let (comm, rest) = stat.split_once(") ").unwrap_or_default();
                comm.ends_with("(swupdate") && !rest.starts_with('Z')
            })
        });
        if !running {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("a swupdate process is still running 20 s after its step ended");
}

/// Debian's swupdate, openssl and cpio are there; a missing one fails the run (not a pass).
pub(crate) fn have_swupdate_tools() -> bool {
    for p in ["swupdate", "openssl", "cpio"] {
        if !have(p) {
            prerequisite_missing(&format!(
                "{p} is not installed (Debian's swupdate, openssl, cpio)"
            ));
            return false;
        }
    }
    true
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `c`, failing the test with its output unless it succeeds (cli.rs's rule).
fn ok(c: &mut Command) {
    crate::cli::ok(&c.output().unwrap());
}

/// A `.swu` that puts `app.conf` (holding `version 2.0`) into `target`, signed with a key whose
/// certificate is written to `dir/signer.pem`.
fn signed_swu(dir: &Path, target: &Path) -> Vec<u8> {
    let payload = b"version 2.0\n";
    let description = json!({"software": {
        "version": "2.0.0",
        "description": "sandstep's swupdate:2 test",
        "hardware-compatibility": ["1.0"],
        "files": [{"filename": "app.conf", "path": target.join("app.conf"),
                   "sha256": hex::encode(sandstep::digest::Sha256::digest(payload))}]
    }});
    signed_swu_of(dir, &description, &[("app.conf", payload)])
}

/// A `.swu` of `description` (its `sw-description`) and `files`, signed as Debian's SWUpdate
/// requires (CMS, by a fresh key whose certificate is written to `dir/signer.pem`).
pub(crate) fn signed_swu_of(
    dir: &Path,
    description: &serde_json::Value,
    files: &[(&str, &[u8])],
) -> Vec<u8> {
    let d = |n: &str| dir.join(n);
    ok(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=sandstep swupdate test",
            "-addext",
            "extendedKeyUsage=emailProtection",
        ])
        .arg("-keyout")
        .arg(d("signer.key"))
        .arg("-out")
        .arg(d("signer.pem")));
    for (name, bytes) in files {
        std::fs::write(d(name), bytes).unwrap();
    }
    std::fs::write(
        d("sw-description"),
        serde_json::to_vec_pretty(description).unwrap(),
    )
    .unwrap();
    ok(Command::new("openssl")
        .args(["cms", "-sign", "-outform", "DER", "-nosmimecap", "-binary"])
        .arg("-in")
        .arg(d("sw-description"))
        .arg("-out")
        .arg(d("sw-description.sig"))
        .arg("-signer")
        .arg(d("signer.pem"))
        .arg("-inkey")
        .arg(d("signer.key")));
    // sw-description first, its signature second: the order SWUpdate reads a .swu in.
    let names: String = ["sw-description", "sw-description.sig"]
        .into_iter()
        .chain(files.iter().map(|(n, _)| *n))
        .map(|n| format!("{n}\n"))
        .collect();
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "crc", "--quiet"])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    cpio.stdin
        .take()
        .unwrap()
        .write_all(names.as_bytes())
        .unwrap();
    let out = cpio.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// A config letting the script (and the `swupdate` it starts) also write `target`.
fn config(target: &Path) -> Config {
    let toml = format!(
        "[handlers.\"{SWUPDATE}\"]\ncapabilities = [\"process\"]\npayload-in-work = true\n\
         [[handlers.\"{SWUPDATE}\".process.programs]]\npath = \"/bin/sh\"\n\
         forms = [{{ then = [\"payload-file\"], rest = [\"any\"] }}]\nwritable = [\"{}\"]\n",
        target.display()
    );
    Config::parse(&toml, "test").unwrap()
}

struct Case {
    env: Env,
    keys: tempfile::TempDir,
    target: tempfile::TempDir,
}

impl Case {
    fn new() -> Option<Case> {
        if !have_swupdate_tools() {
            return None;
        }
        let (keys, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut env = Env::new();
        env.install(SWUPDATE, "script");
        let script =
            std::fs::read(repo_root().join("tests/fixtures/scripts").join(SCRIPT)).unwrap();
        env.file(SCRIPT, &script);
        env.file(SWU, &signed_swu(keys.path(), target.path()));
        Some(Case { env, keys, target })
    }

    fn request(&self, wf: &str, props: serde_json::Value) -> sandstep::workflow::Request {
        let m = self.env.manifest(vec![json!({
            "handler": SWUPDATE, "files": [SCRIPT, SWU], "handlerProperties": props})]);
        self.env.request(wf, m)
    }

    fn props(&self) -> serde_json::Value {
        let version = self.target.path().join("app.conf");
        let cert = self.keys.path().join("signer.pem");
        json!({"scriptFileName": SCRIPT, "swuFileName": SWU, "installedCriteria": "version 2.0",
               "arguments": format!("--software-version-file {} --public-key-file {} --hwrevision {HWREVISION}",
                                    version.display(), cert.display())})
    }

    async fn run(&self, req: sandstep::workflow::Request) -> sandstep::workflow::Outcome {
        run_alone(&self.env, config(self.target.path()), req)
            .await
            .0
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_swu_is_installed_by_the_real_swupdate_through_adus_v2_protocol() {
    let Some(case) = Case::new() else { return };
    let out = case.run(case.request("wf-swu", case.props())).await;
    assert_eq!(out.status, Status::Succeeded, "{:#?}", out.result);
    assert_eq!(
        std::fs::read_to_string(case.target.path().join("app.conf")).unwrap(),
        "version 2.0\n",
        "SWUpdate wrote the image's file"
    );
    // ADU's v2 handler: download runs is-installed first, then the script's download action.
    let actions = &out.result.step_results["step_0"];
    assert_eq!(actions.result_code, 700, "{actions:#?}");
    // Deployed again: is-installed finds it installed and nothing runs.
    let again = case.run(case.request("wf-swu-again", case.props())).await;
    assert_eq!(again.status, Status::Succeeded, "{:#?}", again.result);
    assert_eq!(again.result.step_results["step_0"].result_code, 603);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swu_signed_by_another_key_is_refused_by_swupdate_and_fails_the_step_with_its_status() {
    let Some(case) = Case::new() else { return };
    let other = tempfile::tempdir().unwrap();
    signed_swu(other.path(), case.target.path()); // makes another key pair
    let mut props = case.props();
    props["arguments"] = json!(format!(
        "--software-version-file {} --public-key-file {} --hwrevision {HWREVISION}",
        case.target.path().join("app.conf").display(),
        other.path().join("signer.pem").display()
    ));
    let out = case.run(case.request("wf-swu-forged", props)).await;
    assert_eq!(out.status, Status::Failed, "{:#?}", out.result);
    let step = &out.result.step_results["step_0"];
    assert_eq!(step.result_code, 0);
    assert_eq!(
        step.extended_result_code & 0x7fff_f000u32 as i32,
        0x3010_1000,
        "{step:#?}"
    );
    assert!(
        !case.target.path().join("app.conf").exists(),
        "nothing installed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_swu_file_name_or_with_one_leaving_the_work_folder_the_step_fails_first() {
    let Some(case) = Case::new() else { return };
    for (wf, name) in [("wf-no-swu", None), ("wf-up-swu", Some("../../etc/passwd"))] {
        let mut props = case.props();
        match name {
            None => drop(props.as_object_mut().unwrap().remove("swuFileName")),
            Some(n) => props["swuFileName"] = json!(n),
        }
        let out = case.run(case.request(wf, props)).await;
        assert_eq!(out.status, Status::Failed);
        let step = &out.result.step_results["step_0"];
        assert_eq!(
            step.extended_result_code,
            erc::SWUPDATE_MISSING_SWU_FILE_NAME.raw()
        );
        assert!(step.result_details.contains("swuFileName"), "{step:#?}");
    }
    assert!(!case.target.path().join("app.conf").exists());
}

/// ADU's own v2 content (tests/adu/swupdate, from ADU's swupdate_handler_v2 test data): its
/// example script, and its file-copy `.swu` packed here by the recipe in ADU's README
/// (`cpio -ov -H crc` of sw-description, preinst.sh and the mock update), deployed with the
/// handlerProperties of ADU's `swupdate_handler_v2_ut.cpp`. The script's protocol runs as in
/// ADU's agent: is-installed answers 901 (no version file yet), download 500, and install runs
/// `swupdate` on the unsigned image. Debian's SWUpdate only installs signed images, and ADU's
/// script passes no key on this path, so SWUpdate refuses and the script reports what ADU's
/// agent then reports: result 0, erc 0x30101001, "SWUpdate command failed.". The restore that
/// follows runs the script's cancel action, which this script answers 801, so it fails too.
#[tokio::test(flavor = "multi_thread")]
async fn adus_example_script_and_file_copy_image_run_as_adus_agent_runs_them() {
    let Some(mut case) = Case::new() else { return };
    let adu = repo_root().join("tests/adu/swupdate");
    let script = "example-du-swupdate-script.sh";
    let swu = "du-agent-swupdate-filecopy-test-1_1.0.swu";
    let out = Command::new("sh")
        .arg("-c")
        .arg("printf 'sw-description\\npreinst.sh\\nmock-update-for-file-copy-test-1.txt\\n' | cpio -o -H crc --quiet")
        .current_dir(&adu)
        .output()
        .unwrap();
    assert!(out.status.success());
    case.env
        .file(script, &std::fs::read(adu.join(script)).unwrap());
    case.env.file(swu, &out.stdout);
    let version = case.target.path().join("installed-version.txt");
    let m = case.env.manifest(vec![json!({
        "handler": SWUPDATE, "files": [swu, script],
        "handlerProperties": {"installedCriteria": "This is swupdate filecopy test version 1.0",
            "arguments": format!("--software-version-file {}", version.display()),
            "scriptFileName": script, "swuFileName": swu}})]);
    let toml = format!(
        "[handlers.\"{SWUPDATE}\"]\ncapabilities = [\"process\"]\npayload-in-work = true\n\
         [[handlers.\"{SWUPDATE}\".process.programs]]\npath = \"/bin/bash\"\n\
         forms = [{{ then = [\"payload-file\"], rest = [\"any\"] }}]\n"
    );
    let config = Config::parse(&toml, "test").unwrap();
    let (out, rec) = run_alone(&case.env, config, case.env.request("wf-adu-swu", m)).await;
    assert_eq!(out.status, Status::Failed, "{:#?}", out.result);
    let step = &out.result.step_results["step_0"];
    assert_eq!(
        (step.result_code, step.extended_result_code),
        (0, 0x3010_1001),
        "{step:#?}"
    );
    assert!(
        step.result_details.starts_with("SWUpdate command failed."),
        "{step:#?}"
    );
    let codes: Vec<(String, i32)> = rec
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            sandstep::workflow::events::Event::ActionFinished { action, result, .. } => {
                Some((action.name().to_owned(), result.result_code))
            }
            _ => None,
        })
        .collect();
    let codes: Vec<(&str, i32)> = codes.iter().map(|(a, c)| (a.as_str(), *c)).collect();
    assert_eq!(
        codes,
        [
            ("is-installed", 901),
            ("download", 500), // runs is-installed (901) itself first, as ADU's Download does
            ("is-installed", 901),
            ("backup", 1000), // a no-op in ADU's v2 handler
            ("install", 0),
            ("restore", 0), // the script's cancel answers 801, so restore fails (ADU's Restore)
        ],
        "the actions the step runs, with the script's answers"
    );
}
