//! Where the replica keeps shadows and rollouts: SQLite (one file, the embedded default) or
//! PostgreSQL (`postgres://...`, for fleets served by several replicas). Both offer the same
//! operations and pass the same tests (fleet/tests/all/store.rs).
//!
//! Every change to a device is a read, a merge ([`Record::merged`]) and a write that names the
//! version it read: the database refuses the write when another replica changed the device in
//! between, and the change is merged again onto what that replica wrote. A batch of changes is
//! one transaction (one disk flush), taken in device order so two replicas never wait on each
//! other in a cycle.

mod postgres;
mod sqlite;

use crate::record::{Outcome, Record};
use crate::rollout::{Member, Rollout};
use sandstep_model::shadow::Document;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;

/// Where the store lives: `[shadow] database`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    /// A libpq-style URL (`postgres://user@host:port/db?sslmode=require`, a Unix socket as a
    /// percent-encoded host), and its TLS settings. TLS is used when the server offers it
    /// (`sslmode=prefer`, the default) or always (`sslmode=require`).
    Postgres {
        url: String,
        tls: PgTls,
    },
}

/// How the replica speaks TLS to PostgreSQL: the CA file the server's certificate is checked
/// against (default: the system's CAs), and a client certificate and key to present (for
/// `cert` authentication in pg_hba.conf).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgTls {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Why a `[shadow] database` setting names no store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is neither a PostgreSQL URL (postgres://user@host/db) nor a plain SQLite file path: {why}")]
pub struct DatabaseError {
    pub text: String,
    pub why: &'static str,
}

impl Database {
    /// `postgres://` or `postgresql://` URLs are PostgreSQL; a plain file path is SQLite.
    /// Anything else is refused rather than taken as a file name: a URL of another scheme, a
    /// libpq keyword string (`host=... dbname=...`), a SQLite URI (`file:`), or a string with
    /// `?` (the query of a URL whose `postgres://` was lost, which would otherwise become a
    /// database file named `?sslmode=require` in the working directory).
    pub fn parse(text: &str, tls: PgTls) -> Result<Database, DatabaseError> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Database::Postgres {
                url: text.to_owned(),
                tls,
            });
        }
        let refuse = |why| {
            Err(DatabaseError {
                text: text.to_owned(),
                why,
            })
        };
        if text.trim().is_empty() {
            return refuse("it is empty");
        }
        if text.contains("://") {
            return refuse(
                "a URL of another scheme (only postgres:// and postgresql:// are URLs here)",
            );
        }
        if text.starts_with("file:") {
            return refuse("SQLite URIs are not taken; give the file's path");
        }
        if text.contains('?') || text.contains('#') {
            return refuse("a path may not contain `?` or `#` (a URL's query or fragment?)");
        }
        if text.split_whitespace().any(|w| w.contains('=')) {
            return refuse(
                "a libpq keyword string (host=... dbname=...); write it as a postgres:// URL",
            );
        }
        if text.chars().any(char::is_control) {
            return refuse("it contains control characters");
        }
        if text.ends_with('/') {
            return refuse("it names a directory, not a file");
        }
        Ok(Database::Sqlite(PathBuf::from(text)))
    }

    /// For messages: the file, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            Database::Sqlite(p) => p.display().to_string(),
            Database::Postgres { url, .. } => redact(url),
        }
    }
}

/// The URL with any password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("shadow database {db}: {cause}")]
    Sqlite { db: String, cause: rusqlite::Error },
    #[error("shadow database {db}: {}", chain(.cause))]
    Postgres {
        db: String,
        cause: tokio_postgres::Error,
    },
    #[error("shadow database {db}: {what}")]
    Data { db: String, what: String },
    #[error("shadow database {db}: TLS: {cause}")]
    Tls {
        db: String,
        cause: sandstep_transport::tls_roots::TlsError,
    },
    #[error(
        "shadow database {db}: device {device} kept changing under this replica ({tries} tries)"
    )]
    Contended {
        db: String,
        device: String,
        tries: u32,
    },
    #[error("rollout `{0}` already exists")]
    RolloutExists(String),
}

/// An error and its causes (tokio-postgres says "error performing TLS handshake" and keeps
/// which certificate was refused, and why, in its source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out = format!("{out}: {s}");
        next = s.source();
    }
    out
}

/// How often a version conflict on one device is retried before giving up.
const MAX_TRIES: u32 = 50;

/// A device row as both databases store it: the record, and what is derived from it for the
/// rollout queries (groups, the workflow acknowledged, its outcome, the workflow desired).
#[derive(Debug, Clone, PartialEq)]
struct Row {
    desired: String,
    reported: String,
    version: i64,
    updated_ms: i64,
    reported_ms: i64,
    reported_order: String,
    groups: String,
    workflow_id: Option<String>,
    outcome: Option<String>,
    desired_workflow: Option<String>,
}

impl Row {
    fn of(r: &Record) -> Row {
        Row {
            desired: Value::Object(r.desired.clone()).to_string(),
            reported: Value::Object(r.reported.clone()).to_string(),
            version: r.version as i64,
            updated_ms: r.updated_ms as i64,
            reported_ms: r.reported_ms as i64,
            reported_order: Value::Object(r.reported_order.clone()).to_string(),
            groups: Value::from(r.groups()).to_string(),
            workflow_id: r.workflow_id().map(str::to_owned),
            outcome: r.outcome().map(|o| o.as_text()),
            desired_workflow: r
                .desired
                .get("workflow")
                .and_then(|w| w.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }
}

/// A device's stored columns: desired, reported, version, updated, reported at, field order.
type Raw = (String, String, i64, i64, i64, String);

/// The record stored as [`Raw`].
fn record(
    db: &str,
    (desired, reported, version, updated_ms, reported_ms, order): Raw,
) -> Result<Record, StoreError> {
    let obj = |text: &str, what: &str| match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(StoreError::Data {
            db: db.to_owned(),
            what: format!("a device's stored {what} is not a JSON object"),
        }),
    };
    Ok(Record {
        desired: obj(&desired, "desired state")?,
        reported: obj(&reported, "reported state")?,
        version: version as u64,
        updated_ms: updated_ms as u64,
        reported_ms: reported_ms as u64,
        reported_order: obj(&order, "reported fields' order")?,
    })
}

/// A device as the rollout queries see it.
#[derive(Debug, Clone, PartialEq)]
struct DeviceSummary {
    id: String,
    groups: Vec<String>,
    workflow_id: Option<String>,
    outcome: Option<String>,
    desired_workflow: Option<String>,
}

/// The rollout's members: the group's devices and any it was deployed to, with how its
/// deployment went on each. A device whose desired deployment is no longer this rollout's
/// (someone deployed something else over it) counts as cancelled.
fn members(
    r: &Rollout,
    devices: Vec<DeviceSummary>,
    targets: HashMap<String, (usize, u64)>,
) -> Vec<Member> {
    devices
        .into_iter()
        .filter(|d| targets.contains_key(&d.id) || d.groups.contains(&r.group))
        .map(|d| {
            let (deployed, deployed_ms) = match targets.get(&d.id) {
                Some((phase, at)) => (Some(*phase), *at),
                None => (None, 0),
            };
            let ours = |w: &Option<String>| w.as_deref() == Some(r.workflow_id.as_str());
            let outcome = if ours(&d.workflow_id) {
                d.outcome.as_deref().and_then(Outcome::from_text)
            } else if deployed.is_some()
                && d.desired_workflow.is_some()
                && !ours(&d.desired_workflow)
            {
                Some(Outcome::Cancelled)
            } else {
                None
            };
            Member {
                id: d.id,
                deployed,
                deployed_ms,
                outcome,
            }
        })
        .collect()
}

/// The store.
pub enum Store {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// One operator action, as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub at_ms: u64,
    /// The account (`console:alice`) or the command line's user (`cli:root`).
    pub who: String,
    /// `rollout-create`, `rollout-pause`, `rollout-resume`, `rollout-abort`, `login`, ...
    pub action: String,
    pub rollout: Option<String>,
    pub detail: String,
}

impl Store {
    /// Opens the database, applying the schema migrations it lacks.
    pub async fn open(db: &Database) -> Result<Store, StoreError> {
        Ok(match db {
            Database::Sqlite(p) => Store::Sqlite(sqlite::Sqlite::open(p)?),
            Database::Postgres { url, tls } => {
                Store::Postgres(postgres::Postgres::open(url, tls).await?)
            }
        })
    }

    /// The schema version now in the database.
    pub async fn schema_version(&mut self) -> Result<u32, StoreError> {
        match self {
            Store::Sqlite(s) => s.schema_version(),
            Store::Postgres(p) => p.schema_version().await,
        }
    }

    /// A device's record.
    pub async fn get(&mut self, id: &str) -> Result<Option<Record>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get(id),
            Store::Postgres(p) => p.get(id).await,
        }
    }

    /// Every device's record, by id, in one query (the console's fleet page).
    pub async fn records(&mut self) -> Result<Vec<(String, Record)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.records(),
            Store::Postgres(p) => p.records().await,
        }
    }

    /// Writes an operator's action to the audit log.
    pub async fn add_audit(&mut self, e: &AuditEntry) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.add_audit(e),
            Store::Postgres(p) => p.add_audit(e).await,
        }
    }

    /// The audit log, newest first: one rollout's entries, or all (at most `limit`).
    pub async fn audit(
        &mut self,
        rollout: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        match self {
            Store::Sqlite(s) => s.audit(rollout, limit),
            Store::Postgres(p) => p.audit(rollout, limit).await,
        }
    }

    /// Every device id.
    pub async fn devices(&mut self) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.devices(),
            Store::Postgres(p) => p.devices().await,
        }
    }

    /// Merges each update into its device, in one transaction; the stored records, in order.
    pub async fn merge_batch(
        &mut self,
        items: &[(String, Document)],
        now_ms: u64,
    ) -> Result<Vec<Record>, StoreError> {
        let order = device_order(items.iter().map(|(d, _)| d.as_str()));
        let change = |i: usize, old: &Record| Some(old.merged(&items[i].0, &items[i].1, now_ms));
        let stored = match self {
            Store::Sqlite(s) => s.batch(&order, &[], change)?,
            Store::Postgres(p) => p.batch(&order, &[], change).await?,
        };
        Ok(stored
            .into_iter()
            .map(|r| r.expect("every update is stored"))
            .collect())
    }

    /// Deploys `desired` to each (device, phase) of a rollout that has not had it yet, in one
    /// transaction: the rollout's record of who got it, and the device's desired state. Returns
    /// the devices changed, with their records.
    pub async fn deploy_batch(
        &mut self,
        rollout: &str,
        items: &[(String, usize)],
        desired: &Map<String, Value>,
        now_ms: u64,
    ) -> Result<Vec<(String, Record)>, StoreError> {
        let order = device_order(items.iter().map(|(d, _)| d.as_str()));
        let targets: Vec<(&str, &str, i64, i64)> = items
            .iter()
            .map(|(d, p)| (rollout, d.as_str(), *p as i64, now_ms as i64))
            .collect();
        let change = |i: usize, old: &Record| {
            let mut doc = Document::default();
            doc.state.desired = Some(desired.clone());
            Some(old.merged(&items[i].0, &doc, now_ms))
        };
        let stored = match self {
            Store::Sqlite(s) => s.batch(&order, &targets, change)?,
            Store::Postgres(p) => p.batch(&order, &targets, change).await?,
        };
        Ok(items
            .iter()
            .zip(stored)
            .filter_map(|((d, _), r)| Some((d.clone(), r?)))
            .collect())
    }

    /// Stores a new rollout.
    pub async fn create_rollout(&mut self, r: &Rollout) -> Result<(), StoreError> {
        let doc = serde_json::to_string(r).expect("a rollout serialises");
        match self {
            Store::Sqlite(s) => s.create_rollout(&r.id, &doc, r.created_ms),
            Store::Postgres(p) => p.create_rollout(&r.id, &doc, r.created_ms).await,
        }
    }

    /// Every rollout (oldest first), with its version.
    pub async fn rollouts(&mut self) -> Result<Vec<(Rollout, u64)>, StoreError> {
        let rows = match self {
            Store::Sqlite(s) => s.rollouts()?,
            Store::Postgres(p) => p.rollouts().await?,
        };
        rows.into_iter()
            .map(|(doc, v)| Ok((self.parse_rollout(&doc)?, v as u64)))
            .collect()
    }

    /// One rollout, with its version.
    pub async fn rollout(&mut self, id: &str) -> Result<Option<(Rollout, u64)>, StoreError> {
        Ok(self.rollouts().await?.into_iter().find(|(r, _)| r.id == id))
    }

    /// Saves a rollout's progress if nobody saved it since `version` was read; false otherwise.
    pub async fn save_rollout(&mut self, r: &Rollout, version: u64) -> Result<bool, StoreError> {
        let doc = serde_json::to_string(r).expect("a rollout serialises");
        match self {
            Store::Sqlite(s) => s.save_rollout(&r.id, &doc, version as i64),
            Store::Postgres(p) => p.save_rollout(&r.id, &doc, version as i64).await,
        }
    }

    /// The rollout's members and how each one stands.
    pub async fn members(&mut self, r: &Rollout) -> Result<Vec<Member>, StoreError> {
        let (devices, targets) = match self {
            Store::Sqlite(s) => (s.summaries()?, s.targets(&r.id)?),
            Store::Postgres(p) => (p.summaries().await?, p.targets(&r.id).await?),
        };
        Ok(members(r, devices, targets))
    }

    fn parse_rollout(&self, doc: &str) -> Result<Rollout, StoreError> {
        serde_json::from_str(doc).map_err(|e| StoreError::Data {
            db: self.name(),
            what: format!("a stored rollout is unreadable: {e}"),
        })
    }

    fn name(&self) -> String {
        match self {
            Store::Sqlite(s) => s.name.clone(),
            Store::Postgres(p) => p.name.clone(),
        }
    }
}

/// Indexes of `devices` sorted by device id, keeping the order of updates to one device: the
/// order a batch takes its rows in.
fn device_order<'a>(devices: impl Iterator<Item = &'a str>) -> Vec<(usize, String)> {
    let mut v: Vec<(usize, String)> = devices
        .enumerate()
        .map(|(i, d)| (i, d.to_owned()))
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    v
}

/// Puts the batch's results back in input order.
fn in_input_order(n: usize, done: Vec<(usize, Option<Record>)>) -> Vec<Option<Record>> {
    let mut out = vec![None; n];
    for (i, r) in done {
        out[i] = r;
    }
    out
}

/// The groups column's JSON array.
fn groups_of(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_postgres_and_hide_passwords() {
        let parse = |t: &str| Database::parse(t, PgTls::default()).unwrap();
        assert_eq!(
            parse("postgres://u:secret@127.0.0.1:5432/db").display(),
            "postgres://u:***@127.0.0.1:5432/db"
        );
        assert_eq!(
            parse("/var/lib/sandstep/shadow.sqlite"),
            Database::Sqlite("/var/lib/sandstep/shadow.sqlite".into())
        );
        assert_eq!(
            parse("shadow.sqlite"),
            Database::Sqlite("shadow.sqlite".into())
        );
        assert!(matches!(
            parse("postgresql://x/y"),
            Database::Postgres { .. }
        ));
    }

    /// What is not a postgres URL is a SQLite file only when it is a plain path; the rest is
    /// refused, saying what it looks like.
    #[test]
    fn what_is_neither_a_postgres_url_nor_a_plain_path_is_refused() {
        for (text, says) in [
            ("?sslmode=require", "`?` or `#`"),
            ("//db.example/fleet?sslmode=require", "`?` or `#`"),
            ("mysql://u@h/db", "another scheme"),
            ("postgre://u@h/db", "another scheme"),
            (
                "host=db.example dbname=fleet user=replica",
                "libpq keyword string",
            ),
            ("file:shadow.sqlite?mode=ro", "SQLite URIs"),
            ("", "empty"),
            ("  ", "empty"),
            ("/var/lib/sandstep/", "directory"),
            ("a\nb", "control characters"),
        ] {
            let e = Database::parse(text, PgTls::default()).unwrap_err();
            assert!(e.to_string().contains(says), "{text:?}: {e}");
            assert!(e.to_string().contains("neither a PostgreSQL URL"), "{e}");
        }
    }

    #[test]
    fn batches_take_devices_in_order_and_keep_each_devices_updates_in_order() {
        let o = device_order(["b", "a", "b", "a"].into_iter());
        assert_eq!(o.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 3, 0, 2]);
    }
}
