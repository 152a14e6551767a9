//! Streaming a verified file straight into a destination (a firmware slot), with no copy in the
//! store: size and sha256 are checked as it is written, and an interrupted transfer (a dropped
//! connection, a crash, a reboot) resumes from the destination's last durable prefix with an
//! HTTP Range request. That prefix is hashed again from the destination, not fetched again.

use super::{
    hash_file, open_local, range_start, Attempt, DownloadError, Downloader, Got, Progress, Source,
    Wanted,
};
use crate::digest::Sha256;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where a streamed file goes.
pub struct Destination {
    /// Written at offsets from 0 (a block device as it is, or a file).
    pub file: std::fs::File,
    /// The first bytes of `file` that already are the wanted file's and durable (0: none).
    pub resume_at: u64,
    /// Sync and record progress after this many bytes.
    pub checkpoint_every: u64,
    /// Called with the durable length after each sync, to record where to resume.
    pub checkpoint: Arc<dyn Fn(u64) + Send + Sync>,
}

/// Where the boot test may cut the power mid-stream (`fault::hold`): past the first sync-free
/// megabytes, so the destination holds an unsynced partial write.
const HOLD_AT: u64 = 4 << 20;

/// Writes through to the destination, syncing every `every` bytes and saying how far is
/// durable.
struct Checkpointing {
    file: std::fs::File,
    pos: u64,
    since: u64,
    every: u64,
    /// How far the destination holds the file (in the page cache, at least): where a retry in
    /// this process resumes.
    written: Arc<AtomicU64>,
    on: Arc<dyn Fn(u64) + Send + Sync>,
}

impl Write for Checkpointing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.pos += n as u64;
        self.since += n as u64;
        self.written.store(self.pos, Ordering::SeqCst);
        if self.pos >= HOLD_AT && self.pos - (n as u64) < HOLD_AT {
            crate::fault::hold("stream-write");
        }
        if self.since >= self.every {
            self.file.sync_data()?;
            self.since = 0;
            (self.on)(self.pos);
            crate::fault::point("stream-checkpoint");
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Downloader {
    /// Streams `file` from `source` into `dest`, verifying its size and sha256; the bytes
    /// fetched (less than the size when it resumed). The destination is synced at the end.
    pub async fn stream_into(
        &self,
        file: &Wanted,
        source: Source<'_>,
        dest: Destination,
        progress: Progress<'_>,
    ) -> Result<u64, DownloadError> {
        let written = Arc::new(AtomicU64::new(dest.resume_at.min(file.size)));
        let mut attempt = 0u32;
        let mut restarted = false;
        loop {
            attempt += 1;
            let have = written.load(Ordering::SeqCst);
            let outcome = self
                .stream_attempt(file, source, &dest, have, &written, progress)
                .await;
            match outcome {
                Ok((h, end)) => {
                    let actual = h.finalize();
                    if actual.as_slice() != file.sha256 && have > 0 && !restarted {
                        // The kept prefix may not be this image's any more (the slot was
                        // written by something else since the record): once, from nothing.
                        tracing::warn!(file = %file.file_name, "the resumed image fails its hash; streaming it again from the start");
                        restarted = true;
                        written.store(0, Ordering::SeqCst);
                        continue;
                    }
                    if actual.as_slice() != file.sha256 {
                        return Err(DownloadError::HashMismatch {
                            file: file.file_name.clone(),
                            expected: file.key(),
                            actual: hex::encode(actual),
                        });
                    }
                    dest.file.sync_all().map_err(dest_err(file))?;
                    return Ok(end - dest.resume_at.min(end));
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Paused) => attempt -= 1,
                Err(Attempt::Retry(last)) if attempt >= self.config.attempts => {
                    return Err(DownloadError::gave_up(file, source, attempt, last));
                }
                Err(Attempt::Retry(reason)) => {
                    let delay = self.config.backoff(attempt);
                    tracing::warn!(file = %file.file_name, attempt, "stream interrupted ({reason}); resuming in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Checks that a file to be streamed later is there with its size (ADU downloads every
    /// file before the first install; a streamed image is at least seen before it): a HEAD
    /// request, retried like a download, or a look at the local file.
    pub async fn probe(&self, file: &Wanted, source: Source<'_>) -> Result<(), DownloadError> {
        let url = match source {
            Source::Url(u) if u.starts_with("http://") || u.starts_with("https://") => u,
            local => {
                let size = open_local(local, &file.file_name)
                    .and_then(|f| f.metadata())
                    .map(|m| m.len());
                return match size {
                    Ok(n) if n == file.size => Ok(()),
                    Ok(n) => Err(DownloadError::SizeMismatch {
                        file: file.file_name.clone(),
                        expected: file.size,
                        actual: n,
                    }),
                    Err(e) => Err(DownloadError::Source {
                        file: file.file_name.clone(),
                        reason: e.to_string(),
                    }),
                };
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = match self.client(&file.file_name)?.head(url).send().await {
                Ok(resp) => return head_says(file, url, &resp, &self.via(resp.status().as_u16())),
                Err(e) => e.to_string(),
            };
            if attempt >= self.config.attempts {
                return Err(DownloadError::gave_up(
                    file,
                    Source::Url(url),
                    attempt,
                    last,
                ));
            }
            tokio::time::sleep(self.config.backoff(attempt)).await;
        }
    }

    /// One attempt from byte `have` (already in the destination): the digest of the whole file
    /// and where it ended.
    async fn stream_attempt(
        &self,
        file: &Wanted,
        source: Source<'_>,
        dest: &Destination,
        have: u64,
        written: &Arc<AtomicU64>,
        progress: Progress<'_>,
    ) -> Result<(Sha256, u64), Attempt> {
        let dest_err = |e| Attempt::Fatal(dest_err(file)(e));
        let mut out = dest.file.try_clone().map_err(dest_err)?;
        let (resp, offset) = match source {
            Source::Url(url) if url.starts_with("http://") || url.starts_with("https://") => {
                let (resp, offset) = match self.request_from(file, url, have).await? {
                    Got::Body(resp, offset) => (resp, offset),
                    Got::StartOver(reason) => return Err(Attempt::Retry(reason)),
                };
                if offset == 0 && have > 0 {
                    tracing::info!(file = %file.file_name, "the server does not resume (no Range support): streaming from the start");
                }
                (Some(resp), offset)
            }
            _ => (None, have),
        };
        // The digest covers the kept prefix: hash it from the destination, then what arrives.
        out.seek(SeekFrom::Start(0)).map_err(dest_err)?;
        let (h, kept) = hash_file(&mut out, Some(offset)).map_err(dest_err)?;
        if kept != offset {
            written.store(0, Ordering::SeqCst);
            return Err(Attempt::Retry(
                "the destination is shorter than its record".into(),
            ));
        }
        written.store(offset, Ordering::SeqCst);
        let sink = Checkpointing {
            file: out,
            pos: offset,
            since: 0,
            every: dest.checkpoint_every.max(1),
            written: written.clone(),
            on: dest.checkpoint.clone(),
        };
        let (h, end) = match resp {
            Some(resp) => {
                self.receive(file, resp, Box::new(sink), h, offset, progress)
                    .await?
            }
            None => copy_local(file, source, sink, h, offset, progress)?,
        };
        if end < file.size {
            return Err(Attempt::Retry(format!(
                "transfer ended at byte {end} of {}",
                file.size
            )));
        }
        Ok((h, end))
    }
}

fn dest_err(file: &Wanted) -> impl Fn(std::io::Error) -> DownloadError + '_ {
    move |cause| DownloadError::Destination {
        file: file.file_name.clone(),
        cause,
    }
}

/// What a HEAD answer says of a file to stream: there with its size, or gone (404, 410). Any
/// other refusal gets the benefit of the doubt, and the stream at install says what is wrong: a
/// pre-signed URL is signed for GET only (a HEAD gets 403), and some servers do not answer HEAD
/// at all (405, 501).
fn head_says(
    file: &Wanted,
    url: &str,
    resp: &reqwest::Response,
    via: &str,
) -> Result<(), DownloadError> {
    let status = resp.status();
    if !status.is_success() && !matches!(status.as_u16(), 404 | 410) {
        tracing::debug!(file = %file.file_name, status = status.as_u16(), "HEAD not answered; the stream will tell");
        return Ok(());
    }
    if !status.is_success() {
        return Err(DownloadError::Http {
            file: file.file_name.clone(),
            url: url.to_owned(),
            status: status.as_u16(),
            via: via.to_owned(),
        });
    }
    // The header itself: reqwest's content_length() is the (empty) body's for HEAD.
    let announced = resp
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(n) if n != file.size => Err(DownloadError::SizeMismatch {
            file: file.file_name.clone(),
            expected: file.size,
            actual: n,
        }),
        _ => Ok(()),
    }
}

/// A local source (a files directory, or a `file://` URL) copied from `offset` on.
fn copy_local(
    file: &Wanted,
    source: Source<'_>,
    mut sink: Checkpointing,
    mut h: Sha256,
    offset: u64,
    progress: Progress<'_>,
) -> Result<(Sha256, u64), Attempt> {
    let source_err = |e: std::io::Error| {
        Attempt::Fatal(DownloadError::Source {
            file: file.file_name.clone(),
            reason: e.to_string(),
        })
    };
    let mut src = open_local(source, &file.file_name).map_err(source_err)?;
    src.seek(SeekFrom::Start(offset)).map_err(source_err)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut end = offset;
    loop {
        let n = src.read(&mut buf).map_err(source_err)?;
        if n == 0 {
            break;
        }
        end += n as u64;
        if end > file.size {
            return Err(Attempt::Fatal(DownloadError::SizeMismatch {
                file: file.file_name.clone(),
                expected: file.size,
                actual: end,
            }));
        }
        h.update(&buf[..n]);
        sink.write_all(&buf[..n])
            .map_err(|e| Attempt::Fatal(dest_err(file)(e)))?;
        progress(end, file.size);
    }
    Ok((h, end))
}

impl Downloader {
    /// Fetches bytes `start..end` of `url` into `sink`, resuming within the range after a
    /// dropped connection; `Ok(false)` when the server ignores Range requests (then nothing was
    /// passed to `sink`).
    pub async fn fetch_range(
        &self,
        file: &Wanted,
        url: &str,
        (start, end): (u64, u64),
        sink: &mut (dyn FnMut(u64, &[u8]) -> std::io::Result<()> + Send),
    ) -> Result<bool, DownloadError> {
        let mut at = start;
        let mut attempt = 0u32;
        while at < end {
            attempt += 1;
            self.hold(file).await?;
            let req = self
                .client(&file.file_name)?
                .get(url)
                .header(reqwest::header::RANGE, format!("bytes={at}-{}", end - 1));
            let failed = match req.send().await {
                Ok(resp) if resp.status() == reqwest::StatusCode::PARTIAL_CONTENT => {
                    match self.take_range(file, resp, &mut at, end, sink).await {
                        Ok(()) => continue,
                        Err(Attempt::Fatal(e)) => return Err(e),
                        Err(Attempt::Paused) => {
                            attempt -= 1;
                            continue;
                        }
                        Err(Attempt::Retry(why)) => why,
                    }
                }
                Ok(resp) if resp.status().is_success() => return Ok(false),
                Ok(resp) if resp.status().is_server_error() => {
                    format!("HTTP {}", resp.status().as_u16())
                }
                Ok(resp) => {
                    return Err(DownloadError::Http {
                        file: file.file_name.clone(),
                        url: url.to_owned(),
                        status: resp.status().as_u16(),
                        via: self.via(resp.status().as_u16()),
                    })
                }
                Err(e) => e.to_string(),
            };
            if attempt >= self.config.attempts {
                return Err(DownloadError::gave_up(
                    file,
                    Source::Url(url),
                    attempt,
                    failed,
                ));
            }
            tokio::time::sleep(self.config.backoff(attempt)).await;
        }
        Ok(true)
    }

    /// Passes a 206 body on to `sink` from `*at`, advancing it; stops at `end`.
    async fn take_range(
        &self,
        file: &Wanted,
        mut resp: reqwest::Response,
        at: &mut u64,
        end: u64,
        sink: &mut (dyn FnMut(u64, &[u8]) -> std::io::Result<()> + Send),
    ) -> Result<(), Attempt> {
        let first = range_start(&resp);
        if first != Some(*at) {
            return Err(Attempt::Retry(format!(
                "asked for byte {at}, the server sent from {first:?}"
            )));
        }
        let stall = std::time::Duration::from_secs(self.config.stall_timeout_secs);
        while *at < end {
            let next = tokio::time::timeout(stall, resp.chunk())
                .await
                .map_err(|_| Attempt::Retry(format!("no data for {stall:?}")))?
                .map_err(|e| Attempt::Retry(format!("range broke off at byte {at}: {e}")))?;
            let Some(chunk) = next else {
                return Err(Attempt::Retry(format!("range ended at byte {at}")));
            };
            let take = chunk.len().min((end - *at) as usize);
            sink(*at, &chunk[..take]).map_err(|e| Attempt::Fatal(dest_err(file)(e)))?;
            *at += take as u64;
            self.throttle(chunk.len()).await?;
        }
        Ok(())
    }
}
