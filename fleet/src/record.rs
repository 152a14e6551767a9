//! One device's stored state and what the replica derives from it, as pure functions: how an
//! update merges in, what is published in answer, and how the device's deployment went.

use sandstep_model::shadow::{self, Document, ReportOrder, Topics};
use serde_json::{json, Map, Value};

/// One device's stored state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    pub desired: Map<String, Value>,
    pub reported: Map<String, Value>,
    /// Bumped by every stored change; a write names the version it read, and the database
    /// refuses it when another replica wrote in between.
    pub version: u64,
    pub updated_ms: u64,
    /// When the device itself last reported (ms since the epoch; 0: never).
    pub reported_ms: u64,
    /// Per reported field, the place of the report that last set it
    /// ([`shadow::merge_ordered`]).
    pub reported_order: Map<String, Value>,
}

/// How the deployment a device last acknowledged went, by its reported state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Acknowledged and working on it (downloading, applying, rebooting).
    Running,
    Succeeded,
    /// Failed: `resultCode/extendedResultCodes` from `lastInstallResult`, or `refused` when the
    /// agent refused the deployment (`lastError`).
    Failed(String),
    /// Cancelled by the operator before it finished.
    Cancelled,
}

impl Outcome {
    /// The stored form (`running`, `succeeded`, `cancelled`, `failed:<code>`).
    pub fn as_text(&self) -> String {
        match self {
            Outcome::Running => "running".into(),
            Outcome::Succeeded => "succeeded".into(),
            Outcome::Cancelled => "cancelled".into(),
            Outcome::Failed(code) => format!("failed:{code}"),
        }
    }

    pub fn from_text(s: &str) -> Option<Outcome> {
        Some(match s {
            "running" => Outcome::Running,
            "succeeded" => Outcome::Succeeded,
            "cancelled" => Outcome::Cancelled,
            _ => Outcome::Failed(s.strip_prefix("failed:")?.to_owned()),
        })
    }

    /// Whether the device is done with the deployment.
    pub fn finished(&self) -> bool {
        !matches!(self, Outcome::Running)
    }
}

impl Record {
    /// The groups the device reports (`reported.groups`).
    pub fn groups(&self) -> Vec<String> {
        self.reported
            .get("groups")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The workflow the device last acknowledged (`reported.workflow.id`).
    pub fn workflow_id(&self) -> Option<&str> {
        self.reported.get("workflow")?.get("id")?.as_str()
    }

    /// How that workflow went, by the fields the agent reports (gateway/src/agent/reported.rs):
    /// accepting a deployment clears `lastError` and reports `downloading`; refusing one reports
    /// the workflow with `lastError`; the final patch says `completed` or `failed` (ADU's `state`
    /// 0 or 255) with `lastInstallResult`; a cancel ends in `standBy` under a cancel workflow.
    pub fn outcome(&self) -> Option<Outcome> {
        let workflow = self.reported.get("workflow")?;
        let r = |k: &str| self.reported.get(k);
        if r("lastError").is_some_and(|e| !e.is_null()) {
            return Some(Outcome::Failed("refused".into()));
        }
        let status = r("status").and_then(Value::as_str);
        let state = r("state").and_then(Value::as_i64);
        if status == Some("failed") || state == Some(255) {
            let last = r("lastInstallResult");
            let code = last.and_then(|l| l.get("resultCode")).map(Value::to_string);
            let ext = last
                .and_then(|l| l.get("extendedResultCodes"))
                .and_then(Value::as_str);
            return Some(Outcome::Failed(match (code, ext) {
                (Some(c), Some(e)) if !e.is_empty() => format!("{c}/{e}"),
                (Some(c), _) => c,
                (None, _) => "unknown".into(),
            }));
        }
        let cancelled = workflow.get("action").and_then(Value::as_i64)
            == Some(i64::from(sandstep_model::deployment::action::CANCEL));
        Some(match status {
            Some("standBy") if cancelled => Outcome::Cancelled,
            Some("completed") => Outcome::Succeeded,
            _ => Outcome::Running,
        })
    }

    /// The record after `doc` from `device`'s update topic (already checked to carry desired
    /// or reported state) is merged. A report placed by its `clientToken` changes only the
    /// fields no later report set: replicas may store one device's reports out of order.
    pub fn merged(&self, device: &str, doc: &Document, now_ms: u64) -> Record {
        let mut rec = self.clone();
        if let Some(d) = &doc.state.desired {
            shadow::merge(&mut rec.desired, d);
        }
        if let Some(r) = &doc.state.reported {
            let order = doc
                .client_token
                .as_deref()
                .and_then(|t| ReportOrder::of_token(t, device));
            shadow::merge_ordered(&mut rec.reported, &mut rec.reported_order, r, order);
            rec.reported_ms = now_ms;
        }
        rec.version += 1;
        rec.updated_ms = now_ms;
        rec
    }

    /// The delta and the whole retained document, published after any stored change.
    pub fn publications(&self, topics: &Topics, device: &str, now_ms: u64) -> Vec<Answer> {
        let delta = shadow::delta(&self.desired, &self.reported);
        let mut out = Vec::with_capacity(2);
        if !delta.is_empty() {
            out.push(Answer {
                topic: Topics::for_device(&topics.delta, device),
                payload: json!({"state": delta, "version": self.version, "timestamp": now_ms}),
                retain: false,
            });
        }
        out.push(self.whole_document(topics, device, now_ms));
        out
    }

    /// The whole document, retained on the device's `shadow` topic: after a stored change, and
    /// as the answer to the device's `get` (it asks on every (re)connection).
    pub fn whole_document(&self, topics: &Topics, device: &str, now_ms: u64) -> Answer {
        let delta = shadow::delta(&self.desired, &self.reported);
        Answer {
            topic: Topics::for_device(&topics.shadow, device),
            payload: json!({
                "state": {"desired": self.desired, "reported": self.reported, "delta": delta},
                "version": self.version, "timestamp": now_ms, "lastReportedMs": self.reported_ms,
            }),
            retain: true,
        }
    }
}

/// What the replica publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub topic: String,
    pub payload: Value,
    pub retain: bool,
}

/// The answer refusing a device's update, on its `rejected` topic: `code` as a shadow service
/// gives it (400 the document, 500 the service's own trouble) and why.
pub fn rejection(topics: &Topics, device: &str, code: u16, message: &str, now_ms: u64) -> Answer {
    Answer {
        topic: Topics::for_device(&topics.rejected, device),
        payload: json!({"code": code, "message": message, "timestamp": now_ms}),
        retain: false,
    }
}

/// A message from a device's update topic, read: a document to merge, or the answer refusing it.
pub fn read_update(
    topics: &Topics,
    device: &str,
    payload: &[u8],
    now_ms: u64,
) -> Result<Document, Answer> {
    let rejected = |message: String| rejection(topics, device, 400, &message, now_ms);
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
            _ => return Err(rejected(e.to_string())),
        },
    };
    if doc.state.desired.is_none() && doc.state.reported.is_none() {
        return Err(rejected(
            "the document has neither state.desired nor state.reported".into(),
        ));
    }
    Ok(doc)
}

/// The answers to a stored update: `accepted` (echoing the update and its `clientToken`), then
/// the record's publications.
pub fn answers(
    topics: &Topics,
    device: &str,
    doc: &Document,
    rec: &Record,
    now_ms: u64,
) -> Vec<Answer> {
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
    out.extend(rec.publications(topics, device, now_ms));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(v: Value) -> Record {
        Record {
            reported: v.as_object().unwrap().clone(),
            ..Record::default()
        }
    }

    #[test]
    fn outcomes_follow_what_the_agent_reports() {
        let w = json!({"action": 3, "id": "w1"});
        assert_eq!(reported(json!({"status": "completed"})).outcome(), None);
        let r = |v: Value| reported(v).outcome().unwrap();
        assert_eq!(
            r(json!({"workflow": w, "status": "downloading", "lastError": null})),
            Outcome::Running
        );
        assert_eq!(
            r(json!({"workflow": w, "status": "completed", "state": 0})),
            Outcome::Succeeded
        );
        assert_eq!(
            r(json!({"workflow": w, "status": "failed", "state": 255,
                "lastInstallResult": {"resultCode": 0, "extendedResultCodes": "30000007"}})),
            Outcome::Failed("0/30000007".into())
        );
        assert_eq!(
            r(json!({"workflow": w, "status": "completed", "lastError": {"message": "unsigned"}})),
            Outcome::Failed("refused".into()),
            "a refusal of a new workflow is not the previous one's success"
        );
        assert_eq!(
            r(json!({"workflow": {"action": 255, "id": "w1"}, "status": "standBy"})),
            Outcome::Cancelled
        );
        for o in [
            Outcome::Running,
            Outcome::Succeeded,
            Outcome::Cancelled,
            Outcome::Failed("1/2".into()),
        ] {
            assert_eq!(Outcome::from_text(&o.as_text()), Some(o));
        }
    }

    #[test]
    fn a_merge_bumps_the_version_and_stamps_reports_only() {
        let rec = Record::default();
        let doc = Document::parse(br#"{"state":{"desired":{"a":1}}}"#).unwrap();
        let r1 = rec.merged("gw", &doc, 5);
        assert_eq!((r1.version, r1.updated_ms, r1.reported_ms), (1, 5, 0));
        let doc = Document::parse(br#"{"state":{"reported":{"groups":["x","y"]}}}"#).unwrap();
        let r2 = r1.merged("gw", &doc, 9);
        assert_eq!((r2.version, r2.reported_ms), (2, 9));
        assert_eq!(r2.groups(), ["x", "y"]);
    }

    /// Reads, merges and answers one update as the replica does.
    fn apply(rec: &mut Record, payload: &[u8], now: u64) -> Vec<Answer> {
        let topics = Topics::replica();
        match read_update(&topics, "gw", payload, now) {
            Ok(doc) => {
                *rec = rec.merged("gw", &doc, now);
                answers(&topics, "gw", &doc, rec, now)
            }
            Err(refusal) => vec![refusal],
        }
    }

    #[test]
    fn desired_then_report_gives_a_delta_then_none() {
        let mut rec = Record::default();
        let desired = json!({"state": {"desired": {"workflow": {"action": 3, "id": "w1"}, "updateManifest": "{}"}}, "clientToken": "op"});
        let a = apply(&mut rec, desired.to_string().as_bytes(), 1);
        assert_eq!(a[0].topic, "state/gw/update/accepted");
        assert_eq!(a[0].payload["clientToken"], "op");
        assert_eq!(a[1].topic, "state/gw/update/delta");
        assert_eq!(a[1].payload["state"]["workflow"]["id"], "w1");
        assert_eq!(a[2].topic, "state/gw/shadow");
        assert!(a[2].retain);
        let report = json!({"state": {"reported": {"workflow": {"action": 3, "id": "w1"}, "status": "installing"}}});
        let a = apply(&mut rec, report.to_string().as_bytes(), 2);
        assert_eq!(a.len(), 2, "no delta once acknowledged");
        assert_eq!(
            (rec.version, &rec.reported["status"]),
            (2, &json!("installing"))
        );
    }

    #[test]
    fn a_report_from_a_device_that_was_offline_gets_the_pending_delta() {
        let mut rec = Record::default();
        apply(
            &mut rec,
            br#"{"state":{"desired":{"workflow":{"action":3,"id":"w2"}}}}"#,
            1,
        );
        let a = apply(
            &mut rec,
            br#"{"state":{"reported":{"status":"standBy"}}}"#,
            2,
        );
        assert_eq!(a[1].topic, "state/gw/update/delta");
    }

    #[test]
    fn malformed_and_oversized_documents_are_rejected_with_the_reason() {
        let mut rec = Record::default();
        let a = apply(&mut rec, b"not json", 1);
        assert_eq!(a[0].topic, "state/gw/update/rejected");
        assert!(a[0].payload["message"]
            .as_str()
            .unwrap()
            .starts_with("document is not a shadow document"));
        let big = format!(
            r#"{{"state":{{"desired":{{"x":"{}"}}}}}}"#,
            "y".repeat(3 << 20)
        );
        let a = apply(&mut rec, big.as_bytes(), 1);
        assert_eq!(
            a[0].payload["message"],
            format!(
                "document is {} bytes; the limit is {}",
                big.len(),
                shadow::MAX_DOCUMENT_BYTES
            )
        );
        let a = apply(&mut rec, br#"{"state":{}}"#, 1);
        assert_eq!(
            a[0].payload["message"],
            "the document has neither state.desired nor state.reported"
        );
        assert_eq!(rec, Record::default(), "nothing merged");
    }

    #[test]
    fn acknowledgements_are_stored_as_reported_ack() {
        let mut rec = Record::default();
        let a = apply(&mut rec, br#"{"jobId":"w1","status":"SUCCESS"}"#, 1);
        assert_eq!(a[0].topic, "state/gw/update/accepted");
        assert_eq!(rec.reported["ack"]["status"], "SUCCESS");
    }
}
