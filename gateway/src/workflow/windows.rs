//! A deployment's maintenance windows and bandwidth cap: the gateway's `[windows]` with the
//! deployment's signed `sandstep.downloadWindows` / `installWindows` (both must be open), and
//! its `sandstep.maxBytesPerSec`. The download phase begins only in the download window, and a
//! transfer pauses when it closes (see [`crate::download::pace`]); installs begin only in the
//! install window, and once one has begun the deployment is not held back again.

use super::events::Event;
use super::manifests::Manifests;
use super::{Deployer, Run};
use crate::download::pace::Pace;
use crate::window::{Clock, Gate, Moment, NotOpened};
use sandstep_model::codes::{erc, result};
use sandstep_model::journal::Journal;
use sandstep_model::window::Schedule;
use sandstep_model::StepResult;
use std::sync::Arc;

/// What holds a deployment back, read once per run.
pub(super) struct Windows {
    clock: Clock,
    download: Vec<Schedule>,
    install: Vec<Schedule>,
    max_bytes_per_sec: Option<u64>,
}

/// Which window a phase waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    Download,
    Install,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Download => "download",
            Which::Install => "install",
        }
    }
}

impl Windows {
    fn schedules(&self, which: Which) -> Vec<&Schedule> {
        match which {
            Which::Download => self.download.iter().collect(),
            Which::Install => self.install.iter().collect(),
        }
    }

    /// The pace the deployment's transfers keep: its download windows and its cap.
    pub fn pace(&self, run: &Run<'_>) -> Arc<Pace> {
        let observer = run.observer.clone();
        Arc::new(Pace::new(
            self.clock,
            self.download.clone(),
            self.max_bytes_per_sec,
            run.cancel.clone(),
            Box::new(move |opens| observer.event(&waiting(Which::Download, opens))),
        ))
    }

    /// Waits for `which` window; the step result that ends the deployment when it will not
    /// open (cancelled, or never open together).
    pub async fn wait(&self, which: Which, run: &Run<'_>) -> Result<(), StepResult> {
        let observer = run.observer.clone();
        let tell = move |opens: &Moment| observer.event(&waiting(which, opens));
        match crate::window::wait_open(&self.clock, &self.schedules(which), run.cancel, &tell).await
        {
            Ok(()) => Ok(()),
            Err(NotOpened::Cancelled) => Err(StepResult::failure(
                erc::WORKFLOW_CANCELLED,
                format!(
                    "deployment cancelled while waiting for the {} window",
                    which.name()
                ),
            )
            .with_code(result::FAILURE_CANCELLED)),
            Err(NotOpened::Never) => Err(self.never(which)),
        }
    }

    /// The failure of a deployment whose `which` windows are never open together.
    fn never(&self, which: Which) -> StepResult {
        let shown: Vec<String> = self
            .schedules(which)
            .iter()
            .map(|s| s.to_string())
            .collect();
        StepResult::failure(
            erc::WORKFLOW_WINDOW_NEVER_OPENS,
            format!(
                "the {} windows are never open together: the gateway's [windows] {} ({}) and the deployment's sandstep.{}Windows ({}), in {}",
                which.name(),
                which.name(),
                shown.first().map_or("always", |s| s.as_str()),
                which.name(),
                shown.get(1).map_or("always", |s| s.as_str()),
                self.clock.zone_name(),
            ),
        )
    }

    /// Refuses a deployment that would wait forever, before it waits at all: only for the
    /// windows it still has to wait for (a deployment past its downloads, or past its first
    /// install, is not failed for a window it no longer needs).
    pub fn check(&self, j: &Journal) -> Result<(), StepResult> {
        let mut which = Vec::new();
        if j.next_to_download().is_some() {
            which.push(Which::Download);
        }
        if j.next_unit().is_some() && !j.installs_begun() {
            which.push(Which::Install);
        }
        for w in which {
            if self.clock.gate(&self.schedules(w)) == Gate::Never {
                return Err(self.never(w));
            }
        }
        Ok(())
    }
}

/// The event for a wait for `which` window until `opens`.
fn waiting(which: Which, opens: &Moment) -> Event {
    Event::Waiting {
        what: which.name(),
        opens: opens.shown.clone(),
        opens_at_ms: opens.at_ms,
        phrase: crate::window::waiting_phrase(opens),
    }
}

impl Deployer {
    /// The deployment's windows and cap: the gateway's settings with its running manifest's.
    pub(super) fn windows(&self, manifests: &Manifests) -> Result<Windows, StepResult> {
        let config = &self.settings.windows;
        let refused = |e: crate::window::WindowSettingError| {
            StepResult::failure(erc::WORKFLOW_WINDOW_NEVER_OPENS, e.to_string())
        };
        let (download, install) = config.schedules().map_err(refused)?;
        let clock = Clock::system();
        let own = manifests
            .parent
            .as_ref()
            .map(|m| m.delivery.clone())
            .unwrap_or_default();
        Ok(Windows {
            clock,
            download: vec![download, own.download_windows],
            install: vec![install, own.install_windows],
            max_bytes_per_sec: own.max_bytes_per_sec,
        })
    }
}
