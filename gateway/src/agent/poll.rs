//! The HTTP-polling source (micropython-ota layout): `<base>/<project>/version` holds a tag; the
//! deployment document for it is `<base>/<project>/<tag>/deployment.json`. The agent checks at
//! start and every interval; a changed tag (forward, or back to an older one: a rollback) is a new
//! desired state, run under the workflow id `<project>-<tag>-<n>` (n counts the changes), so a
//! tag seen before runs again when the server points back at it.

use super::refused::ServerError;
use super::reported::{Patch, ReportedWorkflow, Retry};
use super::{Agent, AgentError, AgentExit};
use crate::datadir::write_atomic;
use sandstep_model::deployment::{Deployment, Workflow, MAX_DEPLOYMENT_BYTES};
use sandstep_model::journal::Status;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The `[http-poll]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpPollConfig {
    /// The server, e.g. `https://updates.example/ota/`.
    pub base_url: String,
    /// The project directory on the server.
    pub project: String,
    /// Seconds between checks.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
}

fn default_interval() -> u64 {
    300
}

/// Persisted: the tag last acted on, the change counter, and the retries of a failed tag.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PollState {
    tag: Option<String>,
    changes: u64,
    /// Failed attempts at `tag` so far (0 once it succeeded).
    #[serde(default)]
    failures: u32,
    /// When the next attempt at a failed `tag` is due (ms since the epoch).
    #[serde(default)]
    retry_at_ms: u64,
}

/// Attempts at one tag before the agent waits for the server to change it.
const MAX_ATTEMPTS: u32 = 5;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// What to do about the server's tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// A tag not acted on yet (forward, or back to an older one).
    NewTag,
    /// The same tag again after a failure, its backoff over.
    Retry,
    Nothing,
}

/// The decision, from the persisted state alone.
fn next(st: &PollState, tag: &str, now_ms: u64) -> Next {
    if st.tag.as_deref() != Some(tag) {
        Next::NewTag
    } else if st.failures > 0 && st.failures < MAX_ATTEMPTS && now_ms >= st.retry_at_ms {
        Next::Retry
    } else {
        Next::Nothing
    }
}

/// How long after `failures` failed attempts the next one is due: the interval, doubled each
/// time, at most [`MAX_BACKOFF`].
fn backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    (interval * factor).min(MAX_BACKOFF)
}

/// The state after an attempt at `tag` ended.
fn after_attempt(
    st: &PollState,
    tag: &str,
    ok: bool,
    interval: Duration,
    now_ms: u64,
) -> PollState {
    let mut next = st.clone();
    let same = st.tag.as_deref() == Some(tag);
    next.tag = Some(tag.to_owned());
    next.failures = match (ok, same) {
        (true, _) => 0,
        (false, true) => st.failures + 1,
        (false, false) => 1,
    };
    next.retry_at_ms = if ok {
        0
    } else {
        now_ms + backoff(interval, next.failures).as_millis() as u64
    };
    next
}

fn tag_is_valid(tag: &str) -> bool {
    (1..=64).contains(&tag.len())
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && tag != "."
        && tag != ".."
}

/// Runs the polling loop until shutdown, a reboot, or a restart request.
pub async fn run(agent: Agent, shutdown: CancellationToken) -> Result<AgentExit, AgentError> {
    let cfg = agent.settings.http_poll.clone().ok_or_else(|| {
        AgentError::Config("source = \"http-poll\" needs an [http-poll] table".into())
    })?;
    let base = format!("{}/{}", cfg.base_url.trim_end_matches('/'), cfg.project);
    let client = client(&cfg.base_url)?;
    let root = agent.data.root().try_clone()?;
    let load = || -> PollState {
        root.read("poll-state.json")
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    };
    let save = |s: &PollState| {
        write_atomic(
            &root,
            "poll-state.json",
            &serde_json::to_vec(s).expect("serializes"),
            0o600,
        )
    };

    // Resume what a crash, reboot or restart interrupted first.
    let (runs, refusals) = agent.resumable()?;
    for o in &refusals {
        record(&agent, o)?;
    }
    for (_, req) in runs {
        if let (_, Some(exit)) = deploy(&agent, req, &shutdown).await? {
            return Ok(exit);
        }
    }
    let interval = Duration::from_secs(cfg.interval_secs.max(1));
    loop {
        match check(&client, &base).await {
            Ok(tag) => {
                let st = load();
                let now = sandstep_transport::clock::now_ms();
                if next(&st, &tag, now) != Next::Nothing {
                    let (ok, exit) =
                        attempt(&agent, &client, &base, &cfg.project, &tag, &st, &shutdown).await?;
                    let mut st = after_attempt(&st, &tag, ok, interval, now);
                    st.changes += 1;
                    save(&st)?;
                    report_retry(&agent, &tag, &st)?;
                    if let Some(exit) = exit {
                        return Ok(exit);
                    }
                }
            }
            Err(e) => {
                tracing::warn!("{e}");
                record(&agent, &agent.rejection(None, &e))?;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(AgentExit::Shutdown),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One attempt at `tag`: fetch its deployment document and run it, under the workflow id
/// `<project>-<tag>-<n>`; whether it succeeded, and whether the agent must stop.
async fn attempt(
    agent: &Agent,
    client: &reqwest::Client,
    base: &str,
    project: &str,
    tag: &str,
    st: &PollState,
    shutdown: &CancellationToken,
) -> Result<(bool, Option<AgentExit>), AgentError> {
    let workflow = format!("{project}-{tag}-{}", st.changes + 1);
    tracing::info!(from = ?st.tag, to = %tag, %workflow, attempt = st.failures + 1, "deploying the server's version");
    let refused = |why: &dyn std::fmt::Display| {
        let w = Workflow {
            action: sandstep_model::deployment::action::PROCESS_DEPLOYMENT,
            id: workflow.clone(),
            retry_timestamp: None,
        };
        tracing::error!("{why}");
        record(
            agent,
            &agent.rejection(Some(ReportedWorkflow::Known(w)), why),
        )
        .map(|()| (false, None))
    };
    let mut d = match fetch_deployment(client, base, tag).await {
        Ok(d) => d,
        Err(e) => return refused(&e),
    };
    d.workflow.id = workflow.clone();
    let req = match agent.request(&d) {
        Ok(r) => r,
        Err(e) => return refused(&format!("{base}/{tag}: {e}")),
    };
    deploy(agent, req, shutdown).await
}

/// Says, in the reported state, when a failed tag is tried again (or that it will not be;
/// `null` once the tag succeeded).
fn report_retry(agent: &Agent, tag: &str, st: &PollState) -> Result<(), AgentError> {
    let retry = (st.failures > 0).then(|| {
        let last = st.failures >= MAX_ATTEMPTS;
        Retry {
            tag: tag.to_owned(),
            attempts: st.failures,
            next_at_ms: (!last).then_some(st.retry_at_ms),
            note: last.then_some("no more attempts until the server's version changes"),
        }
    });
    let patch = Patch {
        retry: Some(retry),
        ..Patch::default()
    };
    record(agent, &agent.reported(patch))
}

/// Without a broker, the reported state is kept in the data dir (`reported.json`): each report's
/// fields replace the file's. Unlike a shadow service's merge, a `null` is kept (`retry: null`
/// says the tag succeeded; `lastError: null`, that nothing is wrong).
fn record(agent: &Agent, o: &super::report::Outgoing) -> Result<(), AgentError> {
    let root = agent.data.root();
    let mut doc: serde_json::Value = root
        .read("reported.json")
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"state": {"reported": {}}}));
    if let (Some(have), Some(patch)) = (
        doc.pointer_mut("/state/reported")
            .and_then(|v| v.as_object_mut()),
        o.payload
            .pointer("/state/reported")
            .and_then(|v| v.as_object()),
    ) {
        for (k, v) in patch {
            have.insert(k.clone(), v.clone());
        }
    }
    write_atomic(
        root,
        "reported.json",
        &serde_json::to_vec_pretty(&doc).expect("serializes"),
        0o644,
    )?;
    Ok(())
}

/// Largest `version` body read, in bytes (a tag is at most 64 characters).
const MAX_VERSION_BYTES: usize = 4096;

/// The polling client: redirects are followed only on the configured server's origin (scheme,
/// host and port), at most 5 deep, so a compromised path cannot send the agent elsewhere.
fn client(base_url: &str) -> Result<reqwest::Client, AgentError> {
    let origin = reqwest::Url::parse(base_url)
        .map_err(|e| AgentError::Config(format!("[http-poll] base-url `{base_url}`: {e}")))?
        .origin();
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            attempt.error("more than 5 redirects")
        } else if attempt.url().origin() != origin {
            let to = attempt.url().to_string();
            attempt.error(format!("redirect to another server refused: {to}"))
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .redirect(policy)
        .build()
        .map_err(|e| AgentError::Config(e.to_string()))
}

/// An error with its causes (reqwest keeps the reason for a refused redirect in its source).
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The body of `url` as text, refused as soon as it passes `limit` bytes (never read whole
/// first).
async fn get_text(
    client: &reqwest::Client,
    url: &str,
    limit: usize,
) -> Result<String, ServerError> {
    let unreachable = |e: &dyn std::error::Error| ServerError::Unreachable {
        url: url.to_owned(),
        cause: describe(e),
    };
    let mut resp = client.get(url).send().await.map_err(|e| unreachable(&e))?;
    if !resp.status().is_success() {
        return Err(ServerError::Status {
            url: url.to_owned(),
            status: resp.status().as_u16(),
        });
    }
    let too_large = || ServerError::TooLarge {
        url: url.to_owned(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| ServerError::NotUtf8 {
        url: url.to_owned(),
    })
}

async fn check(client: &reqwest::Client, base: &str) -> Result<String, ServerError> {
    let url = format!("{base}/version");
    let tag = get_text(client, &url, MAX_VERSION_BYTES)
        .await?
        .trim()
        .to_owned();
    if !tag_is_valid(&tag) {
        return Err(ServerError::BadTag {
            url,
            tag: tag.escape_debug().to_string(),
        });
    }
    Ok(tag)
}

async fn fetch_deployment(
    client: &reqwest::Client,
    base: &str,
    tag: &str,
) -> Result<Deployment, ServerError> {
    let url = format!("{base}/{tag}/deployment.json");
    let text = get_text(client, &url, MAX_DEPLOYMENT_BYTES).await?;
    let d = Deployment::parse(&text).and_then(|d| d.check_remote().map(|()| d));
    d.map_err(|cause| ServerError::BadDeployment { url, cause })
}

/// Runs one deployment to its end; whether it succeeded, and `Some(exit)` when the agent must
/// stop (reboot, restart).
async fn deploy(
    agent: &Agent,
    req: crate::workflow::Request,
    shutdown: &CancellationToken,
) -> Result<(bool, Option<AgentExit>), AgentError> {
    let observer: Arc<dyn crate::workflow::events::Observer> =
        Arc::new(crate::workflow::events::Quiet);
    let outcome = tokio::select! {
        r = agent.deployer.run(req.clone(), observer, shutdown) => r?,
        _ = shutdown.cancelled() => return Ok((false, Some(AgentExit::Shutdown))),
    };
    let w = sandstep_model::deployment::Workflow {
        action: sandstep_model::deployment::action::PROCESS_DEPLOYMENT,
        id: req.workflow_id.clone(),
        retry_timestamp: req.retry_timestamp.clone(),
    };
    if let Some(r) = agent.finished(&w, &outcome).first() {
        record(agent, r)?;
    }
    tracing::info!(workflow = %req.workflow_id, status = ?outcome.status, "deployment finished");
    let ok = !matches!(outcome.status, Status::Failed | Status::Cancelled);
    let exit = match outcome.status {
        Status::RebootRequired => Some(agent.reboot_now()),
        Status::RestartRequired => Some(AgentExit::Restart),
        _ => None,
    };
    Ok((ok, exit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    #[test]
    fn a_failed_tag_is_retried_with_growing_backoff_then_left_until_the_server_changes() {
        let minute = Duration::from_secs(60);
        let mut st = PollState::default();
        assert_eq!(next(&st, "v1", 0), Next::NewTag);
        let mut now = 1_000;
        for attempt in 1..=MAX_ATTEMPTS {
            st = after_attempt(&st, "v1", false, minute, now);
            assert_eq!(st.failures, attempt);
            let wait = backoff(minute, attempt).as_millis() as u64;
            assert_eq!(st.retry_at_ms, now + wait);
            assert_eq!(wait, (60_000u64 << (attempt - 1)).min(6 * 3600 * 1000));
            // Not before its time.
            assert_eq!(next(&st, "v1", st.retry_at_ms - 1), Next::Nothing);
            now = st.retry_at_ms;
            let due = next(&st, "v1", now);
            if attempt < MAX_ATTEMPTS {
                assert_eq!(due, Next::Retry);
            } else {
                assert_eq!(due, Next::Nothing, "bounded");
            }
        }
        // A new tag always runs, and a success clears the failures.
        assert_eq!(next(&st, "v2", now), Next::NewTag);
        let ok = after_attempt(&st, "v2", true, minute, now);
        assert_eq!((ok.failures, ok.retry_at_ms), (0, 0));
        assert_eq!(next(&ok, "v2", now + 10_000_000), Next::Nothing);
        // A first failure of a new tag counts from one.
        assert_eq!(after_attempt(&st, "v3", false, minute, now).failures, 1);
    }

    /// A one-shot loopback HTTP server answering every request with `response`.
    fn serve(response: Vec<u8>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(4) {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(&response);
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_redirect_to_another_server_is_refused() {
        let elsewhere = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nv9".to_vec());
        let base = serve(
            format!("HTTP/1.1 302 Found\r\nLocation: {elsewhere}/proj/version\r\nContent-Length: 0\r\n\r\n")
                .into_bytes(),
        );
        let err = check(&client(&base).unwrap(), &format!("{base}/proj"))
            .await
            .unwrap_err();
        assert!(matches!(err, ServerError::Unreachable { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("redirect to another server refused"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_oversized_body_is_refused_while_it_is_read() {
        // No Content-Length: the cap holds while streaming.
        let mut response = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        response.extend(std::iter::repeat_n(b'v', MAX_VERSION_BYTES + 1));
        let base = serve(response);
        let err = check(&client(&base).unwrap(), &format!("{base}/proj"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ServerError::TooLarge {
                    limit: MAX_VERSION_BYTES,
                    ..
                }
            ),
            "{err}"
        );
    }
}
