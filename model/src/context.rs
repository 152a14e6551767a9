//! The data a handler call is given: update id, step files, the selected component.

use serde::{Deserialize, Serialize};

/// An update's identity (`updateId`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateId {
    pub provider: String,
    pub name: String,
    pub version: String,
}

impl std::fmt::Display for UpdateId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.provider, self.name, self.version)
    }
}

/// A verified step file as a handler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFile {
    pub id: String,
    pub name: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// A component from the inventory (`components[]`). Fields beyond ADU's named ones are kept in
/// `extra`: ADU's inventory is free-form JSON, and a child update may select components on any
/// top-level string field (ADU's `contoso_component_enumerator.cpp` matches every compatibility
/// key against the component object as it is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub manufacturer: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub properties: serde_json::Map<String, serde_json::Value>,
    /// Other top-level fields, as in the inventory.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Component {
    /// The top-level string field `key` (`id`, `name`, `group`, ...), for compatibility matching.
    pub fn field(&self, key: &str) -> Option<&str> {
        Some(match key {
            "id" => &self.id,
            "name" => &self.name,
            "group" => &self.group,
            "manufacturer" => &self.manufacturer,
            "model" => &self.model,
            "version" => &self.version,
            other => return self.extra.get(other).and_then(serde_json::Value::as_str),
        })
    }

    /// `properties.<path>` as a string, `path` dotted through nested objects (parson's
    /// `json_object_dotget_string`, which ADU's script handler uses for `--component-prop-val`).
    pub fn property_path(&self, path: &str) -> Option<&str> {
        let mut parts = path.split('.');
        let mut value = self.properties.get(parts.next()?)?;
        for part in parts {
            value = value.as_object()?.get(part)?;
        }
        value.as_str()
    }

    /// Properties as (name, text) pairs; non-string values are given as JSON text.
    pub fn property_pairs(&self) -> Vec<(String, String)> {
        self.properties
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    }
}

/// Everything a lifecycle call is told about its step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepContext {
    pub workflow_id: String,
    pub update_id: UpdateId,
    pub handler_id: String,
    pub step_index: u32,
    pub level: u32,
    /// `handlerProperties` (an object; `{}` when absent).
    pub handler_properties: serde_json::Map<String, serde_json::Value>,
    pub files: Vec<StepFile>,
    pub component: Option<Component>,
}

impl StepContext {
    /// `handlerProperties.installedCriteria` when it is a string.
    pub fn installed_criteria(&self) -> Option<&str> {
        self.handler_properties.get("installedCriteria")?.as_str()
    }
}
