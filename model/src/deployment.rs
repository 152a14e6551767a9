//! The deployment message (desired state): workflow, manifest, signature and file URLs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest deployment document accepted, in bytes.
pub const MAX_DEPLOYMENT_BYTES: usize = 2 << 20;

/// `workflow.action` values.
pub mod action {
    /// Process the deployment.
    pub const PROCESS_DEPLOYMENT: i32 = 3;
    /// Cancel the running deployment.
    pub const CANCEL: i32 = 255;
}

/// `workflow`: what to do, and the deployment's identity. Other members are ignored, as ADU's
/// agent ignores them (it reads `action`, `id` and `retryTimestamp` by name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workflow {
    pub action: i32,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_timestamp: Option<String>,
}

/// A deployment document as the cloud (or `sandstep manifest sign`) writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub workflow: Workflow,
    /// The manifest, as the exact JSON text that was signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_manifest: Option<String>,
    /// Compact JWS over the manifest's sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_manifest_signature: Option<String>,
    /// File id -> URL.
    #[serde(default)]
    pub file_urls: BTreeMap<String, String>,
    /// ADU's `rootKeyPackageUrl`: a root key package to check and take before the manifest's
    /// signature is (ADU's `workflow_parse_peek_unprotected_workflow_properties` reads it beside
    /// `workflow`). Unsigned, like `fileUrls`: the package is trusted on its own signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_key_package_url: Option<String>,
}

/// Why a deployment document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentError {
    #[error("deployment document is {0} bytes; the limit is {MAX_DEPLOYMENT_BYTES}")]
    TooLarge(usize),
    #[error("deployment document: {0}")]
    Invalid(String),
    #[error("deployment document: {field}: {rule}")]
    Field { field: &'static str, rule: String },
}

impl Deployment {
    /// Parses and checks a deployment document.
    pub fn parse(text: &str) -> Result<Deployment, DeploymentError> {
        if text.len() > MAX_DEPLOYMENT_BYTES {
            return Err(DeploymentError::TooLarge(text.len()));
        }
        let d: Deployment = serde_json::from_str(crate::json::strip_bom_str(text))
            .map_err(|e| DeploymentError::Invalid(e.to_string()))?;
        d.check()?;
        Ok(d)
    }

    /// Checks the fields a deployment needs.
    pub fn check(&self) -> Result<(), DeploymentError> {
        let id = &self.workflow.id;
        if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
            return Err(DeploymentError::Field {
                field: "workflow.id",
                rule: "must be 1-256 characters without control characters".into(),
            });
        }
        match self.workflow.action {
            action::PROCESS_DEPLOYMENT => {
                if self.update_manifest.is_none() {
                    return Err(DeploymentError::Field {
                        field: "updateManifest",
                        rule: "is required when workflow.action is 3".into(),
                    });
                }
            }
            action::CANCEL => {}
            other => {
                return Err(DeploymentError::Field {
                    field: "workflow.action",
                    rule: format!("{other} is not supported; expected 3 (process) or 255 (cancel)"),
                })
            }
        }
        for (field, named, url) in self.urls() {
            if !(is_http(url) || url.starts_with("file:///")) {
                return Err(DeploymentError::Field {
                    field,
                    rule: format!("{named}only http(s) and file URLs are supported, got `{url}`"),
                });
            }
        }
        Ok(())
    }

    /// Every URL the document names: (field, how the message names the entry, URL).
    fn urls(&self) -> impl Iterator<Item = (&'static str, String, &str)> {
        let root = self
            .root_key_package_url
            .iter()
            .map(|u| ("rootKeyPackageUrl", String::new(), u.as_str()));
        let files = self
            .file_urls
            .iter()
            .map(|(fid, u)| ("fileUrls", format!("`{fid}`: "), u.as_str()));
        root.chain(files)
    }

    /// The stricter check for a document from the network (MQTT, HTTP polling): file URLs are
    /// refused, since they would have the agent (root) read local paths the sender chose.
    /// Local files reach a deployment only through the CLI (`sandstep run --files`).
    pub fn check_remote(&self) -> Result<(), DeploymentError> {
        self.check()?;
        for (field, named, url) in self.urls() {
            if !is_http(url) {
                return Err(DeploymentError::Field {
                    field,
                    rule: format!(
                        "{named}a deployment from the network may only name http(s) URLs"
                    ),
                });
            }
        }
        Ok(())
    }
}

fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_document_parses() {
        let d = Deployment::parse(
            r#"{"workflow":{"action":3,"id":"wf-1","retryTimestamp":"2026-01-01T00:00:00Z"},
                "updateManifest":"{}","updateManifestSignature":"a.b.c",
                "fileUrls":{"f1":"http://127.0.0.1/f1"}}"#,
        )
        .unwrap();
        assert_eq!(d.workflow.id, "wf-1");
        assert_eq!(d.file_urls["f1"], "http://127.0.0.1/f1");
    }

    #[test]
    fn bad_documents_name_the_field() {
        let e = Deployment::parse(r#"{"workflow":{"action":7,"id":"x"},"updateManifest":"{}"}"#)
            .unwrap_err();
        assert_eq!(e.to_string(), "deployment document: workflow.action: 7 is not supported; expected 3 (process) or 255 (cancel)");
        let e = Deployment::parse(r#"{"workflow":{"action":3,"id":"x"}}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "deployment document: updateManifest: is required when workflow.action is 3"
        );
        let e = Deployment::parse(r#"{"workflow":{"action":3,"id":"x"},"updateManifest":"{}","fileUrls":{"a":"ftp://h/a"}}"#).unwrap_err();
        assert_eq!(e.to_string(), "deployment document: fileUrls: `a`: only http(s) and file URLs are supported, got `ftp://h/a`");
        let e = Deployment::parse(r#"{"workflow":{"action":3,"id":""},"updateManifest":"{}"}"#)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "deployment document: workflow.id: must be 1-256 characters without control characters"
        );
        assert!(matches!(
            Deployment::parse("[]"),
            Err(DeploymentError::Invalid(_))
        ));
    }

    #[test]
    fn a_root_key_package_url_from_the_network_must_be_http() {
        let doc = |url: &str| {
            format!(
                r#"{{"workflow":{{"action":3,"id":"x"}},"updateManifest":"{{}}","rootKeyPackageUrl":"{url}"}}"#
            )
        };
        let local = Deployment::parse(&doc("file:///etc/sandstep/rootkeys.json")).unwrap();
        assert_eq!(
            local.check_remote().unwrap_err().to_string(),
            "deployment document: rootKeyPackageUrl: a deployment from the network may only name http(s) URLs"
        );
        let e = Deployment::parse(&doc("ftp://h/rk.json")).unwrap_err();
        assert_eq!(e.to_string(), "deployment document: rootKeyPackageUrl: only http(s) and file URLs are supported, got `ftp://h/rk.json`");
        Deployment::parse(&doc("https://h/rk.json"))
            .unwrap()
            .check_remote()
            .unwrap();
    }
}
