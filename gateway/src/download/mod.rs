//! Verified downloads into a content-addressed store.
//!
//! A file is streamed to `<sha256>.partial` while its sha256 is computed; only when size and digest
//! both match the manifest is it renamed to `<sha256>`. An interrupted transfer resumes with a
//! Range request; network errors and 5xx answers are retried with exponential backoff and jitter
//! (up to a cap); a server that sends more than `sizeInBytes` or the wrong bytes is refused and the
//! partial file deleted. A file already in the store with the right digest is not fetched again
//! (ADU's 502); "with the right digest" is checked by hashing it on every use, so store files need
//! no fsync, and a partial file that fails its hash after resuming is fetched again from the start.
//! Proxies come from the usual environment variables (`https_proxy`, `no_proxy`, ...).

mod document;
pub mod pace;
pub mod rate;
mod stream;
pub use stream::Destination;

use crate::digest::Sha256;
use cap_std::fs::{Dir, File, OpenOptions};
use futures_util::StreamExt;
use sandstep_model::codes::{erc, ExtendedResultCode};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

/// How often a transfer reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Download settings (the `[download]` table of the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DownloadConfig {
    /// Attempts per file, the first included.
    pub attempts: u32,
    /// Delay before the first retry, in milliseconds; doubles each retry.
    pub initial_backoff_ms: u64,
    /// Longest delay between retries, in milliseconds.
    pub max_backoff_ms: u64,
    /// Connection timeout, in seconds.
    pub connect_timeout_secs: u64,
    /// A transfer that receives nothing for this long is retried, in seconds.
    pub stall_timeout_secs: u64,
    /// The HTTP(S) proxy every download goes through (`http://[user:password@]host:port`; the
    /// credentials are sent as Basic authorization). Without it, `HTTPS_PROXY`, `HTTP_PROXY`,
    /// `ALL_PROXY` and `NO_PROXY` of the agent's environment apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Hosts reached directly despite `proxy` (comma-separated: names, `.domain` suffixes,
    /// IP addresses and CIDR ranges, as `NO_PROXY`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_proxy: Option<String>,
    /// The bandwidth cap: bytes a second for all downloads together (store files, firmware
    /// streams, delta ranges); none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_sec: Option<u64>,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            attempts: 6,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            connect_timeout_secs: 30,
            stall_timeout_secs: 60,
            proxy: None,
            no_proxy: None,
            max_bytes_per_sec: None,
        }
    }
}

/// Why a `[download]` setting is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[download] {field}: {problem}")]
pub struct SettingError {
    pub field: &'static str,
    pub problem: String,
}

impl DownloadConfig {
    /// Checks the settings a person writes: a proxy must be an `http://` or `https://` URL
    /// with a host and a port, and no path; attempts and timeouts must not be zero.
    pub fn validate(&self) -> Result<(), SettingError> {
        let bad = |field, problem: String| Err(SettingError { field, problem });
        if self.attempts == 0 {
            return bad("attempts", "must be at least 1".into());
        }
        if self.connect_timeout_secs == 0 {
            return bad("connect-timeout-secs", "must not be 0".into());
        }
        if self.stall_timeout_secs == 0 {
            return bad("stall-timeout-secs", "must not be 0".into());
        }
        if self.max_bytes_per_sec == Some(0) {
            return bad(
                "max-bytes-per-sec",
                "must not be 0 (leave it out for no cap)".into(),
            );
        }
        if let Some(p) = &self.proxy {
            let shown = redact(p);
            let url = match reqwest::Url::parse(p) {
                Ok(u) => u,
                Err(e) => return bad("proxy", format!("`{shown}` is not a URL ({e})")),
            };
            if !matches!(url.scheme(), "http" | "https") {
                return bad(
                    "proxy",
                    format!("`{shown}`: the scheme must be http or https"),
                );
            }
            if url.host_str().is_none_or(str::is_empty) || url.port_or_known_default().is_none() {
                return bad("proxy", format!("`{shown}`: needs a host"));
            }
            if !matches!(url.path(), "" | "/") || url.query().is_some() {
                return bad(
                    "proxy",
                    format!("`{shown}`: a proxy URL has no path or query"),
                );
            }
        }
        Ok(())
    }

    /// The proxy URL without its password, for messages and `doctor`.
    pub fn proxy_shown(&self) -> Option<String> {
        self.proxy.as_deref().map(redact)
    }

    /// The delay before retry `n` (1-based): exponential, capped, with ±50% jitter.
    pub fn backoff(&self, n: u32) -> Duration {
        let base = self
            .initial_backoff_ms
            .saturating_mul(1u64 << n.saturating_sub(1).min(30))
            .min(self.max_backoff_ms);
        let jitter = 0.5 + fastrand::f64();
        Duration::from_millis((base as f64 * jitter) as u64)
            .min(Duration::from_millis(self.max_backoff_ms))
    }
}

/// A file the manifest asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub id: String,
    pub file_name: String,
    pub size: u64,
    pub sha256: [u8; 32],
    /// The manifest's `downloadHandler.id`, if any (see `FileEntry::download_handler`).
    pub download_handler: Option<String>,
}

impl Wanted {
    /// The store name: the digest in hex.
    pub fn key(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Where to get it.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// An http, https or file URL.
    Url(&'a str),
    /// A local directory holding it under its `fileName`.
    Directory(&'a Dir),
}

/// A file's source, owned.
#[derive(Debug)]
pub enum OwnedSource {
    Directory(Dir),
    Url(String),
}

impl OwnedSource {
    pub fn as_source(&self) -> Source<'_> {
        match self {
            OwnedSource::Directory(d) => Source::Directory(d),
            OwnedSource::Url(u) => Source::Url(u),
        }
    }
}

/// What fetching did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// Transferred (500).
    Downloaded { bytes: u64 },
    /// Already in the store with the right digest (502).
    AlreadyPresent,
}

/// Why a file could not be obtained. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("`{file}`: sha256 mismatch (expected {expected}, got {actual}); the partial file was deleted")]
    HashMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error(
        "`{file}`: size mismatch: the manifest says {expected} bytes, the source gave {actual}"
    )]
    SizeMismatch {
        file: String,
        expected: u64,
        actual: u64,
    },
    #[error("`{file}`: {url} answered HTTP {status}{via}")]
    Http {
        file: String,
        url: String,
        status: u16,
        /// Through which configured proxy, said in the message (empty without one).
        via: String,
    },
    #[error("`{file}`: {url}: gave up after {attempts} attempts: {last}")]
    Network {
        file: String,
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("`{file}`: {reason}")]
    Source { file: String, reason: String },
    #[error("`{file}`: writing it where it streams to: {cause}")]
    Destination {
        file: String,
        /// In the message, not a `source`: printed once.
        cause: std::io::Error,
    },
    #[error("`{file}`: {reason}")]
    Held { file: String, reason: &'static str },
    #[error("`{file}`: download store: {cause}")]
    Store {
        file: String,
        /// In the message, not a `source`: printed once.
        cause: std::io::Error,
    },
}

impl DownloadError {
    /// Every attempt at `file` from `source` failed; `last` says how the last one did.
    fn gave_up(file: &Wanted, source: Source<'_>, attempts: u32, last: String) -> Self {
        DownloadError::Network {
            file: file.file_name.clone(),
            url: match source {
                Source::Url(u) => u.to_owned(),
                Source::Directory(_) => file.file_name.clone(),
            },
            attempts,
            last,
        }
    }

    /// The extended result code for the step result.
    pub fn erc(&self) -> ExtendedResultCode {
        match self {
            DownloadError::HashMismatch { .. } => erc::FILE_HASH_MISMATCH,
            DownloadError::SizeMismatch { .. } => erc::WORKFLOW_FILE_SIZE_MISMATCH,
            _ => erc::WORKFLOW_DOWNLOAD_FAILED,
        }
    }
}

/// One attempt's failure: retry (keeping the partial file) or give up; or the download window
/// closed (keeping the partial file: the next attempt waits for the window and is not counted).
enum Attempt {
    Retry(String),
    Fatal(DownloadError),
    Paused,
}

/// Progress callback: (bytes so far, total).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// Fetches files into the store directory.
pub struct Downloader {
    client: std::sync::OnceLock<reqwest::Client>,
    config: DownloadConfig,
    store: Dir,
    /// The bandwidth cap every transfer takes its bytes from.
    limit: Option<rate::RateLimit>,
    /// The running deployment's window and cap, if it has any.
    pace: std::sync::Mutex<Option<std::sync::Arc<pace::Pace>>>,
}

impl std::fmt::Debug for Downloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloader")
            .field("config", &self.config)
            .finish()
    }
}

const CHUNK: usize = 256 * 1024;

fn hash_file(f: &mut impl Read, limit: Option<u64>) -> std::io::Result<(Sha256, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let want = match limit {
            Some(l) => (l - total).min(CHUNK as u64) as usize,
            None => CHUNK,
        };
        if want == 0 {
            break;
        }
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((h, total))
}

impl Downloader {
    /// A downloader storing into `store` (the data dir's `downloads/`).
    pub fn new(store: Dir, config: DownloadConfig) -> Result<Self, reqwest::Error> {
        Ok(Downloader {
            client: std::sync::OnceLock::new(),
            limit: config.max_bytes_per_sec.map(rate::RateLimit::new),
            pace: Default::default(),
            config,
            store,
        })
    }

    /// The HTTP client, set up on the first download: it loads the system's trust anchors and
    /// TLS stack, which an agent waiting for deployments (or one fed from local files) never
    /// needs.
    fn client(&self, file: &str) -> Result<&reqwest::Client, DownloadError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let setup = |e: reqwest::Error| DownloadError::Source {
            file: file.to_owned(),
            reason: format!("the HTTP client cannot be set up: {e}"),
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(self.config.connect_timeout_secs))
            .user_agent(concat!("sandstep/", env!("CARGO_PKG_VERSION")));
        if let Some(url) = &self.config.proxy {
            // Checked when the config was read (DownloadConfig::validate).
            let no_proxy = self.config.no_proxy.as_deref().unwrap_or("");
            let proxy = reqwest::Proxy::all(url)
                .map_err(setup)?
                .no_proxy(reqwest::NoProxy::from_string(no_proxy));
            builder = builder.proxy(proxy);
        }
        let c = builder.build().map_err(setup)?;
        Ok(self.client.get_or_init(|| c))
    }

    /// What an HTTP refusal's message says of the configured proxy: which one, and for a 407
    /// (or a 401, which tinyproxy sends) that it may be the proxy refusing the credentials.
    pub(crate) fn via(&self, status: u16) -> String {
        match (self.config.proxy_shown(), status) {
            (None, _) => String::new(),
            (Some(p), 407 | 401) => {
                format!(" through the proxy {p} (the proxy may have refused its credentials)")
            }
            (Some(p), _) => format!(" through the proxy {p}"),
        }
    }

    /// The store directory.
    pub fn store(&self) -> &Dir {
        &self.store
    }

    fn store_err(file: &Wanted) -> impl Fn(std::io::Error) -> DownloadError + '_ {
        move |source| DownloadError::Store {
            file: file.file_name.clone(),
            cause: source,
        }
    }

    /// Whether the store holds the file with the right digest. A corrupt entry is removed.
    pub fn verify_present(&self, file: &Wanted) -> Result<bool, DownloadError> {
        let key = file.key();
        let mut f = match self.store.open(&key) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Self::store_err(file)(e)),
        };
        let (h, n) = hash_file(&mut f, None).map_err(Self::store_err(file))?;
        if n == file.size && h.finalize().as_slice() == file.sha256 {
            return Ok(true);
        }
        tracing::warn!(file = %file.file_name, "stored copy is corrupt; fetching it again");
        self.store
            .remove_file(&key)
            .map_err(Self::store_err(file))?;
        Ok(false)
    }

    /// Makes sure the store holds `file`, fetching it from `source` when needed.
    pub async fn fetch(
        &self,
        file: &Wanted,
        source: Source<'_>,
        progress: Progress<'_>,
    ) -> Result<Fetched, DownloadError> {
        if self.verify_present(file)? {
            progress(file.size, file.size);
            return Ok(Fetched::AlreadyPresent);
        }
        let partial = format!("{}.partial", file.key());
        let mut attempt = 0u32;
        let mut restarted = false;
        loop {
            attempt += 1;
            // A partial file left by an earlier run may be torn (it is never synced): if the
            // resumed transfer then fails its hash, start over from nothing, once.
            let resumed = self.store.metadata(&partial).is_ok_and(|m| m.len() > 0);
            let outcome = match source {
                Source::Directory(dir) => self
                    .copy_local(file, dir, &partial, progress)
                    .map_err(Attempt::Fatal),
                Source::Url(url) if url.starts_with("file://") => {
                    let path = url.trim_start_matches("file://");
                    match open_regular(path) {
                        Ok(src) => self
                            .copy_from(file, src, &partial, progress)
                            .map_err(Attempt::Fatal),
                        Err(e) => Err(Attempt::Fatal(DownloadError::Source {
                            file: file.file_name.clone(),
                            reason: format!("{url}: {e}"),
                        })),
                    }
                }
                Source::Url(url) => self.fetch_http(file, url, &partial, progress).await,
            };
            match outcome {
                Ok((h, bytes)) => match self.finish(file, &partial, h) {
                    Err(DownloadError::HashMismatch { .. }) if resumed && !restarted => {
                        tracing::warn!(file = %file.file_name, "the resumed file fails its hash; fetching it again from the start");
                        restarted = true;
                    }
                    Err(e) => return Err(e),
                    Ok(()) => return Ok(Fetched::Downloaded { bytes }),
                },
                Err(Attempt::Fatal(e)) => {
                    if matches!(
                        e,
                        DownloadError::HashMismatch { .. } | DownloadError::SizeMismatch { .. }
                    ) {
                        let _ = self.store.remove_file(&partial);
                    }
                    return Err(e);
                }
                Err(Attempt::Paused) => attempt -= 1,
                Err(Attempt::Retry(reason)) if attempt >= self.config.attempts => {
                    return Err(DownloadError::gave_up(file, source, attempt, reason));
                }
                Err(Attempt::Retry(reason)) => {
                    let delay = self.config.backoff(attempt);
                    tracing::warn!(file = %file.file_name, attempt, "download interrupted ({reason}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Checks the complete partial file's digest (computed while streaming; every path has already
    /// checked the size) and moves it into place.
    fn finish(&self, file: &Wanted, partial: &str, h: Sha256) -> Result<(), DownloadError> {
        let actual = h.finalize();
        if actual.as_slice() != file.sha256 {
            let _ = self.store.remove_file(partial);
            return Err(DownloadError::HashMismatch {
                file: file.file_name.clone(),
                expected: file.key(),
                actual: hex::encode(actual),
            });
        }
        // Not synced: a copy torn by a crash fails `verify_present`, which every use runs first
        // (the workflow fetches again on resume), and is fetched again. Durability is the slot's
        // and the journal's business; an fsync here would write every image to disk twice.
        self.store
            .rename(partial, &self.store, file.key())
            .map_err(Self::store_err(file))
    }

    fn open_partial(
        &self,
        file: &Wanted,
        partial: &str,
        truncate: bool,
    ) -> Result<File, DownloadError> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(truncate);
        self.store
            .open_with(partial, &opts)
            .map_err(Self::store_err(file))
    }

    fn copy_local(
        &self,
        file: &Wanted,
        dir: &Dir,
        partial: &str,
        progress: Progress<'_>,
    ) -> Result<(Sha256, u64), DownloadError> {
        let src = open_regular_in(dir, &file.file_name).map_err(|e| DownloadError::Source {
            file: file.file_name.clone(),
            reason: format!("cannot open it in the files directory: {e}"),
        })?;
        self.copy_from(file, src, partial, progress)
    }

    /// Copies a local source, refusing more than `sizeInBytes`.
    fn copy_from(
        &self,
        file: &Wanted,
        mut src: std::fs::File,
        partial: &str,
        progress: Progress<'_>,
    ) -> Result<(Sha256, u64), DownloadError> {
        let mut out = self.open_partial(file, partial, true)?;
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        let mut h = Sha256::new();
        loop {
            let n = src.read(&mut buf).map_err(|e| DownloadError::Source {
                file: file.file_name.clone(),
                reason: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > file.size {
                return Err(DownloadError::SizeMismatch {
                    file: file.file_name.clone(),
                    expected: file.size,
                    actual: total,
                });
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(Self::store_err(file))?;
            progress(total, file.size);
        }
        if total != file.size {
            return Err(DownloadError::SizeMismatch {
                file: file.file_name.clone(),
                expected: file.size,
                actual: total,
            });
        }
        Ok((h, total))
    }

    async fn fetch_http(
        &self,
        file: &Wanted,
        url: &str,
        partial: &str,
        progress: Progress<'_>,
    ) -> Result<(Sha256, u64), Attempt> {
        let store_err = |e| Attempt::Fatal(Self::store_err(file)(e));
        // Resume from what an earlier attempt (or run) left behind.
        let mut out = self
            .open_partial(file, partial, false)
            .map_err(Attempt::Fatal)?;
        let mut have = out.seek(SeekFrom::End(0)).map_err(store_err)?;
        if have > file.size {
            out.set_len(0).map_err(store_err)?;
            have = 0;
        }
        if have == file.size {
            // Every byte came before the last attempt ended (killed before the rename, or a
            // window closing on the last chunk): nothing is left to ask the server for.
            out.seek(SeekFrom::Start(0)).map_err(store_err)?;
            let (h, _) = hash_file(&mut out, Some(have)).map_err(store_err)?;
            progress(have, file.size);
            return Ok((h, 0));
        }
        let started = Instant::now();
        let (resp, offset) = match self.request_from(file, url, have).await? {
            Got::Body(resp, offset) => (resp, offset),
            Got::StartOver(reason) => {
                out.set_len(0).map_err(store_err)?;
                return Err(Attempt::Retry(reason));
            }
        };
        out.set_len(offset).map_err(store_err)?;
        // The digest covers the kept prefix too: hash it once, then every chunk as it arrives.
        out.seek(SeekFrom::Start(0)).map_err(store_err)?;
        let (h, kept) = hash_file(&mut out, Some(offset)).map_err(store_err)?;
        if kept != offset {
            return Err(store_err(std::io::Error::other(
                "partial file shrank while resuming",
            )));
        }
        let (h, end) = self
            .receive(file, resp, Box::new(out), h, offset, progress)
            .await?;
        if end < file.size {
            return Err(Attempt::Retry(format!(
                "transfer ended at byte {end} of {}",
                file.size
            )));
        }
        tracing::debug!(file = %file.file_name, bytes = end, elapsed = ?started.elapsed(), "downloaded");
        Ok((h, end - offset))
    }

    /// Streams the body into `out` from `offset` on, hashing as it goes; the digest and where the
    /// body ended. Hashing and writing run on a blocking thread while the next chunks arrive, so
    /// the transfer and the sha256 overlap (on a gateway's few cores, hashing is the
    /// bottleneck). The sink is always joined before returning: a retry must not reopen the
    /// partial file while chunks are still being written to it.
    async fn receive(
        &self,
        file: &Wanted,
        resp: reqwest::Response,
        out: Box<dyn Write + Send>,
        mut h: Sha256,
        mut offset: u64,
        progress: Progress<'_>,
    ) -> Result<(Sha256, u64), Attempt> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(32);
        let sink = tokio::task::spawn_blocking(move || -> std::io::Result<Sha256> {
            // HTTP chunks are a few KiB: batch them into large writes.
            let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
            while let Some(chunk) = rx.blocking_recv() {
                h.update(&chunk);
                out.write_all(&chunk)?;
            }
            out.flush()?;
            Ok(h)
        });
        let mut stream = resp.bytes_stream();
        let mut last_progress = Instant::now();
        let stall = Duration::from_secs(self.config.stall_timeout_secs);
        let received = async {
            loop {
                let next = tokio::time::timeout(stall, stream.next())
                    .await
                    .map_err(|_| Attempt::Retry(format!("no data for {stall:?}")))?;
                let Some(chunk) = next else {
                    return Ok(());
                };
                let chunk = chunk.map_err(|e| {
                    Attempt::Retry(format!("transfer broke off at byte {offset}: {e}"))
                })?;
                offset += chunk.len() as u64;
                if offset > file.size {
                    return Err(Attempt::Fatal(DownloadError::SizeMismatch {
                        file: file.file_name.clone(),
                        expected: file.size,
                        actual: offset,
                    }));
                }
                let len = chunk.len();
                if tx.send(chunk).await.is_err() {
                    return Ok(()); // the sink failed; its error is reported below
                }
                match self.throttle(len).await {
                    // The last byte is in: a window closing now has nothing left to pause.
                    Err(Attempt::Paused) if offset == file.size => {}
                    r => r?,
                }
                // Progress at most every 100 ms: observers need no more, and 1 GiB is ~100,000
                // chunks.
                if last_progress.elapsed() >= PROGRESS_EVERY || offset == file.size {
                    last_progress = Instant::now();
                    progress(offset, file.size);
                }
            }
        }
        .await;
        drop(tx);
        let store_err = |e| Attempt::Fatal(Self::store_err(file)(e));
        let written = sink
            .await
            .map_err(|e| store_err(std::io::Error::other(e)))?;
        received?;
        Ok((written.map_err(store_err)?, offset))
    }
}

/// What a GET from byte `have` got.
enum Got {
    /// The body, starting at this offset (0 when the server ignored the Range).
    Body(reqwest::Response, u64),
    /// The server answered a range other than the one asked for: drop what is kept, then retry.
    StartOver(String),
}

impl Downloader {
    /// A GET of `url` from byte `have` on (a Range request when `have` is inside the file),
    /// refused for good when the server refuses it or announces more than `sizeInBytes`.
    async fn request_from(&self, file: &Wanted, url: &str, have: u64) -> Result<Got, Attempt> {
        self.hold(file).await.map_err(Attempt::Fatal)?;
        let mut req = self
            .client(&file.file_name)
            .map_err(Attempt::Fatal)?
            .get(url);
        if have > 0 && have < file.size {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Attempt::Retry(format!("request failed: {e}")))?;
        let offset = match resume_point(&resp, have) {
            Resume::At(offset) => offset,
            Resume::Over(reason) => return Ok(Got::StartOver(reason)),
            Resume::Retry(reason) => return Err(Attempt::Retry(reason)),
            Resume::Refused(status) => {
                return Err(Attempt::Fatal(DownloadError::Http {
                    file: file.file_name.clone(),
                    url: url.to_owned(),
                    status,
                    via: self.via(status),
                }))
            }
        };
        if let Some(len) = resp.content_length() {
            if offset + len > file.size {
                return Err(Attempt::Fatal(DownloadError::SizeMismatch {
                    file: file.file_name.clone(),
                    expected: file.size,
                    actual: offset + len,
                }));
            }
        }
        Ok(Got::Body(resp, offset))
    }
}

/// What a response means for a download that already has `have` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Resume {
    /// Write the body from this offset.
    At(u64),
    /// Start over from nothing (drop the partial file), then retry.
    Over(String),
    /// Keep the partial file and retry.
    Retry(String),
    /// The server refused for good (this HTTP status).
    Refused(u16),
}

/// Where a 206 body starts (its `Content-Range: bytes START-END/TOTAL`).
fn range_start(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.parse::<u64>().ok())
}

fn resume_point(resp: &reqwest::Response, have: u64) -> Resume {
    let status = resp.status();
    if status == reqwest::StatusCode::PARTIAL_CONTENT {
        let start = range_start(resp);
        if start != Some(have) {
            return Resume::Over(format!("server resumed at {start:?}, not {have}"));
        }
        Resume::At(have)
    } else if status.is_success() {
        Resume::At(0)
    } else if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
        Resume::Over("range not satisfiable; starting over".into())
    } else if status.is_server_error() || status == 408 || status == 429 {
        Resume::Retry(format!("HTTP {}", status.as_u16()))
    } else {
        Resume::Refused(status.as_u16())
    }
}

/// Opens a local source file without blocking and only when it is a regular file: a FIFO or a
/// tty named as a payload would otherwise hold the agent for good.
fn open_regular(path: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    regular(f)
}

/// File `name` of a local source (a files directory, or a `file://` URL), opened as
/// [`open_regular`] does.
pub(crate) fn open_local(source: Source<'_>, name: &str) -> std::io::Result<std::fs::File> {
    match source {
        Source::Directory(dir) => open_regular_in(dir, name),
        Source::Url(u) => open_regular(u.trim_start_matches("file://")),
    }
}

/// [`open_regular`] for a name in a directory handle.
fn open_regular_in(dir: &Dir, name: &str) -> std::io::Result<std::fs::File> {
    use cap_std::fs::OpenOptionsExt as _;
    let mut opts = OpenOptions::new();
    opts.read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    regular(dir.open_with(name, &opts)?.into_std())
}

fn regular(f: std::fs::File) -> std::io::Result<std::fs::File> {
    if f.metadata()?.file_type().is_file() {
        Ok(f)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ))
    }
}

/// `url` with its password replaced by `***`.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_up_to_the_cap() {
        let c = DownloadConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            ..DownloadConfig::default()
        };
        for _ in 0..50 {
            let d1 = c.backoff(1).as_millis();
            assert!((50..=150).contains(&d1), "{d1}");
            let d3 = c.backoff(3).as_millis();
            assert!((200..=600).contains(&d3), "{d3}");
            assert!(c.backoff(30).as_millis() <= 1000);
        }
    }
}
