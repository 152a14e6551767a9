//! Maintenance windows on the gateway's clock: the config's `[windows]` (when this gateway may
//! download, and when it may install) and a deployment's signed `sandstep.downloadWindows` /
//! `sandstep.installWindows`; where both apply, both must be open. The schedules themselves
//! (parsing, opening and closing in civil time) are [`sandstep_model::window`]'s; here they
//! meet the clock and its time zone.
//!
//! A closed window is waited out in steps of at most a minute, re-reading the clock each time,
//! so a clock set by NTP after boot, or a daylight-saving change, is followed.

use sandstep_model::window::{self, Civil, Schedule};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The `[windows]` table of the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct WindowsConfig {
    /// When downloads may run (`["Mon-Fri 22:00-06:00"]`); none: always.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub download: Vec<String>,
    /// When installs may begin; none: always.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub install: Vec<String>,
    /// The IANA time zone the windows are in (`Europe/Berlin`); default: the gateway's own
    /// (`TZ`, else /etc/localtime).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// Why a `[windows]` setting is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[windows] {field}: {problem}")]
pub struct WindowSettingError {
    /// `download[1]`, `install[0]`, `time-zone`.
    pub field: String,
    pub problem: String,
}

impl WindowsConfig {
    /// Checks every window and the time zone.
    pub fn validate(&self) -> Result<(), WindowSettingError> {
        self.schedules()?;
        self.clock()?;
        Ok(())
    }

    /// The download and install schedules.
    pub fn schedules(&self) -> Result<(Schedule, Schedule), WindowSettingError> {
        let parse = |name: &str, texts: &[String]| {
            Schedule::parse(texts).map_err(|(i, e)| WindowSettingError {
                field: format!("{name}[{i}]"),
                problem: e.to_string(),
            })
        };
        Ok((
            parse("download", &self.download)?,
            parse("install", &self.install)?,
        ))
    }

    /// The clock in the configured time zone.
    pub fn clock(&self) -> Result<Clock, WindowSettingError> {
        match &self.time_zone {
            None => Ok(Clock::system()),
            Some(name) => Clock::named(name),
        }
    }
}

/// The wall clock in a time zone.
#[derive(Debug, Clone)]
pub struct Clock {
    tz: jiff::tz::TimeZone,
}

/// What a set of schedules says now.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// All open; `closes` is when the first of them closes, if one does within a week.
    Open { closes: Option<Moment> },
    /// Closed until `opens`.
    Closed { opens: Moment },
    /// They are never open together.
    Never,
}

/// A moment ahead: when, how long from now, and how it is shown (`Sun 2026-12-06 22:00:00 CET`).
#[derive(Debug, Clone, PartialEq)]
pub struct Moment {
    pub at_ms: i64,
    pub wait: Duration,
    pub shown: String,
}

impl Clock {
    /// The gateway's own time zone: `TZ`, else /etc/localtime (UTC when neither is readable).
    pub fn system() -> Clock {
        Clock {
            tz: jiff::tz::TimeZone::system(),
        }
    }

    /// An IANA time zone by name, from the system's zone database (the error names
    /// `[windows] time-zone`, where names come from).
    pub fn named(name: &str) -> Result<Clock, WindowSettingError> {
        jiff::tz::TimeZone::get(name)
            .map(|tz| Clock { tz })
            .map_err(|e| WindowSettingError {
                field: "time-zone".into(),
                problem: format!("`{name}` is not a time zone this gateway knows ({e})"),
            })
    }

    /// The zone's name, for messages.
    pub fn zone_name(&self) -> String {
        self.tz.iana_name().unwrap_or("local time").to_owned()
    }

    fn now(&self) -> jiff::Zoned {
        jiff::Timestamp::now().to_zoned(self.tz.clone())
    }

    /// What `schedules` say now.
    pub fn gate(&self, schedules: &[&Schedule]) -> Gate {
        let now = self.now();
        let civil = civil_of(&now);
        match window::next_open(schedules, civil) {
            None => Gate::Never,
            Some(0) => Gate::Open {
                closes: window::next_close(schedules, civil).map(|s| self.ahead(&now, s)),
            },
            Some(s) => Gate::Closed {
                opens: self.ahead(&now, s),
            },
        }
    }

    /// The moment `secs` seconds of civil time after `now`'s whole second (a civil time that
    /// a daylight-saving change skips is taken as the moment after the gap).
    fn ahead(&self, now: &jiff::Zoned, secs: u32) -> Moment {
        let whole = now.datetime().with().subsec_nanosecond(0).build();
        let target = whole
            .ok()
            .and_then(|dt| {
                dt.checked_add(jiff::SignedDuration::from_secs(secs.into()))
                    .ok()
            })
            .and_then(|dt| self.tz.to_zoned(dt).ok())
            .unwrap_or_else(|| now.clone());
        let wait = target
            .timestamp()
            .duration_since(now.timestamp())
            .try_into()
            .unwrap_or(Duration::ZERO);
        Moment {
            at_ms: target.timestamp().as_millisecond(),
            wait,
            shown: target.strftime("%a %Y-%m-%d %H:%M:%S %Z").to_string(),
        }
    }
}

/// `now` as the schedules count it.
fn civil_of(now: &jiff::Zoned) -> Civil {
    let t = now.time();
    Civil {
        weekday: now.weekday().to_monday_zero_offset() as u8,
        second: u32::from(t.hour() as u8) * 3600
            + u32::from(t.minute() as u8) * 60
            + u32::from(t.second() as u8),
    }
}

/// Why waiting for a window ended without it opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotOpened {
    Cancelled,
    /// The schedules are never open together.
    Never,
}

/// Waits until every schedule is open, telling `waiting` each opening it waits for (once per
/// opening). Re-reads the clock at least every minute.
pub async fn wait_open(
    clock: &Clock,
    schedules: &[&Schedule],
    cancel: &CancellationToken,
    waiting: &(dyn Fn(&Moment) + Send + Sync),
) -> Result<(), NotOpened> {
    let mut told: Option<i64> = None;
    loop {
        let opens = match clock.gate(schedules) {
            Gate::Open { .. } => return Ok(()),
            Gate::Never => return Err(NotOpened::Never),
            Gate::Closed { opens } => opens,
        };
        if told != Some(opens.at_ms) {
            told = Some(opens.at_ms);
            waiting(&opens);
        }
        let nap = opens
            .wait
            .clamp(Duration::from_millis(50), Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = cancel.cancelled() => return Err(NotOpened::Cancelled),
        }
    }
}

/// The operator's phrase for a wait: `waiting for the window (opens <time>)`.
pub fn waiting_phrase(opens: &Moment) -> String {
    format!("waiting for the window (opens {})", opens.shown)
}
