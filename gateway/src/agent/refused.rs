//! Why the agent does not run what it was sent: each is reported as `lastError` and the agent
//! carries on. One message each, cause included once.

use sandstep_model::deployment::DeploymentError;
use std::path::PathBuf;

/// Desired state (or an interrupted deployment) that is not run.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("desired document is {bytes} bytes; the limit is {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("desired document is not JSON: {cause}")]
    NotJson { cause: serde_json::Error },
    #[error("desired document has no `state` object")]
    NoState,
    #[error("deployment: {cause}")]
    Malformed { cause: serde_json::Error },
    #[error(transparent)]
    Unfit(#[from] DeploymentError),
    #[error("updateManifest is missing")]
    NoManifest,
    #[error("inventory {path}: {cause}")]
    Inventory { path: PathBuf, cause: String },
}

/// What went wrong fetching `url` from the HTTP-polling server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// With its causes (reqwest keeps a refused redirect's reason in its source).
    #[error("{url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: the body is over {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url}: not UTF-8")]
    NotUtf8 { url: String },
    #[error("{url}: version tag `{tag}` must be 1-64 characters of [A-Za-z0-9._-]")]
    BadTag { url: String, tag: String },
    #[error("{url}: {cause}")]
    BadDeployment { url: String, cause: DeploymentError },
}
