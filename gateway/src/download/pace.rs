//! A deployment's hold on its transfers: its download window (the config's `[windows] download`
//! and the deployment's signed `sandstep.downloadWindows`, both open) and its own bandwidth cap
//! (`sandstep.maxBytesPerSec`), on top of the agent-wide cap.
//!
//! A transfer asks before each request ([`Downloader::hold`]) and after each chunk
//! ([`Downloader::throttle`]); when the window has closed it stops with [`Attempt::Paused`],
//! keeping what it has, and its next request (a Range request from where it stopped) waits for
//! the window to open again. A pause is not a failed attempt.

use super::rate::RateLimit;
use super::{Attempt, DownloadError, Downloader, Wanted};
use crate::window::{Clock, Gate, Moment, NotOpened};
use sandstep_model::window::Schedule;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a window seen open is taken to stay open before the clock is read again.
const RECHECK: Duration = Duration::from_secs(1);

/// What a deployment's transfers are held to.
pub struct Pace {
    clock: Clock,
    schedules: Vec<Schedule>,
    limit: Option<RateLimit>,
    cancel: CancellationToken,
    waiting: Box<dyn Fn(&Moment) + Send + Sync>,
    /// Until when the windows are known to be open.
    open_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pace")
            .field("schedules", &self.schedules)
            .finish()
    }
}

impl Pace {
    /// Transfers held to every schedule of `schedules` (none: always open) and to a cap of
    /// `max_bytes_per_sec`; a wait for a window ends when `cancel` fires, and each opening
    /// waited for is told to `waiting` once.
    pub fn new(
        clock: Clock,
        schedules: Vec<Schedule>,
        max_bytes_per_sec: Option<u64>,
        cancel: CancellationToken,
        waiting: Box<dyn Fn(&Moment) + Send + Sync>,
    ) -> Pace {
        Pace {
            clock,
            schedules,
            limit: max_bytes_per_sec.map(RateLimit::new),
            cancel,
            waiting,
            open_until: Mutex::new(None),
        }
    }

    fn schedules(&self) -> Vec<&Schedule> {
        self.schedules.iter().collect()
    }

    /// Whether the windows are open now (the clock is read at most once a second while they
    /// are, and at their closing).
    pub fn is_open(&self) -> bool {
        let now = Instant::now();
        let mut until = self.open_until.lock().expect("pace lock");
        if until.is_some_and(|u| now < u) {
            return true;
        }
        match self.clock.gate(&self.schedules()) {
            Gate::Open { closes } => {
                let fresh = closes.map_or(RECHECK, |c| c.wait.min(RECHECK));
                *until = Some(now + fresh);
                true
            }
            _ => {
                *until = None;
                false
            }
        }
    }

    /// Waits until the windows are open.
    pub async fn wait_open(&self) -> Result<(), NotOpened> {
        crate::window::wait_open(&self.clock, &self.schedules(), &self.cancel, &*self.waiting).await
    }
}

/// While alive, the downloader's transfers are held to a deployment's pace.
#[must_use = "the pace holds only while the guard lives"]
pub struct PaceGuard<'a> {
    downloader: &'a Downloader,
}

impl Drop for PaceGuard<'_> {
    fn drop(&mut self) {
        *self.downloader.pace.lock().expect("pace lock") = None;
    }
}

impl Downloader {
    /// Holds every transfer to `pace` until the guard is dropped (the agent runs one
    /// deployment at a time).
    pub fn paced(&self, pace: Arc<Pace>) -> PaceGuard<'_> {
        *self.pace.lock().expect("pace lock") = Some(pace);
        PaceGuard { downloader: self }
    }

    fn pace(&self) -> Option<Arc<Pace>> {
        self.pace.lock().expect("pace lock").clone()
    }

    /// Before a request: waits while the download window is closed.
    pub(super) async fn hold(&self, file: &Wanted) -> Result<(), DownloadError> {
        let Some(pace) = self.pace() else {
            return Ok(());
        };
        if pace.is_open() {
            return Ok(());
        }
        tracing::info!(file = %file.file_name, "the download window is closed: the transfer waits for it");
        pace.wait_open().await.map_err(|e| DownloadError::Held {
            file: file.file_name.clone(),
            reason: match e {
                NotOpened::Cancelled => "cancelled while waiting for the download window",
                NotOpened::Never => "the download windows are never open together",
            },
        })?;
        tracing::info!(file = %file.file_name, "the download window is open: the transfer goes on");
        Ok(())
    }

    /// After `n` received bytes: waits off the caps; `Paused` when the window has closed.
    pub(super) async fn throttle(&self, n: usize) -> Result<(), Attempt> {
        if let Some(l) = &self.limit {
            l.take(n).await;
        }
        let Some(pace) = self.pace() else {
            return Ok(());
        };
        if let Some(l) = &pace.limit {
            l.take(n).await;
        }
        if pace.is_open() {
            Ok(())
        } else {
            Err(Attempt::Paused)
        }
    }
}
