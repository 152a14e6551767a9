//! `sandstep:handler/host`: logging and progress, for every handler.
//!
//! Lines are re-emitted as tracing events tagged with workflow, step and handler, clamped to
//! [`MAX_MESSAGE`] bytes, and rate-limited per store (a burst of
//! [`LOG_BURST`](crate::sandbox::store::LOG_BURST), then
//! [`LOG_PER_SEC`](crate::sandbox::store::LOG_PER_SEC) a second) so a flooding handler cannot
//! drown the agent's log. Progress events pass at most every
//! [`PROGRESS_INTERVAL`](crate::sandbox::store::PROGRESS_INTERVAL), and always when they reach
//! 100%; what is dropped is counted and reported after the call.

use crate::bindings::host::{self, LogLevel as WitLevel};
use crate::sandbox::store::{HandlerEvent, HostState, LogLevel, MAX_MESSAGE, PROGRESS_INTERVAL};
use std::time::Instant;
use wasmtime::component::{HasSelf, Linker};

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

impl HostState {
    fn emit(&self, event: HandlerEvent) {
        if let Some(sink) = &self.events {
            sink(&self.tags, &event);
        }
    }
}

impl host::Host for HostState {
    async fn log(&mut self, level: WitLevel, message: String) -> wasmtime::Result<()> {
        if message.starts_with("panic: ") {
            self.last_panic = Some(clamp(message.clone()));
        }
        if !self.log_limit.allow(Instant::now()) {
            self.logs_dropped += 1;
            return Ok(());
        }
        let message = clamp(message);
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
        let now = Instant::now();
        let due = match self.last_progress {
            None => true,
            Some((at, last)) => {
                (percent == 100 && last != 100)
                    || now.saturating_duration_since(at) >= PROGRESS_INTERVAL
            }
        };
        if !due {
            self.progress_dropped += 1;
            return Ok(());
        }
        self.last_progress = Some((now, percent));
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
