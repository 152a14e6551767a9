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
}

/// Why a `[windows]` setting is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[windows] {field}: {problem}")]
pub struct WindowSettingError {
    /// `download[1]`, `install[0]`.
    pub field: String,
    pub problem: String,
}

impl WindowsConfig {
    /// Checks every window.
    pub fn validate(&self) -> Result<(), WindowSettingError> {
        self.schedules().map(drop)
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
}

/// The wall clock: the gateway's local time as the C library reads it (`TZ`, else
/// /etc/localtime), or UTC. (A time zone library would cost the gateway's binary a third of a
/// megabyte for what the C library already knows.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    utc: bool,
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

/// A moment ahead: when, how long from now, and how it is shown (`Sun 2026-12-06 22:00 CET`).
#[derive(Debug, Clone, PartialEq)]
pub struct Moment {
    pub at_ms: i64,
    pub wait: Duration,
    pub shown: String,
}

impl Clock {
    /// The gateway's local time.
    pub fn system() -> Clock {
        Clock { utc: false }
    }

    /// UTC, whatever the gateway's zone.
    pub fn utc() -> Clock {
        Clock { utc: true }
    }

    /// `t` broken down in this clock's zone.
    fn broken(self, t: libc::time_t) -> libc::tm {
        // SAFETY: an all-zero `tm` is a valid value (its zone pointer null); the _r functions
        // write only into it.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live locals.
        unsafe {
            if self.utc {
                libc::gmtime_r(&t, &mut tm);
            } else {
                libc::localtime_r(&t, &mut tm);
            }
        }
        tm
    }

    /// The zone's abbreviation now (`CET`, `UTC`), for messages.
    pub fn zone_name(self) -> String {
        let (secs, _) = now();
        zone_of(&self.broken(secs), self.utc)
    }

    /// What `schedules` say now.
    pub fn gate(self, schedules: &[&Schedule]) -> Gate {
        let (secs, ms) = now();
        let tm = self.broken(secs);
        let civil = civil_of(&tm);
        match window::next_open(schedules, civil) {
            None => Gate::Never,
            Some(0) => Gate::Open {
                closes: window::next_close(schedules, civil).map(|s| self.ahead(&tm, ms, s)),
            },
            Some(s) => Gate::Closed {
                opens: self.ahead(&tm, ms, s),
            },
        }
    }

    /// The moment `secs` seconds of civil time after `tm` (now, at `now_ms`); a civil time a
    /// daylight-saving change skips is taken as the C library's `mktime` normalises it.
    fn ahead(self, tm: &libc::tm, now_ms: i64, secs: u32) -> Moment {
        let mut target = *tm;
        target.tm_sec += secs as i32;
        target.tm_isdst = -1;
        // SAFETY: `target` is a live, initialised `tm`.
        let t = unsafe {
            if self.utc {
                libc::timegm(&mut target)
            } else {
                libc::mktime(&mut target)
            }
        };
        let at_ms = if t == -1 { now_ms } else { t * 1000 };
        let shown_tm = self.broken(t.max(0));
        let c = civil_of(&shown_tm);
        Moment {
            at_ms,
            wait: Duration::from_millis(at_ms.saturating_sub(now_ms).max(0) as u64),
            shown: format!(
                "{} {:04}-{:02}-{:02} {} {}",
                window::DAYS[usize::from(c.weekday)],
                shown_tm.tm_year + 1900,
                shown_tm.tm_mon + 1,
                shown_tm.tm_mday,
                window::clock(c.second),
                zone_of(&shown_tm, self.utc)
            ),
        }
    }
}

/// Now: whole seconds since the epoch, and milliseconds.
fn now() -> (libc::time_t, i64) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as libc::time_t, d.as_millis() as i64)
}

/// A broken-down time's zone abbreviation.
fn zone_of(tm: &libc::tm, utc: bool) -> String {
    if utc || tm.tm_zone.is_null() {
        return "UTC".into();
    }
    // SAFETY: a non-null tm_zone from localtime_r points to a NUL-terminated string the C
    // library keeps for the process's life.
    unsafe { std::ffi::CStr::from_ptr(tm.tm_zone) }
        .to_string_lossy()
        .into_owned()
}

/// A broken-down time as the schedules count it (a leap second counts as the one before).
fn civil_of(tm: &libc::tm) -> Civil {
    Civil {
        weekday: ((tm.tm_wday + 6) % 7) as u8,
        second: (tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec.min(59)) as u32,
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
