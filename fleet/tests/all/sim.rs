//! fleet-sim against a real mosquitto and real replica processes: rollouts to hundreds of
//! simulated agents, with a replica killed half-way, and a failure limit.

use sandstep_fleet::fleet_sim::{self, SimOptions};
use sandstep_fleet::store::Database;
use sandstep_testkit::{Broker, Postgres};
use std::time::Duration;

fn sim(
    devices: usize,
    db: Database,
    replicas: usize,
    failing: u32,
    kill_one: bool,
    dir: &std::path::Path,
) -> SimOptions {
    SimOptions {
        devices,
        database: db,
        replicas,
        replica_exe: env!("CARGO_BIN_EXE_sandstep-fleet").into(),
        phases: vec![100, 1000, 5000, 10_000],
        max_failure_rate: Some(500),
        failing,
        kill_one,
        timeout: Duration::from_secs(240),
        work_dir: dir.to_owned(),
    }
}

/// Two replicas on one PostgreSQL serve 400 simulated devices through a shared subscription; one
/// is killed once half the results are stored; every device the rollout reached has its result
/// stored, and the rollout finished.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_on_postgresql_one_killed_half_way_lose_nothing() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let Some(pg) = Postgres::start() else { return };
    let cfg = sandstep_transport::mqtt::MqttConfig {
        url: format!("mqtt://127.0.0.1:{}", broker.port),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let o = sim(
        400,
        Database::parse(&pg.url, Default::default()).unwrap(),
        2,
        0,
        true,
        dir.path(),
    );
    let r = fleet_sim::run(&cfg, &o).await.unwrap();
    assert!(r.killed_one, "{r:?}");
    assert_eq!(
        (r.rollout_state.as_str(), r.deployed, r.lost),
        ("finished", 400, 0),
        "{r:?}"
    );
    assert!(r.p50_ms <= r.p95_ms && r.p95_ms <= r.max_ms);
}

/// A rollout whose devices fail beyond its limit pauses itself before the last phase, saying
/// why with the failure codes; on SQLite with one replica.
#[tokio::test(flavor = "multi_thread")]
async fn failures_over_the_limit_pause_the_rollout_before_it_reaches_everyone() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let cfg = sandstep_transport::mqtt::MqttConfig {
        url: format!("mqtt://127.0.0.1:{}", broker.port),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let o = sim(
        300,
        Database::Sqlite(dir.path().join("s.sqlite")),
        1,
        3000,
        false,
        dir.path(),
    );
    let r = fleet_sim::run(&cfg, &o).await.unwrap();
    assert_eq!(r.rollout_state, "paused", "{r:?}");
    assert!(r.deployed < 300 && r.lost == 0, "{r:?}");
    let why = r.rollout_reason.unwrap();
    assert!(
        why.contains("over the 5.0% limit") && why.contains("0/30000007 x"),
        "{why}"
    );
}
