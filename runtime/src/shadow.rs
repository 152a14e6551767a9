//! The device-state replica (`sandstep shadow`): the software-update pattern's cloud side.
//!
//! It subscribes to every device's update topic, keeps each device's desired and reported
//! documents in SQLite (versioned), confirms each stored update on `.../accepted` (or answers
//! `.../rejected` with the reason), publishes the delta (desired fields that differ from reported)
//! on `.../delta`, and keeps the whole document retained on `.../shadow` for `sandstep status`.
//! A device that reports (as the agent does when it starts) gets the pending delta again, so a
//! desired change made while it was offline reaches it when it reconnects.

use crate::mqtt::{Mqtt, MqttConfig, MqttError, MqttEvent};
use rusqlite::{params, Connection, OptionalExtension};
use sandstep_model::shadow::{self, valid_device_id, Document, Topics};
use serde_json::{json, Map, Value};
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// One device's stored state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    pub desired: Map<String, Value>,
    pub reported: Map<String, Value>,
    pub version: u64,
    pub updated_ms: u64,
    /// When the device itself last reported (ms since the epoch; 0: never).
    pub reported_ms: u64,
}

/// Why the replica stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("shadow database {path}: {cause}")]
    Db {
        path: String,
        /// In the message, not a `source`: printed once.
        cause: rusqlite::Error,
    },
    #[error(transparent)]
    Mqtt(#[from] MqttError),
}

/// The SQLite store.
pub struct Store {
    conn: Connection,
    path: String,
}

impl Store {
    /// Opens (creating) the database.
    pub fn open(path: &Path) -> Result<Store, ShadowError> {
        let p = path.display().to_string();
        let err = |source| ShadowError::Db {
            path: p.clone(),
            cause: source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS devices (
                 id TEXT PRIMARY KEY,
                 desired TEXT NOT NULL,
                 reported TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 updated_ms INTEGER NOT NULL
             );",
        )
        .map_err(err)?;
        // Databases from before `reported_ms` get the column (0: not known).
        let has_column = conn
            .prepare("SELECT reported_ms FROM devices LIMIT 0")
            .is_ok();
        if !has_column {
            conn.execute_batch(
                "ALTER TABLE devices ADD COLUMN reported_ms INTEGER NOT NULL DEFAULT 0;",
            )
            .map_err(err)?;
        }
        Ok(Store { conn, path: p })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> ShadowError + '_ {
        move |source| ShadowError::Db {
            path: self.path.clone(),
            cause: source,
        }
    }

    /// A device's record.
    pub fn get(&self, id: &str) -> Result<Option<Record>, ShadowError> {
        let row = self
            .conn
            .query_row(
                "SELECT desired, reported, version, updated_ms, reported_ms FROM devices WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                },
            )
            .optional()
            .map_err(self.err())?;
        Ok(row.map(|(d, r, v, u, seen)| Record {
            desired: serde_json::from_str(&d).unwrap_or_default(),
            reported: serde_json::from_str(&r).unwrap_or_default(),
            version: v as u64,
            updated_ms: u as u64,
            reported_ms: seen as u64,
        }))
    }

    /// Stores a device's record.
    pub fn put(&self, id: &str, r: &Record) -> Result<(), ShadowError> {
        self.conn
            .execute(
                "INSERT INTO devices (id, desired, reported, version, updated_ms, reported_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO UPDATE SET desired = ?2, reported = ?3, version = ?4, updated_ms = ?5, reported_ms = ?6",
                params![
                    id,
                    Value::Object(r.desired.clone()).to_string(),
                    Value::Object(r.reported.clone()).to_string(),
                    r.version as i64,
                    r.updated_ms as i64,
                    r.reported_ms as i64
                ],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Every device id.
    pub fn devices(&self) -> Result<Vec<String>, ShadowError> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM devices ORDER BY id")
            .map_err(self.err())?;
        let ids = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        Ok(ids)
    }
}

/// What the replica publishes in answer to one update.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub topic: String,
    pub payload: Value,
    pub retain: bool,
}

/// Applies one message from a device's update topic: the answers to publish, in order.
pub fn apply(
    store: &Store,
    topics: &Topics,
    device: &str,
    payload: &[u8],
    now_ms: u64,
) -> Result<Vec<Answer>, ShadowError> {
    let rejected = |code: u16, message: String| {
        vec![Answer {
            topic: Topics::for_device(&topics.rejected, device),
            payload: json!({"code": code, "message": message, "timestamp": now_ms}),
            retain: false,
        }]
    };
    // The agent's acknowledgement (`{"jobId", "status"}`) is stored as reported `ack`.
    let doc = match Document::parse(payload) {
        Ok(d) => d,
        Err(e) => match serde_json::from_slice::<Value>(payload) {
            Ok(v)
                if v.get("jobId").is_some()
                    && v.get("status").is_some()
                    && payload.len() < 4096 =>
            {
                let mut reported = Map::new();
                reported.insert("ack".into(), v);
                Document {
                    state: shadow::State {
                        reported: Some(reported),
                        ..Default::default()
                    },
                    ..Default::default()
                }
            }
            _ => return Ok(rejected(400, e.to_string())),
        },
    };
    if doc.state.desired.is_none() && doc.state.reported.is_none() {
        return Ok(rejected(
            400,
            "the document has neither state.desired nor state.reported".into(),
        ));
    }
    let mut rec = store.get(device)?.unwrap_or_default();
    if let Some(d) = &doc.state.desired {
        shadow::merge(&mut rec.desired, d);
    }
    if let Some(r) = &doc.state.reported {
        shadow::merge(&mut rec.reported, r);
        rec.reported_ms = now_ms;
    }
    rec.version += 1;
    rec.updated_ms = now_ms;
    store.put(device, &rec)?;

    let mut accepted = json!({"state": {}, "version": rec.version, "timestamp": now_ms});
    if let Some(d) = &doc.state.desired {
        accepted["state"]["desired"] = Value::Object(d.clone());
    }
    if let Some(r) = &doc.state.reported {
        accepted["state"]["reported"] = Value::Object(r.clone());
    }
    if let Some(t) = &doc.client_token {
        accepted["clientToken"] = json!(t);
    }
    let mut out = vec![Answer {
        topic: Topics::for_device(&topics.accepted, device),
        payload: accepted,
        retain: false,
    }];
    let delta = shadow::delta(&rec.desired, &rec.reported);
    if !delta.is_empty() {
        out.push(Answer {
            topic: Topics::for_device(&topics.delta, device),
            payload: json!({"state": delta, "version": rec.version, "timestamp": now_ms}),
            retain: false,
        });
    }
    out.push(Answer {
        topic: Topics::for_device(&topics.shadow, device),
        payload: json!({"state": {"desired": rec.desired, "reported": rec.reported, "delta": delta}, "version": rec.version, "timestamp": now_ms, "lastReportedMs": rec.reported_ms}),
        retain: true,
    });
    Ok(out)
}

/// Runs the replica until `shutdown`.
pub async fn run(
    mqtt: &MqttConfig,
    topics: &Topics,
    db: &Path,
    shutdown: CancellationToken,
) -> Result<(), ShadowError> {
    let store = Store::open(db)?;
    let client_id = mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("sandstep-shadow-{:08x}", fastrand::u32(..)));
    let mut conn = Mqtt::connect(mqtt, &client_id)?;
    let filter = Topics::filter(&topics.update);
    loop {
        let ev = tokio::select! {
            ev = conn.recv() => ev,
            _ = shutdown.cancelled() => return Ok(()),
        };
        match ev {
            None => return Ok(()),
            Some(MqttEvent::Connected) => {
                tracing::info!(%filter, devices = store.devices()?.len(), "replica connected");
                conn.subscribe(&filter).await?;
            }
            Some(MqttEvent::Disconnected(e)) => tracing::warn!("replica disconnected: {e}"),
            Some(MqttEvent::Message { topic, payload, .. }) => {
                let Some(device) = Topics::device_of(&topics.update, &topic) else {
                    continue;
                };
                if !valid_device_id(&device) {
                    continue;
                }
                let answers = apply(&store, topics, &device, &payload, crate::clock::now_ms())?;
                for a in answers {
                    conn.publish(&a.topic, a.payload.to_string().into_bytes(), a.retain)
                        .await?;
                }
            }
            Some(MqttEvent::PubAck { refused: Some(why) }) => {
                tracing::error!("the broker refused an answer of the replica ({why}): check its ACL for the replica's account");
            }
            Some(MqttEvent::PubAck { .. } | MqttEvent::SubAck) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(&t.path().join("shadow.sqlite")).unwrap();
        (t, s)
    }

    #[test]
    fn desired_then_report_gives_a_delta_then_none() {
        let (_t, s) = store();
        let topics = Topics::replica();
        let desired = json!({"state": {"desired": {"workflow": {"action": 3, "id": "w1"}, "updateManifest": "{}"}}});
        let a = apply(&s, &topics, "gw", desired.to_string().as_bytes(), 1).unwrap();
        assert_eq!(a[0].topic, "state/gw/update/accepted");
        assert_eq!(a[1].topic, "state/gw/update/delta");
        assert_eq!(a[1].payload["state"]["workflow"]["id"], "w1");
        assert_eq!(a[2].topic, "state/gw/shadow");
        assert!(a[2].retain);
        let report = json!({"state": {"reported": {"workflow": {"action": 3, "id": "w1"}, "status": "installing"}}});
        let a = apply(&s, &topics, "gw", report.to_string().as_bytes(), 2).unwrap();
        assert_eq!(a.len(), 2, "no delta once acknowledged");
        let rec = s.get("gw").unwrap().unwrap();
        assert_eq!(rec.version, 2);
        assert_eq!(rec.reported["status"], "installing");
    }

    #[test]
    fn a_report_from_a_device_that_was_offline_gets_the_pending_delta() {
        let (_t, s) = store();
        let topics = Topics::replica();
        apply(
            &s,
            &topics,
            "gw",
            br#"{"state":{"desired":{"workflow":{"action":3,"id":"w2"}}}}"#,
            1,
        )
        .unwrap();
        let a = apply(
            &s,
            &topics,
            "gw",
            br#"{"state":{"reported":{"status":"standBy"}}}"#,
            2,
        )
        .unwrap();
        assert_eq!(a[1].topic, "state/gw/update/delta");
    }

    #[test]
    fn malformed_and_oversized_documents_are_rejected_with_the_reason() {
        let (_t, s) = store();
        let topics = Topics::replica();
        let a = apply(&s, &topics, "gw", b"not json", 1).unwrap();
        assert_eq!(a[0].topic, "state/gw/update/rejected");
        assert!(a[0].payload["message"]
            .as_str()
            .unwrap()
            .starts_with("document is not a shadow document"));
        let big = format!(
            r#"{{"state":{{"desired":{{"x":"{}"}}}}}}"#,
            "y".repeat(3 << 20)
        );
        let a = apply(&s, &topics, "gw", big.as_bytes(), 1).unwrap();
        assert_eq!(
            a[0].payload["message"],
            format!(
                "document is {} bytes; the limit is {}",
                big.len(),
                shadow::MAX_DOCUMENT_BYTES
            )
        );
        let a = apply(&s, &topics, "gw", br#"{"state":{}}"#, 1).unwrap();
        assert_eq!(
            a[0].payload["message"],
            "the document has neither state.desired nor state.reported"
        );
        assert!(s.get("gw").unwrap().is_none(), "nothing stored");
    }

    #[test]
    fn acknowledgements_are_stored_as_reported_ack() {
        let (_t, s) = store();
        let a = apply(
            &s,
            &Topics::replica(),
            "gw",
            br#"{"jobId":"w1","status":"SUCCESS"}"#,
            1,
        )
        .unwrap();
        assert_eq!(a[0].topic, "state/gw/update/accepted");
        assert_eq!(
            s.get("gw").unwrap().unwrap().reported["ack"]["status"],
            "SUCCESS"
        );
    }
}
