//! Per-store host state: WASI context, limits, tags, events and the granted capabilities.

use super::limits::StoreLimiter;
use crate::capability::process::ProcessCtx;
use crate::capability::slot::SlotCtx;
use sandstep_model::Action;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Who is calling: attached to every log line and event of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallTags {
    pub workflow_id: String,
    /// A display form of the step, e.g. `0` or `1/cameras-00001/2` for a child step of a component.
    pub step: String,
    pub handler_id: String,
}

/// Log levels a handler can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Something a handler reported during a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerEvent {
    Log { level: LogLevel, message: String },
    Progress { percent: u8, message: String },
}

/// Receives handler events (the workflow turns them into progress reports).
pub type EventSink = Arc<dyn Fn(&CallTags, &HandlerEvent) + Send + Sync>;

/// Log lines a store may emit before further lines are dropped (and counted).
pub(crate) const LOG_BUDGET: u32 = 2000;
/// Longest log or progress message kept, in bytes.
pub(crate) const MAX_MESSAGE: usize = 4096;

/// The data of one store.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: StoreLimiter,
    pub(crate) tags: Arc<CallTags>,
    pub(crate) events: Option<EventSink>,
    /// When the running call must stop; checked on every epoch tick.
    pub(crate) deadline: Option<(Instant, Action, Duration)>,
    pub(crate) log_budget: u32,
    pub(crate) logs_dropped: u32,
    /// The last `panic: ...` line the SDK logged: the reason behind a trap.
    pub(crate) last_panic: Option<String>,
    pub(crate) process: Option<ProcessCtx>,
    pub(crate) slot: Option<SlotCtx>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
