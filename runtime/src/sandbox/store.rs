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

/// Log lines a store may emit in a burst before further lines are dropped (and counted).
pub(crate) const LOG_BURST: u32 = 2000;
/// Log lines per second a store earns back after a burst.
pub(crate) const LOG_PER_SEC: u32 = 50;
/// Shortest gap between two progress events passed on (a change to 100% always passes).
pub(crate) const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
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
    pub(crate) log_limit: RateLimit,
    pub(crate) logs_dropped: u32,
    /// When and at what percent the last progress event was passed on.
    pub(crate) last_progress: Option<(Instant, u8)>,
    pub(crate) progress_dropped: u32,
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

/// A token bucket: `burst` events at once, then `per_sec` a second.
#[derive(Debug)]
pub(crate) struct RateLimit {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    last: Instant,
}

impl RateLimit {
    pub(crate) fn new(burst: u32, per_sec: u32) -> Self {
        RateLimit {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            last: Instant::now(),
        }
    }

    /// Takes a token if one is there.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_limit_allows_a_burst_then_earns_lines_back_over_time() {
        let start = Instant::now();
        let mut l = RateLimit::new(3, 10);
        assert!((0..3).all(|_| l.allow(start)));
        assert!(!l.allow(start));
        assert!(l.allow(start + Duration::from_millis(100)));
        assert!(!l.allow(start + Duration::from_millis(100)));
        // Idle time refills to the burst, not beyond it.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| l.allow(later)));
        assert!(!l.allow(later));
    }
}
