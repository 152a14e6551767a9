//! The PostgreSQL store (tokio-postgres), for fleets several replicas serve at once. Its schema
//! version is kept in `sandstep_schema`; replicas starting together take an advisory lock so the
//! migrations run once. Statements are prepared once per connection.

use super::{groups_of, in_input_order, record, DeviceSummary, Row, StoreError, MAX_TRIES};
use crate::record::Record;
use sandstep_transport::tls_roots::{self, TlsError};
use std::collections::HashMap;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The key of the advisory lock migrations run under (any constant of our own).
const MIGRATION_LOCK: i64 = 0x5a4e_d57e;

/// Each migration, applied in order to a database whose version is below its number.
const MIGRATIONS: [&str; 2] = [
    // 1: devices, rollouts, who got which rollout's deployment.
    "CREATE TABLE devices (
         id TEXT PRIMARY KEY,
         desired TEXT NOT NULL,
         reported TEXT NOT NULL,
         version BIGINT NOT NULL,
         updated_ms BIGINT NOT NULL,
         reported_ms BIGINT NOT NULL DEFAULT 0,
         reported_order TEXT NOT NULL DEFAULT '{}',
         groups TEXT NOT NULL DEFAULT '[]',
         workflow_id TEXT,
         outcome TEXT,
         desired_workflow TEXT
     );
     CREATE TABLE rollouts (
         id TEXT PRIMARY KEY,
         doc TEXT NOT NULL,
         version BIGINT NOT NULL,
         created_ms BIGINT NOT NULL
     );
     CREATE TABLE rollout_targets (
         rollout_id TEXT NOT NULL,
         device_id TEXT NOT NULL,
         phase INTEGER NOT NULL,
         deployed_ms BIGINT NOT NULL,
         PRIMARY KEY (rollout_id, device_id)
     );",
    // 2: the operators' audit log.
    "CREATE TABLE audit (
         id BIGSERIAL PRIMARY KEY,
         at_ms BIGINT NOT NULL,
         who TEXT NOT NULL,
         action TEXT NOT NULL,
         rollout TEXT,
         detail TEXT NOT NULL
     );
     CREATE INDEX audit_rollout ON audit (rollout, at_ms);",
];

struct Statements {
    select: Statement,
    update: Statement,
    insert: Statement,
    target: Statement,
}

pub struct Postgres {
    client: Client,
    st: Statements,
    pub(super) name: String,
}

/// The TLS client for the database: its CA file (or the system's) and client certificate.
fn tls_config(tls: &super::PgTls) -> Result<rustls::ClientConfig, TlsError> {
    let client = tls_roots::client_pair(tls.client_cert.as_deref(), tls.client_key.as_deref())?;
    tls_roots::client_config(tls_roots::roots(tls.ca_file.as_deref())?, client)
}

impl Postgres {
    pub async fn open(url: &str, tls: &super::PgTls) -> Result<Postgres, StoreError> {
        let name = super::redact(url);
        let err = |cause| StoreError::Postgres {
            db: name.clone(),
            cause,
        };
        let tls = tls_config(tls).map_err(|cause| StoreError::Tls {
            db: name.clone(),
            cause,
        })?;
        let (mut client, connection) = tokio_postgres::connect(url, MakeRustlsConnect::new(tls))
            .await
            .map_err(err)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!("shadow database connection: {e}");
            }
        });
        migrate(&mut client).await.map_err(err)?;
        let st = Statements {
            select: client
                .prepare(
                    "SELECT desired, reported, version, updated_ms, reported_ms, reported_order
                     FROM devices WHERE id = $1",
                )
                .await
                .map_err(err)?,
            update: client
                .prepare(
                    "UPDATE devices SET desired = $2, reported = $3, version = $4, updated_ms = $5,
                       reported_ms = $6, reported_order = $7, groups = $8, workflow_id = $9,
                       outcome = $10, desired_workflow = $11
                     WHERE id = $1 AND version = $12",
                )
                .await
                .map_err(err)?,
            insert: client
                .prepare(
                    "INSERT INTO devices (id, desired, reported, version, updated_ms, reported_ms,
                       reported_order, groups, workflow_id, outcome, desired_workflow)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
                )
                .await
                .map_err(err)?,
            target: client
                .prepare(
                    "INSERT INTO rollout_targets (rollout_id, device_id, phase, deployed_ms)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .await
                .map_err(err)?,
        };
        Ok(Postgres { client, st, name })
    }

    fn err(&self) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        move |cause| StoreError::Postgres {
            db: self.name.clone(),
            cause,
        }
    }

    pub async fn schema_version(&mut self) -> Result<u32, StoreError> {
        let v: Option<i32> = self
            .client
            .query_one("SELECT max(version) FROM sandstep_schema", &[])
            .await
            .map_err(self.err())?
            .get(0);
        Ok(v.unwrap_or(0) as u32)
    }

    pub async fn get(&mut self, id: &str) -> Result<Option<Record>, StoreError> {
        let row = self
            .client
            .query_opt(&self.st.select, &[&id])
            .await
            .map_err(self.err())?;
        row.map(|r| {
            record(
                &self.name,
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)),
            )
        })
        .transpose()
    }

    /// Every device's record, by id.
    pub async fn records(&mut self) -> Result<Vec<(String, Record)>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT id, desired, reported, version, updated_ms, reported_ms, reported_order
                 FROM devices ORDER BY id",
                &[],
            )
            .await
            .map_err(self.err())?;
        rows.iter()
            .map(|r| {
                let raw = (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6));
                Ok((r.get(0), record(&self.name, raw)?))
            })
            .collect()
    }

    pub async fn add_audit(&mut self, e: &super::AuditEntry) -> Result<(), StoreError> {
        self.client
            .execute(
                "INSERT INTO audit (at_ms, who, action, rollout, detail) VALUES ($1, $2, $3, $4, $5)",
                &[&(e.at_ms as i64), &e.who, &e.action, &e.rollout, &e.detail],
            )
            .await
            .map(drop)
            .map_err(self.err())
    }

    /// The audit log (of one rollout, or all of it), newest first, at most `limit` entries.
    pub async fn audit(
        &mut self,
        rollout: Option<&str>,
        limit: u32,
    ) -> Result<Vec<super::AuditEntry>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT at_ms, who, action, rollout, detail FROM audit
                 WHERE $1::TEXT IS NULL OR rollout = $1 ORDER BY at_ms DESC, id DESC LIMIT $2",
                &[&rollout, &i64::from(limit)],
            )
            .await
            .map_err(self.err())?;
        Ok(rows
            .iter()
            .map(|r| super::AuditEntry {
                at_ms: r.get::<_, i64>(0) as u64,
                who: r.get(1),
                action: r.get(2),
                rollout: r.get(3),
                detail: r.get(4),
            })
            .collect())
    }

    pub async fn devices(&mut self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .client
            .query("SELECT id FROM devices ORDER BY id", &[])
            .await
            .map_err(self.err())?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// One transaction over the batch (see [`super::Store::merge_batch`]), retried whole when
    /// PostgreSQL aborts it for a deadlock or a serialization failure.
    pub async fn batch(
        &mut self,
        order: &[(usize, String)],
        targets: &[(&str, &str, i64, i64)],
        change: impl Fn(usize, &Record) -> Option<Record>,
    ) -> Result<Vec<Option<Record>>, StoreError> {
        let name = self.name.clone();
        let mut attempt = 0;
        loop {
            let tx = self.client.transaction().await;
            let result = match tx {
                Ok(tx) => batch_once(tx, &self.st, &name, order, targets, &change).await,
                Err(e) => Err(Failed::Db(e)),
            };
            match result {
                Ok(done) => return Ok(in_input_order(order.len(), done)),
                Err(Failed::Db(e)) if retryable(&e) && attempt < MAX_TRIES => attempt += 1,
                Err(Failed::Db(cause)) => return Err(StoreError::Postgres { db: name, cause }),
                Err(Failed::Store(e)) => return Err(e),
            }
        }
    }

    pub async fn create_rollout(
        &mut self,
        id: &str,
        doc: &str,
        created_ms: u64,
    ) -> Result<(), StoreError> {
        let n = self
            .client
            .execute(
                "INSERT INTO rollouts (id, doc, version, created_ms) VALUES ($1, $2, 1, $3)
                 ON CONFLICT DO NOTHING",
                &[&id, &doc, &(created_ms as i64)],
            )
            .await
            .map_err(self.err())?;
        if n == 0 {
            return Err(StoreError::RolloutExists(id.to_owned()));
        }
        Ok(())
    }

    pub async fn rollouts(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT doc, version FROM rollouts ORDER BY created_ms, id",
                &[],
            )
            .await
            .map_err(self.err())?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn save_rollout(
        &mut self,
        id: &str,
        doc: &str,
        version: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .client
            .execute(
                "UPDATE rollouts SET doc = $2, version = version + 1 WHERE id = $1 AND version = $3",
                &[&id, &doc, &version],
            )
            .await
            .map_err(self.err())?;
        Ok(n == 1)
    }

    pub(super) async fn summaries(&mut self) -> Result<Vec<DeviceSummary>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT id, groups, workflow_id, outcome, desired_workflow FROM devices",
                &[],
            )
            .await
            .map_err(self.err())?;
        Ok(rows
            .iter()
            .map(|r| DeviceSummary {
                id: r.get(0),
                groups: groups_of(r.get(1)),
                workflow_id: r.get(2),
                outcome: r.get(3),
                desired_workflow: r.get(4),
            })
            .collect())
    }

    pub(super) async fn targets(
        &mut self,
        rollout: &str,
    ) -> Result<HashMap<String, (usize, u64)>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT device_id, phase, deployed_ms FROM rollout_targets WHERE rollout_id = $1",
                &[&rollout],
            )
            .await
            .map_err(self.err())?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    (r.get::<_, i32>(1) as usize, r.get::<_, i64>(2) as u64),
                )
            })
            .collect())
    }
}

enum Failed {
    Db(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Self {
        Failed::Db(e)
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

async fn batch_once(
    tx: Transaction<'_>,
    st: &Statements,
    name: &str,
    order: &[(usize, String)],
    targets: &[(&str, &str, i64, i64)],
    change: &impl Fn(usize, &Record) -> Option<Record>,
) -> Result<Vec<(usize, Option<Record>)>, Failed> {
    let mut done = Vec::with_capacity(order.len());
    for (i, device) in order {
        if let Some((rollout, dev, phase, at)) = targets.get(*i) {
            let new = tx
                .execute(&st.target, &[rollout, dev, &(*phase as i32), at])
                .await?;
            if new == 0 {
                done.push((*i, None));
                continue;
            }
        }
        done.push((
            *i,
            change_one(&tx, st, name, device, |old| change(*i, old)).await?,
        ));
    }
    tx.commit().await?;
    Ok(done)
}

/// Read, change, and write one device, the write conditional on the version read. At READ
/// COMMITTED a write that waited on another replica's transaction finds the version moved on,
/// and the next read sees what that replica committed.
async fn change_one(
    tx: &Transaction<'_>,
    st: &Statements,
    name: &str,
    device: &str,
    change: impl Fn(&Record) -> Option<Record>,
) -> Result<Option<Record>, Failed> {
    for _ in 0..MAX_TRIES {
        let raw = tx.query_opt(&st.select, &[&device]).await?;
        let exists = raw.is_some();
        let old = raw
            .map(|r| {
                record(
                    name,
                    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)),
                )
            })
            .transpose()
            .map_err(Failed::Store)?
            .unwrap_or_default();
        let Some(new) = change(&old) else {
            return Ok(None);
        };
        let row = Row::of(&new);
        let common: [&(dyn tokio_postgres::types::ToSql + Sync); 11] = [
            &device,
            &row.desired,
            &row.reported,
            &row.version,
            &row.updated_ms,
            &row.reported_ms,
            &row.reported_order,
            &row.groups,
            &row.workflow_id,
            &row.outcome,
            &row.desired_workflow,
        ];
        let n = if exists {
            let old_version = old.version as i64;
            let mut p = common.to_vec();
            p.push(&old_version);
            tx.execute(&st.update, &p).await?
        } else {
            tx.execute(&st.insert, &common).await?
        };
        if n == 1 {
            return Ok(Some(new));
        }
    }
    Err(Failed::Store(StoreError::Contended {
        db: name.to_owned(),
        device: device.to_owned(),
        tries: MAX_TRIES,
    }))
}

/// Applies the migrations the database lacks, under an advisory lock.
async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS sandstep_schema (version INTEGER NOT NULL)")
        .await?;
    let current: Option<i32> = tx
        .query_one("SELECT max(version) FROM sandstep_schema", &[])
        .await?
        .get(0);
    for (n, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(current.unwrap_or(0) as usize)
    {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO sandstep_schema (version) VALUES ($1)",
            &[&(n as i32 + 1)],
        )
        .await?;
    }
    tx.commit().await
}
