//! `sandstep fleet-sim`: N simulated agents in one process against one broker, with the replica
//! running in-process too, to measure how long a deployment takes to reach all N devices and for
//! all N results to come back through the replica.
//!
//! A simulated agent is the real protocol without handlers: it subscribes to its delta topic,
//! acknowledges a deployment by reporting its `workflow`, then reports a completed result and the
//! `{"jobId", "status"}` acknowledgement, as the agent does after a no-op deployment.

use crate::mqtt::{Mqtt, MqttConfig, MqttEvent};
use sandstep_model::shadow::Topics;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The measurements of one run.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub devices: usize,
    /// From publishing the desired state to the last device receiving its delta, in ms.
    pub delivered_all_ms: u64,
    /// From publishing to the last result stored by the replica, in ms.
    pub reported_all_ms: u64,
    /// Per-device round trip (publish -> result stored), percentiles in ms.
    pub round_trip_p50_ms: u64,
    pub round_trip_p95_ms: u64,
    pub round_trip_max_ms: u64,
}

async fn sim_agent(
    cfg: MqttConfig,
    topics: Topics,
    id: String,
    delivered: mpsc::UnboundedSender<String>,
    ready: mpsc::UnboundedSender<()>,
    stop: CancellationToken,
) {
    let Ok(mut c) = Mqtt::connect(&cfg, &id) else {
        return;
    };
    let delta = Topics::for_device(&topics.delta, &id);
    let update = Topics::for_device(&topics.update, &id);
    let mut announced = false;
    loop {
        let ev = tokio::select! {
            ev = c.recv() => ev,
            _ = stop.cancelled() => return,
        };
        match ev {
            None => return,
            Some(MqttEvent::Connected) => {
                let _ = c.subscribe(&delta).await;
                let _ = c
                    .publish(
                        &update,
                        json!({"state": {"reported": {"status": "standBy", "simulated": true}}})
                            .to_string()
                            .into_bytes(),
                        false,
                    )
                    .await;
                if !announced {
                    announced = true;
                    let _ = ready.send(());
                }
            }
            Some(MqttEvent::Message { topic, payload, .. }) if topic == delta => {
                let Ok(v) = serde_json::from_slice::<Value>(&payload) else {
                    continue;
                };
                let Some(w) = v.pointer("/state/workflow").cloned() else {
                    continue;
                };
                let _ = delivered.send(id.clone());
                let report = json!({"state": {"reported": {
                    "workflow": w, "status": "completed", "state": 0,
                    "lastInstallResult": {"resultCode": 700, "extendedResultCodes": "00000000", "resultDetails": "", "stepResults": {}}
                }}});
                let _ = c
                    .publish(&update, report.to_string().into_bytes(), false)
                    .await;
                let id_of = w.get("id").cloned().unwrap_or(Value::Null);
                let _ = c
                    .publish(
                        &update,
                        json!({"jobId": id_of, "status": "SUCCESS"})
                            .to_string()
                            .into_bytes(),
                        false,
                    )
                    .await;
            }
            Some(_) => {}
        }
    }
}

/// The operator's connection, subscribed to the replica's confirmations.
async fn operator(
    cfg: &MqttConfig,
    prefix: &str,
    topics: &Topics,
    deadline: Instant,
) -> Result<Mqtt, String> {
    let mut op = Mqtt::connect(cfg, &format!("{prefix}-operator")).map_err(|e| e.to_string())?;
    loop {
        match tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            op.recv(),
        )
        .await
        {
            Ok(Some(MqttEvent::Connected)) => break,
            Ok(Some(_)) => {}
            _ => return Err("operator connection failed".into()),
        }
    }
    op.subscribe(&Topics::filter(&topics.accepted))
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(500)).await; // let the start reports settle
    Ok(op)
}

/// The figures of a run: when each device's result came back.
fn report(n: usize, done: &HashMap<String, Duration>, delivered_all: Duration) -> SimReport {
    let mut times: Vec<u64> = done.values().map(|d| d.as_millis() as u64).collect();
    times.sort_unstable();
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    SimReport {
        devices: n,
        delivered_all_ms: delivered_all.as_millis() as u64,
        reported_all_ms: *times.last().unwrap_or(&0),
        round_trip_p50_ms: pct(0.5),
        round_trip_p95_ms: pct(0.95),
        round_trip_max_ms: *times.last().unwrap_or(&0),
    }
}

/// Runs one simulation with `n` devices against the broker in `cfg`.
pub async fn run(
    cfg: &MqttConfig,
    n: usize,
    db_dir: &std::path::Path,
    timeout: Duration,
) -> Result<SimReport, String> {
    let topics = Topics::replica();
    let stop = CancellationToken::new();
    let replica_stop = stop.clone();
    let (rc, rt, db) = (
        cfg.clone(),
        topics.clone(),
        db_dir.join(format!("fleet-sim-{}.sqlite", fastrand::u32(..))),
    );
    let replica =
        tokio::spawn(async move { crate::shadow::run(&rc, &rt, &db, replica_stop).await });
    let (del_tx, mut del_rx) = mpsc::unbounded_channel();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let prefix = format!("sim{:04x}", fastrand::u16(..));
    for i in 0..n {
        tokio::spawn(sim_agent(
            cfg.clone(),
            topics.clone(),
            format!("{prefix}-{i:05}"),
            del_tx.clone(),
            ready_tx.clone(),
            stop.clone(),
        ));
    }
    let deadline = Instant::now() + timeout;
    for _ in 0..n {
        tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            ready_rx.recv(),
        )
        .await
        .map_err(|_| "simulated agents did not all connect in time".to_string())?;
    }
    // The operator: watch the replica's stored shadows, then publish the desired state to all.
    let mut op = operator(cfg, &prefix, &topics, deadline).await?;
    let workflow = format!("{prefix}-wf");
    let desired = json!({"state": {"desired": {"workflow": {"action": 3, "id": workflow}, "updateManifest": "{}", "fileUrls": {}}}}).to_string().into_bytes();
    let start = Instant::now();
    for i in 0..n {
        op.publish(
            &Topics::for_device(&topics.update, &format!("{prefix}-{i:05}")),
            desired.clone(),
            false,
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    let mut delivered: HashSet<String> = HashSet::new();
    let mut delivered_all = None;
    let mut done: HashMap<String, Duration> = HashMap::new();
    while done.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            d = del_rx.recv() => {
                if let Some(d) = d {
                    delivered.insert(d);
                    if delivered.len() == n && delivered_all.is_none() {
                        delivered_all = Some(start.elapsed());
                    }
                }
            }
            ev = op.recv() => {
                if let Some(MqttEvent::Message { topic, payload, .. }) = ev {
                    let Some(dev) = Topics::device_of(&topics.accepted, &topic) else { continue };
                    let Ok(v) = serde_json::from_slice::<Value>(&payload) else { continue };
                    if v.pointer("/state/reported/status") == Some(&json!("completed")) && v.pointer("/state/reported/workflow/id") == Some(&json!(workflow)) {
                        done.entry(dev).or_insert_with(|| start.elapsed());
                    }
                }
            }
            _ = tokio::time::sleep(left) => {
                stop.cancel();
                return Err(format!("timed out: {} of {n} delivered, {} reported", delivered.len(), done.len()));
            }
        }
    }
    stop.cancel();
    let _ = replica.await;
    let delivered_all = delivered_all.unwrap_or_else(|| start.elapsed());
    Ok(report(n, &done, delivered_all))
}
