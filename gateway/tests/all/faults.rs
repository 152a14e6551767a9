//! Faults from the environment: a full disk under the data dir, torn or garbled result files.
//! (Crashes at every journal write are in cli.rs; network faults in downloads.rs and fleet.rs.)

use crate::cli::{data_dir, write_manifest};
use crate::workflow::{stateful, walk};
use sandstep_model::journal::{Journal, Status};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A size-limited tmpfs, mounted for one test (root only) and unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            sandstep_testkit::prerequisite_missing("mounting a size-limited tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        if !status.success() {
            sandstep_testkit::prerequisite_missing(
                "mount -t tmpfs failed (no mount permission in this sandbox?)",
            );
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(c.as_ptr(), &mut s), 0);
            s.f_bavail * s.f_frsize
        }
    }

    /// Fills the file system until `leave` bytes are free; returns the filler's path.
    fn fill_leaving(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while self.free() > leave {
            let n = (self.free() - leave).min(chunk.len() as u64) as usize;
            if f.write_all(&chunk[..n.max(1)]).is_err() {
                break;
            }
        }
        f.sync_all().ok();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(manifest: &Path, files: &Path, data: &Path, force: bool) -> Output {
    let mut c = crate::cli::unsigned_run(manifest, files, data);
    if force {
        c.arg("--force");
    }
    c.output().unwrap()
}

/// What a failed write may leave behind, checked after every run: no temporary files, every
/// journal decodes, every stored download has the hash it is named by.
fn assert_nothing_torn(data: &Path, what: &str) {
    for p in walk(data) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".tmp"),
            "{what}: left behind {}",
            p.display()
        );
        if name.ends_with(".journal") {
            Journal::decode(&std::fs::read(&p).unwrap())
                .unwrap_or_else(|e| panic!("{what}: {}: {e}", p.display()));
        }
        if p.parent().unwrap().ends_with("downloads") && name.len() == 64 {
            let digest = hex::encode(sandstep::digest::Sha256::digest(std::fs::read(&p).unwrap()));
            assert_eq!(
                digest, name,
                "{what}: a stored download does not match its name"
            );
        }
    }
}

/// The data dir on a tiny file system, filled to several levels: every run either succeeds or
/// fails naming the full disk, leaves nothing torn, and once space is back the deployment
/// finishes with each completed step applied once.
#[test]
fn a_full_disk_fails_cleanly_and_the_deployment_finishes_once_space_is_back() {
    let Some(fs) = Tmpfs::mount("24m") else {
        return;
    };
    let template = data_dir();
    let files = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..(768u32 << 10)).map(|i| (i % 251) as u8).collect();
    let manifest = write_manifest(
        files.path(),
        vec![
            stateful("one", json!({}), &["small.txt"]),
            stateful("two", json!({}), &["big.bin"]),
            stateful("three", json!({}), &["small.txt", "big.bin"]),
        ],
        &[("small.txt", b"payload"), ("big.bin", &big)],
    );
    let mut failures = 0;
    for leave_kib in [0u64, 8, 32, 128, 512, 1024, 2048, 4096, 12288] {
        let what = format!("{leave_kib} KiB free");
        let data = fs.path().join(format!("data-{leave_kib}"));
        let status = Command::new("cp")
            .arg("-a")
            .arg(template.path())
            .arg(&data)
            .status()
            .unwrap();
        assert!(status.success());
        // Nothing precompiled: the cache is written on the full disk too.
        std::fs::remove_dir_all(data.join("cache")).ok();
        let filler = fs.fill_leaving(leave_kib << 10);

        let first = run(&manifest, files.path(), &data, false);
        assert_nothing_torn(&data, &what);
        let done_before: Vec<String> = match first.status.code() {
            Some(0) => {
                std::fs::remove_file(&filler).unwrap();
                std::fs::remove_dir_all(&data).unwrap();
                continue;
            }
            _ => {
                failures += 1;
                let out = text(&first);
                assert!(
                    out.contains("No space left on device"),
                    "{what}: the failure does not name the full disk:\n{out}"
                );
                // Steps the journal had finished must not run again.
                walk(&data.join("state"))
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "done"))
                    .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
                    .collect()
            }
        };

        std::fs::remove_file(&filler).unwrap();
        let mut again = run(&manifest, files.path(), &data, false);
        if again.status.code() == Some(1) {
            // A step failed on the full disk, so the deployment was over: an operator's retry.
            again = run(&manifest, files.path(), &data, true);
        }
        assert!(
            again.status.success(),
            "{what}: after space came back:\n{}",
            text(&again)
        );
        assert_nothing_torn(&data, &what);
        let journals: Vec<_> = walk(&data.join("journal"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "journal"))
            .collect();
        assert_eq!(journals.len(), 1, "{what}");
        let j = Journal::decode(&std::fs::read(&journals[0]).unwrap()).unwrap();
        assert_eq!(j.status, Status::Succeeded, "{what}");
        let results: Vec<_> = walk(&data.join("results"));
        let r: Value = serde_json::from_slice(&std::fs::read(&results[0]).unwrap()).unwrap();
        assert_eq!(r["resultCode"], 700, "{what}: {r:#}");
        for name in done_before {
            let log = walk(&data.join("state"))
                .into_iter()
                .find(|p| p.ends_with(format!("{name}.log")))
                .unwrap();
            let log = std::fs::read_to_string(log).unwrap();
            assert_eq!(
                log.matches("apply").count(),
                1,
                "{what}: {name} ran again:\n{log}"
            );
        }
        std::fs::remove_dir_all(&data).unwrap();
    }
    assert!(
        failures >= 3,
        "only {failures} levels ran out of space: the levels are too generous"
    );
}

/// A result file torn or garbled after the deployment is written again from the journal on the
/// next run of the same workflow, without running any step again.
#[test]
fn a_garbled_result_file_is_rewritten_from_the_journal_without_rerunning_steps() {
    let data = data_dir();
    let files = tempfile::tempdir().unwrap();
    let manifest = write_manifest(
        files.path(),
        vec![
            stateful("one", json!({}), &["f.txt"]),
            stateful("two", json!({}), &["f.txt"]),
        ],
        &[("f.txt", b"payload")],
    );
    let first = run(&manifest, files.path(), data.path(), false);
    assert!(first.status.success(), "{}", text(&first));
    let results = walk(&data.path().join("results"));
    let good = std::fs::read(&results[0]).unwrap();
    for garbage in [&good[..good.len() / 2], b"{\"resultCode\": 7", b"\0\0\0\0"] {
        std::fs::write(&results[0], garbage).unwrap();
        let again = run(&manifest, files.path(), data.path(), false);
        assert!(again.status.success(), "{}", text(&again));
        assert_eq!(std::fs::read(&results[0]).unwrap(), good);
    }
    for name in ["one", "two"] {
        let log = walk(&data.path().join("state"))
            .into_iter()
            .find(|p| p.ends_with(format!("{name}.log")))
            .unwrap();
        let log = std::fs::read_to_string(log).unwrap();
        assert_eq!(log.matches("apply").count(), 1, "{name} ran again:\n{log}");
    }
}

/// SECURITY.md's catalogue: every row of every table names at least one test, and each named
/// test exists, so the catalogue cannot claim what nothing proves.
#[test]
fn every_row_of_the_security_catalogue_names_a_test_that_exists() {
    let root = sandstep_testkit::repo_root();
    let catalogue = std::fs::read_to_string(root.join("SECURITY.md")).unwrap();
    let mut sources = String::new();
    for dir in [
        "gateway",
        "fleet",
        "transport",
        "signing",
        "model",
        "sdk",
        "handlers",
    ] {
        for p in walk(&root.join(dir)) {
            if p.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(p).unwrap());
            }
        }
    }
    let mut rows = 0;
    for line in catalogue.lines().filter(|l| l.starts_with("| ")) {
        if line.starts_with("| bad ")
            || line.starts_with("| fault ")
            || line.starts_with("| target ")
        {
            continue; // a header
        }
        let cells: Vec<&str> = line.split('|').collect();
        let last = cells[cells.len() - 2];
        if catalogue.contains("| target | what it feeds |") && !last.contains("::") {
            // The fuzz target table names targets, checked by the fuzz smoke test.
            assert!(
                root.join("fuzz/fuzz_targets")
                    .join(format!("{}.rs", cells[1].trim().trim_matches('`')))
                    .is_file(),
                "{line}"
            );
            continue;
        }
        rows += 1;
        let names: Vec<&str> = last.split('`').filter(|s| s.contains("::")).collect();
        assert!(!names.is_empty(), "no test named in: {line}");
        for name in names {
            let f = name.rsplit("::").next().unwrap();
            assert!(
                sources.contains(&format!("fn {f}(")),
                "SECURITY.md names `{name}`, which does not exist"
            );
        }
    }
    assert!(rows >= 40, "only {rows} catalogue rows found");
}
