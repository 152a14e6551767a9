//! `sandstep bench`: the benchmark suite (see BENCHMARKS.md). Each benchmark prints a table row
//! and returns its figures; `scripts/bench.sh` builds what they need and runs them all.
//!
//! The inputs: signed components under `target/wasm` (built by scripts/build-components.sh), a
//! mosquitto binary for the agent and fleet figures, and `openssl` and `curl` for the reference
//! points.

use crate::capability::Grants;
use crate::config::Config;
use crate::datadir::DataDir;
use crate::digest::Sha256;
use crate::download::{DownloadConfig, Downloader, Source, Wanted};
use crate::sandbox::{
    CacheDirs, CallTags, EngineOptions, HandlerComponent, Limits, Sandbox, SessionSetup, StepDirs,
};
use crate::trust::{handler_sig, TrustedHandlerKey};
use crate::workflow::events::{Event, Observer};
use crate::workflow::{Deployer, Request};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use sandstep_model::checksum::crc32_update;
use sandstep_model::journal::FileSource;
use sandstep_model::{Action, StepContext, UpdateId};
use serde::Serialize;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Median and spread of a series, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub n: usize,
    pub median_ms: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
}

impl Stats {
    pub fn of(mut v: Vec<Duration>) -> Stats {
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let at = |p: f64| ms(v[((v.len() as f64 - 1.0) * p).round() as usize]);
        Stats {
            n: v.len(),
            median_ms: at(0.5),
            p10_ms: at(0.1),
            p90_ms: at(0.9),
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {:.3} ms (p10 {:.3}, p90 {:.3}, n={})",
            self.median_ms, self.p10_ms, self.p90_ms, self.n
        )
    }
}

fn dir(p: &Path) -> Dir {
    Dir::open_ambient_dir(p, ambient_authority()).expect("bench directory")
}

/// handlerProperties under which every `handler new` template answers is-installed with 901.
const SAMPLE_PROPERTIES: &str =
    r#"{"fileName": "app.conf", "installedCriteria": "1.0", "currentVersion": "0.9"}"#;

fn ctx(handler: &str, files: Vec<sandstep_model::StepFile>) -> StepContext {
    StepContext {
        workflow_id: "bench".into(),
        update_id: UpdateId {
            provider: "bench".into(),
            name: "bench".into(),
            version: "1.0".into(),
        },
        handler_id: handler.into(),
        step_index: 0,
        level: 0,
        // What the `handler new` templates read in is-installed (the benchmark guest reads none).
        handler_properties: serde_json::from_str(SAMPLE_PROPERTIES).expect("sample properties"),
        files,
        component: None,
    }
}

struct StepEnv {
    root: tempfile::TempDir,
}

impl StepEnv {
    fn new() -> StepEnv {
        let root = tempfile::tempdir().expect("tempdir");
        for d in ["payload", "work", "state"] {
            std::fs::create_dir(root.path().join(d)).expect("mkdir");
        }
        StepEnv { root }
    }
    fn p(&self, d: &str) -> PathBuf {
        self.root.path().join(d)
    }
    fn setup(&self, limits: Limits) -> SessionSetup {
        SessionSetup {
            handler_id: "bench/handler:1".into(),
            tags: CallTags {
                workflow_id: "bench".into(),
                step: "0".into(),
                handler_id: "bench/handler:1".into(),
            },
            dirs: StepDirs::new(
                dir(&self.p("payload")),
                dir(&self.p("work")),
                dir(&self.p("state")),
            ),
            grants: Grants::default(),
            limits,
            events: None,
            streams: None,
        }
    }
}

/// Figures of the handler-call benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct HandlerCall {
    pub component_bytes: usize,
    pub compile_each_time: Stats,
    pub cached_with_signature: Stats,
    pub cached_pooling_with_signature: Stats,
    pub in_memory_with_signature: Stats,
    /// The agent's loader: registry entry, the verdict on the unchanged file, the compiled
    /// component from memory, policy check; then a session and is-installed.
    pub agent_loader: Stats,
    pub signature_check: Stats,
    pub signature_share_percent: f64,
}

async fn call_once(sandbox: &Sandbox, bytes: Arc<[u8]>, env: &StepEnv) -> Duration {
    let t = Instant::now();
    let h = sandbox.load("bench", bytes).await.expect("load");
    is_installed(sandbox, &h, env, "bench/handler:1").await;
    t.elapsed()
}

/// A fresh session of `h` and its is-installed call, which the benchmark guest answers 901.
async fn is_installed(sandbox: &Sandbox, h: &HandlerComponent, env: &StepEnv, id: &str) {
    let mut s = sandbox
        .session(h, env.setup(Limits::default()))
        .await
        .expect("session");
    let r = s
        .call(
            Action::IsInstalled,
            &ctx(id, vec![]),
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(r.result_code, 901, "{r:?}");
}

/// Benchmark 1: Handler call overhead: load + instantiate + is-installed, three ways.
pub async fn handler_call(
    signed: &[u8],
    key: &TrustedHandlerKey,
    key_bytes: &[u8],
    iterations: usize,
) -> HandlerCall {
    let env = StepEnv::new();
    let keys = vec![key.clone()];
    let bytes: Arc<[u8]> = signed.to_vec().into();

    let plain = Sandbox::new(&EngineOptions::default(), None).expect("sandbox");
    let mut compile = Vec::new();
    for _ in 0..(iterations / 50).clamp(3, 10) {
        compile.push(call_once(&plain, bytes.clone(), &env).await);
    }

    let cache_root = tempfile::tempdir().expect("tempdir");
    let mut series = Vec::new();
    let mut sig = Vec::new();
    for pooling in [false, true] {
        let cache = cache_root
            .path()
            .join(if pooling { "pool" } else { "plain" });
        std::fs::create_dir_all(cache.join("key")).expect("mkdir");
        let mut v = Vec::new();
        // One engine, as in a process running steps; `Sandbox::load` keeps nothing in memory,
        // so every call reads, checks and deserializes the artefact from disk.
        let dirs = CacheDirs {
            artefacts: dir(&cache),
            key: dir(&cache.join("key")),
        };
        let sb = Sandbox::new(&EngineOptions { pooling }, Some(dirs)).expect("sandbox");
        for i in 0..iterations + 1 {
            let t = Instant::now();
            handler_sig::verify(signed, &keys).expect("signature");
            let s = t.elapsed();
            let c = call_once(&sb, bytes.clone(), &env).await;
            if i > 0 {
                v.push(s + c);
                if !pooling {
                    sig.push(s);
                }
            }
        }
        series.push(v);
    }
    // The agent's steady state: the compiled component stays in memory; each use re-verifies.
    let warm = Sandbox::new(&EngineOptions::default(), None).expect("sandbox");
    let h = warm.load("bench", bytes.clone()).await.expect("load");
    let mut mem = Vec::new();
    for _ in 0..iterations {
        let t = Instant::now();
        handler_sig::verify(signed, &keys).expect("signature");
        is_installed(&warm, &h, &env, "bench/handler:1").await;
        mem.push(t.elapsed());
    }
    let agent_loader = agent_loader_calls(signed, key, key_bytes, &env, iterations).await;
    let sig_stats = Stats::of(sig);
    let cached = Stats::of(series.remove(0));
    let share = sig_stats.median_ms / cached.median_ms * 100.0;
    HandlerCall {
        component_bytes: signed.len(),
        compile_each_time: Stats::of(compile),
        cached_with_signature: cached,
        cached_pooling_with_signature: Stats::of(series.remove(0)),
        in_memory_with_signature: Stats::of(mem),
        agent_loader,
        signature_check: sig_stats,
        signature_share_percent: share,
    }
}

const BENCH_ID: &str = "bench/handler:1";

/// The agent's loader over a data dir in `root` with `signed` installed as [`BENCH_ID`] and its
/// key trusted, and its sandbox.
async fn agent_loader(
    root: &Path,
    signed: &[u8],
    key: &TrustedHandlerKey,
    key_bytes: &[u8],
) -> (crate::loader::Loader, Arc<Sandbox>) {
    std::fs::create_dir_all(root.join("trust/handlers")).expect("mkdir");
    std::fs::write(
        root.join(format!("trust/handlers/{}.pub", key.name)),
        key_bytes,
    )
    .expect("key");
    let data = DataDir::open(root).expect("data dir");
    let trust = crate::trust::TrustStore::load(&data, &Default::default()).expect("trust");
    let registry =
        crate::registry::Registry::open(data.handlers().expect("handlers")).expect("registry");
    let sb = Arc::new(
        Sandbox::new(
            &EngineOptions::default(),
            Some(data.component_cache().expect("cache")),
        )
        .expect("sandbox"),
    );
    let loader = crate::loader::Loader::new(registry, trust, sb.clone());
    loader
        .install(
            BENCH_ID,
            signed.to_vec(),
            "bench.wasm",
            &Default::default(),
            0,
        )
        .await
        .expect("install");
    (loader, sb)
}

/// Calls through the agent's own loader (a data dir with the handler installed and its key
/// trusted), as each step of a deployment loads its handler.
async fn agent_loader_calls(
    signed: &[u8],
    key: &TrustedHandlerKey,
    key_bytes: &[u8],
    env: &StepEnv,
    iterations: usize,
) -> Stats {
    let t = tempfile::tempdir().expect("tempdir");
    let (loader, sb) = agent_loader(t.path(), signed, key, key_bytes).await;
    let (policy, id) = (crate::policy::Policy::default(), BENCH_ID);
    let mut v = Vec::new();
    for _ in 0..iterations {
        let t = Instant::now();
        let h = loader.load(id, &policy).await.expect("load");
        is_installed(&sb, &h, env, id).await;
        v.push(t.elapsed());
    }
    Stats::of(v)
}

/// What a handler's language costs: the component, its install, its calls.
#[derive(Debug, Clone, Serialize)]
pub struct LanguageFigures {
    pub component_bytes: usize,
    /// `handler install`: signature check, policy check, compilation, registry (each run into a
    /// fresh data dir, so nothing is cached).
    pub install: Stats,
    /// A call through the agent's loader: load (verdict and compiled component kept) and
    /// is-installed in a fresh instance.
    pub call: Stats,
}

/// Benchmark 8: install and per-call cost of one signed handler component.
pub async fn language(
    signed: &[u8],
    key: &TrustedHandlerKey,
    key_bytes: &[u8],
    iterations: usize,
) -> LanguageFigures {
    let mut installs = Vec::new();
    for _ in 0..3 {
        let t = tempfile::tempdir().expect("tempdir");
        let started = Instant::now();
        agent_loader(t.path(), signed, key, key_bytes).await;
        installs.push(started.elapsed());
    }
    let env = StepEnv::new();
    LanguageFigures {
        component_bytes: signed.len(),
        install: Stats::of(installs),
        call: agent_loader_calls(signed, key, key_bytes, &env, iterations).await,
    }
}

/// Figures of the sandbox-versus-native benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxVsNative {
    pub payload_bytes: u64,
    pub native: Stats,
    pub sandbox: Stats,
    pub ratio: f64,
}

fn native_crc(payload: &Path, out: &Path) -> u32 {
    let mut f = std::fs::File::open(payload).expect("payload");
    let mut buf = vec![0u8; 1 << 20];
    let mut crc = 0;
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        crc = crc32_update(crc, &buf[..n]);
    }
    std::fs::write(out, format!("data.bin {crc:08x}\n")).expect("write");
    crc
}

/// Benchmark 2: The same step logic (read a payload, CRC-32 it, write the result) natively and sandboxed.
pub async fn sandbox_vs_native(component: &[u8], mib: u64, iterations: usize) -> SandboxVsNative {
    let env = StepEnv::new();
    let payload = env.p("payload").join("data.bin");
    write_pattern(&payload, mib << 20);
    let files = vec![sandstep_model::StepFile {
        id: "data.bin".into(),
        name: "data.bin".into(),
        size: mib << 20,
        sha256: String::new(),
    }];
    let sandbox = Sandbox::new(&EngineOptions::default(), None).expect("sandbox");
    let h = sandbox
        .load("bench-guest", component.to_vec().into())
        .await
        .expect("load");
    let mut native = Vec::new();
    let mut sand = Vec::new();
    let mut expected = 0;
    for _ in 0..iterations {
        let t = Instant::now();
        expected = native_crc(&payload, &env.p("work").join("native.txt"));
        native.push(t.elapsed());
        let t = Instant::now();
        let mut s = sandbox
            .session(&h, env.setup(Limits::default()))
            .await
            .expect("session");
        let r = s
            .call(
                Action::Install,
                &ctx("bench/handler:1", files.clone()),
                &CancellationToken::new(),
            )
            .await;
        sand.push(t.elapsed());
        assert_eq!(r.result_code, 600, "{r:?}");
    }
    let got = std::fs::read_to_string(env.p("work").join("crc.txt")).expect("guest output");
    assert_eq!(
        got,
        format!("data.bin {expected:08x}\n"),
        "both compute the same"
    );
    let (n, s) = (Stats::of(native), Stats::of(sand));
    SandboxVsNative {
        payload_bytes: mib << 20,
        ratio: s.median_ms / n.median_ms,
        native: n,
        sandbox: s,
    }
}

/// Writes `bytes` of a cheap, non-repeating pattern.
pub fn write_pattern(path: &Path, bytes: u64) {
    let mut f =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("create"));
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = bytes;
    while left > 0 {
        for c in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).expect("write");
        left -= n as u64;
    }
    f.flush().expect("flush");
}

/// Figures of the hashing benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct Sha256Speed {
    pub bytes: u64,
    pub sandstep_mb_s: f64,
    pub openssl_mb_s: f64,
    pub ratio: f64,
}

/// Benchmark 3: sha256 of a big file: the download path's verification vs `openssl dgst -sha256`.
pub async fn sha256_speed(mib: u64) -> Sha256Speed {
    let t = tempfile::tempdir().expect("tempdir");
    let file = t.path().join("blob");
    write_pattern(&file, mib << 20);
    let digest = file_sha256(&file);
    // The store holds the file under its digest; verifying it is what the download path does.
    let store = t.path().join("store");
    std::fs::create_dir(&store).expect("mkdir");
    std::fs::rename(&file, store.join(hex::encode(digest))).expect("rename");
    let d = Downloader::new(dir(&store), DownloadConfig::default()).expect("downloader");
    let wanted = Wanted {
        id: "blob".into(),
        file_name: "blob".into(),
        size: mib << 20,
        sha256: digest,
        download_handler: None,
    };
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let path = store.join(hex::encode(digest));
    for _ in 0..3 {
        let t0 = Instant::now();
        assert!(d.verify_present(&wanted).expect("verify"));
        ours.push(t0.elapsed());
        let t0 = Instant::now();
        let st = std::process::Command::new("openssl")
            .arg("dgst")
            .arg("-sha256")
            .arg(&path)
            .output()
            .expect("openssl");
        theirs.push(t0.elapsed());
        assert!(st.status.success());
    }
    let mb = (mib << 20) as f64 / 1e6;
    let (o, t2) = (Stats::of(ours), Stats::of(theirs));
    let (a, b) = (mb / (o.median_ms / 1000.0), mb / (t2.median_ms / 1000.0));
    Sha256Speed {
        bytes: mib << 20,
        sandstep_mb_s: a,
        openssl_mb_s: b,
        ratio: a / b,
    }
}

/// Figures of the bandwidth-cap benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct CapHeld {
    pub cap_bytes_per_sec: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// The achieved rate over the cap, minus one, in percent (target: within 5).
    pub deviation_percent: f64,
    /// The process's CPU time over the wall time, in percent of one core.
    pub cpu_percent: f64,
}

/// This process's user + system CPU time.
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is valid; getrusage fills it for this process.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Benchmark 4b: a download of `secs` seconds' worth of bytes under a cap of `cap` bytes a
/// second, over loopback HTTP: the rate achieved against the cap, and the CPU it costs.
pub async fn bandwidth_cap(cap: u64, secs: u64) -> CapHeld {
    let t = tempfile::tempdir().expect("tempdir");
    let file = t.path().join("blob");
    let bytes = cap * secs;
    write_pattern(&file, bytes);
    // Streamed: the bench process's own RSS shows in its children's peak (fork).
    let sha256 = file_sha256(&file);
    let server = FileServer::start(file);
    let store = t.path().join("store");
    std::fs::create_dir(&store).expect("mkdir");
    let config = DownloadConfig {
        max_bytes_per_sec: Some(cap),
        ..DownloadConfig::default()
    };
    let d = Downloader::new(dir(&store), config).expect("downloader");
    let wanted = Wanted {
        id: "blob".into(),
        file_name: "blob".into(),
        size: bytes,
        sha256,
        download_handler: None,
    };
    let url = format!("http://127.0.0.1:{}/blob", server.port);
    let (wall, cpu) = (Instant::now(), cpu_time());
    d.fetch(&wanted, Source::Url(&url), &|_, _| {})
        .await
        .expect("capped download");
    let (seconds, used) = (wall.elapsed().as_secs_f64(), cpu_time() - cpu);
    CapHeld {
        cap_bytes_per_sec: cap,
        bytes,
        seconds,
        deviation_percent: (bytes as f64 / seconds / cap as f64 - 1.0) * 100.0,
        cpu_percent: used.as_secs_f64() / seconds * 100.0,
    }
}

/// Figures of the 10-step manifest benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct ManySteps {
    pub steps: usize,
    pub total: Stats,
    pub overhead_per_step_ms: f64,
}

#[derive(Default)]
struct Timer {
    started: Mutex<Option<Instant>>,
    in_handler: Mutex<Duration>,
}

impl Observer for Timer {
    fn event(&self, e: &Event) {
        match e {
            Event::ActionStarted { .. } => {
                *self.started.lock().expect("lock") = Some(Instant::now())
            }
            Event::ActionFinished { .. } => {
                if let Some(t) = self.started.lock().expect("lock").take() {
                    *self.in_handler.lock().expect("lock") += t.elapsed();
                }
            }
            _ => {}
        }
    }
}

/// Benchmark 5: A 10-step manifest with cached handlers and small payloads: total time, and sandstep's own
/// time per step (everything but the handler's calls: journal writes and fsyncs included).
pub async fn many_steps(
    signed_probe: &[u8],
    key: &TrustedHandlerKey,
    key_bytes: &[u8],
    runs: usize,
) -> ManySteps {
    let t = tempfile::tempdir().expect("tempdir");
    let data_path = t.path().join("data");
    std::fs::create_dir_all(data_path.join("trust/handlers")).expect("mkdir");
    std::fs::write(
        data_path.join(format!("trust/handlers/{}.pub", key.name)),
        key_bytes,
    )
    .expect("write key");
    let data = DataDir::open(&data_path).expect("data dir");
    let sandbox = Arc::new(
        Sandbox::new(
            &EngineOptions::default(),
            Some(data.component_cache().expect("cache")),
        )
        .expect("sandbox"),
    );
    let mut config = Config::default();
    config.trust.require_manifest_signature = false;
    let deployer = Deployer::new(sandbox, data, config.clone()).expect("deployer");
    deployer
        .loader()
        .install(
            "bench/probe:1",
            signed_probe.to_vec(),
            "probe",
            &config.policy(),
            0,
        )
        .await
        .expect("install");
    let files = t.path().join("files");
    std::fs::create_dir(&files).expect("mkdir");
    std::fs::write(files.join("small.txt"), b"small payload").expect("write");
    let entry = serde_json::json!({"fileName": "small.txt", "sizeInBytes": 13,
        "hashes": {"sha256": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, Sha256::digest(b"small payload"))}});
    let steps: Vec<serde_json::Value> = (0..10)
        .map(|i| serde_json::json!({"handler": "bench/probe:1", "files": ["small.txt"], "handlerProperties": {"op": "stateful", "name": format!("s{i}")}}))
        .collect();
    let mut total = Vec::new();
    let mut overhead = Vec::new();
    for r in 0..runs + 1 {
        let m = serde_json::json!({"updateId": {"provider": "bench", "name": "ten", "version": format!("1.{r}")},
            "compatibility": [{"a": "b"}], "instructions": {"steps": steps}, "files": {"small.txt": entry}, "manifestVersion": "5"});
        // Fresh handler state each run so every step really runs.
        let _ = std::fs::remove_dir_all(data_path.join("state"));
        let timer = Arc::new(Timer::default());
        let req = Request {
            workflow_id: format!("bench-{r}"),
            retry_timestamp: None,
            manifest: m.to_string(),
            source: FileSource::Directory(files.display().to_string()),
            inventory: None,
            force: true,
            signature: None,
            allow_unsigned: true,
            root_key_package_url: None,
        };
        let t0 = Instant::now();
        let out = deployer
            .run(req, timer.clone(), &CancellationToken::new())
            .await
            .expect("run");
        let wall = t0.elapsed();
        assert_eq!(out.result.result_code, 700, "{:?}", out.result);
        if r > 0 {
            total.push(wall);
            overhead.push(wall.saturating_sub(*timer.in_handler.lock().expect("lock")));
        }
    }
    let o = Stats::of(overhead);
    ManySteps {
        steps: 10,
        total: Stats::of(total),
        overhead_per_step_ms: o.median_ms / 10.0,
    }
}

/// A one-file HTTP server on loopback (GET -> 200 + the file, via sendfile); serves until dropped.
struct FileServer {
    port: u16,
}

impl FileServer {
    fn start(file: PathBuf) -> FileServer {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let file = file.clone();
                std::thread::spawn(move || {
                    let mut req = [0u8; 4096];
                    let _ = conn.read(&mut req);
                    let Ok(mut f) = std::fs::File::open(&file) else {
                        return;
                    };
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                    );
                    let _ = std::io::copy(&mut f, &mut conn);
                });
            }
        });
        FileServer { port }
    }
}

/// Runs a command to completion; returns (wall time, peak RSS in KiB, success).
// The child is reaped by wait4 (which also yields its peak RSS), not by Child::wait.
#[allow(clippy::zombie_processes)]
fn measure(cmd: &mut std::process::Command) -> (Duration, u64, bool) {
    let t = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::wait4(child.id() as i32, &mut status, 0, &mut usage);
    }
    (
        t.elapsed(),
        usage.ru_maxrss as u64,
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) <= 3,
    )
}

/// Figures of the firmware data-path benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct FirmwarePath {
    pub image_bytes: u64,
    pub curl_mb_s: f64,
    /// `curl -o slot` followed by an fsync of the slot: the same durability as sandstep's.
    pub curl_fsync_mb_s: f64,
    pub sandstep_mb_s: f64,
    pub ratio: f64,
    pub ratio_to_curl_fsync: f64,
    /// Where sandstep's time went in its last run, from its journal (ms).
    pub breakdown: String,
    pub sandstep_peak_rss_mib: f64,
}

/// Benchmark 4: A firmware image from a loopback HTTP server through download, hash check and slot write
/// (`sandstep run` with the firmware handler, as a separate process), against `curl -o slot`.
pub fn firmware_path(
    firmware_signed: &[u8],
    key: &TrustedHandlerKey,
    key_bytes: &[u8],
    mib: u64,
) -> FirmwarePath {
    let exe = std::env::current_exe().expect("current exe");
    let t = tempfile::tempdir().expect("tempdir");
    let image = t.path().join("fw.img");
    write_pattern(&image, mib << 20);
    let digest = file_sha256(&image);
    let server = FileServer::start(image.clone());
    let url = format!("http://127.0.0.1:{}/fw.img", server.port);
    let (curl, curl_fsync) = curl_runs(&url, &t.path().join("curl-slot.img"));
    let (data, config, manifest) =
        firmware_setup(t.path(), firmware_signed, key, key_bytes, &digest, mib);
    let mut runs = Vec::new();
    let mut rss = 0;
    for i in 0..2 {
        let _ = std::fs::remove_dir_all(data.join("downloads"));
        let _ = std::fs::remove_dir_all(data.join("journal"));
        std::fs::write(t.path().join("bootenv"), "booted_slot=a\n").expect("env");
        settle();
        let (d, peak, ok) = measure(
            std::process::Command::new(&exe)
                .arg("run")
                .arg(&manifest)
                .arg("--allow-unsigned")
                .arg("--files")
                .arg(format!("http://127.0.0.1:{}/", server.port))
                .arg("--data-dir")
                .arg(&data)
                .arg("--config")
                .arg(&config)
                .arg("--workflow-id")
                .arg(format!("fw-{i}")),
        );
        assert!(ok, "sandstep run failed");
        runs.push(d);
        rss = rss.max(peak);
    }
    assert_eq!(
        std::fs::metadata(t.path().join("b.img"))
            .expect("slot b")
            .len(),
        mib << 20
    );
    let breakdown = journal_breakdown(&data);
    let mb = (mib << 20) as f64 / 1e6;
    let (c, cf, s) = (Stats::of(curl), Stats::of(curl_fsync), Stats::of(runs));
    let (cm, cfm, sm) = (
        mb / (c.p10_ms.max(c.median_ms) / 1000.0),
        mb / (cf.p10_ms.max(cf.median_ms) / 1000.0),
        mb / (s.median_ms / 1000.0),
    );
    FirmwarePath {
        image_bytes: mib << 20,
        curl_mb_s: cm,
        curl_fsync_mb_s: cfm,
        sandstep_mb_s: sm,
        ratio: sm / cm,
        ratio_to_curl_fsync: sm / cfm,
        breakdown,
        sandstep_peak_rss_mib: rss as f64 / 1024.0,
    }
}

/// The sha256 of a file.
fn file_sha256(path: &Path) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            return h.finalize();
        }
        h.update(&buf[..n]);
    }
}

/// `curl -o slot` and `curl -o slot && sync slot`, each twice; their durations.
/// Writes back every dirty page before a measured run, so no run waits behind the writeback of
/// the one before (a journal fsync on ext4 can wait for another file's dirty data).
fn settle() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

fn curl_runs(url: &str, slot: &Path) -> (Vec<Duration>, Vec<Duration>) {
    // curl, twice (the second is measured: warm page cache like ours).
    let mut curl = Vec::new();
    for _ in 0..2 {
        settle();
        let (d, _, ok) = measure(
            std::process::Command::new("curl")
                .args(["-s", "-o"])
                .arg(slot)
                .arg(url),
        );
        assert!(ok, "curl failed");
        curl.push(d);
    }
    let mut curl_fsync = Vec::new();
    for _ in 0..2 {
        settle();
        let (d, _, ok) = measure(
            std::process::Command::new("sh")
                .args(["-c", "curl -s -o \"$1\" \"$2\" && sync \"$1\"", "sh"])
                .arg(slot)
                .arg(url),
        );
        assert!(ok, "curl + sync failed");
        curl_fsync.push(d);
    }
    (curl, curl_fsync)
}

/// A data dir in `dir` with the signed firmware handler installed, file-backed slots, and a
/// one-step firmware manifest for the image; the data dir, config and manifest paths.
fn firmware_setup(
    dir: &Path,
    firmware_signed: &[u8],
    key: &TrustedHandlerKey,
    key_bytes: &[u8],
    digest: &[u8; 32],
    mib: u64,
) -> (PathBuf, PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("current exe");
    // sandstep: data dir with the signed firmware handler and file slots.
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("trust/handlers")).expect("mkdir");
    std::fs::write(
        data.join(format!("trust/handlers/{}.pub", key.name)),
        key_bytes,
    )
    .expect("key");
    std::fs::write(dir.join("bootenv"), "booted_slot=a\n").expect("env");
    std::fs::write(dir.join("boot_id"), "b1\n").expect("boot id");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[trust]\nrequire-manifest-signature = false\n[handlers.\"sandstep/firmware:1\"]\ncapabilities = [\"slot\"]\n[handlers.\"sandstep/firmware:1\".slot]\na = \"{0}/a.img\"\nb = \"{0}/b.img\"\nboot-id-file = \"{0}/boot_id\"\nboot = {{ method = \"env-file\", path = \"{0}/bootenv\" }}\n",
            dir.display()
        ),
    )
    .expect("config");
    let fw = dir.join("firmware.wasm");
    std::fs::write(&fw, firmware_signed).expect("fw");
    let st = std::process::Command::new(&exe)
        .args(["handler", "install"])
        .arg(&fw)
        .args(["--id", "sandstep/firmware:1", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("install");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let manifest = dir.join("fw.json");
    std::fs::write(
        &manifest,
        serde_json::json!({"updateId": {"provider": "bench", "name": "fw", "version": "2.0"}, "compatibility": [{"a": "b"}],
            "instructions": {"steps": [{"handler": "sandstep/firmware:1", "files": ["fw.img"], "handlerProperties": {"installedCriteria": "2.0"}}]},
            "files": {"fw.img": {"fileName": "fw.img", "sizeInBytes": mib << 20, "hashes": {"sha256": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest)}}},
            "manifestVersion": "5"})
        .to_string(),
    )
    .expect("manifest");
    (data, config, manifest)
}

/// Where the last run's time went, from its journal: download and action durations (ms).
fn journal_breakdown(data: &Path) -> String {
    let journal = std::fs::read_dir(data.join("journal"))
        .expect("journal dir")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("fw-1") && name.ends_with(".journal")
        })
        .expect("the last run's journal");
    let journal = std::fs::read(journal).expect("journal");
    let j = sandstep_model::journal::Journal::decode(&journal).expect("journal decodes");
    j.units
        .iter()
        .flat_map(|u| {
            u.files
                .iter()
                .map(|f| format!("download {}", f.duration_ms))
                .chain(
                    u.actions
                        .iter()
                        .map(|a| format!("{} {}", a.action, a.duration_ms)),
                )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Benchmark 6: The agent's idle RSS with the MQTT connection up (MiB), given a broker URL:
/// read 65 s after the start, when the agent has paged out its start-up code and two MQTT
/// keep-alive rounds have run (the steady idle figure, not the low one just after the trim).
pub fn agent_idle_rss(broker_url: &str, exe: &std::path::Path) -> f64 {
    let t = tempfile::tempdir().expect("tempdir");
    let config = t.path().join("agent.toml");
    std::fs::write(
        &config,
        format!("[agent]\ndevice-id = \"bench-agent\"\n[mqtt]\nurl = \"{broker_url}\"\n"),
    )
    .expect("config");
    let mut child = std::process::Command::new(exe)
        .args(["agent", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(t.path().join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("agent");
    std::thread::sleep(Duration::from_secs(65));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}
