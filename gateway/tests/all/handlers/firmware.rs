//! `sandstep/firmware:1` with file-backed slots and a simulated reboot: the test plays the boot
//! loader (it sets `booted_slot` and a new boot id), then runs the deployment again.

use crate::workflow::{Env, Recorder};
use sandstep::config::Config;
use sandstep::datadir::DataDir;
use sandstep::sandbox::{EngineOptions, Sandbox};
use sandstep::workflow::events::Event;
use sandstep::workflow::{Deployer, Outcome};
use sandstep_model::journal::Status;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

const FW: &str = "sandstep/firmware:1";

/// A device with two file-backed slots, a boot-loader environment file and a boot id (also
/// the seed flow's device in seeds.rs).
pub(crate) struct Device {
    dir: tempfile::TempDir,
}

impl Device {
    pub(crate) fn new() -> Device {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.img"), b"factory image 1.0").unwrap();
        std::fs::write(dir.path().join("bootenv"), "booted_slot=a\nboot_slot=a\n").unwrap();
        std::fs::write(dir.path().join("boot_id"), "boot-1\n").unwrap();
        Device { dir }
    }
    pub(crate) fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
    fn config(&self) -> Config {
        Config::parse(&self.config_text(), "test").unwrap()
    }
    pub(crate) fn config_text(&self) -> String {
        std::fs::write(
            self.path("cmdline"),
            "console=ttyS0 root=/dev/mmcblk0p9 ro\n",
        )
        .unwrap();
        format!(
                "[handlers.\"{FW}\"]\ncapabilities = [\"slot\"]\n[handlers.\"{FW}\".slot]\na = \"{}\"\nb = \"{}\"\nboot-id-file = \"{}\"\ncmdline-file = \"{}\"\nboot = {{ method = \"env-file\", path = \"{}\" }}\n",
                self.path("a.img").display(),
                self.path("b.img").display(),
                self.path("boot_id").display(),
                self.path("cmdline").display(),
                self.path("bootenv").display()
            )
    }
    pub(crate) fn env(&self) -> BTreeMap<String, String> {
        std::fs::read_to_string(self.path("bootenv"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect()
    }
    /// The boot loader: boots `slot` (a new boot id).
    pub(crate) fn reboot_into(&self, slot: &str) {
        let mut env = self.env();
        env.insert("booted_slot".into(), slot.into());
        let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(self.path("bootenv"), text).unwrap();
        std::fs::write(
            self.path("boot_id"),
            format!("boot-{}\n", fastrand::u64(..)),
        )
        .unwrap();
    }
}

async fn run(
    env: &Env,
    config: Config,
    req: sandstep::workflow::Request,
) -> (Outcome, Arc<Recorder>) {
    let data = DataDir::open(env.data.path()).unwrap();
    let sandbox = Arc::new(Sandbox::new(&EngineOptions::default(), None).unwrap());
    let rec = Arc::new(Recorder::default());
    let out = Deployer::new(sandbox, data, config)
        .unwrap()
        .run(req, rec.clone(), &CancellationToken::new())
        .await
        .unwrap();
    (out, rec)
}

fn image() -> Vec<u8> {
    (0..300_000u32).map(|i| (i % 253) as u8).collect()
}

fn deployment(env: &mut Env) -> String {
    env.file("fw-2.0.img", &image());
    env.manifest(vec![json!({"handler": FW, "files": ["fw-2.0.img"], "handlerProperties": {"installedCriteria": "2.0"}})])
}

fn progress_messages(rec: &Recorder) -> Vec<String> {
    rec.0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Handler {
                percent: Some(_),
                message,
                ..
            } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_goes_to_the_inactive_slot_and_is_committed_after_a_good_reboot() {
    let dev = Device::new();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let m = deployment(&mut env);
    let (first, rec) = run(&env, dev.config(), env.request("wf-fw", m.clone())).await;
    assert_eq!(first.status, Status::RebootRequired, "{:#?}", first.result);
    assert_eq!(first.result.result_code, 705);
    assert_eq!(
        std::fs::read(dev.path("b.img")).unwrap(),
        image(),
        "slot B holds the image"
    );
    assert_eq!(
        std::fs::read(dev.path("a.img")).unwrap(),
        b"factory image 1.0",
        "the booted slot is untouched"
    );
    let env_now = dev.env();
    assert_eq!(env_now["boot_slot"], "b");
    assert_eq!(env_now["upgrade_available"], "1");
    let msgs = progress_messages(&rec);
    assert!(
        msgs.iter().any(|m| m.starts_with("downloading")),
        "{msgs:?}"
    );
    assert!(msgs.iter().any(|m| m.starts_with("applying")), "{msgs:?}");

    // The agent comes back without the reboot it asked for (a crash, a service restart): the
    // selection is undone, so the next boot does not start a slot the deployment reports as
    // failed, and the report says so.
    let (waiting, _) = run(&env, dev.config(), env.request("wf-fw", m.clone())).await;
    assert_eq!(waiting.status, Status::Failed, "{:#?}", waiting.result);
    let details = &waiting.result.step_results["step_0"].result_details;
    assert_eq!(
        details,
        "slot B (2.0) was selected, but the device did not reboot since; the selection is undone and slot A stays the boot slot",
        "{:#?}",
        waiting.result
    );
    let env_now = dev.env();
    assert_eq!(
        env_now["boot_slot"], "a",
        "the boot loader agrees with the report"
    );
    assert_eq!(env_now["upgrade_available"], "0");

    // A fresh deployment of the same update, this time with the reboot.
    let dev = Device::new();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let m = deployment(&mut env);
    let (first, _) = run(&env, dev.config(), env.request("wf-fw-2", m.clone())).await;
    assert_eq!(first.status, Status::RebootRequired);
    dev.reboot_into("b");
    let (second, rec) = run(&env, dev.config(), env.request("wf-fw-2", m)).await;
    assert_eq!(second.status, Status::Succeeded, "{:#?}", second.result);
    assert_eq!(second.result.step_results["step_0"].result_code, 700);
    let env_now = dev.env();
    assert_eq!(
        (
            env_now["boot_slot"].as_str(),
            env_now["upgrade_available"].as_str()
        ),
        ("b", "0"),
        "committed"
    );
    assert!(progress_messages(&rec).contains(&"completed".to_string()));
}

/// The power is cut after the commit reached the boot environment but before the handler
/// recorded it (the boot test's second power cut): the next start finds the new slot booted and
/// committed, and finishes the deployment as installed instead of calling it "not rebooted".
#[tokio::test(flavor = "multi_thread")]
async fn a_power_cut_between_the_commit_and_the_handlers_record_still_ends_installed() {
    let dev = Device::new();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let m = deployment(&mut env);
    let (first, _) = run(&env, dev.config(), env.request("wf-fw-cut", m.clone())).await;
    assert_eq!(first.status, Status::RebootRequired);
    dev.reboot_into("b");
    // What `commit` writes, with nothing after it.
    let mut boot = dev.env();
    for (k, v) in [
        ("upgrade_available", "0"),
        ("selected_boot_id", ""),
        ("bootcount", "0"),
    ] {
        boot.insert(k.into(), v.into());
    }
    let text: String = boot.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(dev.path("bootenv"), text).unwrap();
    let (second, _) = run(&env, dev.config(), env.request("wf-fw-cut", m)).await;
    assert_eq!(second.status, Status::Succeeded, "{:#?}", second.result);
    assert_eq!(second.result.step_results["step_0"].result_code, 700);
    assert_eq!(dev.env()["boot_slot"], "b");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_boot_rolls_back_and_marks_the_slot_bad() {
    let dev = Device::new();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let m = deployment(&mut env);
    let (first, _) = run(&env, dev.config(), env.request("wf-fw-bad", m.clone())).await;
    assert_eq!(first.status, Status::RebootRequired);
    // The new slot does not come up: the boot loader falls back to A.
    dev.reboot_into("a");
    let (second, _) = run(&env, dev.config(), env.request("wf-fw-bad", m)).await;
    assert_eq!(second.status, Status::Failed, "{:#?}", second.result);
    assert_eq!(second.result.extended_result_code as u32, 0xBA00_0103);
    assert_eq!(
        second.result.result_details,
        "rollback: slot B (2.0) failed to boot; slot A still runs an unknown version; slot B is marked bad"
    );
    let env_now = dev.env();
    assert_eq!(env_now["slot_b_bad"], "1");
    assert_eq!(env_now["boot_slot"], "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_slots_in_the_policy_every_slot_call_is_refused_by_name() {
    let mut env = Env::new();
    env.install(FW, "firmware");
    let m = deployment(&mut env);
    let (out, _) = run(&env, Config::default(), env.request("wf-fw-none", m)).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(
        out.result.result_details,
        "slot: denied by policy: no slots are configured for `sandstep/firmware:1` (policy: handlers.\"sandstep/firmware:1\".slot)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_word_on_the_booted_slot_nothing_is_written() {
    // Neither the boot environment, nor the kernel command line, nor the root device says which
    // slot runs: guessing A would overwrite B if B is running. Refused, both slots untouched.
    let dev = Device::new();
    std::fs::write(dev.path("bootenv"), "boot_slot=a\n").unwrap();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let m = deployment(&mut env);
    let config = dev.config();
    let (out, _) = run(
        &env,
        config.clone(),
        env.request("wf-fw-unknown", m.clone()),
    )
    .await;
    assert_eq!(out.status, Status::Failed, "{:#?}", out.result);
    assert!(
        out.result
            .result_details
            .contains("which slot booted is unknown"),
        "{}",
        out.result.result_details
    );
    assert!(!dev.path("b.img").exists(), "slot B untouched");
    assert_eq!(
        std::fs::read(dev.path("a.img")).unwrap(),
        b"factory image 1.0"
    );
    // The kernel command line can say it (RAUC's key here): B runs, so A is written.
    std::fs::write(dev.path("cmdline"), "root=/dev/x rauc.slot=B\n").unwrap();
    let (out, _) = run(&env, config, env.request("wf-fw-cmdline", m)).await;
    assert_eq!(out.status, Status::RebootRequired, "{:#?}", out.result);
    assert_eq!(std::fs::read(dev.path("a.img")).unwrap(), image());
}

#[test]
fn doctor_says_which_slot_booted_and_fails_when_nobody_says() {
    let dev = Device::new();
    let config = dev.path("config.toml");
    std::fs::write(&config, dev.config_text()).unwrap();
    let doctor = || {
        let out = crate::cli::sandstep()
            .arg("doctor")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dev.path("data"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = doctor();
    assert!(
        out.contains(&format!("ok    slots of {FW}: booted A, next boot A")),
        "{out}"
    );
    // Neither the boot environment nor the kernel command line says which slot runs.
    std::fs::write(dev.path("bootenv"), "boot_slot=a\n").unwrap();
    let out = doctor();
    assert!(
        out.contains(&format!("FAIL  slots of {FW}: "))
            && out.contains("which slot booted is unknown"),
        "{out}"
    );
}

/// GRUB's `grub-editenv` (Debian's grub-common), which plays GRUB's `load_env`/`save_env` here.
fn grub_editenv() -> Option<&'static str> {
    const BIN: &str = "/usr/bin/grub-editenv";
    // SAFETY: geteuid has no preconditions.
    if !std::path::Path::new(BIN).exists() && unsafe { libc::geteuid() } == 0 {
        let _ = std::process::Command::new("sh")
            .args(["-c", "apt-get install -y -q grub-common >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q grub-common >/dev/null)"])
            .status();
    }
    if std::path::Path::new(BIN).exists() {
        return Some(BIN);
    }
    sandstep_testkit::prerequisite_missing(
        "grub-editenv (grub-common) is not installed and cannot be (not root)",
    );
    None
}

fn editenv(bin: &str, file: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(bin)
        .arg(file)
        .args(args)
        .output()
        .unwrap();
    crate::cli::ok(&out);
    String::from_utf8(out.stdout).unwrap()
}

/// The boot control is GRUB's environment block: sandstep writes what `grub-editenv list` (and
/// GRUB's load_env) reads, keeps GRUB's own variables and the block's size, and reads what GRUB
/// wrote (`booted_slot` after the reboot).
#[tokio::test(flavor = "multi_thread")]
async fn a_grub_environment_block_carries_the_slot_selection_both_ways() {
    let Some(bin) = grub_editenv() else {
        return;
    };
    let dev = Device::new();
    let grubenv = dev.path("grubenv");
    editenv(bin, &grubenv, &["create"]);
    editenv(
        bin,
        &grubenv,
        &["set", "saved_entry=Debian", "booted_slot=a", "boot_slot=a"],
    );
    let config = dev.config_text().replace(
        &format!(
            "boot = {{ method = \"env-file\", path = \"{}\" }}",
            dev.path("bootenv").display()
        ),
        &format!(
            "boot = {{ method = \"grubenv\", path = \"{}\" }}",
            grubenv.display()
        ),
    );
    assert!(config.contains("grubenv"), "{config}");
    let config = Config::parse(&config, "test").unwrap();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let m = deployment(&mut env);
    let (first, _) = run(&env, config.clone(), env.request("wf-grub", m.clone())).await;
    assert_eq!(first.status, Status::RebootRequired, "{:#?}", first.result);
    let listed = editenv(bin, &grubenv, &["list"]);
    for line in ["boot_slot=b", "upgrade_available=1", "saved_entry=Debian"] {
        assert!(listed.lines().any(|l| l == line), "{line} in {listed}");
    }
    assert_eq!(std::fs::metadata(&grubenv).unwrap().len(), 1024);
    // GRUB boots slot B and says so.
    editenv(bin, &grubenv, &["set", "booted_slot=b"]);
    std::fs::write(dev.path("boot_id"), "boot-2\n").unwrap();
    let (second, _) = run(&env, config, env.request("wf-grub", m)).await;
    assert_eq!(second.status, Status::Succeeded, "{:#?}", second.result);
    let listed = editenv(bin, &grubenv, &["list"]);
    assert!(
        listed.lines().any(|l| l == "upgrade_available=0"),
        "{listed}"
    );
}

/// An image over the early-fetch size: streamed by the slot capability.
fn big_image(seed: u8) -> Vec<u8> {
    (0..6_000_000u32).map(|i| (i % 251) as u8 ^ seed).collect()
}

fn served_deployment(
    env: &mut Env,
    server: &crate::http::TestServer,
    image: &[u8],
) -> sandstep::workflow::Request {
    env.file("fw-big.img", image);
    std::fs::remove_file(env.files.path().join("fw-big.img")).unwrap();
    server.put("fw-big.img", image);
    let m = env.manifest(vec![json!({"handler": FW, "files": ["fw-big.img"], "handlerProperties": {"installedCriteria": "3.0"}})]);
    let mut req = env.request("wf-stream", m);
    req.source = sandstep_model::journal::FileSource::BaseUrl(server.base());
    req
}

/// The image goes from the server straight into the inactive slot, hashed as it is written:
/// no copy lands in the download store, and the slot is selected only after it verified.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_streams_into_the_slot_with_no_copy_in_the_store() {
    let dev = Device::new();
    let server = crate::http::TestServer::start();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let image = big_image(1);
    let req = served_deployment(&mut env, &server, &image);
    let (out, rec) = run(&env, dev.config(), req).await;
    assert_eq!(out.status, Status::RebootRequired, "{:#?}", out.result);
    assert_eq!(std::fs::read(dev.path("b.img")).unwrap(), image);
    assert_eq!(server.requests("fw-big.img"), [None], "one transfer");
    // Waiting for the reboot the deployment keeps its files: the store has none of the image.
    let store = crate::workflow::walk(&env.data.path().join("downloads"));
    assert!(store.is_empty(), "{store:?}");
    assert_eq!(dev.env()["boot_slot"], "b");
    assert_eq!(dev.env()["slot_b_bad"], "0");
    let msgs = progress_messages(&rec);
    assert!(
        msgs.iter()
            .any(|m| m == "applying: 6000000 of 6000000 bytes streamed into slot B"),
        "{msgs:?}"
    );
}

/// Bytes that are not the signed manifest's: the slot stays marked bad, the boot loader keeps
/// the running slot, and the step says which digests differ.
#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_image_that_does_not_verify_leaves_the_slot_bad_and_unselected() {
    let dev = Device::new();
    let server = crate::http::TestServer::start();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let image = big_image(2);
    let req = served_deployment(&mut env, &server, &image);
    server.behave(
        "fw-big.img",
        crate::http::Behavior {
            wrong_bytes: true,
            ..Default::default()
        },
    );
    let (out, _) = run(&env, dev.config(), req).await;
    assert_eq!(out.status, Status::Failed, "{:#?}", out.result);
    let details = &out.result.step_results["step_0"].result_details;
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&image));
    assert!(
        details.contains(&format!(
            "but the signed manifest says {want}; slot B stays marked bad"
        )),
        "{details}"
    );
    let env_now = dev.env();
    assert_eq!(env_now["slot_b_bad"], "1");
    assert_eq!(env_now["boot_slot"], "a");
}

/// A file missing on the server fails the step in the download phase, before anything is
/// written, as a download would.
#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_image_missing_on_the_server_fails_before_any_slot_is_touched() {
    let dev = Device::new();
    let server = crate::http::TestServer::start();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let req = served_deployment(&mut env, &server, &big_image(3));
    server.behave(
        "fw-big.img",
        crate::http::Behavior {
            status: Some(404),
            ..Default::default()
        },
    );
    server.put("fw-big.img", b"");
    let (out, _) = run(&env, dev.config(), req).await;
    assert_eq!(out.status, Status::Failed, "{:#?}", out.result);
    assert!(!dev.path("b.img").exists(), "slot B untouched");
    assert!(
        server.requests("fw-big.img").is_empty(),
        "no transfer started"
    );
}

/// A connection dropped mid-image: the next attempt asks for the rest (HTTP Range) and the
/// prefix already in the slot is hashed from the slot, not fetched again.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_stream_resumes_where_the_slot_holds_the_image() {
    let dev = Device::new();
    let server = crate::http::TestServer::start();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let image = big_image(4);
    let req = served_deployment(&mut env, &server, &image);
    server.behave(
        "fw-big.img",
        crate::http::Behavior {
            drop_first: Some((1, 2_500_000)),
            ..Default::default()
        },
    );
    let mut config = dev.config();
    config.download.initial_backoff_ms = 10;
    let (out, _) = run(&env, config, req).await;
    assert_eq!(out.status, Status::RebootRequired, "{:#?}", out.result);
    assert_eq!(std::fs::read(dev.path("b.img")).unwrap(), image);
    let requests = server.requests("fw-big.img");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0], None);
    let resumed = requests[1].expect("the second asks for a range");
    assert!(resumed > 0 && resumed <= 2_500_000, "{requests:?}");
}

/// Image v1 on the running slot, v2 = v1 with every 20th 64 KiB block changed (5%), its block
/// index beside it on the server; the request streams v2 with the index.
fn delta_setup(
    dev: &Device,
    env: &mut Env,
    server: &crate::http::TestServer,
) -> (Vec<u8>, sandstep::workflow::Request) {
    let v1 = big_image(5);
    std::fs::write(dev.path("a.img"), &v1).unwrap();
    let mut v2 = v1.clone();
    for block in (0..v2.len() / 65536).step_by(20) {
        v2[block * 65536 + 100] ^= 0x5A;
    }
    let index = sandstep::blockindex::BlockIndex::of(&mut &v2[..], 65536)
        .unwrap()
        .to_bytes();
    for (name, bytes) in [("fw-big.img", &v2), ("fw-big.img.blockindex", &index)] {
        env.file(name, bytes);
        std::fs::remove_file(env.files.path().join(name)).unwrap();
        server.put(name, bytes);
    }
    let m = env.manifest(vec![
        json!({"handler": FW, "files": ["fw-big.img", "fw-big.img.blockindex"],
        "handlerProperties": {"installedCriteria": "5.0", "imageFileName": "fw-big.img"}}),
    ]);
    let mut req = env.request("wf-delta", m);
    req.source = sandstep_model::journal::FileSource::BaseUrl(server.base());
    (v2, req)
}

/// The install action's details (the result file has the step only once it is over).
fn install_details(rec: &Recorder) -> String {
    rec.0
        .lock()
        .unwrap()
        .iter()
        .find_map(|e| match e {
            Event::ActionFinished {
                action: sandstep_model::Action::Install,
                result,
                ..
            } => Some(result.result_details.clone()),
            _ => None,
        })
        .expect("install ran")
}

fn fetched_of(rec: &Recorder) -> u64 {
    let details = install_details(rec);
    details
        .split("; ")
        .nth(1)
        .and_then(|s| s.strip_suffix(" fetched, the rest was on the device"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fetched count in {details:?}"))
}

/// With a block index, only the changed blocks come over the network (coalesced Range
/// requests); the rest is copied from the running slot; the whole image still verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_delta_update_fetches_only_the_changed_blocks() {
    let dev = Device::new();
    let server = crate::http::TestServer::start();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let (v2, req) = delta_setup(&dev, &mut env, &server);
    let (out, rec) = run(&env, dev.config(), req).await;
    assert_eq!(out.status, Status::RebootRequired, "{:#?}", out.result);
    assert_eq!(std::fs::read(dev.path("b.img")).unwrap(), v2);
    let changed = (v2.len() as u64 / 65536).div_ceil(20) * 65536;
    let fetched = fetched_of(&rec);
    assert!(
        fetched <= changed * 13 / 10,
        "fetched {fetched} for {changed} changed bytes"
    );
    let ranges = server.requests("fw-big.img");
    assert!(ranges.iter().all(Option::is_some), "{ranges:?}");
    assert!(progress_messages(&rec)
        .iter()
        .any(|m| m.starts_with("applying: fetched ") && m.contains("(6000000 in the image)")));
}

/// A server that ignores Range requests: the whole image is streamed instead, and it still
/// ends right.
#[tokio::test(flavor = "multi_thread")]
async fn a_delta_update_from_a_server_without_ranges_streams_the_whole_image() {
    let dev = Device::new();
    let server = crate::http::TestServer::start();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let (v2, req) = delta_setup(&dev, &mut env, &server);
    server.behave(
        "fw-big.img",
        crate::http::Behavior {
            no_range: true,
            ..Default::default()
        },
    );
    let (out, rec) = run(&env, dev.config(), req).await;
    assert_eq!(out.status, Status::RebootRequired, "{:#?}", out.result);
    assert_eq!(std::fs::read(dev.path("b.img")).unwrap(), v2);
    assert_eq!(install_details(&rec), "6000000 bytes into slot B");
}

/// A resume record whose slot has since been written with something else: the resumed image
/// fails its hash, so it is streamed once more from the start instead of failing the step.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_stream_record_costs_one_restart_not_a_failure() {
    let dev = Device::new();
    let server = crate::http::TestServer::start();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let image = big_image(6);
    let req = served_deployment(&mut env, &server, &image);
    std::fs::write(dev.path("b.img"), vec![0u8; image.len()]).unwrap();
    let streams = env.data.path().join("streams");
    std::fs::create_dir_all(&streams).unwrap();
    let key = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&image));
    std::fs::write(streams.join(format!("{key}-b")), "4194304").unwrap();
    let (out, _) = run(&env, dev.config(), req).await;
    assert_eq!(out.status, Status::RebootRequired, "{:#?}", out.result);
    assert_eq!(std::fs::read(dev.path("b.img")).unwrap(), image);
    assert_eq!(server.requests("fw-big.img"), [Some(4194304), None]);
}

/// A pre-signed URL is signed for GET only, so a HEAD is refused (403): the download phase
/// gives it the benefit of the doubt, and the stream at install works.
#[tokio::test(flavor = "multi_thread")]
async fn a_url_that_refuses_head_still_streams() {
    let dev = Device::new();
    let server = crate::http::TestServer::start();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let image = big_image(7);
    let req = served_deployment(&mut env, &server, &image);
    server.behave(
        "fw-big.img",
        crate::http::Behavior {
            head_status: Some(403),
            ..Default::default()
        },
    );
    let (out, _) = run(&env, dev.config(), req).await;
    assert_eq!(out.status, Status::RebootRequired, "{:#?}", out.result);
    assert_eq!(std::fs::read(dev.path("b.img")).unwrap(), image);
}

/// From a local files directory (`sandstep run --files DIR`) an image streams into the slot the
/// same way, and with a block index only the changed blocks are read from it.
#[tokio::test(flavor = "multi_thread")]
async fn images_stream_from_a_files_directory_too_whole_or_by_changed_blocks() {
    let dev = Device::new();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let image = big_image(8);
    env.file("fw-big.img", &image);
    let m = env.manifest(vec![json!({"handler": FW, "files": ["fw-big.img"], "handlerProperties": {"installedCriteria": "3.0"}})]);
    let (out, _) = run(&env, dev.config(), env.request("wf-local", m)).await;
    assert_eq!(out.status, Status::RebootRequired, "{:#?}", out.result);
    assert_eq!(std::fs::read(dev.path("b.img")).unwrap(), image);
    let store = crate::workflow::walk(&env.data.path().join("downloads"));
    assert!(store.is_empty(), "{store:?}");

    let dev = Device::new();
    let server = crate::http::TestServer::start();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let (v2, mut req) = delta_setup(&dev, &mut env, &server);
    for (name, bytes) in [
        ("fw-big.img", v2.clone()),
        (
            "fw-big.img.blockindex",
            sandstep::blockindex::BlockIndex::of(&mut &v2[..], 65536)
                .unwrap()
                .to_bytes(),
        ),
    ] {
        std::fs::write(env.files.path().join(name), bytes).unwrap();
    }
    req.source =
        sandstep_model::journal::FileSource::Directory(env.files.path().display().to_string());
    let (out, rec) = run(&env, dev.config(), req).await;
    assert_eq!(out.status, Status::RebootRequired, "{:#?}", out.result);
    assert_eq!(std::fs::read(dev.path("b.img")).unwrap(), v2);
    assert!(fetched_of(&rec) < v2.len() as u64 / 5);
    assert!(server.requests("fw-big.img").is_empty());
}

/// The device plus a `[health]` table.
fn with_health(dev: &Device, health: &str) -> Config {
    Config::parse(&format!("{}[health]\n{health}", dev.config_text()), "test").unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_health_check_failing_after_the_reboot_rolls_the_slot_back_and_names_the_check() {
    let dev = Device::new();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let m = deployment(&mut env);
    let health = "programs = [[\"/bin/sh\", \"-c\", \"echo the api is down >&2; exit 3\"]]\ntries = 2\ninterval-secs = 0\n";
    let (first, _) = run(
        &env,
        with_health(&dev, health),
        env.request("wf-h", m.clone()),
    )
    .await;
    assert_eq!(first.status, Status::RebootRequired);
    dev.reboot_into("b");
    // Slot B booted, but the checks fail: B is marked bad, A selected, and a reboot asked for,
    // before anything committed B.
    let (second, _) = run(
        &env,
        with_health(&dev, health),
        env.request("wf-h", m.clone()),
    )
    .await;
    assert_eq!(
        second.status,
        Status::RebootRequired,
        "{:#?}",
        second.result
    );
    assert!(
        second.result.result_details.starts_with("rolling back: health check program `/bin/sh -c echo the api is down >&2; exit 3` failed (try 2 of 2): exit status 3; output: the api is down"),
        "{:#?}",
        second.result
    );
    let env_now = dev.env();
    assert_eq!(
        (
            env_now["slot_b_bad"].as_str(),
            env_now["boot_slot"].as_str(),
            env_now["upgrade_available"].as_str()
        ),
        ("1", "a", "0"),
        "{env_now:?}"
    );
    // Back on A: the step reports the rollback, with the check's words.
    dev.reboot_into("a");
    let (third, _) = run(&env, with_health(&dev, health), env.request("wf-h", m)).await;
    assert_eq!(third.status, Status::Failed, "{:#?}", third.result);
    assert_eq!(third.result.extended_result_code as u32, 0xBA00_0103);
    let details = &third.result.result_details;
    assert!(
        details.starts_with("rollback: slot B (2.0) failed to boot"),
        "{details}"
    );
    assert!(
        details.contains("health check program `/bin/sh -c echo the api is down >&2; exit 3` failed (try 2 of 2): exit status 3; output: the api is down; slot B was on trial: it is marked bad and the other slot boots next"),
        "{details}"
    );
    let env_now = dev.env();
    assert_eq!(
        (
            env_now["boot_slot"].as_str(),
            env_now["upgrade_available"].as_str()
        ),
        ("a", "0")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_slot_is_committed_only_once_the_health_checks_pass_and_a_later_try_may_pass() {
    let dev = Device::new();
    let mut env = Env::new();
    env.install(FW, "firmware");
    let m = deployment(&mut env);
    let server = crate::http::TestServer::start();
    server.put("healthz", b"ok");
    // The program fails its first try (services still starting) and passes the second.
    let health = format!(
        "programs = [[\"/bin/sh\", \"-c\", \"test -e started || {{ : > started; exit 1; }}\"]]\nurls = [\"{}\"]\ntries = 3\ninterval-secs = 0\n",
        server.url("healthz")
    );
    let (first, _) = run(
        &env,
        with_health(&dev, &health),
        env.request("wf-ok", m.clone()),
    )
    .await;
    assert_eq!(first.status, Status::RebootRequired);
    dev.reboot_into("b");
    let (second, _) = run(&env, with_health(&dev, &health), env.request("wf-ok", m)).await;
    assert_eq!(second.status, Status::Succeeded, "{:#?}", second.result);
    assert_eq!(second.result.step_results["step_0"].result_code, 700);
    let env_now = dev.env();
    assert_eq!(
        (
            env_now["boot_slot"].as_str(),
            env_now["upgrade_available"].as_str()
        ),
        ("b", "0")
    );
    assert!(
        env.data.path().join("health/started").exists(),
        "the first try ran in the health folder"
    );
}
