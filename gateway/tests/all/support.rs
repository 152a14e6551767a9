//! Shared helpers: components built from source, step directories, one-call sessions.

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use sandstep::capability::Grants;
use sandstep::sandbox::{
    CallTags, EngineOptions, EventSink, Limits, Sandbox, SessionSetup, StepDirs,
};
use sandstep_model::{Action, StepContext, StepFile, StepResult, UpdateId};
use sandstep_testkit::repo_root;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;

/// The bytes of `target/wasm/<name>.wasm`, building every guest once per test process.
pub fn component(name: &str) -> Arc<[u8]> {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = std::process::Command::new(repo_root().join("scripts/build-components.sh"))
            .arg("--quiet")
            .status()
            .expect("run scripts/build-components.sh");
        assert!(status.success(), "scripts/build-components.sh failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("wasm").join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into()
}

/// A step's three directories under one temporary root.
pub struct StepEnv {
    pub root: tempfile::TempDir,
}

impl StepEnv {
    pub fn new() -> Self {
        Self::new_in(&std::env::temp_dir())
    }

    /// Its directories beneath `parent` (a file system of the test's choosing).
    pub fn new_in(parent: &std::path::Path) -> Self {
        let root = tempfile::tempdir_in(parent).unwrap();
        for d in ["payload", "work", "state"] {
            std::fs::create_dir(root.path().join(d)).unwrap();
        }
        StepEnv { root }
    }

    pub fn path(&self, which: &str) -> PathBuf {
        self.root.path().join(which)
    }

    pub fn add_payload(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.path("payload").join(name), bytes).unwrap();
    }

    pub fn dirs(&self) -> StepDirs {
        let open = |d: &str| Dir::open_ambient_dir(self.path(d), ambient_authority()).unwrap();
        StepDirs::new(open("payload"), open("work"), open("state"))
    }

    /// A context whose files are the payload directory's regular files.
    pub fn ctx(&self, handler_id: &str, props: serde_json::Value) -> StepContext {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(self.path("payload")).unwrap() {
            let entry = entry.unwrap();
            if !entry.file_type().unwrap().is_file() {
                continue;
            }
            let bytes = std::fs::read(entry.path()).unwrap();
            let name = entry.file_name().into_string().unwrap();
            files.push(StepFile {
                id: name.clone(),
                name,
                size: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(&bytes)),
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let serde_json::Value::Object(handler_properties) = props else {
            panic!("properties must be an object")
        };
        StepContext {
            workflow_id: "wf-test".into(),
            update_id: UpdateId {
                provider: "test".into(),
                name: "update".into(),
                version: "1.0".into(),
            },
            handler_id: handler_id.into(),
            step_index: 0,
            level: 0,
            handler_properties,
            files,
            component: None,
        }
    }
}

pub fn sandbox() -> Sandbox {
    Sandbox::new(&EngineOptions::default(), None).unwrap()
}

pub fn setup(
    env: &StepEnv,
    handler_id: &str,
    grants: Grants,
    limits: Limits,
    events: Option<EventSink>,
) -> SessionSetup {
    SessionSetup {
        handler_id: handler_id.into(),
        tags: CallTags {
            workflow_id: "wf-test".into(),
            step: "0".into(),
            handler_id: handler_id.into(),
        },
        dirs: env.dirs(),
        grants,
        limits,
        events,
        streams: None,
    }
}

/// Loads `component`, opens a session over `env` and runs one action.
pub async fn call_once(
    component_name: &str,
    action: Action,
    env: &StepEnv,
    props: serde_json::Value,
    limits: Limits,
) -> StepResult {
    let sandbox = sandbox();
    let handler = sandbox
        .load(component_name, component(component_name))
        .await
        .unwrap();
    let mut session = sandbox
        .session(
            &handler,
            setup(env, "test/probe:1", Grants::default(), limits, None),
        )
        .await
        .unwrap();
    session
        .call(
            action,
            &env.ctx("test/probe:1", props),
            &CancellationToken::new(),
        )
        .await
}

/// The test suite's handler signing key (one per test process).
pub fn test_key() -> &'static (wasmsign2::SecretKey, wasmsign2::PublicKey) {
    static KEY: OnceLock<(wasmsign2::SecretKey, wasmsign2::PublicKey)> = OnceLock::new();
    KEY.get_or_init(|| {
        let kp = wasmsign2::KeyPair::generate();
        (kp.sk, kp.pk)
    })
}

/// `component(name)`, signed with the test key.
pub fn signed(name: &str) -> Vec<u8> {
    let (sk, pk) = test_key();
    sandstep::trust::handler_sig::sign(&component(name), sk, pk).unwrap()
}

/// Trusts the test key in a data dir (as `sandstep trust add handler` would).
pub fn trust_test_key(data: &Path) {
    let dir = data.join("trust/handlers");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("test-vendor.pub"), test_key().1.to_bytes()).unwrap();
}

/// Waits (up to 90 s, polling every 100 ms) until `f` holds; fails naming `what`.
pub fn wait_until(what: &str, f: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(90),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A daily window in UTC from `from` to `to` seconds from now (`daily HH:MM:SS-HH:MM:SS`), for
/// tests that need a window to open or close within seconds.
pub fn utc_window(from: i64, to: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let clock = |t: i64| {
        let s = t.rem_euclid(86_400);
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    };
    format!("daily {}-{}", clock(now + from), clock(now + to))
}
