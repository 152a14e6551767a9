//! Fleets: the replica's store on SQLite and on a real PostgreSQL (Debian's, started by
//! scripts/postgres.sh in a temporary directory as an unprivileged user), several replicas on
//! one database, and phased rollouts from the operator's CLI to real agents.

use crate::fleet::{sandstep, Fleet, Proc};
use crate::workflow::stateful;
use sandstep::shadow::record::Record;
use sandstep::shadow::rollout::{Progress, Rollout, State};
use sandstep::shadow::store::{Database, PgTls, Store, StoreError};
use sandstep_model::shadow::Document;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

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
        let out = Command::new(crate::support::repo_root().join("scripts/postgres.sh"))
            .arg("start")
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap();
        if !out.status.success() {
            crate::support::prerequisite_missing(&format!(
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
        let _ = Command::new(crate::support::repo_root().join("scripts/postgres.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// Both stores, each test run against each.
async fn each_store(test: impl AsyncFn(Database)) {
    let dir = tempfile::tempdir().unwrap();
    test(Database::Sqlite(dir.path().join("shadow.sqlite"))).await;
    let Some(pg) = Postgres::start() else { return };
    test(Database::parse(&pg.url, Default::default())).await;
}

fn report(v: Value) -> Document {
    Document::parse(json!({"state": {"reported": v}}).to_string().as_bytes()).unwrap()
}

fn rollout(id: &str, group: &str) -> Rollout {
    Rollout {
        id: id.into(),
        group: group.into(),
        update_id: "t/n/1".into(),
        desired: json!({"workflow": {"action": 3, "id": id}})
            .as_object()
            .unwrap()
            .clone(),
        workflow_id: id.into(),
        phases: vec![5000, 10_000],
        max_failure_rate: None,
        min_devices: 1,
        soak_ms: 0,
        created_ms: 1,
        progress: Progress::default(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn both_stores_merge_in_order_version_every_write_and_migrate_once() {
    each_store(async |db| {
        let mut s = Store::open(&db).await.unwrap();
        let latest = s.schema_version().await.unwrap();
        assert!(latest >= 1);
        let docs = vec![
            (
                "b".to_owned(),
                report(json!({"status": "downloading", "groups": ["g"]})),
            ),
            ("a".to_owned(), report(json!({"status": "standBy"}))),
            ("b".to_owned(), report(json!({"status": "completed"}))),
        ];
        let recs = s.merge_batch(&docs, 7).await.unwrap();
        assert_eq!(recs[0].version, 1, "input order is kept");
        assert_eq!(recs[2].version, 2);
        let b = s.get("b").await.unwrap().unwrap();
        assert_eq!(
            b.reported["status"], "completed",
            "a device's updates apply in order"
        );
        assert_eq!((b.version, b.reported_ms), (2, 7));
        assert_eq!(s.devices().await.unwrap(), ["a", "b"]);
        drop(s);
        let mut again = Store::open(&db).await.unwrap();
        assert_eq!(again.schema_version().await.unwrap(), latest);
        assert_eq!(again.get("b").await.unwrap().unwrap().version, 2);
    })
    .await;
}

/// Replicas and operator commands opening a new database at the same moment each find it
/// migrated once, none failing on a migration another already applied.
#[tokio::test(flavor = "multi_thread")]
async fn stores_opened_at_once_on_a_new_database_migrate_it_once() {
    each_store(async |db| {
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let db = db.clone();
                tokio::spawn(async move { Store::open(&db).await.map(|_| ()) })
            })
            .collect();
        for o in opens {
            o.await.unwrap().unwrap();
        }
    })
    .await;
}

/// One device's reports stored out of order (two replicas finishing in the other order) keep
/// each field's newest value, by the place the agent's `clientToken` gives each report.
#[tokio::test(flavor = "multi_thread")]
async fn reports_stored_out_of_order_keep_the_newest_fields() {
    each_store(async |db| {
        let mut s = Store::open(&db).await.unwrap();
        let placed = |seq: u64, v: Value| {
            let token = sandstep_model::shadow::ReportOrder { run: 1, seq }.token("gw");
            let doc = json!({"state": {"reported": v}, "clientToken": token});
            (
                "gw".to_owned(),
                Document::parse(doc.to_string().as_bytes()).unwrap(),
            )
        };
        let result = placed(3, json!({"status": "completed", "state": 0}));
        let ack = placed(
            2,
            json!({"workflow": {"action": 3, "id": "w"}, "status": "downloading"}),
        );
        s.merge_batch(&[result], 1).await.unwrap();
        s.merge_batch(&[ack], 2).await.unwrap();
        let r = s.get("gw").await.unwrap().unwrap();
        assert_eq!(
            r.reported["status"], "completed",
            "the late acknowledgement did not undo it"
        );
        assert_eq!(
            r.reported["workflow"]["id"], "w",
            "its other fields are kept"
        );
        assert_eq!(
            r.outcome(),
            Some(sandstep::shadow::record::Outcome::Succeeded)
        );
    })
    .await;
}

/// Two replicas (two connections) merging into the same devices at once lose no update: each
/// write names the version it read, and the database refuses a stale one.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_writing_the_same_devices_at_once_lose_no_update() {
    each_store(async |db| {
        Store::open(&db).await.unwrap();
        let mut tasks = Vec::new();
        for replica in 0..2 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = Store::open(&db).await.unwrap();
                for round in 0..40 {
                    let docs: Vec<(String, Document)> = ["d1", "d2", "d3"]
                        .iter()
                        .map(|d| {
                            (
                                d.to_string(),
                                report(json!({format!("r{replica}-{round}"): true})),
                            )
                        })
                        .collect();
                    s.merge_batch(&docs, round).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut s = Store::open(&db).await.unwrap();
        for d in ["d1", "d2", "d3"] {
            let r: Record = s.get(d).await.unwrap().unwrap();
            assert_eq!(
                r.reported.len(),
                80,
                "{d}: every field of both replicas is there"
            );
            assert_eq!(r.version, 80, "{d}: one version per write");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_deploys_to_each_device_once_and_a_stale_save_is_refused() {
    each_store(async |db| {
        let mut s = Store::open(&db).await.unwrap();
        let r = rollout("r1", "g");
        s.create_rollout(&r).await.unwrap();
        assert!(matches!(
            s.create_rollout(&r).await,
            Err(StoreError::RolloutExists(_))
        ));
        s.merge_batch(&[("gw".into(), report(json!({"groups": ["g"]})))], 1)
            .await
            .unwrap();
        // Two replicas deciding the same deployment at once: one writes it.
        let mut other = Store::open(&db).await.unwrap();
        let items = [("gw".to_owned(), 0)];
        let (a, b) = tokio::join!(
            s.deploy_batch("r1", &items, &r.desired, 2),
            other.deploy_batch("r1", &items, &r.desired, 2)
        );
        assert_eq!(a.unwrap().len() + b.unwrap().len(), 1, "deployed once");
        let rec = s.get("gw").await.unwrap().unwrap();
        assert_eq!(
            (rec.version, rec.desired["workflow"]["id"].as_str()),
            (2, Some("r1"))
        );
        let members = s.members(&r).await.unwrap();
        assert_eq!((members[0].deployed, &members[0].outcome), (Some(0), &None));
        s.merge_batch(
            &[(
                "gw".into(),
                report(json!({"workflow": {"action": 3, "id": "r1"}, "status": "completed"})),
            )],
            3,
        )
        .await
        .unwrap();
        let m = s.members(&r).await.unwrap();
        assert_eq!(
            m[0].outcome,
            Some(sandstep::shadow::record::Outcome::Succeeded)
        );
        // Saves name the version they read.
        let (mut saved, v) = s.rollout("r1").await.unwrap().unwrap();
        saved.progress.state = State::Paused;
        assert!(s.save_rollout(&saved, v).await.unwrap());
        assert!(
            !other.save_rollout(&saved, v).await.unwrap(),
            "stale version refused"
        );
    })
    .await;
}

/// A replica's SQLite file from before schema versions (no `reported_ms`, no rollouts) opens,
/// migrates, and its devices can be rolled out to.
#[tokio::test(flavor = "multi_thread")]
async fn a_sqlite_file_from_before_rollouts_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "CREATE TABLE devices (id TEXT PRIMARY KEY, desired TEXT NOT NULL, reported TEXT NOT NULL,
           version INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
         INSERT INTO devices VALUES ('old-gw', '{}', '{\"groups\":[\"g\"]}', 4, 9);",
    )
    .unwrap();
    drop(c);
    let mut s = Store::open(&Database::Sqlite(path)).await.unwrap();
    assert_eq!(s.schema_version().await.unwrap(), 2);
    assert_eq!(s.get("old-gw").await.unwrap().unwrap().version, 4);
    let r = rollout("r1", "g");
    s.create_rollout(&r).await.unwrap();
    assert_eq!(s.members(&r).await.unwrap().len(), 1, "groups backfilled");
}

/// Writes a second agent's config and data dir beside the fleet's (same trust and handlers).
fn second_agent(f: &Fleet, device: &str) -> (PathBuf, PathBuf) {
    let data = f.dir.path().join(format!("data-{device}"));
    let status = Command::new("cp")
        .arg("-a")
        .arg(&f.data)
        .arg(&data)
        .status()
        .unwrap();
    assert!(status.success());
    for leftover in ["journal", "outbox", "reported.json", "agent.lock"] {
        let _ = std::fs::remove_dir_all(data.join(leftover));
        let _ = std::fs::remove_file(data.join(leftover));
    }
    let config = f.dir.path().join(format!("{device}.toml"));
    let text = std::fs::read_to_string(&f.config).unwrap();
    let device_line = text
        .lines()
        .find(|l| l.starts_with("device-id"))
        .unwrap()
        .to_owned();
    std::fs::write(
        &config,
        text.replace(&device_line, &format!("device-id = \"{device}\"")),
    )
    .unwrap();
    (config, data)
}

fn cli(f: &Fleet, args: &[&str]) -> std::process::Output {
    sandstep()
        .args(args)
        .arg("--config")
        .arg(&f.config)
        .arg("--data-dir")
        .arg(f.dir.path().join("replica"))
        .output()
        .unwrap()
}

/// The operator's flow: `rollout create` to a group of real agents in two phases, one of them
/// coming online only after the rollout started; `status --rollout` until it finished, then
/// controls refused on a finished rollout.
#[test]
fn a_rollout_from_the_cli_reaches_a_group_phase_by_phase_a_late_device_too_and_status_counts_it() {
    let Some(f) = Fleet::new("ro-a") else { return };
    let (config_b, data_b) = second_agent(&f, "ro-b");
    let _replica = f.replica();
    let _a = f.agent();
    f.wait_for("ro-a", "the start report", |r| r["status"] == "standBy");
    let manifest = f.manifest("rolled", vec![stateful("a", json!({}), &["f.txt"])]);
    let (root, signing) = (f.root.clone(), f.signing.clone());
    let out = cli(
        &f,
        &[
            "rollout",
            "create",
            "--group",
            "testers",
            "--id",
            "ro-1",
            "--phases",
            "50%,100%",
            "--soak",
            "1s",
            "--max-failure-rate",
            "50%",
            "--manifest",
            manifest.to_str().unwrap(),
            "--files-url",
            &f.server.base(),
            "--sign-key",
            signing.to_str().unwrap(),
            "--root-key",
            root.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(1 device(s) now)"));
    // The second gateway comes online after the rollout started: it joins its phase.
    let mut b = sandstep();
    b.args(["--log", "info", "agent", "--config"])
        .arg(&config_b)
        .arg("--data-dir")
        .arg(&data_b);
    let _b = Proc::spawn(b, f.dir.path().join("agent-b.log"));
    let t = Instant::now();
    let status = loop {
        let out = cli(&f, &["status", "--rollout", "ro-1", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["state"] == "finished" {
            break v;
        }
        assert!(t.elapsed() < Duration::from_secs(90), "not finished: {v:#}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let phases = status["phaseCounts"].as_array().unwrap();
    let sum = |k: &str| phases.iter().map(|p| p[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("devices"), sum("succeeded")), (2, 2), "{status:#}");
    assert!(phases[0]["succeeded"].as_u64() >= Some(1), "{status:#}");
    let all = f.status();
    for d in ["ro-a", "ro-b"] {
        assert_eq!(all[d]["state"]["reported"]["workflow"]["id"], "ro-1");
        assert_eq!(all[d]["state"]["reported"]["status"], "completed");
    }
    let table = cli(&f, &["rollout", "status", "ro-1"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("finished (phase 2 of 2)"));
    let refused = cli(&f, &["rollout", "pause", "ro-1"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("rollout ro-1 is finished"));
    let list = cli(&f, &["rollout", "list", "--json"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("\"id\":\"ro-1\""));
}

/// Bad rollout options are refused naming the option, and nothing is stored.
#[test]
fn bad_rollout_options_are_refused_with_the_reason_and_nothing_is_stored() {
    let Some(f) = Fleet::new("ro-bad") else {
        return;
    };
    let manifest = f.manifest("bad", vec![stateful("a", json!({}), &["f.txt"])]);
    for (opt, val, why) in [
        (
            "--phases",
            "50%,10%,100%",
            "each phase covers more of the group",
        ),
        ("--phases", "10%,50%", "the last phase is 100%"),
        ("--max-failure-rate", "120%", "between 0% and 100%"),
        ("--soak", "ten minutes", "expected a duration"),
    ] {
        let out = cli(
            &f,
            &[
                "rollout",
                "create",
                "--group",
                "g",
                "--unsigned",
                "--files-url",
                "http://127.0.0.1:1/",
                "--manifest",
                manifest.to_str().unwrap(),
                opt,
                val,
            ],
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(opt) && err.contains(why), "{opt} {val}: {err}");
    }
    let list = cli(&f, &["rollout", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
}

#[cfg(feature = "dev-tools")]
fn sim(
    devices: usize,
    db: Database,
    replicas: usize,
    failing: u32,
    kill_one: bool,
    dir: &std::path::Path,
) -> sandstep::fleet_sim::SimOptions {
    sandstep::fleet_sim::SimOptions {
        devices,
        database: db,
        replicas,
        replica_exe: env!("CARGO_BIN_EXE_sandstep").into(),
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
#[cfg(feature = "dev-tools")]
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_on_postgresql_one_killed_half_way_lose_nothing() {
    let Some(broker) = crate::fleet::Broker::start() else {
        return;
    };
    let Some(pg) = Postgres::start() else { return };
    let cfg = sandstep::mqtt::MqttConfig {
        url: format!("mqtt://127.0.0.1:{}", broker.port),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let o = sim(
        400,
        Database::parse(&pg.url, Default::default()),
        2,
        0,
        true,
        dir.path(),
    );
    let r = sandstep::fleet_sim::run(&cfg, &o).await.unwrap();
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
#[cfg(feature = "dev-tools")]
#[tokio::test(flavor = "multi_thread")]
async fn failures_over_the_limit_pause_the_rollout_before_it_reaches_everyone() {
    let Some(broker) = crate::fleet::Broker::start() else {
        return;
    };
    let cfg = sandstep::mqtt::MqttConfig {
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
    let r = sandstep::fleet_sim::run(&cfg, &o).await.unwrap();
    assert_eq!(r.rollout_state, "paused", "{r:?}");
    assert!(r.deployed < 300 && r.lost == 0, "{r:?}");
    let why = r.rollout_reason.unwrap();
    assert!(
        why.contains("over the 5.0% limit") && why.contains("0/30000007 x"),
        "{why}"
    );
}

/// `sandstep doctor` where a replica runs: the configured store opens (schema, what it holds),
/// or the check fails naming the database.
#[test]
fn doctor_checks_the_replicas_store() {
    let Some(pg) = Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let doctor = |url: &str| {
        let config = dir.path().join("replica.toml");
        std::fs::write(
            &config,
            format!("[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n[shadow]\ndatabase = \"{url}\"\n"),
        )
        .unwrap();
        let out = sandstep()
            .args(["doctor", "--broker-timeout", "1", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = doctor(&pg.url);
    assert!(
        out.lines().any(|l| l.starts_with("ok    replica store:")
            && l.contains("(schema 1): 0 device(s), 0 rollout(s)")),
        "{out}"
    );
    let out = doctor("postgres://sandstep@127.0.0.1:1/none");
    assert!(
        out.lines().any(|l| l.starts_with(
            "FAIL  replica store: shadow database postgres://sandstep@127.0.0.1:1/none"
        )),
        "{out}"
    );
}

/// A replica reaches PostgreSQL over TLS, checking the server's certificate against
/// `[shadow] ca-file`; against the system's CAs the same server is refused, and the error says
/// why; a server without TLS is refused when the URL requires it.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_speaks_tls_to_postgresql_and_checks_the_servers_certificate() {
    let certs = tempfile::tempdir().unwrap();
    crate::support::test_ca(certs.path(), None);
    let Some(pg) = Postgres::start_with(&["--tls".as_ref(), certs.path().as_os_str()]) else {
        return;
    };
    let url = format!("{}?sslmode=require", pg.url);
    let ca = certs.path().join("ca.pem");
    let mut s = Store::open(&Database::parse(&url, ca_only(&ca)))
        .await
        .unwrap();
    assert_eq!(s.devices().await.unwrap().len(), 0);
    let Err(e) = Store::open(&Database::parse(&url, Default::default())).await else {
        panic!("a certificate from an unknown CA was accepted");
    };
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    let Some(plain) = Postgres::start() else {
        return;
    };
    let required = format!("{}?sslmode=require", plain.url);
    let Err(e) = Store::open(&Database::parse(&required, ca_only(&ca))).await else {
        panic!("sslmode=require was met without TLS");
    };
    assert!(e.to_string().contains("shadow database"), "{e}");
}

/// TLS checking the server's certificate against `ca`, no client certificate.
fn ca_only(ca: &std::path::Path) -> PgTls {
    PgTls {
        ca_file: Some(ca.to_owned()),
        ..Default::default()
    }
}

/// Where PostgreSQL authenticates clients by certificate (pg_hba.conf `cert`), the replica
/// presents `[shadow] client-cert` and `client-key`: accepted; without them it is refused,
/// and a certificate without its key is refused before connecting, naming both settings.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_presents_a_client_certificate_where_postgresql_requires_one() {
    let certs = tempfile::tempdir().unwrap();
    crate::support::test_ca(certs.path(), Some("sandstep"));
    let Some(pg) = Postgres::start_with(&[
        "--tls".as_ref(),
        certs.path().as_os_str(),
        "--client-certs".as_ref(),
    ]) else {
        return;
    };
    let url = format!("{}?sslmode=require", pg.url);
    let c = certs.path();
    let with_cert = PgTls {
        ca_file: Some(c.join("ca.pem")),
        client_cert: Some(c.join("client.pem")),
        client_key: Some(c.join("client.key")),
    };
    let mut s = Store::open(&Database::parse(&url, with_cert.clone()))
        .await
        .unwrap();
    assert_eq!(s.devices().await.unwrap().len(), 0);
    let Err(e) = Store::open(&Database::parse(&url, ca_only(&c.join("ca.pem")))).await else {
        panic!("a client without a certificate was let in");
    };
    assert!(e.to_string().contains("certificate"), "{e}");
    let half = PgTls {
        client_key: None,
        ..with_cert
    };
    let Err(e) = Store::open(&Database::parse(&url, half)).await else {
        panic!("a certificate without its key was used");
    };
    assert!(
        e.to_string()
            .contains("client-cert and client-key go together"),
        "{e}"
    );
}

/// The operator's controls on a running rollout: pause, resume, abort, each shown by `status
/// --rollout` with who did it; a second abort is refused.
#[test]
fn pause_resume_and_abort_change_a_running_rollout_and_say_who() {
    let Some(f) = Fleet::new("ro-ctl") else {
        return;
    };
    let manifest = f.manifest("ctl", vec![stateful("a", json!({}), &["f.txt"])]);
    let out = cli(
        &f,
        &[
            "rollout",
            "create",
            "--group",
            "nobody-yet",
            "--id",
            "ro-ctl",
            "--soak",
            "1h",
            "--unsigned",
            "--files-url",
            &f.server.base(),
            "--manifest",
            manifest.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = || {
        let out = cli(&f, &["status", "--rollout", "ro-ctl", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (v["state"].as_str().unwrap().to_owned(), v["reason"].clone())
    };
    assert_eq!(state().0, "running");
    for (cmd, want, reason) in [
        ("pause", "paused", json!("paused by the operator")),
        ("resume", "running", Value::Null),
        ("abort", "aborted", json!("aborted by the operator")),
    ] {
        let out = cli(&f, &["rollout", cmd, "ro-ctl"]);
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(state(), (want.to_owned(), reason), "after {cmd}");
    }
    let again = cli(&f, &["rollout", "abort", "ro-ctl"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("rollout ro-ctl is aborted"));
    let missing = cli(&f, &["rollout", "pause", "ro-none"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no rollout `ro-none`"));
}

/// A device row made unreadable outside sandstep (its reported state not a JSON object) costs
/// that device's update and deployment only: the replica refuses the update on the device's
/// `rejected` topic, naming the problem, stores the other devices' updates, deploys a rollout
/// to the others, writes nothing over the row, and keeps running.
#[test]
fn an_unreadable_device_row_costs_only_that_devices_update_and_deployment_and_the_replica_carries_on(
) {
    let Some(f) = Fleet::new("row-x") else { return };
    let mut replica = f.replica();
    let report = |d: &str, n: u32| {
        f.publish_raw(
            &format!("state/{d}/update"),
            json!({"state": {"reported": {"n": n, "groups": ["rows"]}}})
                .to_string()
                .as_bytes(),
        )
    };
    let reported_n = |d: &str| f.status()[d]["state"]["reported"]["n"].clone();
    // Sent again until stored: the replica may not have subscribed yet.
    let t = Instant::now();
    while reported_n("row-bad") != 1 || reported_n("row-good") != 1 {
        assert!(t.elapsed() < Duration::from_secs(30), "{:#}", f.status());
        report("row-bad", 1);
        report("row-good", 1);
        std::thread::sleep(Duration::from_millis(500));
    }
    // A hand edit of the replica's SQLite file.
    let db = rusqlite::Connection::open(f.dir.path().join("replica/shadow.sqlite")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute(
        "UPDATE devices SET reported = '[1]' WHERE id = 'row-bad'",
        [],
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut watcher = rt.block_on(async {
        let cfg = sandstep::mqtt::MqttConfig {
            url: format!("mqtt://127.0.0.1:{}", f.broker.port),
            ..Default::default()
        };
        let mut c = sandstep::mqtt::Mqtt::connect(&cfg, "row-watcher").unwrap();
        while c.recv().await != Some(sandstep::mqtt::MqttEvent::Connected) {}
        c.subscribe("state/row-bad/update/rejected").await.unwrap();
        while c.recv().await != Some(sandstep::mqtt::MqttEvent::SubAck) {}
        c
    });
    report("row-bad", 2);
    report("row-good", 2);
    let refusal = rt.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), watcher.recv()).await {
                Ok(Some(sandstep::mqtt::MqttEvent::Message { payload, .. })) => {
                    break serde_json::from_slice::<Value>(&payload).unwrap()
                }
                Ok(Some(_)) => {}
                other => panic!("no refusal: {other:?}"),
            }
        }
    });
    let message = refusal["message"].as_str().unwrap();
    assert!(
        message.starts_with("not stored: the replica cannot read this device's stored state")
            && message.contains("not a JSON object"),
        "{refusal}"
    );
    let t = Instant::now();
    while reported_n("row-good") != 2 {
        assert!(t.elapsed() < Duration::from_secs(30), "{:#}", f.status());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(replica.is_running(), "the replica exited");

    // A rollout to their group: the readable device gets the deployment, the other is left out.
    let manifest = f.manifest("rows", vec![stateful("a", json!({}), &["f.txt"])]);
    let out = cli(
        &f,
        &[
            "rollout",
            "create",
            "--group",
            "rows",
            "--id",
            "ro-rows",
            "--phases",
            "100%",
            "--manifest",
            manifest.to_str().unwrap(),
            "--files-url",
            &f.server.base(),
            "--sign-key",
            f.signing.to_str().unwrap(),
            "--root-key",
            f.root.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    while f.status()["row-good"]["state"]["desired"]["workflow"]["id"] != "ro-rows" {
        assert!(t.elapsed() < Duration::from_secs(30), "{:#}", f.status());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(replica.is_running(), "the replica exited");
    // Nothing was written over the unreadable row.
    let (stored, desired): (String, String) = db
        .query_row(
            "SELECT reported, desired FROM devices WHERE id = 'row-bad'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(stored, "[1]");
    assert!(!desired.contains("ro-rows"), "{desired}");
}
