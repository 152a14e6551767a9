//! The sandbox: one engine per process, precompiled components, and a fresh store per step.
//!
//! - [`Sandbox`] owns the engine (epoch interruption, an engine-owned ticker), the cache of
//!   precompiled components, and one linker per set of granted capabilities.
//! - [`HandlerComponent`] is a compiled component plus what its imports ask for.
//! - [`Session`] is one store and instance for one step's sequence of calls, with its own WASI
//!   context (`/payload` read-only, `/work`, `/state`, nothing else, no env, no sockets), memory
//!   cap and per-action time limits. Every call returns a [`StepResult`]: limits, traps and host
//!   errors become failure results with sandstep's extended codes, and the agent carries on.

pub mod cache;
pub mod dirs;
pub mod engine;
pub mod limits;
mod output;
mod quota;
mod session;
pub mod store;

pub use cache::{CacheDirs, ComponentCache};
pub use dirs::{Preopen, StepDirs};
pub use engine::EngineOptions;
pub use limits::{LimitExceeded, Limits};
pub use session::Session;
pub use store::{CallTags, EventSink, HandlerEvent, LogLevel};

use crate::capability::host::HostView;
use crate::capability::ledger::{ProgramLedger, Recovered};
use crate::capability::process::ProcessView;
use crate::capability::slot::SlotView;
use crate::capability::{self, classify_import, Capability, Grants, ImportKind};
use crate::digest::Sha256;
use engine::EpochTicker;
use sandstep_model::codes::erc;
use sandstep_model::StepResult;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use wasmtime::component::{Component, Linker};
use wasmtime::Engine;

/// What stopped a step's sandbox from being prepared. Each names the directory or stage.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{guest} handle: {cause}")]
    Handle {
        guest: String,
        cause: std::io::Error,
    },
    #[error("{guest} cannot be measured: {cause}")]
    Measure { guest: String, cause: String },
    #[error("preopen {guest}: {cause}")]
    Preopen { guest: String, cause: String },
    #[error("locate {guest}: {cause}")]
    Locate {
        guest: String,
        cause: std::io::Error,
    },
    #[error("payload handle: {0}")]
    Payload(std::io::Error),
    #[error("linker: {0}")]
    Linker(String),
    #[error("not a handler: {0}")]
    NotAHandler(String),
    /// The instantiation's failure, as a step's result details say it.
    #[error("{0}")]
    Instantiation(String),
}

/// Why a handler could not be loaded or a session not started.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),
    #[error("`{name}` is not a valid handler component: {reason}")]
    Compile { name: String, reason: String },
    #[error("handler `{handler}` imports `{import}`: capability `{capability}` is not granted to it by policy")]
    CapabilityDenied {
        handler: String,
        import: String,
        capability: Capability,
    },
    #[error("handler `{handler}` imports `{import}`, which sandstep does not provide")]
    UnknownImport { handler: String, import: String },
    #[error("handler `{handler}` does not export sandstep:handler/lifecycle@0.1.0: {reason}")]
    NotAHandler { handler: String, reason: String },
    #[error("cannot prepare the sandbox for `{handler}`: {cause}")]
    Setup { handler: String, cause: SetupError },
    #[error("component cache entry `{name}`: {cause}")]
    Cache {
        name: String,
        /// In the message, not a `source`: printed once.
        cause: std::io::Error,
    },
}

impl SandboxError {
    /// The failure result a step gets when its handler cannot run.
    pub fn to_step_result(&self) -> StepResult {
        let code = match self {
            SandboxError::CapabilityDenied { .. } | SandboxError::UnknownImport { .. } => {
                erc::SANDBOX_CAPABILITY_DENIED
            }
            SandboxError::Setup { .. } | SandboxError::Cache { .. } => erc::SANDBOX_SETUP_FAILED,
            _ => erc::SANDBOX_LOAD_FAILED,
        };
        StepResult::failure(code, self.to_string())
    }
}

/// A compiled handler component and what it imports.
#[derive(Clone)]
pub struct HandlerComponent {
    pub(crate) component: Component,
    digest: String,
    imports: Vec<String>,
    /// Its imports resolved against the linker of its capabilities, once: every session then
    /// only instantiates (resolving them took about a third of a cached call).
    pub(crate) pre: Arc<std::sync::OnceLock<crate::bindings::AllPre<store::HostState>>>,
}

impl std::fmt::Debug for HandlerComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerComponent")
            .field("digest", &self.digest)
            .field("imports", &self.imports)
            .finish()
    }
}

impl HandlerComponent {
    /// sha256 of the component bytes, lower-case hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The component's import names (e.g. `wasi:filesystem/types@0.2.0`).
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// The capability interfaces it imports.
    pub fn capabilities(&self) -> BTreeSet<Capability> {
        self.imports
            .iter()
            .filter_map(|i| match classify_import(i) {
                ImportKind::Capability(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    /// Refuses imports the grants do not cover, naming the first one.
    pub fn check_imports(&self, handler_id: &str, grants: &Grants) -> Result<(), SandboxError> {
        check_imports(handler_id, &self.imports, grants)
    }
}

/// Refuses `imports` the grants do not cover, naming the first one (also used on a component's
/// imports read from its binary, before it is compiled).
pub fn check_imports(
    handler_id: &str,
    imports: &[String],
    grants: &Grants,
) -> Result<(), SandboxError> {
    for import in imports {
        match classify_import(import) {
            ImportKind::Base => {}
            ImportKind::Capability(c) if grants.allows(c) => {}
            ImportKind::Capability(capability) => {
                return Err(SandboxError::CapabilityDenied {
                    handler: handler_id.to_owned(),
                    import: import.clone(),
                    capability,
                })
            }
            ImportKind::Unknown => {
                return Err(SandboxError::UnknownImport {
                    handler: handler_id.to_owned(),
                    import: import.clone(),
                })
            }
        }
    }
    Ok(())
}

/// A capability is linked only into stores whose handler was granted it.
const GRANTED: &str = "a capability is linked only for stores granted it";

/// The engine, its ticker, the precompiled cache and the linkers. The engine starts when first
/// needed: an idle agent has nothing to compile or run, and so touches none of wasmtime's or
/// cranelift's code (what its memory is mostly made of).
pub struct Sandbox {
    options: EngineOptions,
    started: std::sync::OnceLock<Result<Started, StartError>>,
    cache_dir: Mutex<Option<CacheDirs>>,
    /// Where host programs are recorded while they run (see [`crate::capability::ledger`]).
    ledger: Option<Arc<ProgramLedger>>,
    linkers: Mutex<HashMap<BTreeSet<Capability>, Arc<Linker<store::HostState>>>>,
}

/// Why the engine could not start, kept for every later use.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
struct StartError(String);

/// The engine once started, its ticker, and the cache keyed by it.
struct Started {
    engine: Engine,
    ticker: Arc<EpochTicker>,
    cache: Option<ComponentCache>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("options", &self.options)
            .finish()
    }
}

impl Sandbox {
    /// Starts the engine. With `cache_dir`, compiled components are kept there (see [`cache`]).
    pub fn new(
        options: &EngineOptions,
        cache_dir: Option<CacheDirs>,
    ) -> Result<Self, SandboxError> {
        Ok(Sandbox {
            options: options.clone(),
            started: std::sync::OnceLock::new(),
            cache_dir: Mutex::new(cache_dir),
            ledger: None,
            linkers: Mutex::default(),
        })
    }

    /// The engine, started on first use (a failure is kept and returned every time).
    fn started(&self) -> Result<&Started, SandboxError> {
        let started = self.started.get_or_init(|| {
            let failed = |e: &dyn std::fmt::Display| StartError(e.to_string());
            let engine = engine::new_engine(&self.options).map_err(|e| failed(&e))?;
            let ticker = EpochTicker::start(engine.clone()).map_err(|e| failed(&e))?;
            let key = engine::engine_key(&engine);
            let dir = self.cache_dir.lock().expect("cache dir lock").take();
            Ok(Started {
                cache: dir.map(|d| ComponentCache::new(d, key)),
                engine,
                ticker: Arc::new(ticker),
            })
        });
        started
            .as_ref()
            .map_err(|e| SandboxError::Engine(e.to_string()))
    }

    /// Records host programs in `ledger` while they run, so the next agent finds what a killed
    /// one left (the agent and `sandstep run` do; one-off calls need not).
    pub fn with_ledger(mut self, ledger: ProgramLedger) -> Self {
        self.ledger = Some(Arc::new(ledger));
        self
    }

    /// The ledger host programs are recorded in, for programs the host runs itself (health
    /// checks).
    pub fn ledger(&self) -> Option<Arc<ProgramLedger>> {
        self.ledger.clone()
    }

    /// Deals with what a previous agent left running (see [`ProgramLedger::sweep`]); call
    /// before any step runs. Blocking.
    pub fn recover_programs(&self) -> Vec<Recovered> {
        self.ledger
            .as_ref()
            .map(|l| l.sweep(crate::capability::process::STOP_GRACE))
            .unwrap_or_default()
    }

    /// The started engine, for what only follows a compiled handler.
    fn running(&self) -> &Started {
        self.started()
            .expect("a handler was compiled, so the engine started")
    }

    /// The engine (started now if it was not).
    pub fn engine(&self) -> Result<&Engine, SandboxError> {
        Ok(&self.started()?.engine)
    }

    /// The cache, when configured.
    pub fn cache(&self) -> Result<Option<&ComponentCache>, SandboxError> {
        Ok(self.started()?.cache.as_ref())
    }

    /// Compiles component bytes (or loads them precompiled from the cache). `name` is used in
    /// errors. Compilation runs on a blocking thread; it can take a fraction of a second.
    pub async fn load(
        &self,
        name: &str,
        bytes: Arc<[u8]>,
    ) -> Result<HandlerComponent, SandboxError> {
        let digest = hex::encode(Sha256::digest(&bytes));
        self.load_digested(name, bytes, digest).await
    }

    /// As [`Sandbox::load`], for bytes whose sha256 (hex) the caller has just checked (the
    /// loader's registry check), so they are not hashed twice.
    pub async fn load_digested(
        &self,
        name: &str,
        bytes: Arc<[u8]>,
        digest: String,
    ) -> Result<HandlerComponent, SandboxError> {
        let component = match self.load_cached(&digest)? {
            Some(c) => c,
            None => {
                let engine = self.engine()?.clone();
                let b = bytes.clone();
                let compiled = tokio::task::spawn_blocking(move || Component::new(&engine, &b))
                    .await
                    .map_err(|e| SandboxError::Engine(e.to_string()))?
                    .map_err(|e| SandboxError::Compile {
                        name: name.to_owned(),
                        reason: format!("{e:#}"),
                    })?;
                self.store_cached(&digest, &compiled)?;
                compiled
            }
        };
        let ty = component.component_type();
        let imports = ty
            .imports(self.engine()?)
            .map(|(n, _)| n.to_owned())
            .collect();
        Ok(HandlerComponent {
            component,
            digest,
            imports,
            pre: Arc::default(),
        })
    }

    fn load_cached(&self, digest: &str) -> Result<Option<Component>, SandboxError> {
        let Some(cache) = self.cache()? else {
            return Ok(None);
        };
        let cache_err = |source| SandboxError::Cache {
            name: cache.entry_name(digest),
            cause: source,
        };
        let bytes = match cache.read(digest).map_err(cache_err)? {
            cache::Lookup::Found(b) => b,
            cache::Lookup::Missing => return Ok(None),
            cache::Lookup::Mismatch => {
                tracing::error!(entry = %cache.entry_name(digest), "cache entry does not match its recorded checksum (torn or corrupted); discarding it and compiling again");
                cache.remove(digest).map_err(cache_err)?;
                return Ok(None);
            }
        };
        // SAFETY: the artefact comes from the agent's own 0700 cache directory, written by
        // `store_cached` after compiling the component whose digest names it.
        match unsafe { Component::deserialize(self.engine()?, &bytes) } {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                tracing::warn!(entry = %cache.entry_name(digest), "discarding unusable cache entry: {e}");
                cache.remove(digest).map_err(cache_err)?;
                Ok(None)
            }
        }
    }

    /// Keeps a compiled component for next time. The cache only saves time: when it cannot be
    /// written (a full disk, say), the step goes on with the component compiled in memory.
    fn store_cached(&self, digest: &str, component: &Component) -> Result<(), SandboxError> {
        let Some(cache) = self.cache()? else {
            return Ok(());
        };
        let bytes = component
            .serialize()
            .map_err(|e| SandboxError::Engine(e.to_string()))?;
        if let Err(e) = cache.write(digest, &bytes) {
            tracing::warn!(entry = %cache.entry_name(digest), "cannot write the precompiled cache entry, going on without it: {e}");
        }
        Ok(())
    }

    fn linker(
        &self,
        granted: BTreeSet<Capability>,
    ) -> Result<Arc<Linker<store::HostState>>, SandboxError> {
        let mut linkers = self
            .linkers
            .lock()
            .expect("linker map lock is never poisoned");
        if let Some(l) = linkers.get(&granted) {
            return Ok(l.clone());
        }
        let mut linker = Linker::new(self.engine()?);
        let build = |linker: &mut Linker<store::HostState>| -> wasmtime::Result<()> {
            wasmtime_wasi::p2::add_to_linker_async(linker)?;
            capability::host::add_to_linker(linker, |s| HostView(&mut s.host))?;
            if granted.contains(&Capability::Process) {
                capability::process::add_to_linker(linker, |s| {
                    ProcessView(s.process.as_mut().expect(GRANTED))
                })?;
            }
            if granted.contains(&Capability::Slot) {
                capability::slot::add_to_linker(linker, |s| {
                    SlotView(s.slot.as_mut().expect(GRANTED))
                })?;
            }
            Ok(())
        };
        build(&mut linker).map_err(|e| SandboxError::Engine(e.to_string()))?;
        let linker = Arc::new(linker);
        linkers.insert(granted, linker.clone());
        Ok(linker)
    }
}

/// What a session needs besides the component.
pub struct SessionSetup {
    pub handler_id: String,
    pub tags: CallTags,
    pub dirs: StepDirs,
    pub grants: Grants,
    pub limits: Limits,
    pub events: Option<EventSink>,
    /// Step files the slot capability streams from their source (none: all in /payload).
    pub streams: Option<Arc<crate::capability::slot::Streams>>,
}
