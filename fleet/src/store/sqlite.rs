//! The SQLite store: one file, WAL, a full sync per transaction. Its schema version is SQLite's
//! `user_version`; version 1 is the table replicas before rollouts kept, so their files open
//! and are migrated in place.

use super::{groups_of, in_input_order, record, DeviceSummary, Raw, Row, StoreError, MAX_TRIES};
use crate::record::Record;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::HashMap;
use std::path::Path;

pub struct Sqlite {
    conn: Connection,
    pub(super) name: String,
}

/// Each migration, applied in order to a database whose `user_version` is below its number.
const MIGRATIONS: [&str; 3] = [
    // 1: the devices table (already there in databases from before versioning).
    "CREATE TABLE IF NOT EXISTS devices (
         id TEXT PRIMARY KEY,
         desired TEXT NOT NULL,
         reported TEXT NOT NULL,
         version INTEGER NOT NULL,
         updated_ms INTEGER NOT NULL
     );",
    // 2: what rollouts query, and the rollouts.
    "ALTER TABLE devices ADD COLUMN reported_order TEXT NOT NULL DEFAULT '{}';
     ALTER TABLE devices ADD COLUMN groups TEXT NOT NULL DEFAULT '[]';
     ALTER TABLE devices ADD COLUMN workflow_id TEXT;
     ALTER TABLE devices ADD COLUMN outcome TEXT;
     ALTER TABLE devices ADD COLUMN desired_workflow TEXT;
     CREATE TABLE rollouts (
         id TEXT PRIMARY KEY,
         doc TEXT NOT NULL,
         version INTEGER NOT NULL,
         created_ms INTEGER NOT NULL
     );
     CREATE TABLE rollout_targets (
         rollout_id TEXT NOT NULL,
         device_id TEXT NOT NULL,
         phase INTEGER NOT NULL,
         deployed_ms INTEGER NOT NULL,
         PRIMARY KEY (rollout_id, device_id)
     );",
    // 3: the operators' audit log.
    "CREATE TABLE audit (
         at_ms INTEGER NOT NULL,
         who TEXT NOT NULL,
         action TEXT NOT NULL,
         rollout TEXT,
         detail TEXT NOT NULL
     );
     CREATE INDEX audit_rollout ON audit (rollout, at_ms);",
];

impl Sqlite {
    pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
        let name = path.display().to_string();
        let err = |cause| StoreError::Sqlite {
            db: name.clone(),
            cause,
        };
        // Two replicas on one file (or a replica and an operator command) wait for each other's
        // transactions instead of failing. Setting up a new file (switching it to WAL, the
        // first migration) can still be refused as busy without waiting: tried again a while.
        let until = std::time::Instant::now() + BUSY_WAIT;
        loop {
            match set_up(path) {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < until =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20 + fastrand::u64(..30)));
                }
                other => {
                    return Ok(Sqlite {
                        conn: other.map_err(err)?,
                        name,
                    })
                }
            }
        }
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |cause| StoreError::Sqlite {
            db: self.name.clone(),
            cause,
        }
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err())
    }

    pub fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        read(&self.conn, id)
            .map_err(self.err())?
            .map(|raw| record(&self.name, raw))
            .transpose()
    }

    /// Every device's record, by id.
    pub fn records(&self) -> Result<Vec<(String, Record)>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, desired, reported, version, updated_ms, reported_ms, reported_order
                 FROM devices ORDER BY id",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    (
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ),
                ))
            })
            .map_err(self.err())?
            .collect::<Result<Vec<(String, Raw)>, _>>()
            .map_err(self.err())?;
        rows.into_iter()
            .map(|(id, raw)| Ok((id, record(&self.name, raw)?)))
            .collect()
    }

    pub fn add_audit(&self, e: &super::AuditEntry) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO audit (at_ms, who, action, rollout, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.at_ms as i64, e.who, e.action, e.rollout, e.detail],
            )
            .map(drop)
            .map_err(self.err())
    }

    /// The audit log (of one rollout, or all of it), newest first, at most `limit` entries.
    pub fn audit(
        &self,
        rollout: Option<&str>,
        limit: u32,
    ) -> Result<Vec<super::AuditEntry>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT at_ms, who, action, rollout, detail FROM audit
                 WHERE ?1 IS NULL OR rollout = ?1 ORDER BY at_ms DESC, rowid DESC LIMIT ?2",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map(params![rollout, limit], |r| {
                Ok(super::AuditEntry {
                    at_ms: r.get::<_, i64>(0)? as u64,
                    who: r.get(1)?,
                    action: r.get(2)?,
                    rollout: r.get(3)?,
                    detail: r.get(4)?,
                })
            })
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>();
        rows.map_err(self.err())
    }

    pub fn devices(&self) -> Result<Vec<String>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM devices ORDER BY id")
            .map_err(self.err())?;
        let ids = st
            .query_map([], |r| r.get(0))
            .map_err(self.err())?
            .collect::<Result<Vec<String>, _>>();
        ids.map_err(self.err())
    }

    /// One transaction over the batch (see [`super::Store::merge_batch`]); with `targets`, a
    /// device is changed only when its target row is new.
    pub fn batch(
        &mut self,
        order: &[(usize, String)],
        targets: &[(&str, &str, i64, i64)],
        change: impl Fn(usize, &Record) -> Option<Record>,
    ) -> Result<Vec<Option<Record>>, StoreError> {
        let name = self.name.clone();
        let err = |cause| StoreError::Sqlite {
            db: name.clone(),
            cause,
        };
        // IMMEDIATE: the write lock up front, so another process's replica waits at BEGIN
        // instead of failing mid-way.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut done = Vec::with_capacity(order.len());
        for (i, device) in order {
            if let Some((rollout, dev, phase, at)) = targets.get(*i) {
                let new = tx
                    .execute(
                        "INSERT INTO rollout_targets (rollout_id, device_id, phase, deployed_ms)
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                        params![rollout, dev, phase, at],
                    )
                    .map_err(err)?;
                if new == 0 {
                    done.push((*i, None));
                    continue;
                }
            }
            done.push((*i, change_one(&tx, &name, device, |old| change(*i, old))?));
        }
        tx.commit().map_err(err)?;
        Ok(in_input_order(order.len(), done))
    }

    pub fn create_rollout(&self, id: &str, doc: &str, created_ms: u64) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute(
                "INSERT INTO rollouts (id, doc, version, created_ms) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT DO NOTHING",
                params![id, doc, created_ms as i64],
            )
            .map_err(self.err())?;
        if n == 0 {
            return Err(StoreError::RolloutExists(id.to_owned()));
        }
        Ok(())
    }

    pub fn rollouts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT doc, version FROM rollouts ORDER BY created_ms, id")
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>();
        rows.map_err(self.err())
    }

    pub fn save_rollout(&self, id: &str, doc: &str, version: i64) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE rollouts SET doc = ?2, version = version + 1 WHERE id = ?1 AND version = ?3",
                params![id, doc, version],
            )
            .map_err(self.err())?;
        Ok(n == 1)
    }

    pub(super) fn summaries(&self) -> Result<Vec<DeviceSummary>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT id, groups, workflow_id, outcome, desired_workflow FROM devices")
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| {
                Ok(DeviceSummary {
                    id: r.get(0)?,
                    groups: groups_of(&r.get::<_, String>(1)?),
                    workflow_id: r.get(2)?,
                    outcome: r.get(3)?,
                    desired_workflow: r.get(4)?,
                })
            })
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>();
        rows.map_err(self.err())
    }

    pub(super) fn targets(
        &self,
        rollout: &str,
    ) -> Result<HashMap<String, (usize, u64)>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT device_id, phase, deployed_ms FROM rollout_targets WHERE rollout_id = ?1",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([rollout], |r| {
                Ok((
                    r.get(0)?,
                    (r.get::<_, i64>(1)? as usize, r.get::<_, i64>(2)? as u64),
                ))
            })
            .map_err(self.err())?
            .collect::<Result<HashMap<_, _>, _>>();
        rows.map_err(self.err())
    }
}

fn read(conn: &Connection, id: &str) -> rusqlite::Result<Option<Raw>> {
    conn.query_row(
        "SELECT desired, reported, version, updated_ms, reported_ms, reported_order
         FROM devices WHERE id = ?1",
        params![id],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        },
    )
    .optional()
}

/// Read, change, and write one device, the write conditional on the version read.
fn change_one(
    conn: &Connection,
    name: &str,
    device: &str,
    change: impl Fn(&Record) -> Option<Record>,
) -> Result<Option<Record>, StoreError> {
    let err = |cause| StoreError::Sqlite {
        db: name.to_owned(),
        cause,
    };
    for _ in 0..MAX_TRIES {
        let raw = read(conn, device).map_err(err)?;
        let exists = raw.is_some();
        let old = raw
            .map(|r| record(name, r))
            .transpose()?
            .unwrap_or_default();
        let Some(new) = change(&old) else {
            return Ok(None);
        };
        let row = Row::of(&new);
        let p = params![
            device,
            row.desired,
            row.reported,
            row.version,
            row.updated_ms,
            row.reported_ms,
            row.reported_order,
            row.groups,
            row.workflow_id,
            row.outcome,
            row.desired_workflow,
            old.version as i64
        ];
        let n = if exists {
            conn.execute(
                "UPDATE devices SET desired = ?2, reported = ?3, version = ?4, updated_ms = ?5,
                   reported_ms = ?6, reported_order = ?7, groups = ?8, workflow_id = ?9,
                   outcome = ?10, desired_workflow = ?11
                 WHERE id = ?1 AND version = ?12",
                p,
            )
        } else {
            conn.execute(
                "INSERT INTO devices (id, desired, reported, version, updated_ms, reported_ms,
                   reported_order, groups, workflow_id, outcome, desired_workflow)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11 WHERE ?12 = 0
                 ON CONFLICT DO NOTHING",
                p,
            )
        }
        .map_err(err)?;
        if n == 1 {
            return Ok(Some(new));
        }
    }
    Err(StoreError::Contended {
        db: name.to_owned(),
        device: device.to_owned(),
        tries: MAX_TRIES,
    })
}

/// How long a replica waits on another's transaction.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn set_up(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_WAIT)?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Applies the migrations the file lacks, each in its own transaction with its version. The
/// version is read inside the transaction: a replica and an operator command opening a new file
/// at once apply each migration once.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let Some(sql) = MIGRATIONS.get(current) else {
            return tx.commit();
        };
        tx.execute_batch(sql)?;
        // Files from before `reported_ms` get the column (0: not known).
        if current == 0
            && tx
                .prepare("SELECT reported_ms FROM devices LIMIT 0")
                .is_err()
        {
            tx.execute_batch(
                "ALTER TABLE devices ADD COLUMN reported_ms INTEGER NOT NULL DEFAULT 0;",
            )?;
        }
        if current == 1 {
            backfill(&tx)?;
        }
        tx.pragma_update(None, "user_version", current + 1)?;
        tx.commit()?;
    }
}

/// Fills the derived columns of devices stored before they existed.
fn backfill(conn: &Connection) -> rusqlite::Result<()> {
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM devices")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in ids {
        let Some(raw) = read(conn, &id)? else {
            continue;
        };
        let Ok(rec) = record("", raw) else { continue };
        let row = Row::of(&rec);
        conn.execute(
            "UPDATE devices SET groups = ?2, workflow_id = ?3, outcome = ?4, desired_workflow = ?5
             WHERE id = ?1",
            params![
                id,
                row.groups,
                row.workflow_id,
                row.outcome,
                row.desired_workflow
            ],
        )?;
    }
    Ok(())
}
