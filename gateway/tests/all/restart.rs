//! What a killed agent leaves: the next agent finds its host programs (the program ledger) before
//! it runs any step. A program that may be cut short is stopped; one that must finish (apt-get,
//! dpkg) is waited for, then its rule's `recover` command repairs what it interrupted; the final
//! result says so.

use crate::cli::sandstep;
use crate::process::{alive, unique_sleep, wait_gone};
use crate::workflow::Env;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = "microsoft/script:1";

/// A one-step deployment of `body` through the script handler.
fn deployment(env: &mut Env, body: &str) -> std::path::PathBuf {
    env.file("s.sh", body.as_bytes());
    let m = env.manifest(vec![json!({
        "handler": SCRIPT,
        "files": ["s.sh"],
        "handlerProperties": {"scriptFileName": "s.sh", "installedCriteria": "1"}
    })]);
    let path = env.files.path().join("manifest.json");
    std::fs::write(&path, m).unwrap();
    path
}

fn run(env: &Env, manifest: &Path, config: Option<&Path>) -> Child {
    let mut c = sandstep();
    c.arg("run")
        .arg(manifest)
        .arg("--allow-unsigned")
        .arg("--files")
        .arg(env.files.path())
        .arg("--data-dir")
        .arg(env.data.path())
        .arg("--result-file")
        .arg(env.files.path().join("result.json"));
    if let Some(config) = config {
        c.arg("--config").arg(config);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A config whose script policy lets `/bin/sh` also write in `dir` (where these tests keep
/// what the scripts record: the kernel holds the scripts to their grant), with `more` lines
/// in its program rule.
fn script_config(dir: &Path, more: &str) -> std::path::PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[handlers.\"{SCRIPT}\"]\ncapabilities = [\"process\"]\npayload-in-work = true\n\
             [[handlers.\"{SCRIPT}\".process.programs]]\npath = \"/bin/sh\"\n\
             forms = [{{ then = [\"payload-file\"], rest = [\"any\"] }}]\n\
             writable = [\"{}\"]\n{more}",
            dir.display()
        ),
    )
    .unwrap();
    config
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn details(env: &Env) -> String {
    let r: Value =
        serde_json::from_slice(&std::fs::read(env.files.path().join("result.json")).unwrap())
            .unwrap();
    r["resultDetails"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_restarted_agent_stops_what_the_killed_one_left_before_it_runs_the_step_again() {
    let mut env = Env::new();
    env.install(SCRIPT, "script");
    let t = tempfile::tempdir().unwrap();
    let sleep = unique_sleep(65);
    let (first, seen, pids) = (
        t.path().join("first"),
        t.path().join("seen"),
        t.path().join("pids"),
    );
    // First run: a background program and a foreground one (each recording its pid), both
    // outliving the shell that the agent's death kills. Second run: says whether either of those
    // processes is still alive (`check`: a zombie's cmdline is empty; `sleep`'s arguments are
    // separated by NULs in it, so they are turned into spaces before matching).
    let check = format!(
        "state=gone\n\
         for pid in $(cat {pids}); do\n\
           if tr '\\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -q '{sleep}'; then state=alive; fi\n\
         done\n\
         echo $state\n",
        pids = pids.display(),
    );
    let body = format!(
        "if [ -e {first} ]; then\n(\n{check}) > {seen}\nexit 0\nfi\n\
         touch {first}\n\
         {sleep} &\n\
         echo $! >> {pids}\n\
         sh -c 'echo $$ >> {pids}; exec {sleep}'\n",
        first = first.display(),
        seen = seen.display(),
        pids = pids.display()
    );
    let m = deployment(&mut env, &body);
    let config = script_config(t.path(), "");
    let mut agent = run(&env, &m, Some(&config));
    // Both programs running (two pids recorded, the second one already sleep), then SIGKILL at
    // once: nothing of the agent's own cleanup runs.
    wait_for("the step's programs starting", || {
        std::fs::read_to_string(&pids).is_ok_and(|p| p.lines().count() == 2) && alive(&sleep)
    });
    agent.kill().unwrap();
    agent.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(&sleep), "the shell's children outlive it");
    let before = std::process::Command::new("/bin/sh")
        .args(["-c", &check])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&before.stdout),
        "alive\n",
        "the second run's check sees them before it runs"
    );

    let status = run(&env, &m, Some(&config)).wait().unwrap();
    assert!(status.code().is_some(), "{status:?}");
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "gone\n");
    assert!(wait_gone(&sleep));
    let d = details(&env);
    assert!(
        d.contains(
            "after the agent restarted: `/bin/sh` of handler microsoft/script:1 was interrupted"
        ) && d.contains("2 of its processes were still running, 2 stopped by a signal"),
        "{d}"
    );
    let ledger = env.data.path().join("programs");
    assert_eq!(std::fs::read_dir(ledger).unwrap().count(), 0);
}

#[test]
fn a_program_that_must_finish_is_waited_for_and_repaired_after_the_agent_was_killed() {
    let mut env = Env::new();
    env.install(SCRIPT, "script");
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n).display().to_string();
    // The shell is a finish-on-cancel program with a recover command, as apt-get is with dpkg's
    // repair in the default policy.
    let config = script_config(
        t.path(),
        &format!(
            "finish-on-cancel = true\n\
             recover = [\"/bin/sh\", \"-c\", \"echo repaired >> {repaired}\"]\n",
            repaired = p("repaired")
        ),
    );
    let body = format!(
        "if [ -e {first} ]; then cat {finished} {repaired} > {seen}; exit 0; fi\n\
         touch {first}\n\
         sleep 3.0917\n\
         echo finished > {finished}\n",
        first = p("first"),
        finished = p("finished"),
        repaired = p("repaired"),
        seen = p("seen")
    );
    let m = deployment(&mut env, &body);
    let mut agent = run(&env, &m, Some(&config));
    wait_for("the step's program starting", || alive("sleep 3.0917"));
    agent.kill().unwrap();
    agent.wait().unwrap();
    assert!(
        alive("sleep 3.0917"),
        "a finish-on-cancel program outlives the agent"
    );

    let status = run(&env, &m, Some(&config)).wait().unwrap();
    assert!(status.code().is_some(), "{status:?}");
    // The step ran again only after the old program finished and the repair ran.
    assert_eq!(
        std::fs::read_to_string(p("seen")).unwrap(),
        "finished\nrepaired\n"
    );
    let d = details(&env);
    assert!(
        d.contains("`/bin/sh -c echo repaired") && d.contains("repaired what it left"),
        "{d}"
    );
}

/// dpkg left interrupted by something other than this agent (no ledger entry: a power cut in
/// an apt-get run by hand, a lost ledger): the next start finds dpkg's journal of the unfinished
/// run and runs dpkg's own repair before any step, and the result says so. Real dpkg, on an
/// admin dir of its own.
#[test]
fn an_interrupted_dpkg_found_at_start_is_repaired_before_any_step() {
    let mut env = Env::new();
    env.install(SCRIPT, "script");
    let t = tempfile::tempdir().unwrap();
    let admin = t.path().join("dpkg");
    for d in ["updates", "info", "triggers"] {
        std::fs::create_dir_all(admin.join(d)).unwrap();
    }
    std::fs::write(admin.join("status"), b"").unwrap();
    std::fs::write(admin.join("available"), b"").unwrap();
    // What dpkg journals while it changes a package's state, left unincorporated.
    std::fs::write(
        admin.join("updates/0000"),
        b"Package: half-done\nStatus: install ok half-configured\nVersion: 1.0\n\
          Architecture: all\nMaintainer: x\nDescription: x\n\n",
    )
    .unwrap();
    let config = t.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[handlers.\"test/dpkg:1\"]\ncapabilities = [\"process\"]\n\
             [[handlers.\"test/dpkg:1\".process.programs]]\npath = \"/usr/bin/dpkg\"\n\
             forms = [{{ prefix = [\"--audit\"] }}]\n\
             recover = [\"/usr/bin/dpkg\", \"--admindir={admin}\", \"--configure\", \"-a\"]\n\
             recover-if-nonempty = [\"{admin}/updates\"]\n",
            admin = admin.display()
        ),
    )
    .unwrap();
    let m = deployment(&mut env, "echo ok\n");
    let status = run(&env, &m, Some(&config)).wait().unwrap();
    assert!(status.code().is_some(), "{status:?}");
    assert_eq!(std::fs::read_dir(admin.join("updates")).unwrap().count(), 0);
    let dpkg_status = std::fs::read_to_string(admin.join("status")).unwrap();
    assert!(
        dpkg_status.contains("Package: half-done\nStatus: install ok installed"),
        "{dpkg_status}"
    );
    let d = details(&env);
    assert!(
        d.contains(&format!(
            "at start, {}/updates held 1 entry of an interrupted run (policy of test/dpkg:1); \
             `/usr/bin/dpkg --admindir={} --configure -a` repaired it",
            admin.display(),
            admin.display()
        )),
        "{d}"
    );
}

/// A killed agent's program that left its process group and cleared its environment (the
/// ledger's token) before the agent died is found by the next agent in the run's control
/// group, and stopped before the step runs again.
#[test]
fn a_restarted_agent_stops_a_program_that_left_its_group_and_environment() {
    let mut env = Env::new();
    env.install(SCRIPT, "script");
    let t = tempfile::tempdir().unwrap();
    let sleep = unique_sleep(67);
    let (first, seen) = (t.path().join("first"), t.path().join("seen"));
    let body = format!(
        "if [ -e {first} ]; then\n\
           if tr '\\0' ' ' < /proc/$(cat {first})/cmdline 2>/dev/null | grep -q '{sleep}'; then echo alive; else echo gone; fi > {seen}\n\
           exit 0\n\
         fi\n\
         ( env -i /usr/bin/setsid /bin/sh -c 'echo $$ > {first}; exec {sleep}' </dev/null >/dev/null 2>&1 & )\n\
         exec {foreground}\n",
        foreground = unique_sleep(65),
        first = first.display(),
        seen = seen.display(),
    );
    let m = deployment(&mut env, &body);
    let config = script_config(t.path(), "");
    let mut agent = run(&env, &m, Some(&config));
    wait_for("the detached program", || first.exists() && alive(&sleep));
    agent.kill().unwrap();
    agent.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(&sleep), "the detached program outlives the agent");
    let status = run(&env, &m, Some(&config)).wait().unwrap();
    assert!(status.code().is_some(), "{status:?}");
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "gone\n");
    assert!(wait_gone(&sleep));
}

/// While the agent (here `sandstep run`) lives, what its programs orphan (a double fork) is
/// adopted by it, not by init, and reaped when it exits: no zombie is left behind.
#[test]
fn orphans_of_host_programs_are_adopted_by_the_agent_and_reaped() {
    let mut env = Env::new();
    env.install(SCRIPT, "script");
    let t = tempfile::tempdir().unwrap();
    let d = t.path().display();
    let body = format!(
        "( sh -c 'sleep 0.3; awk \"{{print \\$4}}\" /proc/$$/stat > {d}/ppid.tmp; mv {d}/ppid.tmp {d}/ppid' & )\n\
         while [ ! -e {d}/ppid ]; do sleep 0.05; done\n\
         sleep 1\n\
         P=$(cat {d}/ppid); n=0\n\
         for f in /proc/[0-9]*/stat; do set -- $(cat $f 2>/dev/null); \
         if [ \"$4\" = \"$P\" ] && [ \"$3\" = \"Z\" ]; then n=$((n+1)); fi; done\n\
         echo $n > {d}/zombies\n"
    );
    let m = deployment(&mut env, &body);
    let config = script_config(t.path(), "");
    let mut agent = run(&env, &m, Some(&config));
    let pid = agent.id().to_string();
    // The script writes no result file: the step fails after its first action, which is all
    // this test needs.
    let status = agent.wait().unwrap();
    assert!(status.code().is_some(), "{status:?}");
    assert_eq!(
        std::fs::read_to_string(t.path().join("ppid"))
            .unwrap()
            .trim(),
        pid,
        "the orphan's parent is the agent"
    );
    assert_eq!(
        std::fs::read_to_string(t.path().join("zombies"))
            .unwrap()
            .trim(),
        "0"
    );
}
