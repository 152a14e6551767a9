//! Trust: who may run code on the gateway, and which manifests it accepts.
//!
//! - [`handler_sig`]: handler components signed in the wasmsign2 format, verified against the
//!   trusted handler keys (`<data-dir>/trust/handlers/*.pub` and configured system dirs).
//! - [`manifest_sig`]: ADU's manifest signature (JWS, signing key chained to a root key),
//!   verified against the trusted roots (`<data-dir>/trust/roots/*.pub`).
//!
//! JWS, JWK and key files are `sandstep_signing`'s (the fleet side signs with them too).
//! - [`root_package`]: ADU's root key package (root keys, disabled roots, disabled signing keys).
//! - [`scope`]: what a handler key may sign, on id boundaries (vendor, handler, id).

pub mod handler_sig;
pub mod manifest_sig;
pub mod root_package;
pub mod scope;

use crate::datadir::DataDir;
use cap_std::fs::Dir;
use sandstep_signing::jws::PublicJwk;
pub use scope::{parse_scope, Scope, ScopeError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// The `[trust]` table of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrustConfig {
    /// Directories of trusted handler keys besides `<data-dir>/trust/handlers`.
    pub handler_key_dirs: Vec<PathBuf>,
    /// Directories of trusted root keys besides `<data-dir>/trust/roots`.
    pub root_key_dirs: Vec<PathBuf>,
    /// Root key ids no longer trusted.
    pub disabled_root_kids: BTreeSet<String>,
    /// Signing keys no longer accepted: ADU's name (base64url sha256 of the SubjectPublicKeyInfo,
    /// as in a root key package's `disabledSigningKeys`) or the RFC 7638 thumbprint.
    pub disallowed_signing_keys: BTreeSet<String>,
    /// Refuse manifests without a valid signature (`--allow-unsigned` overrides it per run).
    pub require_manifest_signature: bool,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            handler_key_dirs: Vec::new(),
            root_key_dirs: Vec::new(),
            disabled_root_kids: BTreeSet::new(),
            disallowed_signing_keys: BTreeSet::new(),
            require_manifest_signature: true,
        }
    }
}

/// A trusted handler key and the name it is known by (its file name without `.pub`).
#[derive(Debug, Clone)]
pub struct TrustedHandlerKey {
    pub name: String,
    pub key: wasmsign2::PublicKey,
    /// What this key may sign (`NAME.scope` beside `NAME.pub`, one a line: a vendor `contoso`,
    /// a handler `contoso/modem` or an id `contoso/modem:1`); empty: any handler id.
    pub scope: Vec<Scope>,
}

impl TrustedHandlerKey {
    /// Whether this key may vouch for handler `id`.
    pub fn covers(&self, id: &str) -> bool {
        self.scope.is_empty() || self.scope.iter().any(|s| s.covers(id))
    }
}

/// The keys the gateway trusts.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    pub handler_keys: Vec<TrustedHandlerKey>,
    pub roots: Vec<PublicJwk>,
    pub disabled_root_kids: BTreeSet<String>,
    pub disallowed_signing_keys: BTreeSet<String>,
}

/// Why trust material could not be read.
#[derive(Debug, thiserror::Error)]
#[error("trusted key {file}: {reason}")]
pub struct TrustError {
    pub file: String,
    pub reason: String,
}

/// Files of a directory whose names end in `suffix`, sorted, as (stem, bytes).
fn files_ending(
    dir: &Dir,
    origin: &str,
    suffix: &str,
) -> Result<Vec<(String, Vec<u8>)>, TrustError> {
    let err = |file: &str, reason: String| TrustError {
        file: format!("{origin}/{file}"),
        reason,
    };
    let mut out = Vec::new();
    let entries = dir.entries().map_err(|e| err("", e.to_string()))?;
    for e in entries {
        let e = e.map_err(|e| err("", e.to_string()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(suffix) else {
            continue;
        };
        let bytes = dir.read(&name).map_err(|e| err(&name, e.to_string()))?;
        out.push((stem.to_owned(), bytes));
    }
    out.sort();
    Ok(out)
}

impl TrustStore {
    /// Reads the trusted keys of the data dir and the configured system dirs.
    pub fn load(data: &DataDir, config: &TrustConfig) -> Result<TrustStore, TrustError> {
        let mut handler_dirs = vec![(
            data.trust_handlers().map_err(io_err)?,
            format!("{}/trust/handlers", data.path().display()),
        )];
        for d in &config.handler_key_dirs {
            if let Ok(dir) = Dir::open_ambient_dir(d, cap_std::ambient_authority()) {
                handler_dirs.push((dir, d.display().to_string()));
            }
        }
        let mut root_dirs = vec![(
            data.trust_roots().map_err(io_err)?,
            format!("{}/trust/roots", data.path().display()),
        )];
        for d in &config.root_key_dirs {
            if let Ok(dir) = Dir::open_ambient_dir(d, cap_std::ambient_authority()) {
                root_dirs.push((dir, d.display().to_string()));
            }
        }
        let mut store = TrustStore {
            disabled_root_kids: config.disabled_root_kids.clone(),
            disallowed_signing_keys: config.disallowed_signing_keys.clone(),
            ..TrustStore::default()
        };
        for (dir, origin) in &handler_dirs {
            for (name, bytes) in files_ending(dir, origin, ".pub")? {
                let key = wasmsign2::PublicKey::from_bytes(&bytes)
                    .map_err(|e| TrustError {
                        file: format!("{origin}/{name}.pub"),
                        reason: format!("not a handler public key: {e}"),
                    })?
                    .attach_default_key_id();
                let scope_file = || format!("{origin}/{name}.scope");
                let scope = match dir.read(format!("{name}.scope")) {
                    Ok(b) => parse_scope(&String::from_utf8_lossy(&b)).map_err(|(line, e)| {
                        TrustError {
                            file: scope_file(),
                            reason: format!("line {line}: {e}"),
                        }
                    })?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => {
                        return Err(TrustError {
                            file: scope_file(),
                            reason: e.to_string(),
                        })
                    }
                };
                store
                    .handler_keys
                    .push(TrustedHandlerKey { name, key, scope });
            }
        }
        for (dir, origin) in &root_dirs {
            store.add_root_dir(dir, origin)?;
        }
        Ok(store)
    }
}

impl TrustStore {
    /// The root keys (`*.pub` JWKs) and ADU root key packages (`*.rootkeys.json`) of a directory.
    fn add_root_dir(&mut self, dir: &Dir, origin: &str) -> Result<(), TrustError> {
        for (name, bytes) in files_ending(dir, origin, ".pub")? {
            let file = format!("{origin}/{name}.pub");
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| TrustError {
                file: file.clone(),
                reason: format!("not a JWK: {e}"),
            })?;
            let jwk = PublicJwk::from_value(&v).map_err(|e| TrustError {
                file: file.clone(),
                reason: e.to_string(),
            })?;
            if jwk.kid().is_none() {
                return Err(TrustError {
                    file,
                    reason: "a root key needs a `kid`".into(),
                });
            }
            self.roots.push(jwk);
        }
        for (name, bytes) in files_ending(dir, origin, root_package::SUFFIX)? {
            let file = format!("{origin}/{name}{}", root_package::SUFFIX);
            let pkg = serde_json::from_slice(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|v| root_package::parse(&v).map_err(|e| e.to_string()))
                .map_err(|reason| TrustError { file, reason })?;
            self.roots.extend(pkg.roots);
            self.disabled_root_kids.extend(pkg.disabled_root_kids);
            self.disallowed_signing_keys
                .extend(pkg.disabled_signing_keys);
        }
        Ok(())
    }
}

fn io_err(e: crate::datadir::DataDirError) -> TrustError {
    TrustError {
        file: e.path.clone(),
        reason: e.to_string(),
    }
}
