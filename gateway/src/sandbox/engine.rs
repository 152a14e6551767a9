//! The process-wide engine and its epoch ticker.
//!
//! Epoch interruption costs less than fuel and lets a deadline callback both enforce time limits
//! and yield to tokio, so a long handler call never blocks the agent and can be cancelled. The
//! ticker is owned by the engine wrapper (no global timer thread) and sleeps while no call runs.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances while a call runs: the resolution of time limits and of yields.
pub const TICK: Duration = Duration::from_millis(10);

/// Engine settings. Precompiled artefacts only load into an engine with the same settings, so
/// they are part of the cache key (through wasmtime's compatibility hash).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineOptions {
    /// Use wasmtime's pooling allocator (faster instantiation, memory reserved up front).
    pub pooling: bool,
}

pub(crate) fn new_engine(options: &EngineOptions) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(1 << 20);
    if options.pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(64);
        pool.total_core_instances(256);
        pool.total_memories(128);
        pool.total_tables(128);
        pool.max_memory_size(1 << 30);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&config)
}

/// A stable text key for the engine's compatibility hash (compiler, settings, wasmtime version).
pub(crate) fn engine_key(engine: &Engine) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            unreachable!("only the digest is read")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(&h.0.finalize()[..8])
}

struct TickerState {
    active: Mutex<usize>,
    wake: Condvar,
    stop: AtomicBool,
}

/// Advances the engine's epoch every [`TICK`] while at least one call is active.
pub(crate) struct EpochTicker {
    state: Arc<TickerState>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine) -> std::io::Result<Self> {
        let state = Arc::new(TickerState {
            active: Mutex::new(0),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = state.clone();
        let thread = std::thread::Builder::new()
            .name("sandstep-epoch".into())
            .spawn(move || loop {
                {
                    let guard = s.active.lock().expect("ticker lock is never poisoned");
                    let _guard = s
                        .wake
                        .wait_while(guard, |active| {
                            *active == 0 && !s.stop.load(Ordering::Acquire)
                        })
                        .expect("ticker lock is never poisoned");
                }
                if s.stop.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(TICK);
                engine.increment_epoch();
            })?;
        Ok(EpochTicker {
            state,
            thread: Some(thread),
        })
    }

    /// Keeps the ticker running until the guard is dropped.
    pub(crate) fn active(&self) -> ActiveCall {
        *self
            .state
            .active
            .lock()
            .expect("ticker lock is never poisoned") += 1;
        self.state.wake.notify_all();
        ActiveCall {
            state: self.state.clone(),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        self.state.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// While alive, the epoch advances.
pub(crate) struct ActiveCall {
    state: Arc<TickerState>,
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        *self
            .state
            .active
            .lock()
            .expect("ticker lock is never poisoned") -= 1;
    }
}
