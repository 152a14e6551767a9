//! `microsoft/swupdate:1` (ADU's first SWUpdate handler) with Debian's real `swupdate` on
//! file-backed slots: SWUpdate writes the slot that is not running, chosen by ADU's selection
//! names (`stable,copy1` for A, `stable,copy2` for B), then the firmware handler's reboot, commit
//! and rollback follow. The test plays the boot loader as the firmware tests do.

use super::firmware::Device;
use super::swupdate::{have_swupdate_tools, run_alone, signed_swu_of, HWREVISION};
use crate::workflow::Env;
use sandstep::config::Config;
use sandstep::workflow::{Outcome, Request};
use sandstep_model::journal::Status;
use serde_json::json;

const V1: &str = "microsoft/swupdate:1";
const SWU: &str = "rootfs-2.0.swu";
const IMAGE: &[u8] = b"rootfs version 2.0\n";

struct Case {
    dev: Device,
    keys: tempfile::TempDir,
    env: Env,
}

impl Case {
    fn new() -> Option<Case> {
        if !have_swupdate_tools() {
            return None;
        }
        let dev = Device::new();
        std::fs::write(dev.path("b.img"), vec![0u8; 4096]).unwrap();
        let keys = tempfile::tempdir().unwrap();
        let image = |slot: &str| {
            json!({"images": [{"filename": "rootfs.img", "type": "raw",
                "device": dev.path(slot),
                "sha256": hex::encode(sandstep::digest::Sha256::digest(IMAGE))}]})
        };
        // ADU's layout (adu-swupdate.sh): selection `stable`, one copy per partition.
        let description = json!({"software": {
            "version": "2.0.0", "hardware-compatibility": ["1.0"],
            "stable": {"copy1": image("a.img"), "copy2": image("b.img")}}});
        let swu = signed_swu_of(keys.path(), &description, &[("rootfs.img", IMAGE)]);
        let mut env = Env::new();
        env.install(V1, "swupdate");
        env.file(SWU, &swu);
        Some(Case { dev, keys, env })
    }

    /// The device's slots for `microsoft/swupdate:1`, and SWUpdate allowed with the test key.
    fn config(&self) -> Config {
        let text = self
            .dev
            .config_text()
            .replace("sandstep/firmware:1", V1)
            .replace(
                "capabilities = [\"slot\"]",
                "capabilities = [\"slot\", \"process\"]",
            );
        let text = format!(
            "{text}[[handlers.\"{V1}\".process.programs]]\npath = \"/usr/bin/swupdate\"\n\
             host-args = [\"-k\", \"{}\", \"-H\", \"{HWREVISION}\"]\n\
             forms = [{{ prefix = [\"-v\", \"-i\"], then = [\"payload-file:.swu\", \
             \"inactive-slot:-estable,copy1|-estable,copy2\"] }}]\nwritable = [\"{}\"]\n",
            self.keys.path().join("signer.pem").display(),
            self.dev.path("").display()
        );
        Config::parse(&text, "test").unwrap()
    }

    fn request(&self, wf: &str, files: &[&str]) -> Request {
        let m = self.env.manifest(vec![json!({"handler": V1, "files": files,
            "handlerProperties": {"InstalledCriteria": "2.0"}})]);
        self.env.request(wf, m)
    }

    async fn run(&self, req: Request) -> Outcome {
        run_alone(&self.env, self.config(), req).await.0
    }

    /// Runs `req` and, when its outcome is not what `expected` says, fails showing the result,
    /// every event the run sent (SWUpdate's output among the logs) and the boot environment.
    async fn run_expecting(
        &self,
        req: Request,
        what: &str,
        expected: impl Fn(&Outcome) -> bool,
    ) -> Outcome {
        let (out, rec) = run_alone(&self.env, self.config(), req).await;
        assert!(
            expected(&out),
            "expected {what}; {:?}: {:#?}\nevents: {:#?}\nboot env: {:?}",
            out.status,
            out.result,
            rec.0.lock().unwrap(),
            std::fs::read_to_string(self.dev.path("bootenv"))
        );
        out
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn swupdate_writes_the_slot_not_running_and_the_slot_is_committed_after_the_reboot() {
    let Some(case) = Case::new() else { return };
    case.run_expecting(
        case.request("wf-v1", &[SWU]),
        "ADU's apply: reboot now (705)",
        |o| o.status == Status::RebootRequired && o.result.result_code == 705,
    )
    .await;
    let b = std::fs::read(case.dev.path("b.img")).unwrap();
    assert!(b.starts_with(IMAGE), "SWUpdate wrote slot B (copy2)");
    assert_eq!(
        std::fs::read(case.dev.path("a.img")).unwrap(),
        b"factory image 1.0",
        "the running slot is untouched"
    );
    assert_eq!(case.dev.env()["boot_slot"], "b");
    case.dev.reboot_into("b");
    case.run_expecting(case.request("wf-v1", &[SWU]), "committed", |o| {
        o.status == Status::Succeeded
    })
    .await;
    let env = case.dev.env();
    assert_eq!(
        (env["boot_slot"].as_str(), env["upgrade_available"].as_str()),
        ("b", "0")
    );
    // Deployed again from slot B: installed, nothing runs.
    case.run_expecting(
        case.request("wf-v1-again", &[SWU]),
        "the step skipped as installed (603)",
        |o| {
            o.status == Status::Succeeded
                && o.result
                    .step_results
                    .get("step_0")
                    .is_some_and(|s| s.result_code == 603)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_with_two_files_fails_with_adus_file_count_code_before_swupdate_runs() {
    let Some(mut case) = Case::new() else { return };
    case.env.file("extra.txt", b"x");
    let out = case
        .run(case.request("wf-v1-two", &[SWU, "extra.txt"]))
        .await;
    assert_eq!(out.status, Status::Failed, "{:#?}", out.result);
    assert_eq!(
        out.result.step_results["step_0"].extended_result_code as u32,
        0x3010_0103
    );
    assert!(!std::fs::read(case.dev.path("b.img"))
        .unwrap()
        .starts_with(IMAGE));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swu_signed_by_a_key_the_gateway_does_not_hold_writes_nothing() {
    let Some(case) = Case::new() else { return };
    // The gateway's key is another one now.
    let other = tempfile::tempdir().unwrap();
    signed_swu_of(other.path(), &json!({"software": {"version": "0"}}), &[]);
    std::fs::copy(
        other.path().join("signer.pem"),
        case.keys.path().join("signer.pem"),
    )
    .unwrap();
    let out = case.run(case.request("wf-v1-forged", &[SWU])).await;
    assert_eq!(out.status, Status::Failed, "{:#?}", out.result);
    let step = &out.result.step_results["step_0"];
    // SWUpdate's exit status 1 under ADU's code base for it.
    assert_eq!(step.extended_result_code as u32, 0x3010_1001, "{step:#?}");
    assert!(!std::fs::read(case.dev.path("b.img"))
        .unwrap()
        .starts_with(IMAGE));
    assert_eq!(case.dev.env()["boot_slot"], "a", "nothing selected");
}
