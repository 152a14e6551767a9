//! The HTTP-polling source (micropython-ota layout): `<base>/<project>/version` holds a tag; the
//! deployment document for it is `<base>/<project>/<tag>/deployment.json`. The agent checks at
//! start and every interval; a changed tag (forward, or back to an older one: a rollback) is a new
//! desired state, run under the workflow id `<project>-<tag>-<n>` (n counts the changes), so a
//! tag seen before runs again when the server points back at it.

use super::{Agent, AgentError, AgentExit};
use crate::datadir::write_atomic;
use sandstep_model::deployment::{Deployment, MAX_DEPLOYMENT_BYTES};
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

/// Persisted: the tag last acted on and the change counter.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PollState {
    tag: Option<String>,
    changes: u64,
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&tag.len())
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && tag != "."
        && tag != "..";
    if ok {
        Ok(())
    } else {
        Err(format!(
            "version tag `{}` must be 1-64 characters of [A-Za-z0-9._-]",
            tag.escape_debug()
        ))
    }
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

    // Resume an interrupted deployment first.
    for j in agent.deployer.unfinished()? {
        if let Ok(req) = agent.request_from_journal(&j) {
            if let Some(exit) = deploy(&agent, req, &shutdown).await? {
                return Ok(exit);
            }
        }
    }
    loop {
        match check(&client, &base).await {
            Ok(tag) => {
                let mut st = load();
                if st.tag.as_deref() != Some(tag.as_str()) {
                    let previous = st.tag.clone();
                    match fetch_deployment(&client, &base, &tag).await {
                        Ok(mut d) => {
                            st.changes += 1;
                            d.workflow.id = format!("{}-{tag}-{}", cfg.project, st.changes);
                            tracing::info!(from = ?previous, to = %tag, workflow = %d.workflow.id, "version changed");
                            match agent.request(&d) {
                                Ok(req) => {
                                    if let Some(exit) = deploy(&agent, req, &shutdown).await? {
                                        st.tag = Some(tag);
                                        save(&st)?;
                                        return Ok(exit);
                                    }
                                }
                                Err(e) => tracing::error!("{base}/{tag}: {e}"),
                            }
                            // Acted on (succeeded or failed with its result recorded): not retried
                            // until the server's tag changes again.
                            st.tag = Some(tag);
                            save(&st)?;
                        }
                        Err(e) => tracing::error!("{e}"),
                    }
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(AgentExit::Shutdown),
            _ = tokio::time::sleep(Duration::from_secs(cfg.interval_secs.max(1))) => {}
        }
    }
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

/// A response body, refused as soon as it passes `limit` bytes (never read whole first).
async fn read_capped(
    mut resp: reqwest::Response,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("{url}: the body is over {limit} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        if body.len() + chunk.len() > limit {
            return Err(format!("{url}: the body is over {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn check(client: &reqwest::Client, base: &str) -> Result<String, String> {
    let url = format!("{base}/version");
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", describe(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered HTTP {}", resp.status().as_u16()));
    }
    let body = read_capped(resp, &url, MAX_VERSION_BYTES).await?;
    let text = std::str::from_utf8(&body).map_err(|_| format!("{url}: not UTF-8"))?;
    let tag = text.trim().to_owned();
    check_tag(&tag).map_err(|e| format!("{url}: {e}"))?;
    Ok(tag)
}

async fn fetch_deployment(
    client: &reqwest::Client,
    base: &str,
    tag: &str,
) -> Result<Deployment, String> {
    let url = format!("{base}/{tag}/deployment.json");
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", describe(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered HTTP {}", resp.status().as_u16()));
    }
    let bytes = read_capped(resp, &url, MAX_DEPLOYMENT_BYTES).await?;
    let text = std::str::from_utf8(&bytes).map_err(|_| format!("{url}: not UTF-8"))?;
    let d = Deployment::parse(text).map_err(|e| format!("{url}: {e}"))?;
    d.check_remote().map_err(|e| format!("{url}: {e}"))?;
    Ok(d)
}

/// Runs one deployment to its end; `Some(exit)` when the agent must stop (reboot, restart).
async fn deploy(
    agent: &Agent,
    req: crate::workflow::Request,
    shutdown: &CancellationToken,
) -> Result<Option<AgentExit>, AgentError> {
    let observer: Arc<dyn crate::workflow::events::Observer> =
        Arc::new(crate::workflow::events::Quiet);
    let outcome = tokio::select! {
        r = agent.deployer.run(req.clone(), observer, shutdown) => r?,
        _ = shutdown.cancelled() => return Ok(Some(AgentExit::Shutdown)),
    };
    let w = sandstep_model::deployment::Workflow {
        action: sandstep_model::deployment::action::PROCESS_DEPLOYMENT,
        id: req.workflow_id.clone(),
        retry_timestamp: req.retry_timestamp.clone(),
    };
    let reports = agent.finished(&w, &outcome);
    // Without a broker, the reported state is kept in the data dir.
    if let Some(r) = reports.first() {
        write_atomic(
            agent.data.root(),
            "reported.json",
            &serde_json::to_vec_pretty(&r.payload).expect("serializes"),
            0o644,
        )?;
    }
    tracing::info!(workflow = %req.workflow_id, status = ?outcome.status, "deployment finished");
    Ok(match outcome.status {
        Status::RebootRequired => {
            if let Some((p, a)) = agent.settings.agent.reboot_command.split_first() {
                let _ = std::process::Command::new(p).args(a).status();
            }
            Some(AgentExit::Rebooting)
        }
        Status::RestartRequired => Some(AgentExit::Restart),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

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
        assert!(err.contains("redirect to another server refused"), "{err}");
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
            err.ends_with(&format!("the body is over {MAX_VERSION_BYTES} bytes")),
            "{err}"
        );
    }
}
