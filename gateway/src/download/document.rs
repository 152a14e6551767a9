//! Small documents with no digest to check against (a root key package): fetched whole into
//! memory, never stored, retried as files are. Whoever asks checks what they got (its
//! signatures); the limit keeps a hostile URL from filling memory.

use super::{open_regular, Attempt, DownloadError, Downloader};
use futures_util::StreamExt;
use std::io::Read;
use std::time::Duration;

/// Longest one attempt at a document may take: a server trickling bytes just under the stall
/// timeout cannot hold the deployment much longer than this.
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(120);

impl Downloader {
    /// The body at `url` (http, https, or `file://` for local runs), at most `limit` bytes;
    /// `name` names it in errors.
    pub async fn fetch_document(
        &self,
        name: &str,
        url: &str,
        limit: usize,
    ) -> Result<Vec<u8>, DownloadError> {
        if let Some(path) = url.strip_prefix("file://") {
            return read_local(name, path, limit);
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(DownloadError::Source {
                file: name.to_owned(),
                reason: format!("`{url}`: only http(s) and file URLs are fetched"),
            });
        }
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let got = tokio::time::timeout(ATTEMPT_DEADLINE, self.get_document(name, url, limit))
                .await
                .unwrap_or_else(|_| {
                    Err(Attempt::Retry(format!(
                        "not done after {ATTEMPT_DEADLINE:?}"
                    )))
                });
            match got {
                Ok(body) => return Ok(body),
                Err(Attempt::Fatal(e)) => return Err(e),
                // Documents are not held to the download window (they are small, and needed
                // to plan the deployment).
                Err(Attempt::Paused) => attempt -= 1,
                Err(Attempt::Retry(last)) if attempt >= self.config.attempts.max(1) => {
                    return Err(DownloadError::Network {
                        file: name.to_owned(),
                        url: url.to_owned(),
                        attempts: attempt,
                        last,
                    })
                }
                Err(Attempt::Retry(why)) => {
                    tracing::debug!(%name, attempt, %why, "fetching again");
                    tokio::time::sleep(self.config.backoff(attempt)).await;
                }
            }
        }
    }

    async fn get_document(&self, name: &str, url: &str, limit: usize) -> Result<Vec<u8>, Attempt> {
        let too_large = || {
            Attempt::Fatal(DownloadError::Source {
                file: name.to_owned(),
                reason: format!("{url}: larger than the {limit} byte limit"),
            })
        };
        let stall = Duration::from_secs(self.config.stall_timeout_secs);
        let client = self.client(name).map_err(Attempt::Fatal)?;
        let resp = tokio::time::timeout(stall, client.get(url).send())
            .await
            .map_err(|_| Attempt::Retry(format!("no answer for {stall:?}")))?
            .map_err(|e| Attempt::Retry(e.to_string()))?;
        let status = resp.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(Attempt::Retry(format!("HTTP {status}")));
        }
        if !status.is_success() {
            return Err(Attempt::Fatal(DownloadError::Http {
                file: name.to_owned(),
                url: url.to_owned(),
                status: status.as_u16(),
                via: self.via(status.as_u16()),
            }));
        }
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        loop {
            let next = tokio::time::timeout(stall, stream.next())
                .await
                .map_err(|_| Attempt::Retry(format!("no data for {stall:?}")))?;
            match next {
                None => return Ok(body),
                Some(Err(e)) => return Err(Attempt::Retry(e.to_string())),
                Some(Ok(chunk)) if body.len() + chunk.len() > limit => return Err(too_large()),
                Some(Ok(chunk)) => body.extend_from_slice(&chunk),
            }
        }
    }
}

fn read_local(name: &str, path: &str, limit: usize) -> Result<Vec<u8>, DownloadError> {
    let err = |reason: String| DownloadError::Source {
        file: name.to_owned(),
        reason: format!("file://{path}: {reason}"),
    };
    let f = open_regular(path).map_err(|e| err(e.to_string()))?;
    let mut body = Vec::new();
    f.take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| err(e.to_string()))?;
    if body.len() > limit {
        return Err(err(format!("larger than the {limit} byte limit")));
    }
    Ok(body)
}
