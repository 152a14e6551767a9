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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Use wasmtime's pooling allocator (the default): instances' memories and tables are taken
    /// from slots reserved up front and reset for the next, instead of mapped and unmapped for
    /// each session (the unmapping alone, with its TLB shootdowns, was a third of a call
    /// through the loader).
    pub pooling: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { pooling: true }
    }
}

/// The pool's bounds. Sessions run one at a time per deployment; the totals leave room for
/// several at once (health checks, the CLI beside the agent). Per component they are wide
/// enough for what componentize-py and componentize-js produce (many core instances, a
/// function table of tens of thousands of entries); a memory may reach the 32-bit maximum, so
/// the store's limiter (the policy's `memory-bytes`), not the pool, bounds it. What is reserved
/// is address space: pages become resident only as handlers touch them, and a freed slot keeps
/// at most [`KEEP_RESIDENT`] of them, reset, for the next instance.
fn pool() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(32)
        .total_core_instances(512)
        .total_memories(32)
        .total_tables(512)
        .total_stacks(32)
        .max_core_instances_per_component(128)
        .max_memories_per_component(16)
        .max_tables_per_component(128)
        .max_tables_per_module(8)
        .table_elements(1 << 18)
        .max_core_instance_size(16 << 20)
        .max_component_instance_size(16 << 20)
        .max_memory_size(4 << 30)
        .max_unused_warm_slots(4)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(64 << 10)
        // Where the kernel can say which pages an instance wrote (PAGEMAP_SCAN, Linux 6.7),
        // only those are reset.
        .pagemap_scan(wasmtime::Enabled::Auto);
    pool
}

/// Bytes of a freed memory slot reset in place (only the pages written, where the kernel says
/// which) rather than given back to the kernel, so the next instance maps nothing again.
const KEEP_RESIDENT: usize = 1 << 20;

pub(crate) fn new_engine(options: &EngineOptions) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(1 << 20);
    if options.pooling {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool()));
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
