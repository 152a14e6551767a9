//! The HTTP-polling source (micropython-ota layout): `<base>/<project>/version` holds a tag; the
//! deployment document for it is `<base>/<project>/<tag>/deployment.json`. The source checks at
//! start and every interval while no deployment runs; a changed tag (forward, or back to an
//! older one: a rollback) is a new desired state, run under the workflow id
//! `<project>-<tag>-<n>` (n counts the changes), so a tag seen before runs again when the server
//! points back at it. A failed tag is tried again with backoff; `retry` in the reported state
//! says when. There is no service to report to: the reported document is the agent's own
//! `reported.json` (`sandstep status` shows it).

use super::http::{client, get_text};
use super::{Ending, Sent, Source, SourceInput};
use crate::agent::core::Profile;
use crate::agent::outbox::Queued;
use crate::agent::refused::ServerError;
use crate::datadir::write_atomic;
use cap_std::fs::Dir;
use sandstep_model::deployment::{action, Deployment, Workflow, MAX_DEPLOYMENT_BYTES};
use sandstep_model::reported::{Patch, ReportedWorkflow, Retry};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

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
    /// `tag`'s deployment was refused for what it says (a downgrade, another model, a bad
    /// signature): no attempt is made again until the server's tag changes.
    #[serde(default)]
    refused: bool,
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
    } else if !st.refused
        && st.failures > 0
        && st.failures < MAX_ATTEMPTS
        && now_ms >= st.retry_at_ms
    {
        Next::Retry
    } else {
        Next::Nothing
    }
}

/// Which attempt at `tag` the next one is: the failures counted are the tag's own (a tag the
/// server changed to starts at 1, whatever the previous tag's count).
fn attempt_at(st: &PollState, tag: &str) -> u32 {
    if st.tag.as_deref() == Some(tag) {
        st.failures + 1
    } else {
        1
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
    ending: Ending,
    interval: Duration,
    now_ms: u64,
) -> PollState {
    let ok = ending == Ending::Succeeded;
    let mut next = st.clone();
    next.tag = Some(tag.to_owned());
    // A failed attempt is the tag's n-th failure, n being the attempt it was.
    next.failures = if ok { 0 } else { attempt_at(st, tag) };
    next.refused = ending == Ending::Refused;
    next.retry_at_ms = if ok || next.refused {
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

/// Largest `version` body read, in bytes (a tag is at most 64 characters).
const MAX_VERSION_BYTES: usize = 4096;

/// The source: the server, the persisted [`PollState`], and the attempt running.
pub struct PollSource {
    client: reqwest::Client,
    /// `<base-url>/<project>`.
    base: String,
    project: String,
    interval: Duration,
    /// The data dir's root, where `poll-state.json` is kept.
    root: Dir,
    next_check: Instant,
    /// Deployments running (resumed ones too): no check while any does.
    busy: Vec<String>,
    /// The attempt at a tag that runs now: its tag and workflow id.
    attempt: Option<(String, String)>,
}

impl PollSource {
    pub fn new(cfg: &HttpPollConfig, root: Dir) -> Result<PollSource, super::http::BaseUrlError> {
        Ok(PollSource {
            client: client("[http-poll] base-url", &cfg.base_url)?,
            base: format!("{}/{}", cfg.base_url.trim_end_matches('/'), cfg.project),
            project: cfg.project.clone(),
            interval: Duration::from_secs(cfg.interval_secs.max(1)),
            root,
            next_check: Instant::now(),
            busy: Vec::new(),
            attempt: None,
        })
    }

    fn load(&self) -> PollState {
        self.root
            .read("poll-state.json")
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, s: &PollState) {
        let bytes = serde_json::to_vec(s).expect("serializes");
        if let Err(e) = write_atomic(&self.root, "poll-state.json", &bytes, 0o600) {
            tracing::error!("poll-state.json: {e}");
        }
    }

    /// An attempt at `tag` ended: the state after it, saved, and the `retry` it reports.
    fn attempted(&self, tag: &str, ending: Ending) -> SourceInput {
        let st = self.load();
        let now = sandstep_transport::clock::now_ms();
        let mut st = after_attempt(&st, tag, ending, self.interval, now);
        st.changes += 1;
        self.save(&st);
        SourceInput::Report(Box::new(retry_report(tag, &st)))
    }

    async fn check(&mut self) -> Vec<SourceInput> {
        let tag = match check(&self.client, &self.base).await {
            Ok(tag) => tag,
            Err(e) => {
                tracing::warn!("{e}");
                let why = e.to_string();
                return vec![SourceInput::Refused {
                    workflow: None,
                    why,
                }];
            }
        };
        let st = self.load();
        if next(&st, &tag, sandstep_transport::clock::now_ms()) == Next::Nothing {
            return Vec::new();
        }
        let workflow = format!("{}-{tag}-{}", self.project, st.changes + 1);
        let attempt = attempt_at(&st, &tag);
        tracing::info!(from = ?st.tag, to = %tag, %workflow, attempt, of = MAX_ATTEMPTS, "deploying the server's version");
        match fetch_deployment(&self.client, &self.base, &tag).await {
            Ok(mut d) => {
                d.workflow.id = workflow.clone();
                self.attempt = Some((tag, workflow));
                vec![SourceInput::Deployment(d)]
            }
            Err(e) => {
                tracing::error!("{e}");
                let w = Workflow {
                    action: action::PROCESS_DEPLOYMENT,
                    id: workflow,
                    retry_timestamp: None,
                };
                vec![
                    SourceInput::Refused {
                        workflow: Some(ReportedWorkflow::Known(w)),
                        why: e.to_string(),
                    },
                    self.attempted(&tag, Ending::Failed),
                ]
            }
        }
    }
}

impl Source for PollSource {
    async fn recv(&mut self) -> Vec<SourceInput> {
        std::future::pending().await
    }

    fn can_send(&self) -> bool {
        true
    }

    async fn send(&mut self, _item: &Queued) -> Sent {
        Sent::Done // the runner keeps the reported document in the data dir
    }

    fn deadline(&self) -> Option<Instant> {
        self.busy.is_empty().then_some(self.next_check)
    }

    async fn due(&mut self) -> Vec<SourceInput> {
        let out = self.check().await;
        self.next_check = Instant::now() + self.interval;
        out
    }

    fn started(&mut self, workflow: &Workflow) {
        self.busy.push(workflow.id.clone());
    }

    fn finished(&mut self, workflow: &Workflow, ending: Ending) -> Vec<SourceInput> {
        self.busy.retain(|w| *w != workflow.id);
        self.next_check = Instant::now() + self.interval;
        match self.attempt.take() {
            Some((tag, w)) if w == workflow.id => vec![self.attempted(&tag, ending)],
            other => {
                self.attempt = other;
                Vec::new()
            }
        }
    }

    fn profile(&self) -> Profile {
        Profile {
            report_replaced_end: true,
            ignore_finished_duplicate: false,
        }
    }
}

/// `retry` in the reported state: when a failed tag is tried again (or that it will not be;
/// `null` once the tag succeeded).
fn retry_report(tag: &str, st: &PollState) -> Patch {
    let retry = (st.failures > 0).then(|| {
        let last = st.failures >= MAX_ATTEMPTS;
        let note = if st.refused {
            Some("refused for what it says: another attempt ends the same way; no more attempts until the server's version changes")
        } else {
            last.then_some("no more attempts until the server's version changes")
        };
        Retry {
            tag: tag.to_owned(),
            attempts: st.failures,
            next_at_ms: (!last && !st.refused).then_some(st.retry_at_ms),
            note: note.map(str::to_owned),
        }
    });
    Patch {
        retry: Some(retry),
        ..Patch::default()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_tag_is_retried_with_growing_backoff_then_left_until_the_server_changes() {
        let minute = Duration::from_secs(60);
        let mut st = PollState::default();
        assert_eq!(next(&st, "v1", 0), Next::NewTag);
        let mut now = 1_000;
        for attempt in 1..=MAX_ATTEMPTS {
            st = after_attempt(&st, "v1", Ending::Failed, minute, now);
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
        let ok = after_attempt(&st, "v2", Ending::Succeeded, minute, now);
        assert_eq!((ok.failures, ok.retry_at_ms), (0, 0));
        assert_eq!(next(&ok, "v2", now + 10_000_000), Next::Nothing);
        // A first failure of a new tag counts from one.
        assert_eq!(
            after_attempt(&st, "v3", Ending::Failed, minute, now).failures,
            1
        );
    }

    /// The log's `attempt=` counts the tag's own attempts: after v2 failed twice, the first
    /// attempt at v3 is 1, not 3; a retry of v3 is 2.
    #[test]
    fn the_attempt_count_is_the_tags_own() {
        let interval = Duration::from_secs(1);
        let mut st = PollState::default();
        for _ in 0..2 {
            st = after_attempt(&st, "v2", Ending::Failed, interval, 0);
        }
        assert_eq!(attempt_at(&st, "v2"), 3);
        assert_eq!(attempt_at(&st, "v3"), 1);
        let st = after_attempt(&st, "v3", Ending::Failed, interval, 0);
        assert_eq!(attempt_at(&st, "v3"), 2);
    }

    /// A downgrade (or another final refusal) is not tried again: its document would be refused
    /// the same way; the report says so, and a new tag still runs.
    #[test]
    fn a_refused_tag_is_not_retried_and_the_report_says_why() {
        let minute = Duration::from_secs(60);
        let st = after_attempt(&PollState::default(), "v1", Ending::Refused, minute, 1_000);
        assert_eq!((st.failures, st.retry_at_ms, st.refused), (1, 0, true));
        assert_eq!(next(&st, "v1", u64::MAX), Next::Nothing);
        assert_eq!(next(&st, "v2", 1_000), Next::NewTag);
        let Some(Some(retry)) = retry_report("v1", &st).retry else {
            panic!("no retry reported");
        };
        assert_eq!((retry.attempts, retry.next_at_ms), (1, None));
        assert!(retry.note.unwrap().starts_with("refused for what it says"));
        // After a refusal, a success at the next tag clears it.
        let ok = after_attempt(&st, "v2", Ending::Succeeded, minute, 2_000);
        assert!(!ok.refused && ok.failures == 0);
    }

    #[test]
    fn only_refusals_the_signed_content_decides_are_final() {
        use sandstep_model::codes::erc;
        use sandstep_model::journal::Status;
        let of = |status, e: sandstep_model::codes::ExtendedResultCode| Ending::of(status, e.raw());
        assert_eq!(of(Status::Failed, erc::WORKFLOW_DOWNGRADE), Ending::Refused);
        assert_eq!(
            of(Status::Failed, erc::WORKFLOW_INCOMPATIBLE),
            Ending::Refused
        );
        assert_eq!(
            of(Status::Failed, erc::WORKFLOW_DOWNLOAD_FAILED),
            Ending::Failed
        );
        assert_eq!(of(Status::Failed, erc::FILE_HASH_MISMATCH), Ending::Failed);
        assert_eq!(
            of(Status::Cancelled, erc::WORKFLOW_DOWNGRADE),
            Ending::Failed
        );
        assert_eq!(
            of(
                Status::Succeeded,
                sandstep_model::codes::ExtendedResultCode::NONE
            ),
            Ending::Succeeded
        );
    }
}
