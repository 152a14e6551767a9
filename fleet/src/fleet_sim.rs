//! `sandstep fleet-sim`: N simulated agents in one process, one MQTT connection each, against
//! one broker and real replica processes (`sandstep shadow`, one or more, on SQLite or one
//! PostgreSQL), driving a phased rollout with a failure threshold. It measures how long until
//! every device's result is stored, the replicas' throughput and memory, and the rows written;
//! optionally it kills one replica half-way and checks that nothing was lost.
//!
//! A simulated agent is the real protocol without handlers: it reports its group, acknowledges
//! a deployment by reporting its `workflow`, then reports a result (a fixed share of the devices
//! fail, chosen by device id), and, like the agent (gateway/src/agent/report.rs), sends its
//! whole reported state again when the replica does not confirm its result in time.

use crate::rollout::{Progress, Rollout, State};
use crate::store::{Database, Store};
use sandstep_model::shadow::Topics;
use sandstep_transport::mqtt::{Mqtt, MqttConfig, MqttEvent};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One run's set-up.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub devices: usize,
    pub database: Database,
    /// Replica processes.
    pub replicas: usize,
    /// The `sandstep` binary the replicas run.
    pub replica_exe: PathBuf,
    /// The rollout's phases (basis points, cumulative) and failure limit.
    pub phases: Vec<u32>,
    pub max_failure_rate: Option<u32>,
    /// Share of the devices whose install fails (basis points).
    pub failing: u32,
    /// Kill one replica (SIGKILL) once half the devices' results are stored.
    pub kill_one: bool,
    pub timeout: Duration,
    /// Where the replicas' config and data go.
    pub work_dir: PathBuf,
}

/// The measurements of one run.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub devices: usize,
    pub backend: &'static str,
    pub replicas: usize,
    /// From creating the rollout to the last result stored, in ms.
    pub all_stored_ms: u64,
    /// Updates the replicas stored per second over that time.
    pub stored_per_s: u64,
    /// Per device, from receiving the deployment to its result stored, in ms.
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub max_ms: u64,
    /// Each replica's peak RSS (KiB; the killed one's just before it was killed).
    pub replica_rss_kib: Vec<u64>,
    /// Device rows written (every stored change bumps a device's version) and rollout targets.
    pub rows_written: u64,
    pub rollout_state: String,
    pub rollout_reason: Option<String>,
    pub killed_one: bool,
    /// Devices the rollout deployed to whose result the store does not have: must be 0.
    pub lost: usize,
    /// Devices deployed to.
    pub deployed: usize,
}

/// The deterministic failing devices: those whose index falls in the first `failing` share.
fn fails(index: usize, failing: u32) -> bool {
    (index * 7919 % 10_000) < failing as usize
}

struct Agent {
    c: Mqtt,
    id: String,
    update: String,
    run: u32,
    token_seq: u64,
    full: Map<String, Value>,
}

impl Agent {
    async fn report(&mut self, patch: Value) -> String {
        if let Value::Object(m) = &patch {
            sandstep_model::shadow::merge(&mut self.full, m);
        }
        self.token_seq += 1;
        let token = sandstep_model::shadow::ReportOrder {
            run: self.run,
            seq: self.token_seq,
        }
        .token(&self.id);
        let doc = json!({"state": {"reported": patch}, "clientToken": token});
        let _ = self
            .c
            .publish(&self.update, doc.to_string().into_bytes(), false)
            .await;
        token
    }
}

/// What a simulated agent tells the run.
enum Said {
    Ready,
    Done(String, Duration),
}

/// A simulated agent's confirmations: the reports not yet confirmed, oldest first.
struct Pending {
    waiting: std::collections::VecDeque<String>,
    resend_at: Option<Instant>,
}

impl Pending {
    fn sent(&mut self, token: String) {
        self.waiting.push_back(token);
        self.resend_at.get_or_insert(Instant::now() + RESEND_AFTER);
    }

    /// A confirmation: whether one before it was skipped (lost, so resend everything).
    fn confirmed(&mut self, token: &str) -> bool {
        let Some(i) = self.waiting.iter().position(|t| t == token) else {
            return false;
        };
        self.waiting.drain(..=i);
        self.resend_at = (!self.waiting.is_empty()).then(|| Instant::now() + RESEND_AFTER);
        i > 0
    }
}

/// How long a simulated agent waits for a confirmation before sending everything again.
const RESEND_AFTER: Duration = Duration::from_secs(3);

async fn sim_agent(
    cfg: MqttConfig,
    topics: Topics,
    (id, group): (String, String),
    fail: bool,
    tx: mpsc::UnboundedSender<Said>,
    stop: CancellationToken,
) {
    let Ok(c) = Mqtt::connect(&cfg, &id) else {
        return;
    };
    let (delta, accepted) = (
        Topics::for_device(&topics.delta, &id),
        Topics::for_device(&topics.accepted, &id),
    );
    let update = Topics::for_device(&topics.update, &id);
    let mut a = Agent {
        c,
        id: id.clone(),
        update,
        run: fastrand::u32(..),
        token_seq: 0,
        full: Map::new(),
    };
    let mut p = Pending {
        waiting: Default::default(),
        resend_at: None,
    };
    let (mut announced, mut got_at, mut told) = (false, None::<Instant>, false);
    loop {
        let sleep = p.resend_at.map_or(Duration::from_secs(3600), |t| {
            t.saturating_duration_since(Instant::now())
        });
        let ev = tokio::select! {
            ev = a.c.recv() => ev,
            _ = tokio::time::sleep(sleep) => {
                p.waiting.clear();
                p.resend_at = None;
                p.sent(a.report(Value::Object(a.full.clone())).await);
                continue;
            }
            _ = stop.cancelled() => return,
        };
        match ev {
            None => return,
            Some(MqttEvent::Connected) => {
                let _ = a.c.subscribe(&delta).await;
                let _ = a.c.subscribe(&accepted).await;
            }
            Some(MqttEvent::SubAck) if !announced && a.full.is_empty() => {
                announced = true;
                let hello = json!({"status": "standBy", "groups": [group], "simulated": true});
                p.sent(a.report(hello).await);
            }
            Some(MqttEvent::Message { topic, payload, .. }) if topic == accepted => {
                let Ok(v) = serde_json::from_slice::<Value>(&payload) else {
                    continue;
                };
                let Some(token) = v.get("clientToken").and_then(Value::as_str) else {
                    continue;
                };
                if p.confirmed(token) {
                    p.waiting.clear();
                    p.sent(a.report(Value::Object(a.full.clone())).await);
                }
                if !p.waiting.is_empty() {
                    continue;
                }
                match got_at {
                    None if !told => {
                        told = true;
                        let _ = tx.send(Said::Ready);
                    }
                    Some(t) if told => {
                        told = false;
                        let _ = tx.send(Said::Done(id.clone(), t.elapsed()));
                    }
                    _ => {}
                }
            }
            Some(MqttEvent::Message { topic, payload, .. }) if topic == delta => {
                let Ok(v) = serde_json::from_slice::<Value>(&payload) else {
                    continue;
                };
                let Some(w) = v.pointer("/state/workflow").cloned() else {
                    continue;
                };
                if got_at.is_some() {
                    continue; // the same deployment again
                }
                got_at = Some(Instant::now());
                let ack = json!({"workflow": w, "status": "downloading", "lastError": null});
                p.sent(a.report(ack).await);
                p.sent(a.report(result(fail)).await);
            }
            Some(_) => {}
        }
    }
}

/// The final report of a simulated install.
fn result(fail: bool) -> Value {
    let (status, state, code, ext) = if fail {
        ("failed", 255, 0, "30000007")
    } else {
        ("completed", 0, 700, "00000000")
    };
    json!({"status": status, "state": state, "progress": null, "lastInstallResult": {
        "resultCode": code, "extendedResultCodes": ext, "resultDetails": "simulated", "stepResults": {}}})
}

/// The replica processes, stopped when dropped.
struct Replicas(Vec<Option<Child>>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for c in self.0.iter_mut().flatten() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

/// Why a simulation could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{path}: {cause}")]
    Io {
        path: String,
        /// In the message, not a `source`: printed once.
        cause: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("timed out: {0}")]
    TimedOut(String),
    #[error("the rollout vanished from the store")]
    Vanished,
    #[error("the simulated agents stopped")]
    AgentsStopped,
}

impl SimError {
    fn io(path: &std::path::Path, cause: std::io::Error) -> SimError {
        SimError::Io {
            path: path.display().to_string(),
            cause,
        }
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn start_replicas(cfg: &MqttConfig, o: &SimOptions) -> Result<Replicas, SimError> {
    // The replicas' `[shadow]` table: the store, and its TLS settings.
    let db = match &o.database {
        Database::Sqlite(p) => format!("database = {:?}\n", p.display().to_string()),
        Database::Postgres { url, tls } => {
            let mut table = format!("database = {url:?}\n");
            for (key, path) in [
                ("ca-file", &tls.ca_file),
                ("client-cert", &tls.client_cert),
                ("client-key", &tls.client_key),
            ] {
                if let Some(p) = path {
                    table.push_str(&format!("{key} = {:?}\n", p.display().to_string()));
                }
            }
            table
        }
    };
    let mut out = Vec::new();
    for i in 0..o.replicas {
        let dir = o.work_dir.join(format!("replica-{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| SimError::io(&dir, e))?;
        let conf = dir.join("config.toml");
        let text = format!(
            "[mqtt]\nurl = {:?}\nclient-id = \"sim-replica-{i}-{:04x}\"\n[shadow]\n{db}rollout-interval-ms = 200\n",
            cfg.url,
            fastrand::u16(..)
        );
        std::fs::write(&conf, text).map_err(|e| SimError::io(&conf, e))?;
        let log = dir.join("replica.log");
        let child = Command::new(&o.replica_exe)
            .args(["--log", "info"])
            .arg("--config")
            .arg(&conf)
            .arg("--data-dir")
            .arg(&dir)
            .arg("shadow")
            .stderr(std::fs::File::create(&log).map_err(|e| SimError::io(&log, e))?)
            .spawn()
            .map_err(|e| SimError::io(&o.replica_exe, e))?;
        out.push(Some(child));
    }
    Ok(Replicas(out))
}

/// More descriptors for N connections (up to the hard limit).
fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// Runs one simulation.
pub async fn run(cfg: &MqttConfig, o: &SimOptions) -> Result<SimReport, SimError> {
    raise_fd_limit();
    let topics = Topics::replica();
    let mut replicas = start_replicas(cfg, o)?;
    let mut store = open_store(&o.database, Instant::now() + Duration::from_secs(20)).await?;
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let prefix = format!("sim{:04x}", fastrand::u16(..));
    for i in 0..o.devices {
        let names = (format!("{prefix}-{i:05}"), prefix.clone());
        tokio::spawn(sim_agent(
            cfg.clone(),
            topics.clone(),
            names,
            fails(i, o.failing),
            tx.clone(),
            stop.clone(),
        ));
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + o.timeout;
    let mut ready = 0;
    while ready < o.devices {
        match tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            rx.recv(),
        )
        .await
        {
            Ok(Some(Said::Ready)) => ready += 1,
            Ok(_) => {}
            Err(_) => {
                return Err(SimError::TimedOut(format!(
                    "only {ready} of {} simulated agents were stored in time",
                    o.devices
                )))
            }
        }
    }
    let r = Rollout {
        id: format!("{prefix}-rollout"),
        group: prefix.clone(),
        update_id: "sim/fleet/1".into(),
        desired: json!({"workflow": {"action": 3, "id": format!("{prefix}-rollout")}, "updateManifest": "{}", "fileUrls": {}})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        workflow_id: format!("{prefix}-rollout"),
        phases: o.phases.clone(),
        max_failure_rate: o.max_failure_rate,
        min_devices: 50,
        soak_ms: 0,
        created_ms: sandstep_transport::clock::now_ms(),
        progress: Progress::default(),
    };
    let writes_before = device_writes(&mut store).await?;
    let start = Instant::now();
    store.create_rollout(&r).await?;
    let (done, rss, killed) = watch(o, &mut store, &r, &mut replicas, &mut rx, deadline).await?;
    let all_stored = start.elapsed();
    let mut rss = rss;
    for (i, c) in replicas.0.iter().enumerate() {
        if let Some(c) = c {
            rss[i] = peak_rss_kib(c.id());
        }
    }
    finish(
        o,
        &mut store,
        &r,
        done,
        all_stored,
        rss,
        killed,
        writes_before,
    )
    .await
}

async fn open_store(db: &Database, until: Instant) -> Result<Store, SimError> {
    loop {
        match Store::open(db).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > until => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn device_writes(store: &mut Store) -> Result<u64, SimError> {
    let mut n = 0;
    for d in store.devices().await? {
        n += store.get(&d).await?.map_or(0, |r| r.version);
    }
    Ok(n)
}

/// Where the rollout stands by the store: the rollout, the devices it deployed to, and how
/// many of those have a final result stored.
async fn standing(store: &mut Store, id: &str) -> Result<(Rollout, Vec<String>, usize), SimError> {
    let (now, _) = store.rollout(id).await?.ok_or(SimError::Vanished)?;
    let members = store.members(&now).await?;
    let deployed: Vec<_> = members.iter().filter(|m| m.deployed.is_some()).collect();
    let finished = deployed
        .iter()
        .filter(|m| m.outcome.as_ref().is_some_and(|x| x.finished()))
        .count();
    let ids = deployed.into_iter().map(|m| m.id.clone()).collect();
    Ok((now, ids, finished))
}

type Watched = (HashMap<String, Duration>, Vec<u64>, bool);

/// Waits until the rollout ends (finished, or paused by its failure limit) and every device it
/// deployed to has its result stored; kills one replica half-way when asked.
async fn watch(
    o: &SimOptions,
    store: &mut Store,
    r: &Rollout,
    replicas: &mut Replicas,
    rx: &mut mpsc::UnboundedReceiver<Said>,
    deadline: Instant,
) -> Result<Watched, SimError> {
    let mut done: HashMap<String, Duration> = HashMap::new();
    let mut rss = vec![0; o.replicas];
    let mut killed = false;
    let mut next_look = Instant::now();
    let mut last_seen = String::new();
    loop {
        if o.kill_one && !killed && done.len() >= o.devices / 2 && o.replicas > 1 {
            if let Some(mut c) = replicas.0[1].take() {
                rss[1] = peak_rss_kib(c.id());
                let _ = c.kill();
                let _ = c.wait();
                killed = true;
            }
        }
        if Instant::now() >= next_look {
            next_look = Instant::now() + Duration::from_millis(250);
            let (now, deployed, finished) = standing(store, &r.id).await?;
            let all_in = finished == deployed.len();
            last_seen = format!(
                "the rollout is {} in phase {} ({}); {} deployed, {finished} finished in the store",
                now.progress.state.name(),
                now.progress.phase + 1,
                now.progress.reason.as_deref().unwrap_or("-"),
                deployed.len()
            );
            if now.progress.state != State::Running
                && all_in
                && deployed.iter().all(|d| done.contains_key(d))
            {
                return Ok((done, rss, killed));
            }
        }
        if Instant::now() > deadline {
            return Err(SimError::TimedOut(format!(
                "{} of {} results confirmed to the devices; {last_seen}",
                done.len(),
                o.devices
            )));
        }
        match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            Ok(Some(Said::Done(id, took))) => {
                done.entry(id).or_insert(took);
            }
            Ok(Some(Said::Ready)) | Err(_) => {}
            Ok(None) => return Err(SimError::AgentsStopped),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    o: &SimOptions,
    store: &mut Store,
    r: &Rollout,
    done: HashMap<String, Duration>,
    all_stored: Duration,
    rss: Vec<u64>,
    killed: bool,
    writes_before: u64,
) -> Result<SimReport, SimError> {
    let (now, deployed, finished) = standing(store, &r.id).await?;
    let lost = deployed.len() - finished;
    let writes = device_writes(store).await? - writes_before;
    let mut times: Vec<u64> = done.values().map(|d| d.as_millis() as u64).collect();
    times.sort_unstable();
    let pct = |p: f64| {
        times
            .get(((times.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    Ok(SimReport {
        devices: o.devices,
        backend: match o.database {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres { .. } => "postgresql",
        },
        replicas: o.replicas,
        all_stored_ms: all_stored.as_millis() as u64,
        stored_per_s: writes * 1000 / (all_stored.as_millis() as u64).max(1),
        p50_ms: pct(0.5),
        p95_ms: pct(0.95),
        max_ms: times.last().copied().unwrap_or(0),
        replica_rss_kib: rss,
        rows_written: writes + deployed.len() as u64,
        rollout_state: now.progress.state.name().into(),
        rollout_reason: now.progress.reason.clone(),
        killed_one: killed,
        lost,
        deployed: deployed.len(),
    })
}

impl SimReport {
    /// The table's header, for [`SimReport::row`].
    pub const HEADER: &'static str = "devices  store       replicas  all_stored_ms  stored/s  p50_ms  p95_ms  max_ms  replica_rss_mib  rows  rollout   killed  lost";

    /// One line of the table.
    pub fn row(&self) -> String {
        let rss: Vec<String> = self
            .replica_rss_kib
            .iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect();
        format!(
            "{:>7}  {:<10}  {:>8}  {:>13}  {:>8}  {:>6}  {:>6}  {:>6}  {:>15}  {:>5}  {:<8}  {:<6}  {}",
            self.devices,
            self.backend,
            self.replicas,
            self.all_stored_ms,
            self.stored_per_s,
            self.p50_ms,
            self.p95_ms,
            self.max_ms,
            rss.join("/"),
            self.rows_written,
            self.rollout_state,
            if self.killed_one { "yes" } else { "no" },
            self.lost
        )
    }
}
