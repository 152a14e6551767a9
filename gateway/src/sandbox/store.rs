//! Per-store host state: WASI context, limits, and each capability's state.

use super::limits::StoreLimiter;
use crate::capability::host::HostCtx;
use crate::capability::process::ProcessCtx;
use crate::capability::slot::SlotCtx;
use sandstep_model::Action;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use crate::capability::host::{CallTags, EventSink, HandlerEvent, LogLevel};

/// The data of one store.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: StoreLimiter,
    /// When the running call must stop; checked on every epoch tick.
    pub(crate) deadline: Option<(Instant, Action, Duration)>,
    pub(crate) host: HostCtx,
    pub(crate) process: Option<ProcessCtx>,
    pub(crate) slot: Option<SlotCtx>,
}

impl HostState {
    /// Whether the store holds `cap`'s state, i.e. the capability is linked.
    pub(crate) fn has(&self, cap: crate::capability::Capability) -> bool {
        use crate::capability::Capability;
        match cap {
            Capability::Process => self.process.is_some(),
            Capability::Slot => self.slot.is_some(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
