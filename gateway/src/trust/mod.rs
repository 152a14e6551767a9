//! Trust: who may run code on the gateway, and which manifests it accepts.
//!
//! - [`handler_sig`]: handler components signed in the wasmsign2 format, verified against the
//!   trusted handler keys (`<data-dir>/trust/handlers/*.pub` and configured system dirs).
//! - [`manifest_sig`]: ADU's manifest signature (JWS, signing key chained to a root key),
//!   verified against the trusted roots (`<data-dir>/trust/roots/*.pub`).
//!
//! JWS, JWK and key files are `sandstep_signing`'s (the fleet side signs with them too).
//! - [`root_package`]: ADU's root key package (root keys, disabled roots, disabled signing keys).
//! - [`rotation`]: root key packages deployments bring (`rootKeyPackageUrl`), checked against
//!   the operator's roots and stored in `<data-dir>/trust/fetched`.
//! - [`scope`]: what a handler key may sign, on id boundaries (vendor, handler, id).

pub mod handler_sig;
pub mod manifest_sig;
pub mod root_package;
pub mod rotation;
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
    /// The root kids that must sign a root key package a deployment brings; empty: every
    /// trusted root (as ADU's agent requires every root compiled into it).
    pub root_package_signers: BTreeSet<String>,
    /// Take root key packages marked `isTest` (ADU's test agents do; its production agent
    /// refuses them with `ADUC_ERC_ROOTKEY_TEST_PKG_ON_PROD_AGENT`).
    pub accept_test_root_packages: bool,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            handler_key_dirs: Vec::new(),
            root_key_dirs: Vec::new(),
            disabled_root_kids: BTreeSet::new(),
            disallowed_signing_keys: BTreeSet::new(),
            require_manifest_signature: true,
            root_package_signers: BTreeSet::new(),
            accept_test_root_packages: false,
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
    /// The operator's roots (files in the root key directories).
    pub roots: Vec<PublicJwk>,
    pub disabled_root_kids: BTreeSet<String>,
    pub disallowed_signing_keys: BTreeSet<String>,
    /// The roots that must sign a root key package a deployment brings.
    pub package_signers: Vec<PublicJwk>,
    pub accept_test_packages: bool,
    /// The root key package deployments brought: `Err` when it no longer verifies (then every
    /// manifest is refused until a deployment brings a good one).
    pub fetched: Option<Result<rotation::Accepted, rotation::StoredError>>,
}

impl TrustStore {
    /// The same store using `accepted` as the package deployments brought.
    pub fn with_fetched(&self, accepted: rotation::Accepted) -> TrustStore {
        TrustStore {
            fetched: Some(Ok(accepted)),
            ..self.clone()
        }
    }

    fn fetched_package(&self) -> Option<&root_package::RootKeyPackage> {
        match &self.fetched {
            Some(Ok(a)) => Some(&a.package),
            _ => None,
        }
    }

    /// Why no manifest can be verified now: the stored package failed its check.
    pub fn fetched_refusal(&self) -> Option<&rotation::StoredError> {
        match &self.fetched {
            Some(Err(why)) => Some(why),
            _ => None,
        }
    }

    /// The root with `kid`: the operator's first, then the fetched package's (ADU looks in its
    /// compiled-in roots, then in its stored package).
    pub fn root(&self, kid: &str) -> Option<&PublicJwk> {
        let fetched = self.fetched_package().map(|p| p.roots.as_slice());
        self.roots
            .iter()
            .chain(fetched.unwrap_or_default())
            .find(|r| r.kid() == Some(kid))
    }

    /// Whether root `kid` is disabled, by the config, an operator's package or the fetched one.
    pub fn root_disabled(&self, kid: &str) -> bool {
        self.disabled_root_kids.contains(kid)
            || self
                .fetched_package()
                .is_some_and(|p| p.disabled_root_kids.iter().any(|k| k == kid))
    }

    /// Whether a signing key named `names` (ADU's SPKI hash, the RFC 7638 thumbprint) is
    /// disallowed.
    pub fn signing_key_disallowed(&self, names: &[&str]) -> bool {
        names.iter().any(|n| {
            self.disallowed_signing_keys.contains(*n)
                || self
                    .fetched_package()
                    .is_some_and(|p| p.disabled_signing_keys.iter().any(|k| k == n))
        })
    }
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
        store.package_signers = package_signers(&store.roots, &config.root_package_signers)?;
        store.accept_test_packages = config.accept_test_root_packages;
        store.fetched = rotation::load(
            &data.trust_fetched().map_err(io_err)?,
            &store.package_signers,
            store.accept_test_packages,
        );
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

/// The roots that must sign a fetched root key package: those `kids` names (each must be
/// trusted), or every root.
fn package_signers(
    roots: &[PublicJwk],
    kids: &BTreeSet<String>,
) -> Result<Vec<PublicJwk>, TrustError> {
    if kids.is_empty() {
        return Ok(roots.to_vec());
    }
    kids.iter()
        .map(|kid| {
            roots
                .iter()
                .find(|r| r.kid() == Some(kid.as_str()))
                .cloned()
                .ok_or_else(|| TrustError {
                    file: "[trust] root-package-signers".into(),
                    reason: format!("`{kid}` is not a trusted root"),
                })
        })
        .collect()
}

fn io_err(e: crate::datadir::DataDirError) -> TrustError {
    TrustError {
        file: e.path.clone(),
        reason: e.to_string(),
    }
}
