//! Guest stdout and stderr become tracing events, tagged with workflow, step and handler.

use super::store::CallTags;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept; the rest of a longer line is dropped.
const MAX_LINE: usize = 4096;
/// Bytes of output accepted per store; beyond it, output is counted and dropped.
const MAX_TOTAL: usize = 1 << 20;

#[derive(Debug, Default)]
struct Buffer {
    line: Vec<u8>,
    total: usize,
    dropped: usize,
}

/// One of the guest's output streams.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    tags: Arc<CallTags>,
    stream: &'static str,
    buf: Arc<Mutex<Buffer>>,
}

impl GuestOutput {
    pub(crate) fn new(tags: Arc<CallTags>, stream: &'static str) -> Self {
        GuestOutput {
            tags,
            stream,
            buf: Arc::default(),
        }
    }

    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        tracing::info!(
            target: "sandstep::guest",
            workflow = %self.tags.workflow_id,
            step = %self.tags.step,
            handler = %self.tags.handler_id,
            stream = self.stream,
            "{text}"
        );
    }

    fn write(&self, bytes: &[u8]) {
        let mut b = self.buf.lock().expect("output lock is never poisoned");
        if b.total >= MAX_TOTAL {
            b.dropped += bytes.len();
            return;
        }
        b.total += bytes.len();
        for chunk in bytes.split_inclusive(|&c| c == b'\n') {
            let room = MAX_LINE.saturating_sub(b.line.len());
            let body = chunk.strip_suffix(b"\n").unwrap_or(chunk);
            b.line.extend_from_slice(&body[..body.len().min(room)]);
            if chunk.ends_with(b"\n") {
                let line = std::mem::take(&mut b.line);
                self.emit(&line);
            }
        }
    }
}

impl Drop for GuestOutput {
    fn drop(&mut self) {
        // The last clone flushes a partial line and reports what was dropped.
        if Arc::strong_count(&self.buf) == 1 {
            let b = self.buf.lock().expect("output lock is never poisoned");
            if !b.line.is_empty() {
                self.emit(&b.line.clone());
            }
            if b.dropped > 0 {
                tracing::warn!(
                    workflow = %self.tags.workflow_id,
                    step = %self.tags.step,
                    handler = %self.tags.handler_id,
                    "dropped {} bytes of guest {} past the {} byte cap",
                    b.dropped,
                    self.stream,
                    MAX_TOTAL
                );
            }
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
