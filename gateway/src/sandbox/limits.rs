//! Per-store limits: a memory cap enforced by a resource limiter, and per-action time limits
//! enforced through epoch deadlines.

use sandstep_model::Action;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Default memory cap per store.
pub const DEFAULT_MEMORY_BYTES: u64 = 256 << 20;
/// Default quota of a step's `/work` folder.
pub const DEFAULT_WORK_BYTES: u64 = 1 << 30;
/// Default quota of a handler's `/state` folder (kept across deployments: small).
pub const DEFAULT_STATE_BYTES: u64 = 64 << 20;
/// Default growth a writable mapped dir may see in one session.
pub const DEFAULT_DIR_GROWTH_BYTES: u64 = 1 << 30;
/// Default number of handles (open files and directories, streams) a handler may hold at once.
/// Each open file is a descriptor of the agent's; this keeps well below its limit.
pub const DEFAULT_OPEN_HANDLES: usize = 256;
/// Free space kept on the file systems a handler writes (the data dir's, where the journal
/// lives): 64 MiB.
pub const DEFAULT_DISK_RESERVE_BYTES: u64 = 64 << 20;

/// The limits a handler runs under. Policy may override them per handler id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limits {
    /// Linear memory per store, in bytes (all memories together).
    pub memory_bytes: u64,
    /// Bytes the step's `/work` folder may hold (written by the handler or its host programs).
    pub work_bytes: u64,
    /// Bytes the handler's `/state` folder may hold.
    pub state_bytes: u64,
    /// Bytes a writable mapped dir (`dirs`, `component-dirs`) may grow by in one session.
    pub dir_growth_bytes: u64,
    /// Handles (open files and directories, streams) the handler may hold at once.
    pub open_handles: usize,
    /// Free bytes kept on the file system of each folder the handler writes (`/work` and
    /// `/state` live in the data dir, beside the journal): a call whose writes leave less is
    /// stopped, so a handler cannot fill the disk the journal needs.
    pub disk_reserve_bytes: u64,
    /// Time limits per action.
    #[serde(with = "secs")]
    pub is_installed: Duration,
    #[serde(with = "secs")]
    pub download: Duration,
    #[serde(with = "secs")]
    pub backup: Duration,
    #[serde(with = "secs")]
    pub install: Duration,
    #[serde(with = "secs")]
    pub apply: Duration,
    #[serde(with = "secs")]
    pub cancel: Duration,
    #[serde(with = "secs")]
    pub restore: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        const MINUTE: Duration = Duration::from_secs(60);
        Limits {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            work_bytes: DEFAULT_WORK_BYTES,
            state_bytes: DEFAULT_STATE_BYTES,
            dir_growth_bytes: DEFAULT_DIR_GROWTH_BYTES,
            open_handles: DEFAULT_OPEN_HANDLES,
            disk_reserve_bytes: DEFAULT_DISK_RESERVE_BYTES,
            is_installed: MINUTE,
            download: 10 * MINUTE,
            backup: 10 * MINUTE,
            install: 60 * MINUTE,
            apply: 60 * MINUTE,
            cancel: MINUTE,
            restore: 60 * MINUTE,
        }
    }
}

impl Limits {
    /// The time limit for `action`.
    pub fn time_limit(&self, action: Action) -> Duration {
        match action {
            Action::IsInstalled => self.is_installed,
            Action::Download => self.download,
            Action::Backup => self.backup,
            Action::Install => self.install,
            Action::Apply => self.apply,
            Action::Cancel => self.cancel,
            Action::Restore => self.restore,
        }
    }

    /// Sets every action's time limit (handy for tests and the dev command).
    pub fn with_all_time_limits(mut self, limit: Duration) -> Self {
        for a in Action::ALL {
            *self.time_limit_mut(a) = limit;
        }
        self
    }

    fn time_limit_mut(&mut self, action: Action) -> &mut Duration {
        match action {
            Action::IsInstalled => &mut self.is_installed,
            Action::Download => &mut self.download,
            Action::Backup => &mut self.backup,
            Action::Install => &mut self.install,
            Action::Apply => &mut self.apply,
            Action::Cancel => &mut self.cancel,
            Action::Restore => &mut self.restore,
        }
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// Why a call was stopped by the host. Raised as the trap's error, so the result can name it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("time limit of {limit:?} for `{action}` exceeded")]
    Time { action: Action, limit: Duration },
    #[error("memory limit of {limit} bytes exceeded (the handler asked for {requested} bytes)")]
    Memory { limit: u64, requested: u64 },
    #[error("table limit of {limit} elements exceeded")]
    Table { limit: usize },
}

/// The store's resource limiter: traps on growth past the cap with a typed error.
///
/// The cap covers all memories of the store together (a component has several core instances,
/// each may own a memory); memories never shrink, so summing the growth is exact.
#[derive(Debug)]
pub struct StoreLimiter {
    memory_limit: u64,
    memory_used: u64,
    table_limit: usize,
}

impl StoreLimiter {
    pub fn new(memory_limit: u64) -> Self {
        StoreLimiter {
            memory_limit,
            memory_used: 0,
            table_limit: 100_000,
        }
    }
}

impl wasmtime::ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory_used + (desired.saturating_sub(current)) as u64;
        if total > self.memory_limit {
            return Err(wasmtime::Error::new(LimitExceeded::Memory {
                limit: self.memory_limit,
                requested: total,
            }));
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_limit {
            return Err(wasmtime::Error::new(LimitExceeded::Table {
                limit: self.table_limit,
            }));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        // A component built from Rust holds a handful of core instances (module, adapter, shims).
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        8
    }
}
