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

/// How the deployment a device was asked for ended, for `status --wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// No deployment is asked of the device.
    Idle,
    Succeeded,
    Failed,
}

/// Whether the device reported the end of the deployment its desired state asks for: the
/// reported workflow is the desired one (its id, and its `retryTimestamp`: a retry is a new
/// attempt), in `completed` or `failed` (`rebooting` is not an end: the deployment goes on after
/// the reboot). `None` while it has not.
pub fn settled(doc: &Value) -> Option<Settled> {
    let Some(wanted) = doc
        .pointer("/state/desired/workflow")
        .filter(|w| w.get("id").is_some())
    else {
        return Some(Settled::Idle);
    };
    let r = doc.pointer("/state/reported")?;
    let same = |k: &str| r.pointer(&format!("/workflow/{k}")) == wanted.get(k);
    if !same("id") || !same("retryTimestamp") {
        return None;
    }
    match r.get("status").and_then(Value::as_str) {
        Some("completed") => Some(Settled::Succeeded),
        Some("failed") => Some(Settled::Failed),
        _ => None,
    }
}

/// When the reported stage began (`<status>At`, ms), if reported.
fn stage_at(reported: &Value) -> Option<u64> {
    let stage = reported.get("status")?.as_str()?;
    reported.get(format!("{stage}At"))?.as_u64()
}

/// What needs an operator's eye under a device's row, newest first: the last error (a refused
/// document, an unreachable server) and a failed deployment's reason, each with its age; then
/// what is retried, and when (or that it is not).
pub fn notes(doc: &Value, now: u64) -> Vec<String> {
    let Some(r) = doc.pointer("/state/reported") else {
        return Vec::new();
    };
    let mut timed: Vec<(u64, String)> = Vec::new();
    if let Some(e) = r.get("lastError").filter(|e| !e.is_null()) {
        let at = e.get("at").and_then(Value::as_u64).unwrap_or(0);
        let message = e.get("message").and_then(Value::as_str).unwrap_or("");
        timed.push((
            at,
            format!("error {}: {}", ago(now.saturating_sub(at)), clip(message)),
        ));
    }
    if r.get("status").and_then(Value::as_str) == Some("failed") {
        let at = stage_at(r).unwrap_or(0);
        let details = r
            .pointer("/lastInstallResult/resultDetails")
            .and_then(Value::as_str)
            .unwrap_or("");
        let workflow = r
            .pointer("/workflow/id")
            .and_then(Value::as_str)
            .unwrap_or("-");
        timed.push((
            at,
            format!(
                "failed {} ({workflow}): {}",
                ago(now.saturating_sub(at)),
                clip(details)
            ),
        ));
    }
    timed.sort_by_key(|t| std::cmp::Reverse(t.0));
    let mut out: Vec<String> = timed.into_iter().map(|(_, line)| line).collect();
    if r.get("status").and_then(Value::as_str) == Some("failed") {
        out.extend(step_notes(r));
    }
    if let Some(retry) = r.get("retry").filter(|v| !v.is_null()) {
        out.push(retry_note(retry, now));
    }
    out
}

/// Under a failed deployment: which components of a reference step failed, and which steps a
/// later step's restore undid (each of them still reports its own success, as ADU's does).
fn step_notes(r: &Value) -> Vec<String> {
    let Some(steps) = r
        .pointer("/lastInstallResult/stepResults")
        .and_then(Value::as_object)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut undone: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (key, s) in steps {
        if let Some(by) = s.get("undoneBy").and_then(Value::as_str) {
            undone.entry(by).or_default().push(key);
        }
        for (id, c) in s
            .get("components")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let code = c.get("resultCode").and_then(Value::as_i64).unwrap_or(0);
            if code <= 0 {
                let erc = c
                    .get("extendedResultCodes")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let details = c.get("resultDetails").and_then(Value::as_str).unwrap_or("");
                out.push(format!(
                    "{key}, component {id}: failed {erc}: {}",
                    clip(details)
                ));
            }
        }
    }
    for (by, keys) in undone {
        out.push(format!("{} undone by {by}'s restore", keys.join(", ")));
    }
    out
}

/// `retry` in words: the tag, the attempts, and the next one (or why there is none).
fn retry_note(retry: &Value, now: u64) -> String {
    let tag = retry.get("tag").and_then(Value::as_str).unwrap_or("-");
    let attempts = retry.get("attempts").and_then(Value::as_u64).unwrap_or(0);
    let next = match (
        retry.get("nextAtMs").and_then(Value::as_u64),
        retry.get("note"),
    ) {
        (Some(at), _) if at > now => format!("next in {}", until(at - now)),
        (Some(_), _) => "next now".to_owned(),
        (None, Some(Value::String(n))) => n.clone(),
        (None, _) => "no next attempt".to_owned(),
    };
    format!("retry of tag {tag}: {attempts} attempt(s) failed; {next}")
}

/// How long until, in words (`40s`, `5m`, `3h`).
fn until(ms: u64) -> String {
    ago(ms).trim_end_matches(" ago").to_owned()
}

/// One line of at most 200 characters.
fn clip(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    match line.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_owned(),
    }
}

/// One device's row (without LAST SEEN).
fn row(device: &str, doc: &Value, now: u64) -> Vec<String> {
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
        // `waiting for the window (opens <time>)`: said as the agent reported it.
        Value::Object(p)
            if p.get("action")
                .and_then(Value::as_str)
                .is_some_and(|a| a.starts_with("waiting-")) =>
        {
            p.get("message")
                .and_then(Value::as_str)
                .unwrap_or("waiting for the window")
                .to_owned()
        }
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
    let status = match (r("/status"), doc.pointer("/state/reported").map(stage_at)) {
        (Value::String(st), Some(Some(at))) => format!("{st} ({})", ago(now.saturating_sub(at))),
        (v, _) => s(v),
    };
    vec![
        device.to_owned(),
        status,
        s(r("/state")),
        format!("{}{pending}", s(r("/workflow/id"))),
        progress,
        last,
        s(r("/installedUpdateId")),
    ]
}

/// The table of `all` (device -> document), aligned, one line a device under a header, each
/// followed by its [`notes`] (`  ! ...`).
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
    let mut notes_of = vec![Vec::new()];
    for (d, doc) in all {
        let mut r = row(d, doc, now);
        r.push(last_reported(doc).map_or("-".to_owned(), |t| ago(now.saturating_sub(t))));
        rows.push(r);
        notes_of.push(notes(doc, now));
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (r, notes) in rows.iter().zip(&notes_of) {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        for n in notes {
            out.push_str(&format!("  ! {n}\n"));
        }
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

    #[test]
    fn a_deployment_waiting_for_its_window_says_so_and_when_it_opens() {
        let doc = json!({"state": {"reported": {
            "status": "downloading",
            "workflow": {"id": "w1"},
            "progress": {"action": "waiting-download",
                         "message": "waiting for the window (opens Sun 2026-12-06 22:00:00 UTC)"},
        }}});
        let all = BTreeMap::from([("gw-1".to_owned(), doc)]);
        let text = table(&all, 0);
        assert!(
            text.contains("waiting for the window (opens Sun 2026-12-06 22:00:00 UTC)"),
            "{text}"
        );
    }

    /// A tag whose deployment.json is missing after an older deployment completed: the row
    /// still names the old deployment, with its age, and the error and the retry come first
    /// under it, newest first.
    #[test]
    fn errors_failures_and_retries_are_shown_under_the_row_newest_first() {
        let now = 10 * 3_600_000;
        let doc = json!({"state": {"reported": {
            "status": "completed", "completedAt": now - 2 * 3_600_000,
            "workflow": {"id": "proj-v1-1"},
            "lastInstallResult": {"resultCode": 700, "extendedResultCodes": "00000000"},
            "lastError": {"message": "http://h/proj/v2/deployment.json answered HTTP 404", "at": now - 60_000},
            "retry": {"tag": "v2", "attempts": 2, "nextAtMs": now + 40_000}
        }}});
        let table = table(&BTreeMap::from([("mpy-1".to_owned(), doc)]), now);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[1].starts_with("mpy-1") && lines[1].contains("completed (2h ago)"),
            "{table}"
        );
        assert_eq!(
            lines[2],
            "  ! error 60s ago: http://h/proj/v2/deployment.json answered HTTP 404"
        );
        assert_eq!(
            lines[3],
            "  ! retry of tag v2: 2 attempt(s) failed; next in 40s"
        );

        let refused = json!({"state": {"reported": {
            "status": "failed", "failedAt": now - 5_000, "workflow": {"id": "proj-v1-3"},
            "lastInstallResult": {"resultCode": 0, "extendedResultCodes": "B010000A",
                "resultDetails": "update test/poll/1.0 is older than 2.0\nsecond line"},
            "lastError": {"message": "older", "at": now - 7_200_000},
            "retry": {"tag": "v1", "attempts": 1, "nextAtMs": null, "note": "refused for what it says"}
        }}});
        let notes = notes(&refused, now);
        assert_eq!(
            notes,
            [
                "failed 5s ago (proj-v1-3): update test/poll/1.0 is older than 2.0",
                "error 2h ago: older",
                "retry of tag v1: 1 attempt(s) failed; refused for what it says",
            ]
        );
        assert!(super::notes(
            &json!({"state": {"reported": {"status": "completed"}}}),
            now
        )
        .is_empty());
    }

    /// A failed deployment's table says which component of a reference step failed, and which
    /// earlier steps the failing step's restore undid.
    #[test]
    fn failed_components_and_undone_steps_are_shown_under_the_row() {
        let now = 10 * 3_600_000;
        let doc = json!({"state": {"reported": {
            "status": "failed", "failedAt": now - 1_000, "workflow": {"id": "wf-9"},
            "lastInstallResult": {"resultCode": 0, "extendedResultCodes": "BA000304",
                "resultDetails": "CONFIG has digest x", "stepResults": {
                    "step_0": {"resultCode": 700, "undoneBy": "step_2"},
                    "step_1": {"resultCode": 700, "undoneBy": "step_2"},
                    "step_2": {"resultCode": 0},
                    "step_3": {"resultCode": 0, "components": {
                        "cam-0": {"resultCode": 700, "extendedResultCodes": "00000000", "resultDetails": ""},
                        "cam-1": {"resultCode": 0, "extendedResultCodes": "30000001", "resultDetails": "no space\nleft"}}}}}
        }}});
        assert_eq!(
            notes(&doc, now),
            [
                "failed 1s ago (wf-9): CONFIG has digest x",
                "step_3, component cam-1: failed 30000001: no space",
                "step_0, step_1 undone by step_2's restore",
            ]
        );
    }

    /// `--wait` ends on the desired workflow's own end: an earlier deployment's `completed`
    /// or a reboot in between does not count.
    #[test]
    fn a_device_is_settled_only_when_it_reports_the_end_of_the_desired_workflow() {
        let doc = |reported: Value| json!({"state": {"desired": {"workflow": {"action": 3, "id": "wf-2"}}, "reported": reported}});
        let r = |id: &str, status: &str| json!({"workflow": {"id": id}, "status": status});
        assert_eq!(settled(&doc(r("wf-1", "completed"))), None);
        assert_eq!(settled(&doc(r("wf-2", "rebooting"))), None);
        assert_eq!(settled(&doc(json!({}))), None);
        assert_eq!(
            settled(&doc(r("wf-2", "completed"))),
            Some(Settled::Succeeded)
        );
        assert_eq!(settled(&doc(r("wf-2", "failed"))), Some(Settled::Failed));
        // A retry of wf-2 (`deploy --retry`): its earlier failure is not the retry's end.
        let retried = json!({"state": {
            "desired": {"workflow": {"action": 3, "id": "wf-2", "retryTimestamp": "t2"}},
            "reported": r("wf-2", "failed")}});
        assert_eq!(settled(&retried), None);
        let mut ended = retried.clone();
        ended["state"]["reported"]["workflow"]["retryTimestamp"] = json!("t2");
        assert_eq!(settled(&ended), Some(Settled::Failed));
        assert_eq!(
            settled(&json!({"state": {"reported": r("wf-1", "failed")}})),
            Some(Settled::Idle)
        );
    }
}
