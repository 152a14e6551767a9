//! ADUC-style results: the root result of a deployment, per-step results keyed `step_<index>`,
//! and the result file written when a deployment ends (or stops for a reboot).

use crate::codes::{result, ExtendedResultCode};
use crate::journal::{ActionRecord, FileRecord, Journal, Status, Unit, UnitKind};
use crate::step::StepResult;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One step's (or component's) result in ADU's reported shape, with sandstep's timings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub result_code: i32,
    pub extended_result_code: i32,
    /// Comma-separated `%08X`.
    pub extended_result_codes: String,
    pub result_details: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// sandstep: a later step's restore undid this step (its key), though this one succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undone_by: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// For a reference step: results per selected component id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, ComponentReport>,
}

/// One component's results for a child update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentReport {
    pub result_code: i32,
    pub extended_result_code: i32,
    pub result_details: String,
    pub step_results: BTreeMap<String, StepReport>,
}

/// The result file (atomic write, ADUC style).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultFile {
    pub workflow_id: String,
    pub update_id: crate::context::UpdateId,
    pub status: Status,
    pub result_code: i32,
    pub extended_result_code: i32,
    pub extended_result_codes: String,
    pub result_details: String,
    pub step_results: BTreeMap<String, StepReport>,
    /// The serialized updateId, on success (as ADU reports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_update_id: Option<String>,
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    pub duration_ms: u64,
}

pub use crate::journal::step_key;

fn codes_list(codes: impl IntoIterator<Item = i32>) -> String {
    let mut seen = Vec::new();
    for c in codes {
        if !seen.contains(&c) {
            seen.push(c);
        }
    }
    if seen.is_empty() {
        seen.push(0);
    }
    seen.iter()
        .map(|c| ExtendedResultCode::from_raw(*c).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn unit_report(u: &Unit) -> StepReport {
    let r = u
        .result
        .clone()
        .unwrap_or_else(|| StepResult::new(result::FAILURE).with_details("not run"));
    StepReport {
        extended_result_codes: codes_list([r.extended_result_code]),
        result_code: r.result_code,
        extended_result_code: r.extended_result_code,
        result_details: r.result_details,
        handler: (!u.handler_id.is_empty()).then(|| u.handler_id.clone()),
        undone_by: u.undone_by.clone(),
        duration_ms: Some(
            u.actions.iter().map(|a| a.duration_ms).sum::<u64>()
                + u.files.iter().map(|f| f.duration_ms).sum::<u64>(),
        ),
        actions: u.actions.clone(),
        files: u.files.clone(),
        components: BTreeMap::new(),
    }
}

/// Folds several results into one: the first failure, else 603 when all were skipped as
/// installed, else the last result.
fn fold(results: &[StepResult]) -> StepResult {
    if let Some(f) = results.iter().find(|r| !r.is_success()) {
        return f.clone();
    }
    if !results.is_empty()
        && results
            .iter()
            .all(|r| r.result_code == result::INSTALL_SKIPPED_UPDATE_ALREADY_INSTALLED)
    {
        return StepResult::new(result::INSTALL_SKIPPED_UPDATE_ALREADY_INSTALLED);
    }
    results
        .last()
        .cloned()
        .unwrap_or_else(|| StepResult::new(result::APPLY_SUCCESS))
}

/// Per-step reports of a journal, keyed `step_<index>`; only units that ran or are done appear.
pub fn step_reports(j: &Journal) -> BTreeMap<String, StepReport> {
    let mut out = BTreeMap::new();
    let mut steps: Vec<u32> = j.units.iter().map(|u| u.step).collect();
    steps.dedup();
    for step in steps {
        let units: Vec<&Unit> = j
            .units
            .iter()
            .filter(|u| u.step == step && u.result.is_some())
            .collect();
        if units.is_empty() {
            continue;
        }
        let report = match units[0].kind {
            UnitKind::Inline | UnitKind::NoMatchingComponents => unit_report(units[0]),
            UnitKind::Child => {
                let mut components: BTreeMap<String, ComponentReport> = BTreeMap::new();
                let mut per_component: BTreeMap<String, Vec<StepResult>> = BTreeMap::new();
                for u in &units {
                    let id = u
                        .component
                        .as_ref()
                        .map(|c| c.id.clone())
                        .unwrap_or_else(|| crate::journal::HOST.to_owned());
                    let entry = components
                        .entry(id.clone())
                        .or_insert_with(|| ComponentReport {
                            result_code: 0,
                            extended_result_code: 0,
                            result_details: String::new(),
                            step_results: BTreeMap::new(),
                        });
                    entry
                        .step_results
                        .insert(step_key(u.child_step.unwrap_or(0)), unit_report(u));
                    per_component
                        .entry(id)
                        .or_default()
                        .push(u.result.clone().expect("filtered on result"));
                }
                for (id, results) in &per_component {
                    let r = fold(results);
                    let c = components.get_mut(id).expect("inserted above");
                    c.result_code = r.result_code;
                    c.extended_result_code = r.extended_result_code;
                    c.result_details = r.result_details;
                }
                let all: Vec<StepResult> = per_component.values().map(|r| fold(r)).collect();
                let r = fold(&all);
                StepReport {
                    result_code: r.result_code,
                    extended_result_code: r.extended_result_code,
                    extended_result_codes: codes_list(all.iter().map(|r| r.extended_result_code)),
                    result_details: r.result_details,
                    handler: None,
                    undone_by: None,
                    actions: Vec::new(),
                    files: Vec::new(),
                    duration_ms: Some(
                        units
                            .iter()
                            .map(|u| unit_report(u).duration_ms.unwrap_or(0))
                            .sum(),
                    ),
                    components,
                }
            }
        };
        out.insert(step_key(step), report);
    }
    out
}

/// The result file for a journal.
pub fn result_file(j: &Journal) -> ResultFile {
    let steps = step_reports(j);
    let root = j.result.clone().unwrap_or_else(|| {
        StepResult::new(result::FAILURE).with_details("deployment did not finish")
    });
    let mut ercs = vec![root.extended_result_code];
    ercs.extend(&j.extra_ercs);
    ercs.extend(
        steps
            .values()
            .filter(|s| s.result_code <= 0)
            .map(|s| s.extended_result_code),
    );
    let installed = (j.status == Status::Succeeded)
        .then(|| serde_json::to_string(&j.update_id).expect("an update id always serializes"));
    let end = j.finished_at_ms.unwrap_or(j.updated_at_ms);
    ResultFile {
        workflow_id: j.workflow_id.clone(),
        update_id: j.update_id.clone(),
        status: j.status,
        result_code: root.result_code,
        extended_result_code: root.extended_result_code,
        extended_result_codes: codes_list(ercs),
        result_details: root.result_details,
        step_results: steps,
        installed_update_id: installed,
        started_at_ms: j.started_at_ms,
        finished_at_ms: j.finished_at_ms,
        duration_ms: end.saturating_sub(j.started_at_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_list_is_unique_upper_hex() {
        assert_eq!(
            codes_list([0x3050_0205, 0, 0x3050_0205]),
            "30500205,00000000"
        );
        assert_eq!(codes_list([]), "00000000");
    }

    #[test]
    fn fold_prefers_failure_then_all_skipped() {
        let ok = StepResult::new(700);
        let skip = StepResult::new(603);
        let bad = StepResult::failure(ExtendedResultCode::from_raw(5), "x");
        assert_eq!(fold(&[ok.clone(), bad.clone()]), bad);
        assert_eq!(fold(&[skip.clone(), skip.clone()]).result_code, 603);
        assert_eq!(fold(&[skip, ok.clone()]), ok);
    }
}
