//! Device-shadow documents (`state.desired`, `state.reported`, `state.delta`, `version`,
//! `timestamp`) and the rules the replica applies to them.
//!
//! Desired and reported are JSON objects updated per top-level field (`null` deletes a field).
//! The delta holds the desired fields whose values differ from the reported ones — except that a
//! deployment's bulky fields (`updateManifest`, `updateManifestSignature`, `fileUrls`) travel with
//! its `workflow`: they are in the delta exactly when `workflow` is, so a device acknowledges a
//! deployment by reporting its `workflow`, without echoing the manifest back.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Largest shadow document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 2 << 20;

/// The deployment fields that follow `workflow` in the delta.
pub const DEPLOYMENT_FIELDS: [&str; 3] = ["updateManifest", "updateManifestSignature", "fileUrls"];

/// A shadow document as published on the update, delta and accepted topics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

/// `state`: any of desired, reported, delta.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Map<String, Value>>,
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("document is {0} bytes; the limit is {MAX_DOCUMENT_BYTES}")]
    TooLarge(usize),
    #[error("document is not a shadow document: {0}")]
    Invalid(String),
}

impl Document {
    /// Parses a document, refusing oversized or malformed ones with a clear reason.
    pub fn parse(bytes: &[u8]) -> Result<Document, DocumentError> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(DocumentError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| DocumentError::Invalid(e.to_string()))
    }
}

/// Applies `patch` to `target` field by field; a `null` value deletes the field.
pub fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            target.insert(k.clone(), v.clone());
        }
    }
}

/// A report's place in its device's order: the run of the agent that sent it (random per agent
/// start) and its number within that run. It travels in the report's `clientToken`
/// (`<device>#<run>.<seq>`, which every shadow service echoes), so several replicas storing one
/// device's reports in whatever order they finish still keep the newest value of each field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportOrder {
    pub run: u32,
    pub seq: u64,
}

impl ReportOrder {
    pub fn token(&self, device: &str) -> String {
        format!("{device}#{:08x}.{}", self.run, self.seq)
    }

    /// The order a `clientToken` carries, if it is one of `device`'s reports.
    pub fn of_token(token: &str, device: &str) -> Option<ReportOrder> {
        let (run, seq) = token
            .strip_prefix(device)?
            .strip_prefix('#')?
            .split_once('.')?;
        Some(ReportOrder {
            run: u32::from_str_radix(run, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }

    fn of_value(v: &Value) -> Option<ReportOrder> {
        Some(ReportOrder {
            run: u32::try_from(v.get(0)?.as_u64()?).ok()?,
            seq: v.get(1)?.as_u64()?,
        })
    }

    /// Whether a report in this place replaces a field last set by one in `earlier`: a later
    /// report of the same run, or any report of another run (the agent restarted).
    fn replaces(&self, earlier: &ReportOrder) -> bool {
        self.run != earlier.run || self.seq > earlier.seq
    }
}

/// [`merge`] for reports that may arrive out of order: `orders` keeps, per field, the place of
/// the report that last set (or deleted) it, and a field is only changed by a report placed
/// after that. Reports without a place (`None`) merge as before and forget the fields' places.
pub fn merge_ordered(
    target: &mut Map<String, Value>,
    orders: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    order: Option<ReportOrder>,
) {
    for (k, v) in patch {
        let newer = match (order, orders.get(k).and_then(ReportOrder::of_value)) {
            (Some(o), Some(earlier)) => o.replaces(&earlier),
            _ => true,
        };
        if !newer {
            continue;
        }
        match order {
            Some(o) => orders.insert(k.clone(), Value::from(vec![u64::from(o.run), o.seq])),
            None => orders.remove(k),
        };
        if v.is_null() {
            target.remove(k);
        } else {
            target.insert(k.clone(), v.clone());
        }
    }
}

/// The desired fields that differ from the reported ones (see the module doc for deployments).
pub fn delta(desired: &Map<String, Value>, reported: &Map<String, Value>) -> Map<String, Value> {
    let workflow_differs = desired
        .get("workflow")
        .is_some_and(|w| reported.get("workflow") != Some(w));
    desired
        .iter()
        .filter(|(k, v)| {
            if DEPLOYMENT_FIELDS.contains(&k.as_str()) {
                workflow_differs
            } else {
                reported.get(k.as_str()) != Some(v)
            }
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Topic names for one layout; `{device}` stands for the device id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Topics {
    /// Where desired and reported updates are published.
    pub update: String,
    /// Where the delta arrives.
    pub delta: String,
    /// Where stored updates are confirmed.
    pub accepted: String,
    /// Where refused updates are answered.
    pub rejected: String,
    /// Where the replica keeps each device's whole document, retained (for `sandstep status`),
    /// and where a request on `get` is answered.
    pub shadow: String,
    /// Where a device asks for its whole document (an empty message), answered on `shadow`:
    /// the agent asks on every (re)connection, so a delta published while it was away is not
    /// missed. None: the layout has no such request (the retained `shadow` alone is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get: Option<String>,
}

impl Topics {
    /// The software-update pattern's layout: `state/<id>/update`, `.../update/delta`, ...
    pub fn replica() -> Topics {
        Topics {
            update: "state/{device}/update".into(),
            delta: "state/{device}/update/delta".into(),
            accepted: "state/{device}/update/accepted".into(),
            rejected: "state/{device}/update/rejected".into(),
            shadow: "state/{device}/shadow".into(),
            get: Some("state/{device}/get".into()),
        }
    }

    /// A cloud device-shadow layout (AWS IoT's names).
    pub fn aws() -> Topics {
        Topics {
            update: "$aws/things/{device}/shadow/update".into(),
            delta: "$aws/things/{device}/shadow/update/delta".into(),
            accepted: "$aws/things/{device}/shadow/update/accepted".into(),
            rejected: "$aws/things/{device}/shadow/update/rejected".into(),
            shadow: "$aws/things/{device}/shadow/get/accepted".into(),
            get: Some("$aws/things/{device}/shadow/get".into()),
        }
    }

    /// A template with the device filled in.
    pub fn for_device(template: &str, device: &str) -> String {
        template.replace("{device}", device)
    }

    /// A template as a subscription filter for every device (`+`).
    pub fn filter(template: &str) -> String {
        template.replace("{device}", "+")
    }

    /// The device id in `topic`, if it matches `template`.
    pub fn device_of(template: &str, topic: &str) -> Option<String> {
        let t: Vec<&str> = template.split('/').collect();
        let p: Vec<&str> = topic.split('/').collect();
        if t.len() != p.len() {
            return None;
        }
        let mut device = None;
        for (a, b) in t.iter().zip(&p) {
            if *a == "{device}" {
                device = Some((*b).to_owned());
            } else if a != b {
                return None;
            }
        }
        device.filter(|d| !d.is_empty())
    }
}

/// `[agent] topics`: a preset or explicit templates. Both halves read it from the same key, so
/// the agent and the replica agree on where documents travel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TopicLayout {
    Preset(Preset),
    Custom(Topics),
}

/// The named layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// [`Topics::replica`].
    Replica,
    /// [`Topics::aws`].
    Aws,
}

impl Default for TopicLayout {
    fn default() -> Self {
        TopicLayout::Preset(Preset::Replica)
    }
}

impl TopicLayout {
    pub fn topics(&self) -> Topics {
        match self {
            TopicLayout::Preset(Preset::Replica) => Topics::replica(),
            TopicLayout::Preset(Preset::Aws) => Topics::aws(),
            TopicLayout::Custom(t) => t.clone(),
        }
    }
}

/// Whether a device id can be used in topics: no MQTT wildcards or separators, 1-128 chars.
pub fn valid_device_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !id
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#') || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn merge_replaces_fields_and_null_deletes() {
        let mut t = obj(json!({"a": 1, "b": 2}));
        merge(&mut t, &obj(json!({"b": null, "c": 3})));
        assert_eq!(Value::Object(t), json!({"a": 1, "c": 3}));
    }

    #[test]
    fn the_deployment_travels_with_its_workflow() {
        let desired = obj(
            json!({"workflow": {"action": 3, "id": "w1"}, "updateManifest": "{...}", "fileUrls": {}, "color": "red"}),
        );
        let d = delta(&desired, &obj(json!({})));
        assert_eq!(d.len(), 4);
        let acked = obj(json!({"workflow": {"action": 3, "id": "w1"}, "color": "red"}));
        assert!(
            delta(&desired, &acked).is_empty(),
            "reporting the workflow acknowledges the deployment"
        );
        let other = obj(json!({"workflow": {"action": 3, "id": "w0"}, "color": "red"}));
        let d = delta(&desired, &other);
        assert_eq!(
            d.keys().collect::<Vec<_>>(),
            ["fileUrls", "updateManifest", "workflow"]
        );
    }

    #[test]
    fn topics_match_and_extract_devices() {
        let t = Topics::replica();
        assert_eq!(Topics::filter(&t.update), "state/+/update");
        assert_eq!(
            Topics::device_of(&t.update, "state/gw-1/update"),
            Some("gw-1".into())
        );
        assert_eq!(
            Topics::device_of(&t.update, "state/gw-1/update/delta"),
            None
        );
        assert_eq!(Topics::device_of(&t.update, "other/gw-1/update"), None);
        assert_eq!(
            Topics::for_device(&Topics::aws().delta, "gw-1"),
            "$aws/things/gw-1/shadow/update/delta"
        );
        assert!(valid_device_id("gw-001"));
        assert!(!valid_device_id("a/b") && !valid_device_id("#") && !valid_device_id(""));
    }

    #[test]
    fn documents_parse_or_say_why_not() {
        let d = Document::parse(br#"{"state":{"desired":{"x":1}},"version":3}"#).unwrap();
        assert_eq!(d.version, Some(3));
        assert!(matches!(
            Document::parse(b"[1]"),
            Err(DocumentError::Invalid(_))
        ));
        let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
        assert_eq!(
            Document::parse(&big).unwrap_err(),
            DocumentError::TooLarge(MAX_DOCUMENT_BYTES + 1)
        );
    }

    #[test]
    fn reports_stored_out_of_order_keep_each_fields_newest_value() {
        let (mut r, mut o) = (Map::new(), Map::new());
        let at = |seq| Some(ReportOrder { run: 7, seq });
        // The result (3) is stored before the acknowledgement (2) that preceded it.
        merge_ordered(
            &mut r,
            &mut o,
            &obj(json!({"status": "completed", "progress": null})),
            at(3),
        );
        merge_ordered(
            &mut r,
            &mut o,
            &obj(json!({"status": "downloading", "workflow": "w", "progress": 5})),
            at(2),
        );
        assert_eq!(
            Value::Object(r.clone()),
            json!({"status": "completed", "workflow": "w"})
        );
        // A new run of the agent starts over at 1 and still counts.
        merge_ordered(
            &mut r,
            &mut o,
            &obj(json!({"status": "standBy"})),
            Some(ReportOrder { run: 8, seq: 1 }),
        );
        assert_eq!(r["status"], "standBy");
        let t = ReportOrder { run: 0xab, seq: 42 }.token("gw-1");
        assert_eq!(t, "gw-1#000000ab.42");
        assert_eq!(
            ReportOrder::of_token(&t, "gw-1"),
            Some(ReportOrder { run: 0xab, seq: 42 })
        );
        assert_eq!(ReportOrder::of_token(&t, "gw-2"), None);
        assert_eq!(ReportOrder::of_token("sandstep-op-1234", "gw-1"), None);
    }
}
