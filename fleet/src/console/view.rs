//! What the console's pages show, from the store's records and rollouts: pure functions,
//! documents in, rows out (the templates only lay them out, escaped).

use crate::record::Record;
use crate::rollout::{PhaseCounts, Rollout};
use sandstep_model::status::ago;
use serde_json::{Map, Value};

/// Devices per page of the fleet page.
pub const PER_PAGE: usize = 50;

/// One device's row on the fleet page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub id: String,
    pub groups: String,
    pub installed: String,
    /// `completed`, `downloading`, ..., or `waiting for the window (opens ...)`.
    pub status: String,
    pub workflow: String,
    pub last_seen: String,
    pub failed: bool,
    /// Lower-cased id, groups, installed update and status: what search looks in.
    haystack: String,
}

fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The row of device `id`, as of `now` (ms).
pub fn device_row(id: &str, r: &Record, now: u64) -> DeviceRow {
    let rep = &r.reported;
    let groups = rep
        .get("groups")
        .and_then(Value::as_array)
        .map(|g| {
            g.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let status = match rep.get("progress").and_then(|p| p.get("message")) {
        Some(Value::String(m)) if progress_is_waiting(rep) => m.clone(),
        _ => text(rep.get("status")),
    };
    let installed = text(rep.get("installedUpdateId"));
    let workflow = text(rep.get("workflow").and_then(|w| w.get("id")));
    let haystack = format!("{id}\n{groups}\n{installed}\n{status}\n{workflow}").to_lowercase();
    DeviceRow {
        id: id.to_owned(),
        failed: rep.get("status").and_then(Value::as_str) == Some("failed"),
        groups,
        installed,
        status,
        workflow,
        last_seen: seen(r.reported_ms, now),
        haystack,
    }
}

fn progress_is_waiting(rep: &Map<String, Value>) -> bool {
    rep.get("progress")
        .and_then(|p| p.get("action"))
        .and_then(Value::as_str)
        .is_some_and(|a| a.starts_with("waiting-"))
}

fn seen(reported_ms: u64, now: u64) -> String {
    if reported_ms == 0 {
        "never".into()
    } else {
        ago(now.saturating_sub(reported_ms))
    }
}

/// One page of the rows matching `query` (every word, case-insensitive, in the id, groups,
/// installed update, status or workflow), and how many matched.
pub fn search<'r>(rows: &'r [DeviceRow], query: &str, page: usize) -> (Vec<&'r DeviceRow>, usize) {
    let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
    let matching = rows
        .iter()
        .filter(|r| words.iter().all(|w| r.haystack.contains(w.as_str())));
    let mut total = 0;
    let mut shown = Vec::with_capacity(PER_PAGE);
    for r in matching {
        if total / PER_PAGE == page {
            shown.push(r);
        }
        total += 1;
    }
    (shown, total)
}

/// One line of a device's page: a label and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub label: String,
    pub value: String,
    pub failed: bool,
}

/// A device's page: its facts, step results, the timeline of its stages, its file sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub row: DeviceRow,
    pub facts: Vec<Line>,
    pub steps: Vec<Line>,
    pub timeline: Vec<Line>,
    pub file_sets: Vec<Line>,
}

/// The stages reported with a `<stage>At` time, in the order ADU's agent goes through them.
const STAGES: [&str; 6] = [
    "standBy",
    "downloading",
    "applying",
    "rebooting",
    "completed",
    "failed",
];

/// The page of device `id`.
pub fn device_view(id: &str, r: &Record, now: u64) -> DeviceView {
    let rep = &r.reported;
    let line = |label: &str, value: String| Line {
        label: label.into(),
        value,
        failed: false,
    };
    let mut facts = vec![
        line("state (ADU)", text(rep.get("state"))),
        line("progress", progress_text(rep.get("progress"))),
    ];
    if let Some(l) = rep.get("lastInstallResult") {
        facts.push(result_line("last result", l));
    }
    if let Some(e) = rep.get("lastError").filter(|e| !e.is_null()) {
        facts.push(Line {
            label: "last error".into(),
            value: text(e.get("message")),
            failed: true,
        });
    }
    let steps = rep
        .get("lastInstallResult")
        .and_then(|l| l.get("stepResults"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(key, s)| result_line(key, s))
        .collect();
    let mut timeline: Vec<(u64, Line)> = STAGES
        .iter()
        .filter_map(|stage| {
            let at = rep.get(&format!("{stage}At"))?.as_u64()?;
            Some((at, line(stage, ago(now.saturating_sub(at)))))
        })
        .collect();
    timeline.sort_by_key(|(at, _)| *at);
    let file_sets = rep
        .get("fileSets")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, digests)| line(name, digests.to_string()))
        .collect();
    DeviceView {
        row: device_row(id, r, now),
        facts,
        steps,
        timeline: timeline.into_iter().map(|(_, l)| l).collect(),
        file_sets,
    }
}

/// A result (`resultCode`, `extendedResultCodes`, `resultDetails`) as one line, marked failed
/// when its code is not above 0 (ADU's failure codes).
fn result_line(label: &str, r: &Value) -> Line {
    Line {
        label: label.to_owned(),
        value: format!(
            "{} {}: {}",
            text(r.get("resultCode")),
            text(r.get("extendedResultCodes")),
            text(r.get("resultDetails"))
        ),
        failed: r
            .get("resultCode")
            .and_then(Value::as_i64)
            .is_some_and(|c| c <= 0),
    }
}

fn progress_text(p: Option<&Value>) -> String {
    let Some(p) = p.filter(|p| p.is_object()) else {
        return "-".into();
    };
    let part = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("");
    let pct = p
        .get("percent")
        .map(|v| format!("{v}%"))
        .unwrap_or_default();
    let words = [part("unit"), part("action"), &pct, part("message")];
    words
        .iter()
        .filter(|w| !w.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A rollout's row and its phases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutView {
    pub id: String,
    pub group: String,
    pub update_id: String,
    pub state: String,
    pub reason: String,
    /// `phase 2 of 4`.
    pub phase: String,
    pub phases: Vec<PhaseLine>,
    pub can_pause: bool,
    pub can_resume: bool,
    pub can_abort: bool,
}

/// One phase's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseLine {
    pub phase: usize,
    pub share: String,
    pub devices: u64,
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: String,
    pub any_failed: bool,
}

/// The view of `r` with its phases' counts.
pub fn rollout_view(r: &Rollout, phases: &[PhaseCounts]) -> RolloutView {
    use crate::rollout::State;
    let state = r.progress.state;
    RolloutView {
        id: r.id.clone(),
        group: r.group.clone(),
        update_id: r.update_id.clone(),
        state: state.name().into(),
        reason: r.progress.reason.clone().unwrap_or_default(),
        phase: format!("phase {} of {}", r.progress.phase + 1, r.phases.len()),
        phases: phases
            .iter()
            .map(|p| PhaseLine {
                phase: p.phase + 1,
                share: format!("{}%", p.share_percent),
                devices: p.devices,
                pending: p.pending + p.waiting,
                running: p.running,
                succeeded: p.succeeded,
                failed: p
                    .failed
                    .iter()
                    .map(|(code, n)| format!("{n} ({code})"))
                    .collect::<Vec<_>>()
                    .join(", "),
                any_failed: !p.failed.is_empty(),
            })
            .collect(),
        can_pause: state == State::Running,
        can_resume: state == State::Paused,
        can_abort: !matches!(state, State::Aborted | State::Finished),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(reported: Value, reported_ms: u64) -> Record {
        Record {
            desired: Map::new(),
            reported: reported.as_object().unwrap().clone(),
            version: 1,
            updated_ms: reported_ms,
            reported_ms,
            reported_order: Map::new(),
        }
    }

    #[test]
    fn search_matches_every_word_anywhere_in_the_row_and_pages_the_matches() {
        let rows: Vec<DeviceRow> = (0..120)
            .map(|i| {
                let group = if i % 2 == 0 { "north" } else { "south" };
                let r = record(json!({"groups": [group], "status": "completed"}), 1);
                device_row(&format!("gw-{i:03}"), &r, 2)
            })
            .collect();
        let (page, total) = search(&rows, "", 0);
        assert_eq!((page.len(), total), (PER_PAGE, 120));
        let (page, total) = search(&rows, "NORTH gw-01", 0);
        assert_eq!(total, 5, "gw-010..gw-018, the even ones");
        assert_eq!(page[0].id, "gw-010");
        let (page, total) = search(&rows, "south", 1);
        assert_eq!((page.len(), total), (10, 60));
        assert_eq!(page[0].id, "gw-101");
        assert_eq!(search(&rows, "nothing-like-it", 0).1, 0);
    }

    #[test]
    fn a_waiting_device_shows_when_its_window_opens_and_a_failed_one_is_marked() {
        let waiting = record(
            json!({"status": "downloading", "progress": {"action": "waiting-download",
                   "message": "waiting for the window (opens Sun 2026-12-06 22:00:00 UTC)"}}),
            1,
        );
        assert_eq!(
            device_row("gw", &waiting, 1).status,
            "waiting for the window (opens Sun 2026-12-06 22:00:00 UTC)"
        );
        let failed = record(json!({"status": "failed"}), 0);
        let row = device_row("gw", &failed, 5);
        assert!(row.failed);
        assert_eq!(row.last_seen, "never");
    }

    #[test]
    fn a_devices_page_has_its_steps_its_timeline_in_order_and_its_file_sets() {
        let r = record(
            json!({
                "status": "failed", "state": 255,
                "downloadingAt": 1_000, "failedAt": 9_000, "standByAt": 500,
                "lastInstallResult": {"resultCode": 0, "extendedResultCodes": "B0100002",
                    "resultDetails": "<script>x</script>",
                    "stepResults": {"step_0": {"resultCode": 0, "extendedResultCodes": "B0100002",
                        "resultDetails": "download failed"}}},
                "fileSets": {"config": {"app.conf": "ab12"}},
            }),
            9_000,
        );
        let v = device_view("gw-1", &r, 10_000);
        let stages: Vec<&str> = v.timeline.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(stages, ["standBy", "downloading", "failed"]);
        assert_eq!(v.steps.len(), 1);
        assert!(v.steps[0].failed && v.steps[0].value.contains("download failed"));
        let last = v.facts.iter().find(|l| l.label == "last result").unwrap();
        assert!(
            last.failed && last.value.contains("<script>"),
            "escaped by the template"
        );
        assert_eq!(v.file_sets[0].label, "config");
    }
}
