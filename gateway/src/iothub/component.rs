//! The twin documents of ADU's `deviceUpdate` component and of the device information component,
//! in the shapes ADU's agent writes and reads them. Pure functions.
//!
//! ADU sources (Azure/iot-hub-device-update) for each shape:
//! - reported `agent`: `GetReportingJsonValue` in src/agent/adu_core_interface/src/
//!   adu_core_interface.c (`state`, `workflow`, `installedUpdateId`, `lastInstallResult` with
//!   `stepResults` keyed `step_<i>`, `extendedResultCodes` as `%08X`), wrapped by
//!   `PnP_CreateReportedProperty` (src/agent/pnp_helper/src/pnp_protocol.c) as
//!   `{"deviceUpdate":{"__t":"c","agent":...}}`;
//! - which states reach the cloud: `AgentOrchestration_ShouldNotReportToCloud`
//!   (src/agent_orchestration/src/agent_orchestration.c): only DeploymentInProgress (6), Idle (0)
//!   and Failed (255);
//! - the `service` acknowledgement: `OrchestratorUpdateCallback` (adu_core_interface.c) nulls
//!   `updateManifestSignature` and `fileUrls` "to reduce TWIN size" and sends it through
//!   `PnP_CreateReportedPropertyWithStatus` with `ac` 200, `ad` "" and `av` the desired version;
//! - the startup message: `ReportStartupMsg` (adu_core_interface.c) with `deviceProperties`
//!   (src/agent/adu_core_interface/src/device_properties.c: `manufacturer`, `model`, additional
//!   properties, `interfaceId` null, `contractModelId`, `aduVer`) and `compatPropertyNames`
//!   (src/agent/adu_core_interface/src/startup_msg_helper.c, default "manufacturer,model");
//! - `deviceInformation`: src/agent/device_info_interface/src/device_info_interface.c and
//!   src/platform_layers/linux_platform_layer/src/linux_device_info_exports.cpp.

use serde_json::{json, Map, Value};

/// ADU's component and its two properties (adu_core_interface.c `g_aduPnPComponentName`,
/// `g_aduPnPComponentAgentPropertyName`, `g_aduPnPComponentServicePropertyName`).
pub const COMPONENT: &str = "deviceUpdate";
pub const AGENT: &str = "agent";
pub const SERVICE: &str = "service";
/// device_properties.c `ADUC_DEVICEPROPERTIES_DEVICEUPDATE_CONTRACT_MODEL_ID`.
pub const CONTRACT_MODEL_ID: &str = "dtmi:azure:iot:deviceUpdateContractModel;3";
/// startup_msg_helper.c `DEFAULT_COMPAT_PROPERTY_NAMES_VALUE`.
pub const DEFAULT_COMPAT_PROPERTY_NAMES: &str = "manufacturer,model";
/// device_info_interface.c `g_deviceInfoPnPComponentName`.
pub const DEVICE_INFORMATION: &str = "deviceInformation";

/// ADU's `ADUC_Result` values the reports use (src/adu_types/inc/aduc/types/adu_core.h).
pub mod result {
    pub const FAILURE: i32 = 0;
    pub const IDLE_SUCCESS: i32 = 200;
    pub const DEPLOYMENT_IN_PROGRESS_SUCCESS: i32 = 400;
}

/// The reported states ADU sends to the cloud (`ADUCITF_State`).
const IDLE: i64 = 0;
const DEPLOYMENT_IN_PROGRESS: i64 = 6;
const FAILED: i64 = 255;

/// `{"<component>":{"__t":"c",<fields>}}`: a reported patch of a component.
pub fn component_patch(component: &str, fields: Map<String, Value>) -> Value {
    let mut inner = Map::new();
    inner.insert("__t".into(), Value::from("c"));
    inner.extend(fields);
    json!({ component: inner })
}

/// A `deviceUpdate.agent` patch.
pub fn agent_patch(agent: Map<String, Value>) -> Value {
    let mut fields = Map::new();
    fields.insert(AGENT.into(), Value::Object(agent));
    component_patch(COMPONENT, fields)
}

/// The `agent` properties ADU's agent would report for one of sandstep's reported patches
/// (`reported`: the fields of `state.reported`, see `agent::reported`), or `None` when ADU's agent
/// reports nothing at that point (a download, install or apply starting, progress, a reboot or
/// restart pending: `AgentOrchestration_ShouldNotReportToCloud`).
pub fn agent_report(reported: &Map<String, Value>) -> Option<Map<String, Value>> {
    let refused = reported
        .get("lastError")
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str);
    let state = match (reported.get("state").and_then(Value::as_i64), refused) {
        // A refused desired document: ADU's `ADUC_Workflow_HandlePropertyUpdate` reports
        // Failed with the parse result when `workflow_init` fails.
        (None, Some(_)) => FAILED,
        (Some(s @ (IDLE | DEPLOYMENT_IN_PROGRESS | FAILED)), _) => s,
        _ => return None,
    };
    let mut agent = Map::new();
    agent.insert("state".into(), Value::from(state));
    if let Some(w) = reported.get("workflow").filter(|w| w.is_object()) {
        agent.insert("workflow".into(), workflow(w));
    }
    if let Some(Value::String(id)) = reported.get("installedUpdateId") {
        agent.insert("installedUpdateId".into(), Value::from(id.clone()));
    }
    let last = match reported.get("lastInstallResult") {
        Some(r) if state != DEPLOYMENT_IN_PROGRESS => install_result(r),
        _ => {
            let code = match (state, refused) {
                (DEPLOYMENT_IN_PROGRESS, _) => result::DEPLOYMENT_IN_PROGRESS_SUCCESS,
                (FAILED, _) => result::FAILURE,
                _ => result::IDLE_SUCCESS,
            };
            let mut r = outcome(i64::from(code), "00000000", refused.unwrap_or(""));
            // "If reporting ... DeploymentInProgress state, we must clear previous
            // 'stepResults'" (GetReportingJsonValue).
            if state == DEPLOYMENT_IN_PROGRESS {
                r.insert("stepResults".into(), Value::Null);
            }
            r
        }
    };
    agent.insert("lastInstallResult".into(), Value::Object(last));
    Some(agent)
}

/// `workflow` as ADU reports it: `action`, `id`, and `retryTimestamp` when there is one
/// (`set_workflow_properties`).
fn workflow(w: &Value) -> Value {
    let mut out = Map::new();
    for key in ["action", "id", "retryTimestamp"] {
        match w.get(key) {
            Some(Value::String(s)) if key == "retryTimestamp" && s.is_empty() => {}
            Some(Value::Null) | None => {}
            Some(v) => {
                out.insert(key.into(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// `resultCode`, `extendedResultCodes`, `resultDetails` (`null` when there are none, as ADU's
/// `_json_object_set_update_result` writes a missing detail).
fn outcome(code: i64, ercs: &str, details: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("resultCode".into(), Value::from(code));
    m.insert("extendedResultCodes".into(), Value::from(ercs));
    let details = if details.is_empty() {
        Value::Null
    } else {
        Value::from(details)
    };
    m.insert("resultDetails".into(), details);
    m
}

/// `lastInstallResult` with only ADU's members (sandstep's per-step `restore` is left out).
fn install_result(r: &Value) -> Map<String, Value> {
    let pick = |v: &Value| {
        outcome(
            v.get("resultCode").and_then(Value::as_i64).unwrap_or(0),
            v.get("extendedResultCodes")
                .and_then(Value::as_str)
                .unwrap_or("00000000"),
            v.get("resultDetails").and_then(Value::as_str).unwrap_or(""),
        )
    };
    let mut out = pick(r);
    if let Some(steps) = r.get("stepResults").and_then(Value::as_object) {
        if !steps.is_empty() {
            let steps: Map<String, Value> = steps
                .iter()
                .map(|(k, v)| {
                    let mut step = pick(v);
                    // ADU reports one code per step (the child workflow's); sandstep lists one
                    // per component of a reference step: the first failure's stands for them.
                    let one = one_code(step["extendedResultCodes"].as_str().unwrap_or(""));
                    step.insert("extendedResultCodes".into(), Value::from(one));
                    (k.clone(), Value::Object(step))
                })
                .collect();
            out.insert("stepResults".into(), Value::Object(steps));
        }
    }
    out
}

/// The first non-zero code of a `%08X` list, else `00000000`.
fn one_code(list: &str) -> &str {
    list.split(',')
        .find(|c| c.chars().any(|ch| ch != '0'))
        .unwrap_or("00000000")
}

/// The `service` acknowledgement: the desired value with its signature and file URLs nulled,
/// status 200, an empty description and the desired version.
pub fn service_ack(service: &Value, version: u64) -> Value {
    let mut value = service.clone();
    if let Some(o) = value.as_object_mut() {
        o.insert("updateManifestSignature".into(), Value::Null);
        o.insert("fileUrls".into(), Value::Null);
    }
    let mut fields = Map::new();
    fields.insert(
        SERVICE.into(),
        json!({"value": value, "ac": 200, "ad": "", "av": version}),
    );
    component_patch(COMPONENT, fields)
}

/// What the device says about itself when it connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProperties {
    /// `manufacturer`, `model` and any other compatibility property, in this order.
    pub properties: Vec<(String, String)>,
    /// `compatPropertyNames`: which of them updates must match.
    pub compat_property_names: String,
    /// `aduVer`: `<builder>;agent/<version>` (`ADUC_BUILDER_VERSION`).
    pub agent_version: String,
}

/// The startup `agent` patch (`ReportStartupMsg`).
pub fn startup(p: &DeviceProperties) -> Map<String, Value> {
    let mut props = Map::new();
    for (k, v) in &p.properties {
        props.insert(k.clone(), Value::from(v.clone()));
    }
    props.insert("interfaceId".into(), Value::Null);
    props.insert("contractModelId".into(), Value::from(CONTRACT_MODEL_ID));
    props.insert("aduVer".into(), Value::from(p.agent_version.clone()));
    let mut agent = Map::new();
    agent.insert("deviceProperties".into(), Value::Object(props));
    agent.insert(
        "compatPropertyNames".into(),
        Value::from(p.compat_property_names.clone()),
    );
    agent
}

/// The desired `service` value and the desired version it came with: from a whole twin
/// (`{"desired": {...}, "reported": {...}}`) or from a desired patch. `None` when the document
/// has no `deviceUpdate.service` (another component's change). pnp_protocol.c `GetDesiredJson`,
/// `VisitComponentProperties`: the version is the desired document's `$version`.
pub fn desired_service(doc: &Value, whole_twin: bool) -> Option<(Value, Option<u64>)> {
    let desired = if whole_twin { doc.get("desired")? } else { doc };
    let service = desired.get(COMPONENT)?.get(SERVICE)?.clone();
    let version = desired.get("$version").and_then(Value::as_u64);
    Some((service, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn progress_and_intermediate_states_are_not_reported_as_adus_agent_does_not() {
        assert_eq!(
            agent_report(&map(json!({"state": 1, "progress": {}}))),
            None
        );
        assert_eq!(
            agent_report(&map(json!({"state": 5, "pending": "reboot"}))),
            None
        );
        assert_eq!(
            agent_report(&map(json!({"progress": {"percent": 5}}))),
            None
        );
    }

    #[test]
    fn the_acknowledged_deployment_is_in_progress_with_step_results_cleared() {
        let r = agent_report(&map(json!({
            "workflow": {"action": 3, "id": "w1"}, "state": 6, "status": "downloading",
            "lastError": null
        })))
        .unwrap();
        assert_eq!(
            Value::Object(r),
            json!({"state": 6, "workflow": {"action": 3, "id": "w1"},
                   "lastInstallResult": {"resultCode": 400, "extendedResultCodes": "00000000",
                                         "resultDetails": null, "stepResults": null}})
        );
    }

    #[test]
    fn a_finished_deployment_reports_adus_members_only() {
        let r = agent_report(&map(json!({
            "workflow": {"action": 3, "id": "w1", "retryTimestamp": "2022-01-01"},
            "state": 0, "status": "completed", "installedUpdateId": "{\"provider\":\"p\"}",
            "lastInstallResult": {"resultCode": 700, "extendedResultCodes": "00000000",
                "resultDetails": "", "stepResults": {"step_0": {"resultCode": 700,
                "extendedResultCodes": "00000000", "resultDetails": "ok",
                "restore": {"resultCode": 1, "resultDetails": ""}}}},
            "fileSets": {}, "pending": null
        })))
        .unwrap();
        assert_eq!(
            Value::Object(r),
            json!({"state": 0, "workflow": {"action": 3, "id": "w1", "retryTimestamp": "2022-01-01"},
                   "installedUpdateId": "{\"provider\":\"p\"}",
                   "lastInstallResult": {"resultCode": 700, "extendedResultCodes": "00000000",
                       "resultDetails": null, "stepResults": {"step_0": {"resultCode": 700,
                       "extendedResultCodes": "00000000", "resultDetails": "ok"}}}})
        );
    }

    #[test]
    fn a_reference_steps_codes_per_component_are_reported_as_one_code() {
        let r = agent_report(&map(json!({
            "state": 255,
            "lastInstallResult": {"resultCode": 0, "extendedResultCodes": "80000001,30000001",
                "resultDetails": "x", "stepResults": {"step_0": {"resultCode": 0,
                "extendedResultCodes": "00000000,30000001", "resultDetails": ""}}}
        })))
        .unwrap();
        assert_eq!(
            r["lastInstallResult"]["extendedResultCodes"],
            "80000001,30000001"
        );
        assert_eq!(
            r["lastInstallResult"]["stepResults"]["step_0"]["extendedResultCodes"],
            "30000001"
        );
    }

    #[test]
    fn a_refused_document_is_reported_failed_with_the_reason() {
        let r = agent_report(&map(json!({
            "workflow": {"action": 3, "id": "w2"},
            "lastError": {"message": "no manifest", "at": 5}
        })))
        .unwrap();
        assert_eq!(r["state"], 255);
        assert_eq!(r["lastInstallResult"]["resultCode"], 0);
        assert_eq!(r["lastInstallResult"]["resultDetails"], "no manifest");
    }

    #[test]
    fn the_service_ack_drops_signature_and_urls_and_carries_the_version() {
        let service = json!({"workflow": {"action": 3, "id": "w"}, "updateManifest": "{}",
                             "updateManifestSignature": "sig", "fileUrls": {"f": "http://x"}});
        assert_eq!(
            service_ack(&service, 7),
            json!({"deviceUpdate": {"__t": "c", "service": {
                "value": {"workflow": {"action": 3, "id": "w"}, "updateManifest": "{}",
                          "updateManifestSignature": null, "fileUrls": null},
                "ac": 200, "ad": "", "av": 7}}})
        );
    }

    #[test]
    fn startup_names_the_contract_model_and_compat_properties() {
        let p = DeviceProperties {
            properties: vec![
                ("manufacturer".into(), "contoso".into()),
                ("model".into(), "v1".into()),
            ],
            compat_property_names: DEFAULT_COMPAT_PROPERTY_NAMES.into(),
            agent_version: "sandstep;agent/1.0".into(),
        };
        assert_eq!(
            agent_patch(startup(&p)),
            json!({"deviceUpdate": {"__t": "c", "agent": {
                "deviceProperties": {"manufacturer": "contoso", "model": "v1", "interfaceId": null,
                    "contractModelId": "dtmi:azure:iot:deviceUpdateContractModel;3",
                    "aduVer": "sandstep;agent/1.0"},
                "compatPropertyNames": "manufacturer,model"}}})
        );
    }

    #[test]
    fn the_service_is_read_from_a_whole_twin_and_from_a_patch() {
        let twin = json!({"desired": {"deviceUpdate": {"__t": "c", "service": {"workflow": {}}},
                                      "$version": 4}, "reported": {}});
        assert_eq!(
            desired_service(&twin, true),
            Some((json!({"workflow": {}}), Some(4)))
        );
        let patch = json!({"deviceUpdate": {"__t": "c", "service": {"a": 1}}, "$version": 9});
        assert_eq!(
            desired_service(&patch, false),
            Some((json!({"a": 1}), Some(9)))
        );
        assert_eq!(
            desired_service(&json!({"other": {}, "$version": 2}), false),
            None
        );
    }
}
