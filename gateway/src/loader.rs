//! Loading handlers: registry entry -> stored component (digest checked) -> signature verified
//! against the trusted keys -> compiled component (from memory, the on-disk cache, or compiled)
//! -> imports checked against the handler id's policy.
//!
//! The signature is checked on every load, not only at install: a component file changed since
//! takes effect at once. The trust keys are read when the loader is made (the agent's start),
//! so a verdict holds while the component file is unchanged: a load whose file has the identity
//! (inode, size, times) of the one verified before reuses that verdict without reading it again.
//! Compiled components are kept in memory keyed by their verified digest (at most
//! [`MAX_COMPILED`], least recently used dropped first), and on disk keyed by digest and engine
//! (see [`crate::sandbox::cache`]), so an artefact is only ever used for the exact bytes that
//! verified.

use crate::policy::Policy;
use crate::registry::{Entry, FileIdentity, Registry, RegistryError};
use crate::sandbox::{HandlerComponent, Sandbox, SandboxError};
use crate::trust::handler_sig::{self, HandlerSignatureError};
use crate::trust::TrustStore;
use sandstep_model::codes::erc;
use sandstep_model::StepResult;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Why a handler could not be installed or loaded. Each names the handler.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("handler `{id}` refused: {cause}")]
    Signature {
        id: String,
        /// In the message, not a `source`: printed once.
        cause: HandlerSignatureError,
    },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

impl LoadError {
    /// The failure result of a step whose handler cannot be loaded.
    pub fn to_step_result(&self) -> StepResult {
        match self {
            LoadError::Registry(RegistryError::NotFound(_)) => {
                StepResult::failure(erc::SANDBOX_HANDLER_NOT_FOUND, self.to_string())
            }
            LoadError::Registry(_) => {
                StepResult::failure(erc::SANDBOX_LOAD_FAILED, self.to_string())
            }
            LoadError::Signature { .. } => {
                StepResult::failure(erc::SANDBOX_SIGNATURE_REFUSED, self.to_string())
            }
            LoadError::Sandbox(e) => e.to_step_result(),
        }
    }
}

/// Compiled components kept in memory.
pub const MAX_COMPILED: usize = 32;

/// A signature verdict, valid while the component file keeps this identity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    digest: String,
    file: FileIdentity,
}

/// Compiled components by digest, with when each was last used.
#[derive(Default)]
struct Compiled {
    map: HashMap<String, (HandlerComponent, u64)>,
    clock: u64,
}

impl Compiled {
    fn get(&mut self, digest: &str) -> Option<HandlerComponent> {
        self.clock += 1;
        let now = self.clock;
        self.map.get_mut(digest).map(|(c, used)| {
            *used = now;
            c.clone()
        })
    }

    fn insert(&mut self, c: HandlerComponent) {
        if self.map.len() >= MAX_COMPILED {
            if let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(d, _)| d.clone())
            {
                self.map.remove(&oldest);
            }
        }
        self.clock += 1;
        self.map.insert(c.digest().to_owned(), (c, self.clock));
    }
}

/// Installs and loads handlers under the trust store and policy.
pub struct Loader {
    registry: Registry,
    /// Replaced whole when a deployment brings a new root key package.
    trust: std::sync::RwLock<Arc<TrustStore>>,
    sandbox: Arc<Sandbox>,
    compiled: Mutex<Compiled>,
    /// By handler id.
    verdicts: Mutex<HashMap<String, Verdict>>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("registry", &self.registry)
            .finish()
    }
}

impl Loader {
    pub fn new(registry: Registry, trust: TrustStore, sandbox: Arc<Sandbox>) -> Self {
        Loader {
            registry,
            trust: std::sync::RwLock::new(Arc::new(trust)),
            sandbox,
            compiled: Mutex::default(),
            verdicts: Mutex::default(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The trusted keys as they are now.
    pub fn trust(&self) -> Arc<TrustStore> {
        self.trust.read().expect("trust lock").clone()
    }

    /// Uses `accepted` as the root key package deployments brought, from now on.
    pub fn take_root_key_package(&self, accepted: crate::trust::rotation::Accepted) {
        let mut t = self.trust.write().expect("trust lock");
        *t = Arc::new(t.with_fetched(accepted));
    }

    /// Verifies the signature of `bytes`, returning the signers whose scope covers `id`: a key
    /// scoped to `vendor/` vouches only for `vendor/...` handler ids.
    pub fn verify(&self, id: &str, bytes: &[u8]) -> Result<Vec<String>, LoadError> {
        let refused = |source| LoadError::Signature {
            id: id.to_owned(),
            cause: source,
        };
        let trust = self.trust();
        let signers = handler_sig::verify(bytes, &trust.handler_keys).map_err(refused)?;
        let covering: Vec<String> = signers
            .iter()
            .filter(|name| {
                trust
                    .handler_keys
                    .iter()
                    .any(|k| &k.name == *name && k.covers(id))
            })
            .cloned()
            .collect();
        if covering.is_empty() {
            return Err(refused(HandlerSignatureError::OutOfScope {
                signers: signers.join(", "),
                id: id.to_owned(),
            }));
        }
        Ok(covering)
    }

    async fn compile(
        &self,
        id: &str,
        bytes: Vec<u8>,
        digest: &str,
    ) -> Result<HandlerComponent, LoadError> {
        if let Some(c) = self.compiled.lock().expect("compiled map lock").get(digest) {
            return Ok(c);
        }
        let c = self
            .sandbox
            .load_digested(id, bytes.into(), digest.to_owned())
            .await?;
        self.compiled
            .lock()
            .expect("compiled map lock")
            .insert(c.clone());
        Ok(c)
    }

    /// Verifies, compiles (into the cache), checks imports against the policy, and records.
    pub async fn install(
        &self,
        id: &str,
        bytes: Vec<u8>,
        source: &str,
        policy: &Policy,
        now_ms: u64,
    ) -> Result<(Entry, HandlerComponent), LoadError> {
        if !sandstep_model::manifest::is_handler_id(id) {
            return Err(RegistryError::BadId(id.to_owned()).into());
        }
        let signers = self.verify(id, &bytes)?;
        // Refused by policy before anything is compiled or cached, when its imports can be read
        // from the binary (else the compiled component's are checked below).
        if let Some(imports) = crate::wasm_binary::component_imports(&bytes) {
            crate::sandbox::check_imports(id, &imports, &policy.grants(id))?;
        }
        let digest = hex::encode(crate::digest::Sha256::digest(&bytes));
        let component = self.compile(id, bytes.clone(), &digest).await?;
        component.check_imports(id, &policy.grants(id))?;
        let entry = self.registry.install(id, &bytes, source, signers, now_ms)?;
        Ok((entry, component))
    }

    /// Loads the registered handler for `id`: digest, signature and policy checked every time
    /// (the first two from the verdict on this very file when it has not changed since).
    pub async fn load(&self, id: &str, policy: &Policy) -> Result<HandlerComponent, LoadError> {
        let entry = self.registry.get(id)?;
        let file = self.registry.component_identity(&entry)?;
        let verdict = Verdict {
            digest: entry.digest.clone(),
            file,
        };
        let known = self.verdicts.lock().expect("verdicts lock").get(id) == Some(&verdict);
        let cached = if known {
            self.compiled
                .lock()
                .expect("compiled map lock")
                .get(&entry.digest)
        } else {
            None
        };
        let component = match cached {
            Some(c) => c,
            None => {
                let bytes = self.registry.component_bytes(&entry)?;
                self.verify(id, &bytes)?;
                self.verdicts
                    .lock()
                    .expect("verdicts lock")
                    .insert(id.to_owned(), verdict);
                self.compile(id, bytes, &entry.digest).await?
            }
        };
        component.check_imports(id, &policy.grants(id))?;
        Ok(component)
    }

    /// Forgets `id` and drops its cache entry when no other id uses the same component.
    pub fn remove(&self, id: &str) -> Result<Entry, LoadError> {
        let entry = self.registry.remove(id)?;
        self.verdicts.lock().expect("verdicts lock").remove(id);
        let still_used = self
            .registry
            .list()?
            .iter()
            .any(|e| e.digest == entry.digest);
        if !still_used {
            self.compiled
                .lock()
                .expect("compiled map lock")
                .map
                .remove(&entry.digest);
            if let Ok(Some(cache)) = self.sandbox.cache() {
                let _ = cache.remove(&entry.digest);
            }
        }
        Ok(entry)
    }
}
