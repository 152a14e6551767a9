//! The process capability: granted and refused, through a real guest.

use crate::support::{component, sandbox, setup, StepEnv};
use sandstep::capability::arg_grammar::{ArgForm, Slot};
use sandstep::capability::process::{ProcessPolicy, ProgramRule};
use sandstep::capability::Grants;
use sandstep::sandbox::Limits;
use sandstep_model::codes::{erc, result};
use sandstep_model::{Action, StepResult};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn grants() -> Grants {
    Grants {
        process: Some(ProcessPolicy {
            programs: vec![
                ProgramRule::new(
                    "/bin/echo",
                    vec![ArgForm {
                        prefix: vec!["hello".into()],
                        then: vec![],
                        rest: vec![Slot::WorkPath],
                        max_args: 8,
                    }],
                ),
                ProgramRule::new(
                    "/bin/sh",
                    vec![ArgForm {
                        prefix: vec![],
                        then: vec![Slot::PayloadFile { suffix: None }],
                        rest: vec![Slot::Any],
                        max_args: 8,
                    }],
                ),
            ],
            ..ProcessPolicy::default()
        }),
        slot: None,
    }
}

/// A payload script with `body`; returns its host path (the interpreter's only entry point).
fn script(env: &StepEnv, name: &str, body: &str) -> String {
    env.add_payload(name, body.as_bytes());
    env.path("payload").join(name).display().to_string()
}

async fn run(env: &StepEnv, grants: Grants, props: Value) -> StepResult {
    run_limited(env, grants, props, Duration::from_secs(20)).await
}

/// Install of the process probe with `props`, every action limited to `limit`.
async fn run_limited(env: &StepEnv, grants: Grants, props: Value, limit: Duration) -> StepResult {
    run_with(
        env,
        grants,
        props,
        Limits::default().with_all_time_limits(limit),
    )
    .await
}

/// Install of the process probe with `props` under `limits`.
async fn run_with(env: &StepEnv, grants: Grants, props: Value, limits: Limits) -> StepResult {
    let sandbox = sandbox();
    let handler = sandbox
        .load("process-probe", component("process-probe"))
        .await
        .unwrap();
    let mut session = sandbox
        .session(&handler, setup(env, "test/process:1", grants, limits, None))
        .await
        .unwrap();
    session
        .call(
            Action::Install,
            &env.ctx("test/process:1", props),
            &CancellationToken::new(),
        )
        .await
}

fn output(r: &StepResult) -> Value {
    assert_eq!(r.result_code, result::INSTALL_SUCCESS, "{r:?}");
    serde_json::from_str(&r.result_details).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_importing_an_ungranted_capability_is_refused_naming_the_import() {
    let env = StepEnv::new();
    let sandbox = sandbox();
    let handler = sandbox
        .load("process-probe", component("process-probe"))
        .await
        .unwrap();
    let err = sandbox
        .session(
            &handler,
            setup(
                &env,
                "test/process:1",
                Grants::default(),
                Limits::default(),
                None,
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "handler `test/process:1` imports `sandstep:handler/process@0.1.0`: capability `process` is not granted to it by policy"
    );
    assert_eq!(err.to_step_result().erc(), erc::SANDBOX_CAPABILITY_DENIED);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_program_runs_in_the_work_folder_with_a_cleared_environment() {
    let env = StepEnv::new();
    let r = run(
        &env,
        grants(),
        json!({"op": "run", "program": "/bin/sh", "args": [script(&env, "env.sh", "pwd; env | sort")]}),
    )
    .await;
    let out = output(&r);
    assert_eq!(out["exit_code"], 0);
    let work = env.path("work").canonicalize().unwrap();
    let stdout = out["stdout"].as_str().unwrap();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(work.to_str().unwrap()));
    let vars: Vec<&str> = lines
        .map(|l| l.split('=').next().unwrap())
        .filter(|v| *v != "PWD" && *v != "SHLVL" && *v != "_")
        .collect();
    // LANG and PATH, the token that finds the program after a crash (the ledger), and a
    // TMPDIR where it may write (its working folder).
    assert_eq!(vars, vec!["LANG", "PATH", "SANDSTEP_PROGRAM", "TMPDIR"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_not_on_the_list_is_refused_with_the_rule() {
    let env = StepEnv::new();
    let r = run(
        &env,
        grants(),
        json!({"op": "run", "program": "/bin/rm", "args": ["-rf", "/tmp/x"]}),
    )
    .await;
    assert_eq!(r.result_code, result::FAILURE);
    assert_eq!(r.erc(), erc::SDK_CAPABILITY_FAILED);
    assert_eq!(
        r.result_details,
        "process: denied by policy: program `/bin/rm` is not on the allow list of handler `test/process:1` (policy: process.programs)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_argument_breaking_the_rule_is_refused_with_the_rule() {
    let env = StepEnv::new();
    let r = run(
        &env,
        grants(),
        json!({"op": "run", "program": "/bin/echo", "args": ["hello", "rm"]}),
    )
    .await;
    assert_eq!(
        r.result_details,
        format!(
            "process: denied by policy: the arguments of `/bin/echo` fit none of its forms (policy: process.programs.forms): form 0: argument 1 `rm` is none of: work-path (not beneath {})",
            env.path("work").display()
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_path_outside_the_granted_dirs_is_refused_with_the_rule() {
    // Absolute paths elsewhere, relative paths (the program's cwd is /work), `..`, `key=value`
    // forms and symlinks the handler planted in /work: none resolves beneath /work.
    let env = StepEnv::new();
    std::os::unix::fs::symlink("/etc", env.path("work").join("etc")).unwrap();
    let work = env.path("work").display().to_string();
    for arg in [
        "/etc/shadow".to_owned(),
        "shadow".to_owned(),
        "--file=/etc/shadow".to_owned(),
        format!("{work}/etc/shadow"),
        format!("{work}/../state/x"),
    ] {
        let r = run(
            &env,
            grants(),
            json!({"op": "run", "program": "/bin/echo", "args": ["hello", arg]}),
        )
        .await;
        assert!(
            r.result_details.starts_with(
                "process: denied by policy: the arguments of `/bin/echo` fit none of its forms"
            ),
            "{arg}: {}",
            r.result_details
        );
    }
    // A new file in /work is fine.
    let r = run(
        &env,
        grants(),
        json!({"op": "run", "program": "/bin/echo", "args": ["hello", format!("{work}/out.txt")]}),
    )
    .await;
    assert_eq!(output(&r)["exit_code"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn host_path_maps_sandbox_paths_and_refuses_others() {
    let env = StepEnv::new();
    let r = run(
        &env,
        grants(),
        json!({"op": "host-path", "path": "/work/out.txt"}),
    )
    .await;
    let work = env.path("work").canonicalize().unwrap();
    assert_eq!(r.result_details, work.join("out.txt").to_str().unwrap());

    let r = run(
        &env,
        grants(),
        json!({"op": "host-path", "path": "/etc/passwd"}),
    )
    .await;
    assert_eq!(r.result_code, result::FAILURE);
    assert_eq!(
        r.result_details,
        "process: bad path: `/etc/passwd` is not inside the step's directories (/payload, /work, /state)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_past_its_time_limit_is_killed_with_its_children() {
    let env = StepEnv::new();
    let r = run(
        &env,
        grants(),
        json!({"op": "run", "program": "/bin/sh", "args": [script(&env, "s.sh", "sleep 30 & sleep 30")], "timeout_ms": 300}),
    )
    .await;
    let out = output(&r);
    assert_eq!(out["timed_out"], true);
    // SIGTERM first (the shell does not trap it), SIGKILL for whatever is left of the group.
    assert_eq!(out["signal"], 15);
    assert_eq!(out["exit_code"], Value::Null);
}

/// Whether a process with `marker` in its command line is alive.
/// A `sleep` command line no other test uses: tests run side by side, and `alive`/`wait_gone`
/// look at every process on the machine, so a marker two tests share lets one test see the
/// other's program (the cause of a restart test failing on a loaded machine).
pub(crate) fn unique_sleep(secs: u32) -> String {
    format!("sleep {secs}.{:06}", fastrand::u32(..1_000_000))
}

pub(crate) fn alive(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .contains(marker)
        })
    })
}

pub(crate) fn wait_gone(marker: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if !alive(marker) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn the_action_time_limit_holds_while_the_handler_waits_in_a_host_call() {
    // The program may run 60 s by its own limit, but the action has 1 s: the call ends at the
    // action's limit and the program is stopped with it.
    let env = StepEnv::new();
    let started = std::time::Instant::now();
    let r = run_limited(
        &env,
        grants(),
        json!({"op": "run", "program": "/bin/sh", "args": [script(&env, "s.sh", "exec sleep 61.0917")], "timeout_ms": 60000}),
        Duration::from_secs(1),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        r.extended_result_code,
        erc::SANDBOX_TIME_LIMIT.raw(),
        "{r:?}"
    );
    assert!(
        r.result_details.contains("while it waited in a host call"),
        "{r:?}"
    );
    assert!(wait_gone("sleep 61.0917"), "the program was stopped");
}

#[test]
fn host_programs_die_with_a_killed_agent() {
    // kill -9 of the agent (here `sandstep step call`) must not leave its program running.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("process.toml");
    std::fs::write(
        &policy,
        "[[programs]]\npath = \"/bin/sh\"\nforms = [{ then = [\"payload-file\"], rest = [\"any\"] }]\n",
    )
    .unwrap();
    let wasm = dir.path().join("process-probe.wasm");
    std::fs::write(&wasm, component("process-probe")).unwrap();
    let payload = dir.path().join("payload");
    std::fs::create_dir(&payload).unwrap();
    std::fs::write(payload.join("s.sh"), "exec sleep 62.0917\n").unwrap();
    let props = json!({"op": "run", "program": "/bin/sh", "args": [payload.join("s.sh")]});
    let mut child = crate::cli::sandstep()
        .args(["step", "call"])
        .arg(&wasm)
        .arg("install")
        .arg("--payload")
        .arg(&payload)
        .arg("--process-policy")
        .arg(&policy)
        .arg("--properties")
        .arg(props.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !alive("sleep 62.0917") {
        assert!(
            std::time::Instant::now() < deadline,
            "the program never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(wait_gone("sleep 62.0917"), "the program outlived the agent");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_output_keeps_the_end_and_says_it_was_truncated() {
    let env = StepEnv::new();
    let mut g = grants();
    g.process.as_mut().unwrap().max_output_bytes = 100;
    let r = run(
        &env,
        g,
        json!({"op": "run", "program": "/bin/sh", "args": [script(&env, "seq.sh", "seq 1 100000")]}),
    )
    .await;
    let out = output(&r);
    assert_eq!(out["truncated"], true);
    let stdout = out["stdout"].as_str().unwrap();
    assert_eq!(stdout.len(), 100);
    assert!(stdout.ends_with("99999\n100000\n"), "{stdout}");
}

/// A path outside every directory the step was given, unique to this test run.
fn outside(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!(
        "/var/tmp/sandstep-landlock-{name}-{:08x}",
        fastrand::u32(..)
    ))
}

/// The kernel holds a payload script to its grant: it writes in /work, /state and /dev/null
/// (and makes temporary files, in /work), and a write anywhere else is refused with EACCES;
/// the output says where it may write.
#[tokio::test(flavor = "multi_thread")]
async fn a_script_writing_outside_its_grant_is_refused_by_the_kernel_and_told_where_it_may_write() {
    let env = StepEnv::new();
    let escape = outside("write");
    let body = format!(
        "set -e\necho in > \"$PWD/inside.txt\"\necho st > \"$1/s.txt\"\necho x > /dev/null\n\
         t=$(mktemp)\necho t > \"$t\"\necho out > {}\n",
        escape.display()
    );
    let state = env.path("state").display().to_string();
    let r = run(
        &env,
        grants(),
        json!({"op": "run", "program": "/bin/sh", "args": [script(&env, "w.sh", &body), state]}),
    )
    .await;
    let out = output(&r);
    assert_ne!(out["exit_code"], 0, "{out:#}");
    assert!(!escape.exists(), "the write outside went through");
    let stderr = out["stderr"].as_str().unwrap();
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(
        stderr.contains(
            "sandstep: the program ran under Landlock; the kernel refused writes outside:"
        ) && stderr.contains(env.path("work").to_str().unwrap()),
        "{stderr}"
    );
    assert!(env.path("work").join("inside.txt").is_file());
    assert!(env.path("state").join("s.txt").is_file());
    let temporary = std::fs::read_dir(env.path("work"))
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().starts_with("tmp."));
    assert!(temporary, "mktemp made its file in /work");
}

/// What a program starts stays under its ruleset however it detaches (setsid, double fork).
#[tokio::test(flavor = "multi_thread")]
async fn a_program_that_detaches_stays_held_to_the_grant() {
    let env = StepEnv::new();
    let escape = outside("detached");
    let work = env.path("work");
    // The detached program tries once it is on its own; the script waits for its verdict (the
    // run's control group stops it when the call ends).
    let body = format!(
        "( setsid sh -c 'sleep 0.2; if echo out > {e}; then echo wrote; else echo refused; fi > {w}/verdict.tmp; mv {w}/verdict.tmp {w}/verdict' </dev/null >/dev/null 2>&1 & ) &
         while [ ! -e {w}/verdict ]; do sleep 0.05; done
exit 0
",
        e = escape.display(),
        w = work.display()
    );
    let r = run(
        &env,
        grants(),
        json!({"op": "run", "program": "/bin/sh", "args": [script(&env, "d.sh", &body)]}),
    )
    .await;
    assert_eq!(output(&r)["exit_code"], 0);
    assert_eq!(
        std::fs::read_to_string(work.join("verdict")).unwrap(),
        "refused\n"
    );
    assert!(!escape.exists(), "the detached write went through");
}

/// A hard link planted in /work to a host file is refused as a program's path argument: the
/// program would write through it, and the kernel sees only the name beneath /work.
#[tokio::test(flavor = "multi_thread")]
async fn a_hard_link_in_work_to_a_host_file_is_refused_as_a_path_argument() {
    let env = StepEnv::new();
    let host = tempfile::tempdir().unwrap();
    let precious = host.path().join("precious");
    std::fs::write(&precious, b"keep me").unwrap();
    let work = env.path("work");
    std::fs::hard_link(&precious, work.join("planted")).unwrap();
    std::fs::write(work.join("src"), b"overwritten").unwrap();
    let mut g = grants();
    g.process.as_mut().unwrap().programs.push(ProgramRule::new(
        "/bin/cp",
        vec![ArgForm {
            prefix: vec![],
            then: vec![Slot::WorkPath, Slot::WorkPath],
            rest: vec![],
            max_args: 2,
        }],
    ));
    let arg = |n: &str| work.join(n).display().to_string();
    let r = run(
        &env,
        g,
        json!({"op": "run", "program": "/bin/cp", "args": [arg("src"), arg("planted")]}),
    )
    .await;
    assert!(
        r.result_details.contains(&format!(
            "{} is a hard link to a file that has other names",
            arg("planted")
        )),
        "{}",
        r.result_details
    );
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
}

/// With `readable`, reads are held too: the program reads its step's files and the listed
/// system paths, and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn a_program_with_readable_paths_reads_nothing_else() {
    let env = StepEnv::new();
    let host = tempfile::tempdir().unwrap();
    let secret = host.path().join("secret");
    std::fs::write(&secret, b"s3cret").unwrap();
    let mut g = grants();
    let sh = &mut g.process.as_mut().unwrap().programs[1];
    sh.readable = ["/usr", "/bin", "/lib", "/lib64", "/etc"]
        .map(Into::into)
        .to_vec();
    let body = format!(
        "cat \"$0\" > /dev/null || exit 3\ncat {} || exit 4\n",
        secret.display()
    );
    let r = run(
        &env,
        g,
        json!({"op": "run", "program": "/bin/sh", "args": [script(&env, "r.sh", &body)]}),
    )
    .await;
    let out = output(&r);
    assert_eq!(out["exit_code"], 4, "{out:#}");
    assert!(!out["stdout"].as_str().unwrap().contains("s3cret"));
    assert!(out["stderr"]
        .as_str()
        .unwrap()
        .contains("Permission denied"));
}

/// A `sleep` with a duration unique to this run, to find it in /proc.
fn marker_sleep(secs: u32) -> String {
    format!("sleep {secs}.{:06}", fastrand::u32(..1_000_000))
}

/// A program that leaves its process group (`setsid`), clears its environment (the ledger's
/// token) and is orphaned is still stopped when the call ends: it cannot leave the run's
/// control group.
#[tokio::test(flavor = "multi_thread")]
async fn a_program_that_leaves_its_group_and_environment_is_stopped_when_its_call_ends() {
    let env = StepEnv::new();
    let sleep = marker_sleep(71);
    let work = env.path("work");
    let body = format!(
        "( env -i /usr/bin/setsid /bin/sh -c 'echo up > {w}/started; exec {sleep}' </dev/null >/dev/null 2>&1 & )\n\
         while [ ! -e {w}/started ]; do sleep 0.05; done\nexit 0\n",
        w = work.display()
    );
    let r = run(
        &env,
        grants(),
        json!({"op": "run", "program": "/bin/sh", "args": [script(&env, "away.sh", &body)]}),
    )
    .await;
    assert_eq!(output(&r)["exit_code"], 0);
    assert!(wait_gone(&sleep), "`{sleep}` outlived its call");
}

/// A fork bomb stops at the policy's `pids-max`: forks beyond it fail, and everything it
/// started is stopped with the call.
#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_stops_at_the_pids_limit() {
    let env = StepEnv::new();
    let sleep = marker_sleep(3);
    let mut g = grants();
    g.process.as_mut().unwrap().pids_max = 16;
    let body = format!("i=0\nwhile [ $i -lt 64 ]; do {sleep} & i=$((i+1)); done\nwait\n");
    let r = run(
        &env,
        g,
        json!({"op": "run", "program": "/bin/sh", "args": [script(&env, "bomb.sh", &body)]}),
    )
    .await;
    let out = output(&r);
    let stderr = out["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("Cannot fork") || stderr.contains("Resource temporarily unavailable"),
        "{out:#}"
    );
    assert!(wait_gone(&sleep));
}

/// A run holds at most the policy's `open-files-max` descriptors per process, whatever it
/// starts (it cannot raise the limit: it was set as the hard limit too).
#[tokio::test(flavor = "multi_thread")]
async fn a_program_holds_at_most_its_open_files_limit() {
    let env = StepEnv::new();
    let mut g = grants();
    g.process.as_mut().unwrap().open_files_max = 64;
    let body = "ulimit -n; ulimit -H -n; sh -c 'ulimit -n 4096' 2>&1 || echo refused\n";
    let r = run(
        &env,
        g,
        json!({"op": "run", "program": "/bin/sh", "args": [script(&env, "nofile.sh", body)]}),
    )
    .await;
    let out = output(&r);
    let stdout = out["stdout"].as_str().unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], ["64", "64"], "{out:#}");
    assert!(stdout.contains("refused"), "{out:#}");
}

/// A tmpfs mounted on a fresh directory (unmounted on drop): a small file system to fill.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(megabytes: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            sandstep_testkit::prerequisite_missing("mounting a tmpfs needs root");
            return None;
        }
        Some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// A handler's program filling the disk its /work (and the journal) lives on is stopped while
/// the disk still has the reserve free, and the step says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_program_filling_the_disk_is_stopped_before_the_journals_reserve() {
    let Some(disk) = SmallDisk::mount(48) else {
        return;
    };
    let env = StepEnv::new_in(disk.0.path());
    let limits = Limits {
        disk_reserve_bytes: 16 << 20,
        ..Limits::default()
    };
    // 40 MiB in 1 MiB writes, slowly enough for the meter to see each step.
    let body = "i=0\nwhile [ $i -lt 40 ]; do dd if=/dev/zero of=\"$PWD/f$i\" bs=1M count=1 2>/dev/null; i=$((i+1)); sleep 0.05; done\n";
    let r = run_with(
        &env,
        grants(),
        json!({"op": "run", "program": "/bin/sh", "args": [script(&env, "fill.sh", body)]}),
        limits,
    )
    .await;
    assert_eq!(r.result_code, result::FAILURE, "{r:?}");
    assert_eq!(r.erc(), erc::SANDBOX_WORK_QUOTA);
    assert!(
        r.result_details
            .contains("the file system holding its /work has")
            && r.result_details.contains("(limits disk-reserve-bytes)"),
        "{}",
        r.result_details
    );
    let st = rustix::fs::statvfs(disk.0.path()).unwrap();
    assert!(
        st.f_bavail * st.f_frsize >= 8 << 20,
        "the reserve was eaten"
    );
}

/// A handler granted slots and a program that writes them (SWUpdate's `-e` selection, played by
/// echo) can name only the slot not running: the host reads which slot booted at the call.
#[tokio::test(flavor = "multi_thread")]
async fn an_inactive_slot_argument_naming_the_running_slot_is_refused() {
    let dev = crate::handlers::firmware::Device::new();
    let config = sandstep::config::Config::parse(&dev.config_text(), "test").unwrap();
    let mut g = grants();
    g.slot = config.policy().grants("sandstep/firmware:1").slot;
    let selection: Slot = "inactive-slot:copy1|copy2".to_owned().try_into().unwrap();
    g.process.as_mut().unwrap().programs[0].forms[0].rest = vec![selection];
    let env = StepEnv::new();
    let echo = |sel: &str| json!({"op": "run", "program": "/bin/echo", "args": ["hello", sel]});
    let r = run(&env, g.clone(), echo("copy1")).await;
    assert!(
        r.result_details.ends_with(
            "argument 1 `copy1` is none of: inactive-slot:copy1|copy2 (not the text for the slot that is not running (slot B))"
        ),
        "{}",
        r.result_details
    );
    assert_eq!(
        output(&run(&env, g.clone(), echo("copy2")).await)["stdout"],
        "hello copy2\n"
    );
    dev.reboot_into("b");
    let r = run(&env, g, echo("copy2")).await;
    assert!(
        r.result_details.contains("(slot A)"),
        "{}",
        r.result_details
    );
}
