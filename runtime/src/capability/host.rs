//! `sandstep:handler/host`: logging and progress, for every handler.
//!
//! Lines are re-emitted as tracing events tagged with workflow, step and handler, clamped to
//! [`MAX_MESSAGE`] bytes, and limited to
//! [`LOG_BUDGET`](crate::sandbox::store::LOG_BUDGET) lines per store so a flooding handler cannot
//! drown the agent's log.

use crate::bindings::host::{self, LogLevel as WitLevel};
use crate::sandbox::store::{HandlerEvent, HostState, LogLevel, MAX_MESSAGE};
use wasmtime::component::{HasSelf, Linker};

fn clamp(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl HostState {
    fn emit(&self, event: HandlerEvent) {
        if let Some(sink) = &self.events {
            sink(&self.tags, &event);
        }
    }
}

impl host::Host for HostState {
    async fn log(&mut self, level: WitLevel, message: String) -> wasmtime::Result<()> {
        let message = clamp(message);
        if message.starts_with("panic: ") {
            self.last_panic = Some(message.clone());
        }
        if self.log_budget == 0 {
            self.logs_dropped += 1;
            return Ok(());
        }
        self.log_budget -= 1;
        let t = &self.tags;
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
        self.emit(HandlerEvent::Log { level, message });
        Ok(())
    }

    async fn progress(&mut self, percent: u8, message: String) -> wasmtime::Result<()> {
        let percent = percent.min(100);
        let message = clamp(message);
        tracing::debug!(
            target: "sandstep::handler",
            workflow = %self.tags.workflow_id, step = %self.tags.step, handler = %self.tags.handler_id,
            percent, "progress: {message}"
        );
        self.emit(HandlerEvent::Progress { percent, message });
        Ok(())
    }
}

impl crate::bindings::types::Host for HostState {}

/// Links `host` (and the type-only `types` interface) for every handler.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    crate::bindings::types::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::clamp;

    #[test]
    fn long_messages_are_clamped_on_a_char_boundary() {
        let s = clamp("ü".repeat(5000));
        assert!(s.len() <= super::MAX_MESSAGE + '…'.len_utf8());
        assert!(s.ends_with('…'));
    }
}
