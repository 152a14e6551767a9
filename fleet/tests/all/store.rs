//! The replica's store on SQLite and on a real PostgreSQL (Debian's, started by
//! scripts/postgres.sh in a temporary directory as an unprivileged user): merging in order,
//! versions, migrations, several writers, rollouts, TLS and client certificates.

use sandstep_fleet::record::Record;
use sandstep_fleet::rollout::{Progress, Rollout, State};
use sandstep_fleet::store::{Database, PgTls, Store, StoreError};
use sandstep_model::shadow::Document;
use sandstep_testkit::Postgres;
use serde_json::{json, Value};

/// Both stores, each test run against each.
async fn each_store(test: impl AsyncFn(Database)) {
    let dir = tempfile::tempdir().unwrap();
    test(Database::Sqlite(dir.path().join("shadow.sqlite"))).await;
    let Some(pg) = Postgres::start() else { return };
    test(Database::parse(&pg.url, Default::default()).unwrap()).await;
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

/// The console's reads and the audit log, on both stores: every record in one query, and the
/// audit log newest first, per rollout or whole.
#[tokio::test(flavor = "multi_thread")]
async fn both_stores_list_every_record_and_keep_the_audit_log_newest_first() {
    use sandstep_fleet::store::AuditEntry;
    each_store(async |db| {
        let mut s = Store::open(&db).await.unwrap();
        let docs = vec![
            ("gw-2".to_owned(), report(json!({"status": "completed"}))),
            ("gw-1".to_owned(), report(json!({"status": "failed"}))),
        ];
        s.merge_batch(&docs, 7).await.unwrap();
        let all = s.records().await.unwrap();
        let ids: Vec<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["gw-1", "gw-2"]);
        assert_eq!(all[0].1.reported["status"], "failed");
        let entry = |at_ms, action: &str, rollout: Option<&str>| AuditEntry {
            at_ms,
            who: "console:alice".into(),
            action: action.into(),
            rollout: rollout.map(str::to_owned),
            detail: "<b>not markup</b>".into(),
        };
        s.add_audit(&entry(1, "rollout-create", Some("r1")))
            .await
            .unwrap();
        s.add_audit(&entry(2, "rollout-pause", Some("r1")))
            .await
            .unwrap();
        s.add_audit(&entry(3, "login", None)).await.unwrap();
        let r1: Vec<String> = s
            .audit(Some("r1"), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(r1, ["rollout-pause", "rollout-create"]);
        let all = s.audit(None, 2).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], entry(3, "login", None));
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
            Some(sandstep_fleet::record::Outcome::Succeeded)
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
            Some(sandstep_fleet::record::Outcome::Succeeded)
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
    assert_eq!(s.schema_version().await.unwrap(), 3);
    assert_eq!(s.get("old-gw").await.unwrap().unwrap().version, 4);
    let r = rollout("r1", "g");
    s.create_rollout(&r).await.unwrap();
    assert_eq!(s.members(&r).await.unwrap().len(), 1, "groups backfilled");
}

/// Writes a second agent's config and data dir beside the fleet's (same trust and handlers).
/// A replica reaches PostgreSQL over TLS, checking the server's certificate against
/// `[shadow] ca-file`; against the system's CAs the same server is refused, and the error says
/// why; a server without TLS is refused when the URL requires it.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_speaks_tls_to_postgresql_and_checks_the_servers_certificate() {
    let certs = tempfile::tempdir().unwrap();
    sandstep_testkit::test_ca(certs.path(), None);
    let Some(pg) = Postgres::start_with(&["--tls".as_ref(), certs.path().as_os_str()]) else {
        return;
    };
    let url = format!("{}?sslmode=require", pg.url);
    let ca = certs.path().join("ca.pem");
    let mut s = Store::open(&Database::parse(&url, ca_only(&ca)).unwrap())
        .await
        .unwrap();
    assert_eq!(s.devices().await.unwrap().len(), 0);
    let Err(e) = Store::open(&Database::parse(&url, Default::default()).unwrap()).await else {
        panic!("a certificate from an unknown CA was accepted");
    };
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    let Some(plain) = Postgres::start() else {
        return;
    };
    let required = format!("{}?sslmode=require", plain.url);
    let Err(e) = Store::open(&Database::parse(&required, ca_only(&ca)).unwrap()).await else {
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
    sandstep_testkit::test_ca(certs.path(), Some("sandstep"));
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
    let mut s = Store::open(&Database::parse(&url, with_cert.clone()).unwrap())
        .await
        .unwrap();
    assert_eq!(s.devices().await.unwrap().len(), 0);
    let Err(e) = Store::open(&Database::parse(&url, ca_only(&c.join("ca.pem"))).unwrap()).await
    else {
        panic!("a client without a certificate was let in");
    };
    assert!(e.to_string().contains("certificate"), "{e}");
    let half = PgTls {
        client_key: None,
        ..with_cert
    };
    let Err(e) = Store::open(&Database::parse(&url, half).unwrap()).await else {
        panic!("a certificate without its key was used");
    };
    assert!(
        e.to_string()
            .contains("client-cert and client-key go together"),
        "{e}"
    );
}
