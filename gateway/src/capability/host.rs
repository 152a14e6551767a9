//! `sandstep:handler/host`: logging and progress, for every handler.
//!
//! Lines are re-emitted as tracing events tagged with workflow, step and handler, clamped to
//! [`MAX_MESSAGE`] bytes, and rate-limited per store (a burst of
//! [`LOG_BURST`], then [`LOG_PER_SEC`] a second) so a flooding handler cannot drown the
//! agent's log. Progress events pass at most every [`PROGRESS_INTERVAL`], and always when they
//! reach 100%; what is dropped is counted and reported after the call.

use crate::bindings::host::{self, LogLevel as WitLevel};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{HasData, Linker};

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
pub const LOG_BURST: u32 = 2000;
/// Log lines per second a store earns back after a burst.
pub const LOG_PER_SEC: u32 = 50;
/// Shortest gap between two progress events passed on (a change to 100% always passes).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Longest log or progress message kept, in bytes.
pub const MAX_MESSAGE: usize = 4096;

/// The capability's state in one store: who calls, where events go, and the rate limits.
pub struct HostCtx {
    pub tags: Arc<CallTags>,
    pub events: Option<EventSink>,
    log_limit: RateLimit,
    logs_dropped: u32,
    /// When and at what percent the last progress event was passed on.
    last_progress: Option<(Instant, u8)>,
    /// The latest progress too close to the last one passed on: passed on with the next one
    /// that is due, or when the call ends (coalesced, never lost).
    pending_progress: Option<(u8, String)>,
    /// The last `panic: ...` line the SDK logged: the reason behind a trap.
    last_panic: Option<String>,
}

impl HostCtx {
    pub fn new(tags: Arc<CallTags>, events: Option<EventSink>) -> Self {
        HostCtx {
            tags,
            events,
            log_limit: RateLimit::new(LOG_BURST, LOG_PER_SEC),
            logs_dropped: 0,
            last_progress: None,
            pending_progress: None,
            last_panic: None,
        }
    }

    /// Passes an event to the sink, if any.
    pub fn emit(&self, event: HandlerEvent) {
        if let Some(sink) = &self.events {
            sink(&self.tags, &event);
        }
    }

    /// Forgets the panic message of an earlier call.
    pub fn clear_panic(&mut self) {
        self.last_panic = None;
    }

    /// The panic message the handler logged before it trapped, if any.
    pub fn last_panic(&self) -> Option<&str> {
        self.last_panic.as_deref()
    }

    /// Log lines dropped since the last call of this; resets the count.
    pub fn take_dropped(&mut self) -> u32 {
        std::mem::take(&mut self.logs_dropped)
    }

    /// Passes on the progress a call reported last when it was held back (too close to the
    /// one before); the end of each call runs this.
    pub fn flush_progress(&mut self) {
        if let Some((percent, message)) = self.pending_progress.take() {
            self.pass_progress(percent, message);
        }
    }

    fn pass_progress(&mut self, percent: u8, message: String) {
        let message = clamp(message);
        self.last_progress = Some((Instant::now(), percent));
        tracing::debug!(
            target: "sandstep::handler",
            workflow = %self.tags.workflow_id, step = %self.tags.step, handler = %self.tags.handler_id,
            percent, "progress: {message}"
        );
        self.emit(HandlerEvent::Progress { percent, message });
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

/// A handler's message as the agent logs it: clamped to [`MAX_MESSAGE`] bytes, then control
/// characters (newlines, ANSI escapes) written as escapes, so a handler cannot forge log lines or
/// repaint a terminal.
fn clamp(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    if !s.chars().any(char::is_control) {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The view the generated bindings call into.
pub struct HostView<'a>(pub &'a mut HostCtx);

impl host::Host for HostView<'_> {
    async fn log(&mut self, level: WitLevel, message: String) -> wasmtime::Result<()> {
        if message.starts_with("panic: ") {
            self.0.last_panic = Some(clamp(message.clone()));
        }
        if !self.0.log_limit.allow(Instant::now()) {
            self.0.logs_dropped += 1;
            return Ok(());
        }
        let message = clamp(message);
        let t = &self.0.tags;
        let (w, s, h) = (&t.workflow_id, &t.step, &t.handler_id);
        let level = match level {
            WitLevel::Trace => {
                tracing::trace!(target: "sandstep::handler", workflow = %w, step = %s, handler = %h, "{message}");
                LogLevel::Trace
            }
            WitLevel::Debug => {
                tracing::debug!(target: "sandstep::handler", workflow = %w, step = %s, handler = %h, "{message}");
                LogLevel::Debug
            }
            WitLevel::Info => {
                tracing::info!(target: "sandstep::handler", workflow = %w, step = %s, handler = %h, "{message}");
                LogLevel::Info
            }
            WitLevel::Warn => {
                tracing::warn!(target: "sandstep::handler", workflow = %w, step = %s, handler = %h, "{message}");
                LogLevel::Warn
            }
            WitLevel::Error => {
                tracing::error!(target: "sandstep::handler", workflow = %w, step = %s, handler = %h, "{message}");
                LogLevel::Error
            }
        };
        self.0.emit(HandlerEvent::Log { level, message });
        Ok(())
    }

    async fn progress(&mut self, percent: u8, message: String) -> wasmtime::Result<()> {
        let percent = percent.min(100);
        let now = Instant::now();
        let due = match self.0.last_progress {
            None => true,
            Some((at, last)) => {
                (percent == 100 && last != 100)
                    || now.saturating_duration_since(at) >= PROGRESS_INTERVAL
            }
        };
        if due {
            self.0.pending_progress = None;
            self.0.pass_progress(percent, message);
        } else {
            self.0.pending_progress = Some((percent, message));
        }
        Ok(())
    }
}

impl crate::bindings::types::Host for HostView<'_> {}

struct HasHost;

impl HasData for HasHost {
    type Data<'a> = HostView<'a>;
}

/// Links `host` (and the type-only `types` interface) for every handler; `get` finds the
/// capability's state in the store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> HostView<'_>,
) -> wasmtime::Result<()> {
    host::add_to_linker::<T, HasHost>(linker, get)?;
    crate::bindings::types::add_to_linker::<T, HasHost>(linker, get)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{clamp, RateLimit};
    use std::time::{Duration, Instant};

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

    #[test]
    fn control_characters_cannot_forge_log_lines() {
        assert_eq!(
            clamp("done\n2026-11-30T00:00:00Z INFO forged\u{1b}[2K".into()),
            "done\\n2026-11-30T00:00:00Z INFO forged\\u{1b}[2K"
        );
        assert_eq!(clamp("plain text, ünïcode".into()), "plain text, ünïcode");
    }

    #[test]
    fn long_messages_are_clamped_on_a_char_boundary() {
        let s = clamp("ü".repeat(5000));
        assert!(s.len() <= super::MAX_MESSAGE + '…'.len_utf8());
        assert!(s.ends_with('…'));
    }
}
