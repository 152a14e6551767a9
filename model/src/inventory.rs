//! The component inventory, and selecting components by a child update's compatibility.

use crate::context::Component;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};

/// Largest inventory accepted, in bytes.
pub const MAX_INVENTORY_BYTES: usize = 4 << 20;

/// The components attached to this gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub components: Vec<Component>,
}

/// Why an inventory was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("inventory is {0} bytes; the limit is {MAX_INVENTORY_BYTES}")]
    TooLarge(usize),
    #[error("inventory: {0}")]
    Invalid(String),
    #[error("inventory: components[{index}].id: {rule}")]
    BadId { index: usize, rule: String },
}

impl Inventory {
    /// Parses and checks an inventory document.
    pub fn parse(text: &str) -> Result<Inventory, InventoryError> {
        if text.len() > MAX_INVENTORY_BYTES {
            return Err(InventoryError::TooLarge(text.len()));
        }
        let inv: Inventory = serde_json::from_str(crate::json::strip_bom_str(text))
            .map_err(|e| InventoryError::Invalid(e.to_string()))?;
        let mut seen = HashSet::new();
        for (index, c) in inv.components.iter().enumerate() {
            if c.id.is_empty() || c.id.len() > 256 || c.id.chars().any(char::is_control) {
                return Err(InventoryError::BadId {
                    index,
                    rule: "must be 1-256 characters without control characters".into(),
                });
            }
            if !seen.insert(c.id.as_str()) {
                return Err(InventoryError::BadId {
                    index,
                    rule: format!("`{}` appears twice", c.id),
                });
            }
        }
        Ok(inv)
    }

    /// The components matching `compatibility` (a child update's first entry): every key must
    /// equal the component's top-level string field of that name, exactly.
    pub fn select(&self, compatibility: &BTreeMap<String, String>) -> Vec<Component> {
        self.components
            .iter()
            .filter(|c| {
                compatibility
                    .iter()
                    .all(|(k, v)| c.field(k) == Some(v.as_str()))
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INV: &str = r#"{"components":[
        {"id":"cam-1","name":"front","group":"cameras","manufacturer":"contoso","model":"virtual-camera","version":"1.0",
         "properties":{"path":"/var/lib/contoso/cam-1"}},
        {"id":"cam-2","name":"rear","group":"cameras","manufacturer":"contoso","model":"virtual-camera","version":"1.0"},
        {"id":"motor-1","name":"left","group":"motors","manufacturer":"contoso","model":"virtual-motor","version":"2.0"}]}"#;

    #[test]
    fn selection_matches_every_key_exactly() {
        let inv = Inventory::parse(INV).unwrap();
        let pick = |pairs: &[(&str, &str)]| {
            let m = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            inv.select(&m).into_iter().map(|c| c.id).collect::<Vec<_>>()
        };
        assert_eq!(pick(&[("group", "cameras")]), ["cam-1", "cam-2"]);
        assert_eq!(pick(&[("group", "cameras"), ("name", "rear")]), ["cam-2"]);
        assert_eq!(pick(&[("group", "Cameras")]), Vec::<String>::new());
        assert_eq!(pick(&[("color", "red")]), Vec::<String>::new());
        assert_eq!(
            inv.components[0].property_pairs(),
            [("path".to_string(), "/var/lib/contoso/cam-1".to_string())]
        );
    }

    #[test]
    fn duplicate_or_empty_ids_are_refused() {
        let e = Inventory::parse(r#"{"components":[{"id":"a"},{"id":"a"}]}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "inventory: components[1].id: `a` appears twice"
        );
        let e = Inventory::parse(r#"{"components":[{"id":""}]}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "inventory: components[0].id: must be 1-256 characters without control characters"
        );
    }

    #[test]
    fn components_keep_extra_fields_and_are_matched_on_them() {
        // ADU's inventory is free-form: a child update may select on any top-level string.
        let inv = Inventory::parse(
            r#"{"components":[{"id":"a","group":"motors","serial":"S-1","rank":3}]}"#,
        )
        .unwrap();
        let c = &inv.components[0];
        assert_eq!(c.field("serial"), Some("S-1"));
        assert_eq!(c.field("rank"), None, "only strings are matched");
        assert_eq!(c.field("missing"), None);
    }
}
