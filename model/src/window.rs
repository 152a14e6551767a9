//! Maintenance windows: when a gateway may download and when it may install, as time ranges per
//! weekday in the gateway's local time (`Mon-Fri 22:00-06:00`, `Sat,Sun 00:00-24:00`,
//! `daily 01:30-04:00:30`). Pure: the gateway turns its clock into a (weekday, second of the day)
//! and back; here only civil time is counted.
//!
//! A window whose end is not after its start runs past midnight: it belongs to the day it opens
//! (`Fri 22:00-06:00` is Friday night into Saturday morning). A [`Schedule`] is the union of its
//! windows; no windows at all is "always". Where several schedules apply (the gateway's config
//! and the deployment's signed part), each must be open: see [`next_open`] and [`next_close`].

use std::fmt;

/// Seconds in a civil day.
pub const DAY: u32 = 86_400;
/// How far ahead an opening is looked for: a week, and the night that runs past its end.
const HORIZON_DAYS: u32 = 8;

/// Weekday names, Monday first (the index is the day used throughout).
pub const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// A civil moment: the weekday (0 = Monday) and the second of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub weekday: u8,
    pub second: u32,
}

/// One time range on some weekdays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Which weekdays it opens on (Monday first).
    pub days: [bool; 7],
    /// Opens at this second of the day.
    pub start: u32,
    /// Closes at this second (of the next day when not after `start`); 1..=86400.
    pub end: u32,
}

/// Why a window was refused: the text, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}`: {problem} (expected e.g. `Mon-Fri 22:00-06:00` or `daily 01:00-05:00`)")]
pub struct WindowError {
    pub text: String,
    pub problem: String,
}

impl WindowError {
    fn new(text: &str, problem: String) -> WindowError {
        WindowError {
            text: text.to_owned(),
            problem,
        }
    }
}

impl Window {
    /// Parses `DAYS START-END`: DAYS is `daily`, a day (`Mon`), a range (`Mon-Fri`, `Fri-Mon`
    /// wraps) or a comma list of those; START and END are `HH:MM` or `HH:MM:SS`, END may be
    /// `24:00`. An empty window (start = end) is refused.
    pub fn parse(text: &str) -> Result<Window, WindowError> {
        let fail = |problem: String| WindowError::new(text, problem);
        let mut parts = text.split_whitespace();
        let (Some(days), Some(range), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(fail(
                "needs the days and a time range, separated by a space".into(),
            ));
        };
        let days = parse_days(text, days)?;
        let (start, end) = range
            .split_once('-')
            .ok_or_else(|| fail(format!("`{range}` is not a time range START-END")))?;
        let start = parse_time(text, start, false)?;
        let end = parse_time(text, end, true)?;
        if start == end {
            return Err(fail(
                "opens and closes at the same time (for all day, write 00:00-24:00)".into(),
            ));
        }
        Ok(Window { days, start, end })
    }

    /// Whether it is open at `at`.
    pub fn is_open(&self, at: Civil) -> bool {
        let day = usize::from(at.weekday % 7);
        let yesterday = (day + 6) % 7;
        if self.end > self.start {
            self.days[day] && (self.start..self.end).contains(&at.second)
        } else {
            (self.days[day] && at.second >= self.start)
                || (self.days[yesterday] && at.second < self.end)
        }
    }

    /// Seconds of the day at which it may open or close.
    fn edges(&self) -> [u32; 2] {
        [self.start, self.end % DAY]
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = DAYS
            .iter()
            .zip(self.days)
            .filter_map(|(n, on)| on.then_some(*n))
            .collect();
        let days = if days.len() == 7 {
            "daily".to_owned()
        } else {
            days.join(",")
        };
        write!(f, "{days} {}-{}", clock(self.start), clock(self.end))
    }
}

/// A time of day as written: `HH:MM`, with `:SS` when it has seconds.
pub fn clock(second: u32) -> String {
    let (h, m, s) = (second / 3600, second / 60 % 60, second % 60);
    if s == 0 {
        format!("{h:02}:{m:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// A day's index in [`DAYS`]; `whole` is the window's text, for the error.
fn day_index(whole: &str, name: &str) -> Result<usize, WindowError> {
    DAYS.iter()
        .position(|d| d.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            WindowError::new(
                whole,
                format!("`{name}` is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"),
            )
        })
}

fn parse_days(whole: &str, text: &str) -> Result<[bool; 7], WindowError> {
    if text.eq_ignore_ascii_case("daily") {
        return Ok([true; 7]);
    }
    let mut days = [false; 7];
    for part in text.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (day_index(whole, from)?, day_index(whole, to)?);
                let mut d = from;
                loop {
                    days[d] = true;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[day_index(whole, part)?] = true,
        }
    }
    Ok(days)
}

/// `HH:MM[:SS]` as seconds of the day; `24:00` only as an end.
fn parse_time(whole: &str, text: &str, is_end: bool) -> Result<u32, WindowError> {
    let fail = |problem: String| WindowError::new(whole, problem);
    let bad = || fail(format!("`{text}` is not a time of day (HH:MM or HH:MM:SS)"));
    let fields: Vec<&str> = text.split(':').collect();
    if !(2..=3).contains(&fields.len()) || fields.iter().any(|f| f.len() != 2) {
        return Err(bad());
    }
    let mut n = [0u32; 3];
    for (slot, f) in n.iter_mut().zip(&fields) {
        if !f.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        *slot = f.parse().map_err(|_| bad())?;
    }
    let [h, m, s] = n;
    if h == 24 && m == 0 && s == 0 {
        return if is_end {
            Ok(DAY)
        } else {
            Err(fail(format!(
                "`{text}`: a window cannot open at 24:00; write 00:00"
            )))
        };
    }
    if h > 23 || m > 59 || s > 59 {
        return Err(fail(format!(
            "`{text}` is not a time of day (hours 00-23, minutes and seconds 00-59)"
        )));
    }
    Ok(h * 3600 + m * 60 + s)
}

/// The union of some windows; none is "always open".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    pub windows: Vec<Window>,
}

impl Schedule {
    /// Parses each text, naming the first that is refused by its index.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Schedule, (usize, WindowError)> {
        let windows = texts
            .iter()
            .enumerate()
            .map(|(i, t)| Window::parse(t.as_ref()).map_err(|e| (i, e)))
            .collect::<Result<_, _>>()?;
        Ok(Schedule { windows })
    }

    /// Whether it has no windows (always open).
    pub fn is_always(&self) -> bool {
        self.windows.is_empty()
    }

    pub fn is_open(&self, at: Civil) -> bool {
        self.is_always() || self.windows.iter().any(|w| w.is_open(at))
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_always() {
            return f.write_str("always");
        }
        let all: Vec<String> = self.windows.iter().map(ToString::to_string).collect();
        f.write_str(&all.join("; "))
    }
}

/// Whether every schedule is open at `at`.
pub fn all_open(schedules: &[&Schedule], at: Civil) -> bool {
    schedules.iter().all(|s| s.is_open(at))
}

/// `at` moved on by `secs` seconds of civil time.
pub fn later(at: Civil, secs: u32) -> Civil {
    let total = at.second + secs;
    Civil {
        weekday: ((u32::from(at.weekday) + total / DAY) % 7) as u8,
        second: total % DAY,
    }
}

/// The offsets (seconds from `at`, ascending, within the horizon) at which any schedule's
/// open state may change: the only moments worth checking.
fn edges_ahead(schedules: &[&Schedule], at: Civil) -> Vec<u32> {
    let mut out: Vec<u32> = schedules
        .iter()
        .flat_map(|s| s.windows.iter().flat_map(Window::edges))
        .flat_map(|edge| {
            (0..=HORIZON_DAYS).map(move |d| {
                let ahead = d * DAY + edge;
                ahead.checked_sub(at.second)
            })
        })
        .flatten()
        .filter(|&off| off > 0 && off <= HORIZON_DAYS * DAY)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Seconds from `at` until every schedule is open (0: open now); `None` when they are never
/// open together within a week.
pub fn next_open(schedules: &[&Schedule], at: Civil) -> Option<u32> {
    if all_open(schedules, at) {
        return Some(0);
    }
    edges_ahead(schedules, at)
        .into_iter()
        .find(|&off| all_open(schedules, later(at, off)))
}

/// Seconds from `at` until some schedule closes, when all are open now; `None` when they stay
/// open (or are not open now).
pub fn next_close(schedules: &[&Schedule], at: Civil) -> Option<u32> {
    if !all_open(schedules, at) {
        return None;
    }
    edges_ahead(schedules, at)
        .into_iter()
        .find(|&off| !all_open(schedules, later(at, off)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(weekday: u8, h: u32, m: u32) -> Civil {
        Civil {
            weekday,
            second: h * 3600 + m * 60,
        }
    }

    fn sched(texts: &[&str]) -> Schedule {
        Schedule::parse(texts).unwrap()
    }

    #[test]
    fn windows_parse_days_ranges_lists_and_seconds() {
        let w = Window::parse("Mon-Fri 22:00-06:00").unwrap();
        assert_eq!(w.days, [true, true, true, true, true, false, false]);
        assert_eq!((w.start, w.end), (22 * 3600, 6 * 3600));
        let w = Window::parse("fri-mon 00:00-24:00").unwrap();
        assert_eq!(w.days, [true, false, false, false, true, true, true]);
        assert_eq!(w.end, DAY);
        let w = Window::parse("Sat,Tue 01:02:03-01:02:04").unwrap();
        assert_eq!(w.to_string(), "Tue,Sat 01:02:03-01:02:04");
        assert_eq!(
            Window::parse("daily 01:00-05:00").unwrap().to_string(),
            "daily 01:00-05:00"
        );
    }

    #[test]
    fn impossible_windows_are_refused_saying_what_is_wrong() {
        for (text, says) in [
            ("Mon 25:00-26:00", "hours 00-23"),
            ("Mon 10:60-11:00", "minutes and seconds 00-59"),
            ("Mox 10:00-11:00", "`Mox` is not a day"),
            ("Mon 10:00-10:00", "same time"),
            ("Mon 24:00-01:00", "cannot open at 24:00"),
            ("Mon", "needs the days and a time range"),
            ("Mon 10:00", "not a time range"),
            ("Mon 1:00-2:00", "HH:MM"),
            ("Mon 10:00-11:00 extra", "needs the days"),
            ("Mon -1:00-02:00", "not a time of day"),
            ("Mon +1:00-02:00", "not a time of day"),
        ] {
            let e = Window::parse(text).unwrap_err();
            assert!(e.to_string().contains(says), "{text}: {e}");
            assert!(e.to_string().contains(text), "{text}: {e}");
        }
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_opens() {
        let w = Window::parse("Fri 22:00-06:00").unwrap();
        assert!(w.is_open(at(4, 23, 0)), "Friday night");
        assert!(w.is_open(at(5, 5, 59)), "Saturday morning");
        assert!(!w.is_open(at(5, 6, 0)), "closed at its end");
        assert!(
            !w.is_open(at(4, 5, 0)),
            "Friday morning belongs to Thursday"
        );
        assert!(!w.is_open(at(5, 22, 30)), "not Saturday night");
    }

    #[test]
    fn the_next_opening_and_closing_are_found_across_days_and_the_week_end() {
        let s = sched(&["Mon-Fri 22:00-06:00"]);
        // Saturday noon: Friday's night is over, Monday 22:00 is next (2 days 10 h away).
        assert_eq!(next_open(&[&s], at(5, 12, 0)), Some(2 * DAY + 10 * 3600));
        assert_eq!(next_open(&[&s], at(0, 23, 0)), Some(0));
        assert_eq!(next_close(&[&s], at(0, 23, 0)), Some(7 * 3600));
        // Monday night into Tuesday into Tuesday night: the windows do not join at 06:00.
        assert_eq!(next_close(&[&s], at(1, 5, 0)), Some(3600));
        let always = Schedule::default();
        assert_eq!(next_close(&[&always], at(3, 3, 3)), None);
        assert_eq!(next_open(&[&always], at(3, 3, 3)), Some(0));
    }

    #[test]
    fn windows_that_touch_stay_open_across_the_seam() {
        let s = sched(&["daily 00:00-24:00"]);
        assert_eq!(next_close(&[&s], at(6, 23, 59)), None);
        let s = sched(&["Mon 20:00-24:00", "Tue 00:00-02:00"]);
        assert_eq!(next_close(&[&s], at(0, 21, 0)), Some(5 * 3600));
    }

    #[test]
    fn two_schedules_must_both_be_open_and_may_never_be() {
        let gateway = sched(&["daily 22:00-06:00"]);
        let deployment = sched(&["Sun 04:00-12:00"]);
        // Only Sunday 04:00-06:00 is in both.
        let wed = at(2, 12, 0);
        let open = next_open(&[&gateway, &deployment], wed).unwrap();
        assert_eq!(later(wed, open), at(6, 4, 0));
        assert_eq!(
            next_close(&[&gateway, &deployment], at(6, 4, 0)),
            Some(2 * 3600)
        );
        let apart = sched(&["daily 12:00-13:00"]);
        assert_eq!(next_open(&[&gateway, &apart], wed), None);
    }

    #[test]
    fn a_window_seconds_away_opens_and_closes_on_the_second() {
        let s = sched(&["Thu 10:00:05-10:00:09"]);
        let now = at(3, 10, 0);
        assert_eq!(next_open(&[&s], now), Some(5));
        assert_eq!(next_close(&[&s], later(now, 5)), Some(4));
        assert_eq!(s.to_string(), "Thu 10:00:05-10:00:09");
    }
}
