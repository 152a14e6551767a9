//! A real boot. QEMU starts UEFI firmware (Debian's OVMF), which starts GRUB from the disk's EFI
//! system partition; GRUB reads its environment block there and boots slot A or B (GPT
//! partitions 2 and 3: a Debian kernel and a busybox initramfs, made by scripts/boot-image.sh
//! from Debian's packages). The slot's init starts the test build of `sandstep agent` from the
//! data partition; it reaches the host's mosquitto and HTTP server through QEMU's user network
//! (the host is 10.0.2.2). Nothing here plays the boot loader: GRUB counts, falls back and
//! boots; the kernel panics; the machine reboots.
//!
//! KVM is used when it runs this firmware; where it cannot (some nested set-ups fail on OVMF's
//! first instructions), the test says so and emulates (TCG).

use crate::fleet::Fleet;
use crate::support::signed;
use crate::workflow::file_entry;
use sandstep::datadir::DataDir;
use sandstep::registry::Registry;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FW: &str = "sandstep/firmware:1";
const DEVICE: &str = "vm-1";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether the machine can make and boot the images: as root, scripts/boot-image.sh installs
/// what is missing; otherwise the tools must be there already, or the test says it is skipped
/// (and fails under scripts/test.sh).
fn can_boot() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let tools = [
        "qemu-system-x86_64",
        "mkfs.vfat",
        "mcopy",
        "mtype",
        "sfdisk",
        "mkfs.ext4",
        "grub-mkstandalone",
        "cpio",
        "strings",
    ];
    let on_path = |t: &str| {
        ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(t).exists())
    };
    let missing: Vec<&str> = tools.into_iter().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    sandstep_testkit::prerequisite_missing(&format!(
        "the boot test needs {} and cannot install them (not root)",
        missing.join(", ")
    ));
    false
}

/// scripts/boot-image.sh, failing the test with its output when it fails.
fn boot_image(args: &[&std::ffi::OsStr]) {
    let out = Command::new(repo().join("scripts/boot-image.sh"))
        .args(args)
        .output()
        .unwrap();
    crate::cli::ok(&out);
}

/// The machine: QEMU with the disk, its serial console in a file (one per power-on).
struct Vm {
    child: Child,
    dir: PathBuf,
    disk: PathBuf,
    firmware: PathBuf,
    kvm: bool,
    console: PathBuf,
    power_ons: u32,
    /// Console bytes already looked at by `wait_console`.
    seen: usize,
}

impl Vm {
    /// Powers the machine on: with KVM where it runs this firmware, emulated otherwise.
    fn start(dir: &Path, base: &Path, disk: &Path) -> Vm {
        let firmware = dir.join("ovmf.fd");
        std::fs::copy(base.join("ovmf.fd"), &firmware).unwrap();
        let kvm = Path::new("/dev/kvm").exists();
        let mut vm = Vm {
            child: Command::new("true").spawn().unwrap(),
            dir: dir.to_owned(),
            disk: disk.to_owned(),
            firmware,
            kvm,
            console: PathBuf::new(),
            power_ons: 0,
            seen: 0,
        };
        vm.power_on();
        if !kvm {
            eprintln!("boot test: no /dev/kvm, emulating (TCG)");
            return vm;
        }
        // KVM that cannot run OVMF stops at once, or stays stopped, with an internal error.
        std::thread::sleep(Duration::from_secs(3));
        let err = std::fs::read_to_string(dir.join("qemu.err")).unwrap_or_default();
        if matches!(vm.child.try_wait(), Ok(Some(_))) || err.contains("KVM internal error") {
            eprintln!(
                "boot test: KVM cannot run the firmware here ({}), emulating (TCG)",
                err.lines().next().unwrap_or("QEMU exited")
            );
            vm.kvm = false;
            vm.power_cut();
        }
        vm
    }

    /// Kills QEMU as a power cut would stop the machine (no shutdown, no flush by the guest),
    /// then powers it on again.
    fn power_cut(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.power_on();
    }

    fn power_on(&mut self) {
        self.power_ons += 1;
        self.console = self.dir.join(format!("console-{}.log", self.power_ons));
        self.seen = 0;
        let mut c = Command::new("qemu-system-x86_64");
        if self.kvm {
            c.args(["-accel", "kvm", "-cpu", "host,-arch-capabilities"]);
        } else {
            c.args(["-accel", "tcg", "-cpu", "max"]);
        }
        c.args(["-m", "1536", "-smp", "2", "-nographic", "-monitor", "none"])
            .arg("-bios")
            .arg(&self.firmware)
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", self.disk.display()))
            .args([
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-pci,netdev=n0",
            ])
            .arg("-serial")
            .arg(format!("file:{}", self.console.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("qemu.err")).unwrap());
        self.child = c
            .spawn()
            .expect("qemu-system-x86_64 (Debian's qemu-system-x86)");
    }

    fn console(&self) -> String {
        let bytes = std::fs::read(&self.console).unwrap_or_default();
        String::from_utf8_lossy(&bytes).replace('\r', "")
    }

    /// Waits for `needle` on the console after what was already seen; returns the text up to it.
    fn wait_console(&mut self, needle: &str, limit: Duration) -> String {
        let t = Instant::now();
        loop {
            let text = self.console();
            if let Some(at) = text[self.seen.min(text.len())..].find(needle) {
                let end = self.seen + at + needle.len();
                let chunk = text[self.seen..end].to_owned();
                self.seen = end;
                return chunk;
            }
            assert!(
                t.elapsed() < limit,
                "`{needle}` did not appear on the console in {limit:?}; console:\n{}",
                tail(&text)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(6000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The gateway's config inside the machine: the broker on the host, the slots and GRUB's
/// environment block, the health check every slot image carries.
fn guest_config(broker_port: u16) -> String {
    format!(
        r#"[agent]
device-id = "{DEVICE}"
reboot-command = ["/bin/reboot", "-f"]
progress-interval-ms = 500
confirm-timeout-ms = 2000
[mqtt]
url = "mqtt://10.0.2.2:{broker_port}"
reconnect-min-ms = 200
reconnect-max-ms = 2000
[handlers."{FW}"]
capabilities = ["slot"]
[handlers."{FW}".slot]
a = "/dev/vda2"
b = "/dev/vda3"
boot = {{ method = "grubenv", path = "/boot/efi/grubenv" }}
[health]
programs = [["/bin/health-check"]]
tries = 2
interval-secs = 1
time-limit-secs = 60
"#
    )
}

/// Copies `from` into `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// The data partition's contents: the agent (its debug information left out), its config and
/// its data dir (trusted keys, the firmware handler).
fn staging(fleet: &Fleet) -> PathBuf {
    let reg = Registry::open(DataDir::open(&fleet.data).unwrap().handlers().unwrap()).unwrap();
    reg.install(
        FW,
        &signed("firmware"),
        "firmware.wasm",
        vec!["test-vendor".into()],
        0,
    )
    .unwrap();
    let stage = fleet.dir.path().join("stage");
    copy_tree(&fleet.data, &stage.join("var"));
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(env!("CARGO_BIN_EXE_sandstep"))
        .arg(stage.join("sandstep"))
        .status()
        .unwrap();
    assert!(status.success(), "objcopy (binutils)");
    std::fs::write(stage.join("agent.toml"), guest_config(fleet.broker.port)).unwrap();
    // Where the agent stops for the power cuts, in order (tests/boot/init, fault::hold).
    std::fs::write(stage.join("hold"), "stream-write\nslot-committed\n").unwrap();
    stage
}

/// Deploys slot image `version` as a signed one-step firmware update; its URL is the host's as
/// the machine sees it.
fn deploy(fleet: &Fleet, base: &Path, version: &str, workflow: &str) {
    let name = format!("slot-{version}.img");
    let image = std::fs::read(base.join(&name)).unwrap();
    fleet.server.put(&name, &image);
    let m = json!({
        "updateId": {"provider": "test", "name": "gateway-os", "version": version},
        "compatibility": [{"model": "gw"}],
        "instructions": {"steps": [{"handler": FW, "files": [name.clone()],
            "handlerProperties": {"installedCriteria": version}}]},
        "files": {name.clone(): file_entry(&name, &image)},
        "manifestVersion": "5.0"
    });
    let path = fleet.dir.path().join(format!("{workflow}.json"));
    std::fs::write(&path, m.to_string()).unwrap();
    fleet.deploy_from(
        DEVICE,
        &path,
        workflow,
        &format!("http://10.0.2.2:{}/", fleet.server.port()),
        &[],
    );
}

/// Whether a space-separated environment listing holds `kv`.
fn has(env: &str, kv: &str) -> bool {
    env.split_whitespace().any(|x| x == kv)
}

fn finished(workflow: &str) -> impl Fn(&Value) -> bool + '_ {
    move |r| {
        r.pointer("/workflow/id").and_then(Value::as_str) == Some(workflow)
            && matches!(r["status"].as_str(), Some("completed" | "failed"))
    }
}

/// GRUB's environment block as the disk holds it (read with mtools once the machine is off).
fn grubenv(disk: &Path) -> String {
    let out = Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@1M", disk.display()))
        .arg("::grubenv")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ")
}

/// v2 streams into slot B; the power is cut while it is written, and again just after the
/// commit reached GRUB's environment. Each time the machine comes back on a bootable slot (A,
/// then B) and the agent finishes the deployment: 700, after the health check ran again.
fn committed_through_two_power_cuts(fleet: &Fleet, base: &Path, vm: &mut Vm, boot: Duration) {
    deploy(fleet, base, "2.0", "wf-v2");
    vm.wait_console("fault injection: holding at stream-write", boot);
    vm.power_cut();
    vm.wait_console("sandstep-boot: slot=a version=1.0", boot);
    vm.wait_console("sandstep-boot: grubenv", boot);
    let env = vm.wait_console("\n", boot);
    assert!(
        has(&env, "slot_b_bad=1"),
        "B half written, so marked bad: {env}"
    );
    vm.wait_console("sandstep-boot: slot=b version=2.0", boot);
    vm.wait_console("fault injection: holding at slot-committed", boot);
    vm.power_cut();
    let booted = vm.wait_console("sandstep-boot: grubenv", boot);
    assert!(
        booted.contains("sandstep-boot: slot=b version=2.0"),
        "{booted}"
    );
    let env = vm.wait_console("\n", boot);
    for want in ["boot_slot=b", "upgrade_available=0", "slot_b_bad=0"] {
        assert!(
            has(&env, want),
            "the commit survived the power cut: {want} not in {env}"
        );
    }
    vm.wait_console("running the health checks", boot);
    let r = fleet.wait_for_within(DEVICE, "v2 committed", boot, finished("wf-v2"));
    assert_eq!(r["status"], "completed", "{r:#}\n{}", tail(&vm.console()));
    assert_eq!(r["lastInstallResult"]["resultCode"], 700, "{r:#}");
}

/// The plain flow, timed for BENCHMARKS.md: v2.1 streams into slot A, the machine reboots into
/// it, the health check passes, sandstep commits and reports 700.
fn committed_on_the_first_boot(fleet: &Fleet, base: &Path, vm: &mut Vm, boot: Duration) {
    let started = Instant::now();
    deploy(fleet, base, "2.1", "wf-v2.1");
    vm.wait_console("sandstep-boot: slot=a version=2.1", boot);
    let r = fleet.wait_for_within(DEVICE, "v2.1 committed", boot, finished("wf-v2.1"));
    assert_eq!(r["status"], "completed", "{r:#}\n{}", tail(&vm.console()));
    assert_eq!(r["lastInstallResult"]["resultCode"], 700, "{r:#}");
    eprintln!(
        "boot test: deploy to committed (stream 2.1 into slot A, reboot, health check, commit) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Waits for `workflow` to end; it must have failed with slot B's rollback. Returns the details.
fn rolled_back(fleet: &Fleet, workflow: &str, version: &str, boot: Duration) -> String {
    let r = fleet.wait_for_within(DEVICE, "the rollback", boot, finished(workflow));
    assert_eq!(r["status"], "failed", "{r:#}");
    let details = r["lastInstallResult"]["resultDetails"]
        .as_str()
        .unwrap_or_default();
    let want = format!("rollback: slot B ({version}) failed to boot");
    assert!(details.contains(&want), "{want} not in {r:#}");
    details.to_owned()
}

/// v3's health check fails on slot B: the machine boots it, sandstep marks it bad and reboots
/// into A, and the deployment fails with the rollback and the check's words.
fn health_failure_rolls_back(fleet: &Fleet, base: &Path, vm: &mut Vm, boot: Duration) {
    deploy(fleet, base, "3.0", "wf-v3");
    vm.wait_console("sandstep-boot: slot=b version=3.0", boot);
    vm.wait_console("sandstep-boot: slot=a version=2.1", boot);
    let details = rolled_back(fleet, "wf-v3", "3.0", boot);
    assert!(
        details.contains("health check program `/bin/health-check` failed (try 2 of 2): exit status 1; output: the application did not come up on 3.0"),
        "{details}"
    );
}

/// v4's kernel panics: GRUB boots slot B three times, falls back to A by itself, and the
/// deployment fails with the rollback.
fn panicking_kernel_falls_back(fleet: &Fleet, base: &Path, vm: &mut Vm, boot: Duration) {
    deploy(fleet, base, "4.0", "wf-v4");
    let panics = vm.wait_console("sandstep-boot: slot=a version=2.1", boot);
    assert_eq!(
        panics.matches("Kernel panic").count(),
        3,
        "GRUB gave slot B three boots before it fell back:\n{panics}"
    );
    rolled_back(fleet, "wf-v4", "4.0", boot);
}

/// The whole flow on one machine, each part above in turn; at the end GRUB's environment
/// selects A (2.1), committed, with B (4.0) marked bad and nothing on trial.
#[test]
fn a_firmware_update_really_reboots_survives_power_cuts_and_rolls_back_on_health_and_panic() {
    if !can_boot() {
        return;
    }
    let Some(fleet) = Fleet::new(DEVICE) else {
        return;
    };
    let base = repo().join("target/boot-test");
    boot_image(&["base".as_ref(), base.as_os_str()]);
    let stage = staging(&fleet);
    let disk = fleet.dir.path().join("disk.img");
    boot_image(&[
        "disk".as_ref(),
        base.as_os_str(),
        stage.as_os_str(),
        disk.as_os_str(),
    ]);
    let _replica = fleet.replica();
    let mut vm = Vm::start(fleet.dir.path(), &base, &disk);
    let boot = Duration::from_secs(600);
    vm.wait_console("sandstep-boot: slot=a version=1.0", boot);
    fleet.wait_for_within(DEVICE, "the agent in the machine", boot, |r| {
        r["status"] == "standBy"
    });
    committed_through_two_power_cuts(&fleet, &base, &mut vm, boot);
    committed_on_the_first_boot(&fleet, &base, &mut vm, boot);
    health_failure_rolls_back(&fleet, &base, &mut vm, boot);
    panicking_kernel_falls_back(&fleet, &base, &mut vm, boot);
    drop(vm);
    let env = grubenv(&disk);
    for want in ["boot_slot=a", "upgrade_available=0", "slot_b_bad=1"] {
        assert!(has(&env, want), "{want} not in {env}");
    }
}
