//! The core's transitions, a row each: from a state (what runs, what waits, what finished
//! last), an input, to the effects (by kind) and the state after.

use super::*;
use sandstep_model::journal::FileSource;
use sandstep_model::results::ResultFile;

fn wf(id: &str) -> Workflow {
    Workflow {
        action: action::PROCESS_DEPLOYMENT,
        id: id.into(),
        retry_timestamp: None,
    }
}

fn retried(id: &str, ts: &str) -> Workflow {
    Workflow {
        retry_timestamp: Some(ts.into()),
        ..wf(id)
    }
}

fn cancel(id: &str) -> Workflow {
    Workflow {
        action: action::CANCEL,
        ..wf(id)
    }
}

fn req(id: &str) -> Box<Request> {
    Box::new(Request {
        workflow_id: id.into(),
        retry_timestamp: None,
        manifest: "{}".into(),
        source: FileSource::Urls(Default::default()),
        inventory: None,
        force: false,
        signature: None,
        allow_unsigned: false,
        root_key_package_url: None,
    })
}

fn outcome(status: Status) -> Result<Outcome, RunError> {
    let result: ResultFile = serde_json::from_value(serde_json::json!({
        "workflowId": "w", "updateId": {"provider": "p", "name": "n", "version": "1"},
        "status": status, "resultCode": 700, "extendedResultCode": 0,
        "extendedResultCodes": "", "resultDetails": "", "stepResults": {},
        "startedAtMs": 0, "durationMs": 0
    }))
    .expect("a result file");
    Ok(Outcome {
        status,
        result,
        already_done: false,
    })
}

/// What a row starts from.
#[derive(Clone, Copy)]
enum From {
    Idle,
    /// `w1` running.
    Running,
    /// `w1` running, `w2` waiting to replace it.
    Replacing,
    /// Nothing running; `w0` finished last.
    FinishedW0,
}

/// Shadow-like and hub-like profiles.
const SHADOW: Profile = Profile {
    report_replaced_end: true,
    ignore_finished_duplicate: false,
};
const HUB: Profile = Profile {
    report_replaced_end: false,
    ignore_finished_duplicate: true,
};

fn core(profile: Profile, from: From) -> Core {
    let last = matches!(from, From::FinishedW0).then(|| wf("w0"));
    let mut c = Core::new(profile, Duration::ZERO, last);
    if matches!(from, From::Running | From::Replacing) {
        c.desired(Desired::Deploy(wf("w1"), Ok(req("w1"))), 1);
    }
    if matches!(from, From::Replacing) {
        c.desired(Desired::Deploy(wf("w2"), Ok(req("w2"))), 1);
    }
    c
}

/// An effect by kind, with what tells rows apart.
fn kind(e: &Effect) -> String {
    match e {
        Effect::Report { patch, progress } => {
            let m = patch.to_map();
            let field = |k: &str| m.get(k).map(|v| v.to_string()).unwrap_or_default();
            format!(
                "report{}({}{}{})",
                if *progress { "~" } else { "" },
                m.get("workflow")
                    .and_then(|w| w.get("id"))
                    .and_then(|i| i.as_str())
                    .unwrap_or("-"),
                m.get("status")
                    .map(|s| format!(" {}", s.as_str().unwrap_or("")))
                    .unwrap_or_default(),
                if field("lastError").contains("message") {
                    " refused"
                } else {
                    ""
                }
            )
        }
        Effect::Start(w, _) => format!("start({})", w.id),
        Effect::CancelRunning => "cancel".into(),
        Effect::Record {
            workflow, report, ..
        } => format!(
            "record({}{})",
            workflow.id,
            if *report { "" } else { " unreported" }
        ),
        Effect::Reboot => "reboot".into(),
        Effect::Restart => "restart".into(),
    }
}

fn kinds(effects: &[Effect]) -> Vec<String> {
    effects.iter().map(kind).collect()
}

#[test]
fn desired_state_from_each_state() {
    type Row = (
        &'static str,
        Profile,
        From,
        fn() -> Desired,
        &'static [&'static str],
        Option<&'static str>,
    );
    let rows: &[Row] = &[
        (
            "idle, a deployment: acknowledged and started",
            SHADOW,
            From::Idle,
            || Desired::Deploy(wf("w1"), Ok(req("w1"))),
            &["report(w1 downloading)", "start(w1)"],
            Some("w1"),
        ),
        (
            "the running deployment again: nothing",
            SHADOW,
            From::Running,
            || Desired::Deploy(wf("w1"), Ok(req("w1"))),
            &[],
            Some("w1"),
        ),
        (
            "another one while one runs: acknowledged, the running one cancelled, the new one waits",
            SHADOW,
            From::Running,
            || Desired::Deploy(wf("w2"), Ok(req("w2"))),
            &["report(w2 downloading)", "cancel"],
            Some("w1"),
        ),
        (
            "the waiting one again: nothing",
            SHADOW,
            From::Replacing,
            || Desired::Deploy(wf("w2"), Ok(req("w2"))),
            &[],
            Some("w1"),
        ),
        (
            "cancel of the running one: reported, stopped",
            SHADOW,
            From::Running,
            || Desired::Cancel(cancel("w1")),
            &["report(w1)", "cancel"],
            Some("w1"),
        ),
        (
            "cancel with nothing running: reported as stand-by (ADU returns to Idle)",
            SHADOW,
            From::Idle,
            || Desired::Cancel(cancel("w1")),
            &["report(w1 standBy)"],
            None,
        ),
        (
            "a deployment without a request (no manifest): refused with its workflow",
            SHADOW,
            From::Idle,
            || Desired::Deploy(wf("w1"), Err(Refused::NoManifest)),
            &["report(w1 refused)"],
            None,
        ),
        (
            "the running one again, even without a request: nothing",
            SHADOW,
            From::Running,
            || Desired::Deploy(wf("w1"), Err(Refused::NoManifest)),
            &[],
            Some("w1"),
        ),
        (
            "a refused document: reported",
            SHADOW,
            From::Running,
            || Desired::Refused {
                workflow: None,
                why: "not JSON".into(),
            },
            &["report(- refused)"],
            Some("w1"),
        ),
        (
            "fields that are no deployment: refused and echoed",
            SHADOW,
            From::Idle,
            || Desired::Foreign(serde_json::json!({"softwareURL": "x"}).as_object().unwrap().clone()),
            &["report(- refused)"],
            None,
        ),
        (
            "no fields at all: nothing",
            SHADOW,
            From::Idle,
            || Desired::Foreign(Map::new()),
            &[],
            None,
        ),
        (
            "the shadow: the workflow finished last, again, runs again (the engine reports it done)",
            SHADOW,
            From::FinishedW0,
            || Desired::Deploy(wf("w0"), Ok(req("w0"))),
            &["report(w0 downloading)", "start(w0)"],
            Some("w0"),
        ),
        (
            "IoT Hub: the workflow finished last, again, is ignored (the whole twin after a reconnect)",
            HUB,
            From::FinishedW0,
            || Desired::Deploy(wf("w0"), Ok(req("w0"))),
            &[],
            None,
        ),
        (
            "IoT Hub: the same workflow with a new retry timestamp runs again",
            HUB,
            From::FinishedW0,
            || Desired::Deploy(retried("w0", "t2"), Ok(req("w0"))),
            &["report(w0 downloading)", "start(w0)"],
            Some("w0"),
        ),
    ];
    for (name, profile, from, input, want, running) in rows {
        let mut c = core(*profile, *from);
        let effects = c.desired(input(), 5);
        assert_eq!(kinds(&effects), *want, "{name}");
        assert_eq!(c.running().map(|w| w.id.as_str()), *running, "{name}");
    }
}

#[test]
fn a_deployment_ending_from_each_state() {
    type Row = (
        &'static str,
        Profile,
        From,
        Status,
        &'static [&'static str],
        Option<&'static str>,
    );
    let rows: &[Row] = &[
        (
            "succeeded: recorded and reported",
            SHADOW,
            From::Running,
            Status::Succeeded,
            &["record(w1)"],
            None,
        ),
        (
            "replaced (the shadow): the cancelled end reported, then the new one starts",
            SHADOW,
            From::Replacing,
            Status::Cancelled,
            &["record(w1)", "start(w2)"],
            Some("w2"),
        ),
        (
            "replaced (IoT Hub): the cancelled end recorded, not reported, as ADU's agent",
            HUB,
            From::Replacing,
            Status::Cancelled,
            &["record(w1 unreported)", "start(w2)"],
            Some("w2"),
        ),
        (
            "the replaced one failed instead of stopping: reported either way",
            HUB,
            From::Replacing,
            Status::Failed,
            &["record(w1)", "start(w2)"],
            Some("w2"),
        ),
        (
            "a reboot is needed: recorded, then reboot (what waits is dropped)",
            SHADOW,
            From::Replacing,
            Status::RebootRequired,
            &["record(w1)", "reboot"],
            None,
        ),
        (
            "a restart is needed: recorded, then restart",
            SHADOW,
            From::Running,
            Status::RestartRequired,
            &["record(w1)", "restart"],
            None,
        ),
    ];
    for (name, profile, from, status, want, running) in rows {
        let mut c = core(*profile, *from);
        let effects = c.finished(outcome(*status), 9);
        assert_eq!(kinds(&effects), *want, "{name}");
        assert_eq!(c.running().map(|w| w.id.as_str()), *running, "{name}");
    }
}

#[test]
fn a_cancelled_deployment_is_reported_under_the_cancel_request() {
    let mut c = core(SHADOW, From::Running);
    c.desired(Desired::Cancel(cancel("w1")), 5);
    let effects = c.finished(outcome(Status::Cancelled), 9);
    match effects.as_slice() {
        [Effect::Record { workflow, .. }] => assert_eq!(workflow.action, action::CANCEL),
        other => panic!("{:?}", kinds(other)),
    }
}

#[test]
fn a_deployment_that_could_not_run_is_refused_and_the_waiting_one_starts() {
    let mut c = core(SHADOW, From::Replacing);
    let journal = WorkflowError::Journal {
        workflow: "w1".into(),
        reason: "unreadable".into(),
    };
    let effects = c.finished(Err(RunError::from(journal)), 9);
    assert_eq!(kinds(&effects), ["report(w1 refused)", "start(w2)"]);
}

#[test]
fn progress_is_rate_limited_but_the_plan_and_each_action_start_are_not() {
    let mut c = Core::new(SHADOW, Duration::from_secs(10), None);
    c.desired(Desired::Deploy(wf("w1"), Ok(req("w1"))), 1);
    let t0 = Instant::now();
    let file = |done| Event::FileProgress {
        unit: 0,
        file: "f".into(),
        done,
        total: 10,
    };
    assert_eq!(
        kinds(&c.event(&file(1), t0, 1)),
        ["report~(w1 downloading)"]
    );
    assert!(c.event(&file(2), t0 + Duration::from_secs(1), 2).is_empty());
    let started = Event::ActionStarted {
        unit: 0,
        action: sandstep_model::Action::Install,
    };
    let urgent = c.event(&started, t0 + Duration::from_secs(2), 3);
    assert_eq!(kinds(&urgent), ["report~(w1 applying)"]);
    assert_eq!(
        kinds(&c.event(&file(3), t0 + Duration::from_secs(13), 4)).len(),
        1
    );
    // Nothing running: an event of a task that ended is not reported.
    let mut idle = Core::new(SHADOW, Duration::ZERO, None);
    assert!(idle.event(&file(1), t0, 1).is_empty());
}

#[test]
fn a_stage_is_stamped_when_it_begins_only() {
    let mut c = Core::new(SHADOW, Duration::ZERO, None);
    let stage = |s| Patch {
        status: Some(s),
        ..Patch::default()
    };
    assert_eq!(
        c.stamp(stage(Stage::Downloading), 10).stage_began_at,
        Some(10)
    );
    assert_eq!(c.stamp(stage(Stage::Downloading), 20).stage_began_at, None);
    assert_eq!(c.stamp(stage(Stage::Applying), 30).stage_began_at, Some(30));
    assert_eq!(c.stamp(Patch::default(), 40).stage_began_at, None);
}

#[test]
fn at_start_the_first_interrupted_deployment_resumes() {
    let mut c = Core::new(SHADOW, Duration::ZERO, None);
    let effects = c.resume(vec![(wf("a"), *req("a")), (wf("b"), *req("b"))]);
    assert_eq!(kinds(&effects), ["start(a)"]);
    assert_eq!(c.running().map(|w| w.id.as_str()), Some("a"));
    assert!(Core::new(SHADOW, Duration::ZERO, None)
        .resume(Vec::new())
        .is_empty());
}

/// A wait for a window is reported at once (not held back to the progress interval), with the
/// operator's phrase in `progress.message`.
#[test]
fn a_wait_for_a_window_is_reported_at_once_with_when_it_opens() {
    let mut c = core(SHADOW, From::Running);
    let now = Instant::now();
    let progress = Event::FileProgress {
        unit: 0,
        file: "f".into(),
        done: 1,
        total: 2,
    };
    assert_eq!(c.event(&progress, now, 1).len(), 1);
    let phrase = "waiting for the window (opens Sun 2026-12-06 22:00:00 UTC)";
    let waiting = Event::Waiting {
        what: "download",
        opens: "Sun 2026-12-06 22:00:00 UTC".into(),
        opens_at_ms: 1,
        phrase: phrase.into(),
    };
    match c.event(&waiting, now, 2).as_slice() {
        [Effect::Report { patch, .. }] => {
            let p = patch.progress.clone().flatten().expect("progress");
            assert_eq!(p.action.as_deref(), Some("waiting-download"));
            assert_eq!(p.message.as_deref(), Some(phrase));
        }
        other => panic!("{:?}", kinds(other)),
    }
}
