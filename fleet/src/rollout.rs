//! Phased rollouts, as pure decisions: which devices a phase holds, when the next phase starts,
//! when the rollout stops itself. The replica applies them (`Rollouts::drive` in [`super`]);
//! the store keeps the rollout and which device got its deployment in which phase, so any
//! replica, or one restarted, decides the same.
//!
//! A device's place is its rank among the group's devices by a hash of (rollout id, device id):
//! the same on every replica and after restarts, and uncorrelated between rollouts. Phase `k`
//! holds the first `ceil(share_k * n)` devices (so a 1% phase of a small group still holds one).
//! A device that joins the group late takes the phase its rank falls in, and gets the deployment
//! as soon as that phase has started.

use crate::record::Outcome;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Shares and rates are in basis points: 100 = 1%.
pub const WHOLE: u32 = 10_000;

/// A rollout: what it deploys to which group, its phases and limits, and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub id: String,
    pub group: String,
    /// The deployment's update id (`provider/name/version`), for people.
    pub update_id: String,
    /// The desired fields each device gets: ADU's deployment (`workflow` with this rollout's
    /// workflow id, `updateManifest`, its signature, `fileUrls`).
    pub desired: Map<String, Value>,
    pub workflow_id: String,
    /// Cumulative share of the group per phase, increasing, the last one [`WHOLE`].
    pub phases: Vec<u32>,
    /// Pause when more than this share of the finished devices failed (`None`: never).
    pub max_failure_rate: Option<u32>,
    /// The failure rate is judged once at least this many devices finished.
    pub min_devices: u64,
    /// How long a finished phase is watched before the next one starts.
    pub soak_ms: u64,
    pub created_ms: u64,
    pub progress: Progress,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub state: State,
    /// The phase devices are being deployed to (index into `phases`).
    pub phase: usize,
    /// When every device of the current phase finished (the soak runs from here).
    pub phase_done_ms: Option<u64>,
    /// Why the rollout paused itself, or who paused or aborted it.
    pub reason: Option<String>,
    /// Finished and failed counts when it was last resumed: the failure rate after a resume
    /// counts only what finished since.
    pub baseline_finished: u64,
    pub baseline_failed: u64,
    pub updated_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    #[default]
    Running,
    Paused,
    Aborted,
    Finished,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::Aborted => "aborted",
            State::Finished => "finished",
        }
    }
}

/// One device of the rollout's group (or one it was deployed to).
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: String,
    /// The phase it got the deployment in, if it did.
    pub deployed: Option<usize>,
    /// When it got it (ms since the epoch; 0: not deployed).
    pub deployed_ms: u64,
    /// How this rollout's deployment went on it (`None`: not acknowledged yet).
    pub outcome: Option<Outcome>,
}

/// A bad rollout option.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RolloutError {
    #[error("{what} `{text}`: {why}")]
    Option {
        what: &'static str,
        text: String,
        why: &'static str,
    },
}

fn bad(what: &'static str, text: &str, why: &'static str) -> RolloutError {
    RolloutError::Option {
        what,
        text: text.to_owned(),
        why,
    }
}

/// A percentage (`5%`, `0.5%`, `5`) in basis points.
pub fn parse_percent(what: &'static str, text: &str) -> Result<u32, RolloutError> {
    let t = text.trim().trim_end_matches('%');
    let v: f64 = t
        .parse()
        .map_err(|_| bad(what, text, "expected a percentage such as 5%"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(bad(what, text, "a percentage is between 0% and 100%"));
    }
    Ok((v * 100.0).round() as u32)
}

/// Phases (`1%,10%,50%,100%`): cumulative, increasing, ending at 100%.
pub fn parse_phases(text: &str) -> Result<Vec<u32>, RolloutError> {
    let phases = text
        .split(',')
        .map(|p| parse_percent("--phases", p))
        .collect::<Result<Vec<_>, _>>()?;
    if phases.windows(2).any(|w| w[0] >= w[1]) || phases.first() == Some(&0) {
        return Err(bad(
            "--phases",
            text,
            "each phase covers more of the group than the one before",
        ));
    }
    if phases.last() != Some(&WHOLE) {
        return Err(bad("--phases", text, "the last phase is 100%"));
    }
    Ok(phases)
}

/// A duration (`90s`, `10m`, `2h`, `1d`, `0`) in milliseconds.
pub fn parse_duration(what: &'static str, text: &str) -> Result<u64, RolloutError> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| bad(what, text, "expected a duration such as 90s, 10m or 2h"))?;
    let scale = match unit {
        "" if n == 0 => 0,
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad(what, text, "the unit is one of ms, s, m, h, d")),
    };
    Ok(n.saturating_mul(scale))
}

/// A device's place in a rollout: a hash of the rollout and the device.
fn place(rollout: &str, device: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(rollout.as_bytes());
    h.update([0]);
    h.update(device.as_bytes());
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// The phase each member belongs to: the one it was deployed in, or the one its rank falls in.
pub fn phases_of(r: &Rollout, members: &[Member]) -> Vec<usize> {
    let n = members.len() as u64;
    let counts: Vec<u64> = r
        .phases
        .iter()
        .map(|&share| (n * u64::from(share)).div_ceil(u64::from(WHOLE)))
        .collect();
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by_key(|&i| (place(&r.id, &members[i].id), i));
    let mut out = vec![0; members.len()];
    for (rank, &i) in order.iter().enumerate() {
        let by_rank = counts
            .iter()
            .position(|&c| (rank as u64) < c)
            .unwrap_or(r.phases.len() - 1);
        out[i] = members[i].deployed.unwrap_or(by_rank);
    }
    out
}

/// What one look at a rollout decides: devices to deploy to now (with their phase), and the
/// rollout's progress after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub deploy: Vec<(String, usize)>,
    pub progress: Progress,
}

/// Finished and failed counts over the deployed members.
fn finished_failed(members: &[Member]) -> (u64, u64, BTreeMap<String, u64>) {
    let (mut finished, mut failed, mut codes) = (0, 0, BTreeMap::new());
    for o in members
        .iter()
        .filter(|m| m.deployed.is_some())
        .filter_map(|m| m.outcome.as_ref())
    {
        if o.finished() {
            finished += 1;
        }
        if let Outcome::Failed(code) = o {
            failed += 1;
            *codes.entry(code.clone()).or_insert(0) += 1;
        }
    }
    (finished, failed, codes)
}

/// Why the rollout should pause itself, if the failure rate passed its limit.
fn over_limit(r: &Rollout, members: &[Member]) -> Option<String> {
    let limit = r.max_failure_rate?;
    let (finished, failed, codes) = finished_failed(members);
    let finished = finished.saturating_sub(r.progress.baseline_finished);
    let failed = failed.saturating_sub(r.progress.baseline_failed);
    if finished == 0
        || finished < r.min_devices
        || failed * u64::from(WHOLE) <= u64::from(limit) * finished
    {
        return None;
    }
    let by_code: Vec<String> = codes.iter().map(|(c, n)| format!("{c} x{n}")).collect();
    Some(format!(
        "failure rate {:.1}% ({failed} of {finished} finished) is over the {:.1}% limit; failed by code: {}",
        failed as f64 * 100.0 / finished as f64,
        f64::from(limit) / 100.0,
        by_code.join(", ")
    ))
}

/// One look at a running rollout.
pub fn tick(r: &Rollout, members: &[Member], now_ms: u64) -> Tick {
    let mut progress = r.progress.clone();
    if progress.state != State::Running {
        return Tick {
            deploy: Vec::new(),
            progress,
        };
    }
    if let Some(why) = over_limit(r, members) {
        progress.state = State::Paused;
        progress.reason = Some(why);
        progress.updated_ms = now_ms;
        return Tick {
            deploy: Vec::new(),
            progress,
        };
    }
    let phase_of = phases_of(r, members);
    let deploy: Vec<(String, usize)> = members
        .iter()
        .zip(&phase_of)
        .filter(|(m, &p)| m.deployed.is_none() && p <= progress.phase)
        .map(|(m, &p)| (m.id.clone(), p))
        .collect();
    let done = deploy.is_empty()
        && members
            .iter()
            .zip(&phase_of)
            .filter(|(_, &p)| p <= progress.phase)
            .all(|(m, _)| m.outcome.as_ref().is_some_and(Outcome::finished));
    match (done, progress.phase_done_ms) {
        (false, _) => progress.phase_done_ms = None,
        (true, None) => {
            progress.phase_done_ms = Some(now_ms);
            progress.updated_ms = now_ms;
        }
        (true, Some(_)) => {}
    }
    if let Some(at) = progress.phase_done_ms {
        if now_ms.saturating_sub(at) >= r.soak_ms {
            if progress.phase + 1 >= r.phases.len() {
                progress.state = State::Finished;
            } else {
                progress.phase += 1;
                progress.phase_done_ms = None;
            }
            progress.updated_ms = now_ms;
        }
    }
    Tick { deploy, progress }
}

/// The operator resumes a paused rollout: failures so far are accepted; the limit applies to
/// what finishes from now on.
pub fn resumed(r: &Rollout, members: &[Member], now_ms: u64) -> Progress {
    let (finished, failed, _) = finished_failed(members);
    Progress {
        state: State::Running,
        reason: None,
        baseline_finished: finished,
        baseline_failed: failed,
        updated_ms: now_ms,
        ..r.progress.clone()
    }
}

/// Devices deployed to at least `after_ms` ago that have not acknowledged: their delta is
/// published again (the replica that deployed may have died between storing the deployment and
/// publishing it, or the device missed the message), no more often than `every_ms` each, going
/// by `last` (when each was last nudged).
pub fn overdue<'a>(
    members: &'a [Member],
    last: &'a std::collections::HashMap<String, u64>,
    now_ms: u64,
    after_ms: u64,
    every_ms: u64,
) -> impl Iterator<Item = &'a str> + 'a {
    members
        .iter()
        .filter(move |m| {
            m.deployed.is_some()
                && m.outcome.is_none()
                && now_ms.saturating_sub(m.deployed_ms) >= after_ms
                && last
                    .get(&m.id)
                    .is_none_or(|t| now_ms.saturating_sub(*t) >= every_ms)
        })
        .map(|m| m.id.as_str())
}

/// One phase's devices, by where they stand.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseCounts {
    pub phase: usize,
    /// The phase's cumulative share of the group, in percent.
    pub share_percent: f64,
    pub devices: u64,
    /// Not deployed yet (the phase has not started).
    pub waiting: u64,
    /// Deployed, not acknowledged yet (offline devices get it when they come back).
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub cancelled: u64,
    /// Failed, by `resultCode/extendedResultCodes` (or `refused`).
    pub failed: BTreeMap<String, u64>,
}

/// Per-phase counts, for `sandstep status --rollout`.
pub fn summary(r: &Rollout, members: &[Member]) -> Vec<PhaseCounts> {
    let mut out: Vec<PhaseCounts> = r
        .phases
        .iter()
        .enumerate()
        .map(|(phase, &s)| PhaseCounts {
            phase,
            share_percent: f64::from(s) / 100.0,
            ..PhaseCounts::default()
        })
        .collect();
    for (m, p) in members.iter().zip(phases_of(r, members)) {
        let c = &mut out[p];
        c.devices += 1;
        match (&m.deployed, &m.outcome) {
            (None, _) => c.waiting += 1,
            (Some(_), None) => c.pending += 1,
            (Some(_), Some(Outcome::Running)) => c.running += 1,
            (Some(_), Some(Outcome::Succeeded)) => c.succeeded += 1,
            (Some(_), Some(Outcome::Cancelled)) => c.cancelled += 1,
            (Some(_), Some(Outcome::Failed(code))) => {
                *c.failed.entry(code.clone()).or_insert(0) += 1
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(phases: &str, limit: Option<&str>, min: u64, soak: &str) -> Rollout {
        Rollout {
            id: "r1".into(),
            group: "g".into(),
            update_id: "c/n/1".into(),
            desired: Map::new(),
            workflow_id: "r1".into(),
            phases: parse_phases(phases).unwrap(),
            max_failure_rate: limit.map(|l| parse_percent("--max-failure-rate", l).unwrap()),
            min_devices: min,
            soak_ms: parse_duration("--soak", soak).unwrap(),
            created_ms: 0,
            progress: Progress::default(),
        }
    }

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                id: format!("gw-{i:04}"),
                deployed: None,
                deployed_ms: 0,
                outcome: None,
            })
            .collect()
    }

    /// Applies a tick's deployments and lets every deployed device finish with `outcome`.
    fn deploy_and_finish(ms: &mut [Member], t: &Tick, outcome: impl Fn(&str) -> Outcome) {
        for (id, p) in &t.deploy {
            let m = ms.iter_mut().find(|m| &m.id == id).unwrap();
            m.deployed = Some(*p);
            m.outcome = Some(outcome(id));
        }
    }

    #[test]
    fn options_are_read_or_refused_with_the_reason() {
        assert_eq!(
            parse_phases("1%,10%,50%,100%").unwrap(),
            [100, 1000, 5000, 10_000]
        );
        assert_eq!(parse_phases("100%").unwrap(), [10_000]);
        assert!(parse_phases("10%,5%,100%")
            .unwrap_err()
            .to_string()
            .contains("more of the group"));
        assert!(parse_phases("10%,50%")
            .unwrap_err()
            .to_string()
            .contains("last phase is 100%"));
        assert!(parse_percent("--max-failure-rate", "150%").is_err());
        assert_eq!(parse_percent("--max-failure-rate", "0.5%").unwrap(), 50);
        assert_eq!(parse_duration("--soak", "10m").unwrap(), 600_000);
        assert_eq!(parse_duration("--soak", "0").unwrap(), 0);
        assert!(parse_duration("--soak", "10 minutes").is_err());
    }

    #[test]
    fn phases_hold_a_stable_share_of_the_group_and_at_least_one_device() {
        let r = rollout("1%,10%,50%,100%", None, 0, "0");
        let ms = members(1000);
        let p = phases_of(&r, &ms);
        let count = |k| p.iter().filter(|&&x| x == k).count();
        assert_eq!((count(0), count(1), count(2), count(3)), (10, 90, 400, 500));
        // The same members in another order: the same phases.
        let mut rev = ms.clone();
        rev.reverse();
        let prev = phases_of(&r, &rev);
        for (i, m) in rev.iter().enumerate() {
            let j = ms.iter().position(|x| x.id == m.id).unwrap();
            assert_eq!(prev[i], p[j]);
        }
        let small = members(3);
        assert_eq!(phases_of(&r, &small).iter().filter(|&&x| x == 0).count(), 1);
    }

    #[test]
    fn a_phase_starts_when_the_previous_one_finished_and_soaked() {
        let r0 = rollout("10%,100%", None, 0, "10s");
        let mut ms = members(20);
        let t = tick(&r0, &ms, 1_000);
        assert_eq!(t.deploy.len(), 2);
        assert!(t.deploy.iter().all(|(_, p)| *p == 0));
        deploy_and_finish(&mut ms, &t, |_| Outcome::Succeeded);
        let mut r = r0.clone();
        r.progress = t.progress;
        let t = tick(&r, &ms, 2_000);
        assert!(t.deploy.is_empty());
        assert_eq!(t.progress.phase_done_ms, Some(2_000), "soak starts");
        r.progress = t.progress;
        let t = tick(&r, &ms, 11_999);
        assert_eq!(t.progress.phase, 0, "still soaking");
        let t = tick(&r, &ms, 12_000);
        assert_eq!(t.progress.phase, 1);
        r.progress = t.progress;
        let t = tick(&r, &ms, 12_001);
        assert_eq!(t.deploy.len(), 18);
        deploy_and_finish(&mut ms, &t, |_| Outcome::Succeeded);
        r.progress = t.progress;
        let t = tick(&r, &ms, 13_000);
        r.progress = t.progress;
        let t = tick(&r, &ms, 23_000);
        assert_eq!(t.progress.state, State::Finished);
    }

    #[test]
    fn failures_over_the_limit_pause_the_rollout_and_say_why_then_resume_counts_afresh() {
        let mut r = rollout("50%,100%", Some("10%"), 4, "0");
        let mut ms = members(20);
        let t = tick(&r, &ms, 1);
        // Every third device fails: 33% > 10%.
        deploy_and_finish(&mut ms, &t, |id| {
            if id.ends_with('0') || id.ends_with('3') || id.ends_with('6') {
                Outcome::Failed("0/30000007".into())
            } else {
                Outcome::Succeeded
            }
        });
        r.progress = t.progress;
        let t = tick(&r, &ms, 2);
        assert_eq!(t.progress.state, State::Paused);
        let why = t.progress.reason.clone().unwrap();
        assert!(
            why.contains("over the 10.0% limit") && why.contains("0/30000007 x"),
            "{why}"
        );
        assert!(t.deploy.is_empty());
        r.progress = t.progress;
        assert!(tick(&r, &ms, 3).deploy.is_empty(), "paused stays paused");
        r.progress = resumed(&r, &ms, 4);
        let t = tick(&r, &ms, 5);
        assert_eq!(t.progress.state, State::Running, "past failures accepted");
        assert_eq!(t.progress.phase, 1);
    }

    #[test]
    fn too_few_finished_devices_do_not_pause_and_late_devices_join_their_phase() {
        let r = rollout("100%", Some("10%"), 5, "0");
        let mut ms = members(4);
        let t = tick(&r, &ms, 1);
        deploy_and_finish(&mut ms, &t, |_| Outcome::Failed("refused".into()));
        let mut r2 = r.clone();
        r2.progress = t.progress;
        assert_eq!(
            tick(&r2, &ms, 2).progress.state,
            State::Finished,
            "4 < min-devices 5"
        );
        let mut r3 = r.clone();
        r3.progress = Progress::default();
        ms.push(Member {
            id: "late".into(),
            deployed: None,
            deployed_ms: 0,
            outcome: None,
        });
        let t = tick(&r3, &ms, 3);
        assert_eq!(t.deploy, [("late".to_owned(), 0)]);
    }

    #[test]
    fn the_summary_counts_each_phase_by_state_and_failure_code() {
        let r = rollout("50%,100%", None, 0, "0");
        let mut ms = members(4);
        let t = tick(&r, &ms, 1);
        deploy_and_finish(&mut ms, &t, |_| Outcome::Failed("0/1".into()));
        let s = summary(&r, &ms);
        assert_eq!((s[0].devices, s[0].failed["0/1"], s[1].waiting), (2, 2, 2));
    }

    #[test]
    fn unacknowledged_deployments_are_nudged_after_a_while_and_not_too_often() {
        let mut ms = members(3);
        ms[0].deployed = Some(0);
        ms[0].deployed_ms = 1_000;
        ms[1].deployed = Some(0);
        ms[1].deployed_ms = 1_000;
        ms[1].outcome = Some(Outcome::Running);
        let mut last = std::collections::HashMap::new();
        assert_eq!(
            overdue(&ms, &last, 3_000, 5_000, 30_000).count(),
            0,
            "not yet"
        );
        let due: Vec<&str> = overdue(&ms, &last, 6_000, 5_000, 30_000).collect();
        assert_eq!(due, ["gw-0000"], "only the deployed, unacknowledged one");
        last.insert("gw-0000".to_owned(), 6_000);
        assert_eq!(overdue(&ms, &last, 20_000, 5_000, 30_000).count(), 0);
        assert_eq!(overdue(&ms, &last, 36_000, 5_000, 30_000).count(), 1);
    }
}
