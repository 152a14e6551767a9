//! How a device's reported document reads in a status table: the same view for one gateway
//! (`sandstep status`) and for a fleet (`sandstep-fleet status`). Pure: documents in, text out.

use serde_json::Value;
use std::collections::BTreeMap;

/// How long ago, in words (`12s`, `5m`, `3h`, `2d`).
pub fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// When the device last reported, by the replica's record (`None`: not known).
pub fn last_reported(doc: &Value) -> Option<u64> {
    doc.get("lastReportedMs")
        .and_then(Value::as_u64)
        .filter(|&t| t > 0)
}

/// Whether a device is shown: heard from within `stale_ms`, or not known (then it is shown).
pub fn is_current(doc: &Value, now_ms: u64, stale_ms: u64) -> bool {
    last_reported(doc).is_none_or(|t| now_ms.saturating_sub(t) <= stale_ms)
}

/// One device's row (without LAST SEEN).
fn row(device: &str, doc: &Value) -> Vec<String> {
    let r = |p: &str| {
        doc.pointer(&format!("/state/reported{p}"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let s = |v: Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s,
        other => other.to_string(),
    };
    let progress = match r("/progress") {
        Value::Object(p) => {
            let step = p.get("unit").and_then(Value::as_str).unwrap_or("");
            let action = p.get("action").and_then(Value::as_str).unwrap_or("");
            let pct = p
                .get("percent")
                .map(|v| format!("{v}%"))
                .unwrap_or_default();
            format!("{step} {action} {pct}").trim().to_owned()
        }
        _ => "-".to_owned(),
    };
    let last = match r("/lastInstallResult") {
        Value::Object(l) => format!(
            "{} {}",
            l.get("resultCode")
                .map(Value::to_string)
                .unwrap_or_default(),
            l.get("extendedResultCodes")
                .and_then(Value::as_str)
                .unwrap_or("")
        ),
        _ => "-".to_owned(),
    };
    let pending = doc
        .pointer("/state/delta/workflow/id")
        .and_then(Value::as_str)
        .map(|w| format!(" (pending {w})"))
        .unwrap_or_default();
    vec![
        device.to_owned(),
        s(r("/status")),
        s(r("/state")),
        format!("{}{pending}", s(r("/workflow/id"))),
        progress,
        last,
        s(r("/installedUpdateId")),
    ]
}

/// The table of `all` (device -> document), aligned, one line a device under a header.
pub fn table(all: &BTreeMap<String, Value>, now: u64) -> String {
    let mut rows = vec![[
        "DEVICE",
        "STATUS",
        "STATE",
        "WORKFLOW",
        "PROGRESS",
        "LAST RESULT",
        "INSTALLED",
        "LAST SEEN",
    ]
    .map(String::from)
    .to_vec()];
    rows.extend(all.iter().map(|(d, doc)| {
        let mut r = row(d, doc);
        r.push(last_reported(doc).map_or("-".to_owned(), |t| ago(now.saturating_sub(t))));
        r
    }));
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stale_devices_are_told_apart_by_when_they_last_reported() {
        let day = 86_400_000;
        let doc = |t: u64| json!({"lastReportedMs": t});
        assert!(is_current(&doc(10 * day), 10 * day + 5_000, day));
        assert!(!is_current(&doc(10 * day), 12 * day, day));
        // A replica from before the field, or a device that never reported: shown.
        assert!(is_current(&json!({}), 12 * day, day));
        assert!(is_current(&doc(0), 12 * day, day));
        assert_eq!(ago(5_000), "5s ago");
        assert_eq!(ago(600_000), "10m ago");
        assert_eq!(ago(3 * 3_600_000), "3h ago");
        assert_eq!(ago(3 * day), "3d ago");
    }
}
