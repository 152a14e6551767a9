//! What the test suites of both halves share to start real parts and judge prerequisites:
//! mosquitto and PostgreSQL on loopback, child processes killed on drop, a throwaway CA, and the
//! rule that a missing prerequisite fails a run of scripts/test.sh. Only processes and files:
//! nothing of sandstep's own code.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/testkit lies two levels down")
        .to_owned()
}

/// A loopback port free now. It is released before the caller's server binds it, so another
/// process may take it first: a server that fails to bind should be started again on another.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test whose prerequisite (root, mosquitto, apt, libfaketime, mount) is missing. A local run
/// skips it, saying why; under `scripts/test.sh`, which installs every prerequisite and sets
/// `SANDSTEP_REQUIRE_PREREQUISITES=1`, it is a failure, so no test passes by not running.
pub fn prerequisite_missing(why: &str) {
    if std::env::var_os("SANDSTEP_REQUIRE_PREREQUISITES").is_some_and(|v| v == "1") {
        panic!("a prerequisite is missing under scripts/test.sh: {why}");
    }
    eprintln!("skipped: {why}");
}

/// A throwaway CA in `dir` (scripts/test-ca.sh): ca.pem, a server certificate for 127.0.0.1 and
/// localhost, and a client certificate whose CN is `client` (the script's default: gw-1).
pub fn test_ca(dir: &Path, client: Option<&str>) {
    test_ca_with(dir, client.as_slice());
}

/// As [`test_ca`], with a client certificate for each of `clients`: client.pem for the first,
/// client-NAME.pem for the others.
pub fn test_ca_with(dir: &Path, clients: &[&str]) {
    let made = Command::new(repo_root().join("scripts/test-ca.sh"))
        .arg(dir)
        .args(clients)
        .status()
        .unwrap();
    assert!(made.success(), "scripts/test-ca.sh");
}

/// mosquitto on a free loopback port, killed on drop. Installed when missing (as root).
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

fn mosquitto() -> Option<&'static str> {
    const BIN: &str = "/usr/sbin/mosquitto";
    if Path::new(BIN).exists() {
        return Some(BIN);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let _ = Command::new("sh").args(["-c", "apt-get install -y -q mosquitto >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q mosquitto >/dev/null)"]).status();
    }
    Path::new(BIN).exists().then_some(BIN)
}

impl Broker {
    pub fn start() -> Option<Broker> {
        Broker::start_with("allow_anonymous true\n")
    }

    /// A broker with `extra` configuration lines.
    pub fn start_with(extra: &str) -> Option<Broker> {
        let bin = mosquitto().or_else(|| {
            prerequisite_missing("mosquitto is not installed and cannot be (not root)");
            None
        })?;
        // The free port is released before mosquitto binds it, so something else may take it
        // first: then mosquitto exits, and another port is tried.
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().unwrap();
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!("listener {port} 127.0.0.1\npersistence false\n{extra}"),
            )
            .unwrap();
            let mut b = Broker {
                child: None,
                port,
                conf,
                _dir: dir,
            };
            if b.spawn(bin) {
                return Some(b);
            }
        }
        panic!("mosquitto exited at start on five free ports in a row");
    }

    /// Starts mosquitto on `self.port`; false when it exited (the port was taken meanwhile).
    fn spawn(&mut self, bin: &str) -> bool {
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let child = self.child.insert(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if child.try_wait().unwrap().is_some() {
                self.child = None;
                return false;
            }
            // A loaded machine may take a while to start it; a broker that never listens fails.
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(mosquitto().unwrap()),
            "mosquitto exited when restarted on port {}",
            self.port
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child process killed on drop, with its output in a file.
pub struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        Proc {
            child: Some(child),
            log,
        }
    }
    /// Waits until the process's output contains `text`.
    pub fn wait_for_output(&self, text: &str) {
        let t = Instant::now();
        while !std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .contains(text)
        {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no `{text}` in {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    /// What the process has printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// Sends `signal` to the process (SIGSTOP and SIGCONT to hold it while the world moves on).
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL cluster in a temporary directory, stopped on drop.
pub struct Postgres {
    pub url: String,
    dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Option<Postgres> {
        Postgres::start_with(&[])
    }

    /// With `extra` arguments to scripts/postgres.sh (`--tls CERTS`).
    pub fn start_with(extra: &[&std::ffi::OsStr]) -> Option<Postgres> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(repo_root().join("scripts/postgres.sh"))
            .arg("start")
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap();
        if !out.status.success() {
            prerequisite_missing(&format!(
                "PostgreSQL could not be started (scripts/postgres.sh): {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return None;
        }
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Some(Postgres { url, dir })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/postgres.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}
