//! One unit (a step, or a child step for one component) through its phase: its handler
//! instance opened with the unit's files and directories, its actions called as the lifecycle
//! decides, and how it ended (done, failed, cancelled, or waiting for a reboot or restart).

use super::events::{Event, Observer};
use super::files::{setup_error, streamed_files};
use super::lifecycle::{self, Next, Phase};
use super::{now_ms, Deployer, Run, WorkflowError, EARLY_FETCH_LIMIT};
use crate::capability::slot::Streams;
use crate::download::Wanted;
use crate::sandbox::{CallTags, EventSink, HandlerComponent, Session, SessionSetup, StepDirs};
use cap_std::fs::Dir;
use sandstep_model::codes::{erc, result, Followup};
use sandstep_model::journal::{ActionRecord, Journal, UnitKind, UnitState};
use sandstep_model::{Action, StepContext, StepResult};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// A unit ready for its actions (see `Deployer::prepare_unit`).
struct Prepared {
    cur: Current,
    session: Session,
    /// Every file of the step the workflow fetches into the store.
    wanted: Vec<Wanted>,
    /// The step's files the slot capability streams from their source instead, with their
    /// sources.
    streams: Option<Arc<Streams>>,
    payload: Dir,
    /// Policy `payload-in-work`: copies of the files in the work folder.
    payload_in_work: bool,
}

/// The unit being run: its index, context, work dir and handler.
struct Current {
    index: usize,
    ctx: StepContext,
    work: Dir,
    handler: HandlerComponent,
}

/// Handler events become workflow events for unit `index`.
fn forwarding_sink(observer: Arc<dyn Observer>, index: usize) -> EventSink {
    Arc::new(move |_tags: &CallTags, ev: &crate::sandbox::HandlerEvent| {
        let (percent, message) = match ev {
            crate::sandbox::HandlerEvent::Progress { percent, message } => {
                (Some(*percent), message.clone())
            }
            crate::sandbox::HandlerEvent::Log { message, .. } => (None, message.clone()),
        };
        observer.event(&Event::Handler {
            unit: index,
            event: ev.clone(),
            percent,
            message,
        });
    })
}

/// What a unit left the deployment to do.
pub(super) enum UnitOutcome {
    Continue,
    Failed(StepResult),
    Cancelled(StepResult),
    Followup(Followup, StepResult),
}

impl Deployer {
    async fn open_session(
        &self,
        j: &Journal,
        index: usize,
        handler: &HandlerComponent,
        dirs: (Dir, Dir, Dir),
        streams: Option<Arc<Streams>>,
        run: &Run<'_>,
    ) -> Result<Session, StepResult> {
        let u = &j.units[index];
        let (payload, work, state) = dirs;
        let tags = CallTags {
            workflow_id: j.workflow_id.clone(),
            step: u.label(),
            handler_id: u.handler_id.clone(),
        };
        let sink = forwarding_sink(run.observer.clone(), index);
        let mut step_dirs = StepDirs::new(payload, work, state);
        let policy = &self.settings.policy;
        step_dirs.extra = policy
            .extra_preopens(&u.handler_id, u.component.as_ref())
            .map_err(|reason| StepResult::failure(erc::SANDBOX_SETUP_FAILED, reason.to_string()))?;
        step_dirs.program_writable = policy.component_writable(&u.handler_id, u.component.as_ref());
        let setup = SessionSetup {
            handler_id: u.handler_id.clone(),
            tags,
            dirs: step_dirs,
            grants: policy.grants(&u.handler_id),
            limits: policy.limits(&u.handler_id),
            events: Some(sink),
            streams,
        };
        self.sandbox
            .session(handler, setup)
            .await
            .map_err(|e| e.to_step_result())
    }

    /// Runs one action and records it in the journal (in memory: the journal is written when the
    /// unit's state changes for good, not before each action; a run cut short starts the unit
    /// over with is-installed, as ADU's agent does after a restart).
    async fn call(
        &self,
        j: &mut Journal,
        cur: &Current,
        session: &mut Session,
        action: Action,
        run: &Run<'_>,
    ) -> Result<StepResult, WorkflowError> {
        let (index, ctx, work) = (cur.index, &cur.ctx, &cur.work);
        j.units[index].state = UnitState::Running { next: action };
        run.observer.event(&Event::ActionStarted {
            unit: index,
            action,
        });
        let started_at_ms = now_ms();
        let started = Instant::now();
        let r = session.call(action, ctx, run.cancel).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        // ADU leaves each action's result in the work folder: a courtesy copy (the journal has the
        // result), so it is replaced atomically but not synced.
        let name = format!("action_{}_aduc_result.json", action.file_stem());
        let _ = crate::datadir::replace(
            work,
            &name,
            &serde_json::to_vec_pretty(&r).expect("serializes"),
            0o644,
        );
        j.units[index].actions.push(ActionRecord {
            action,
            result: r.clone(),
            started_at_ms,
            duration_ms,
        });
        run.observer.event(&Event::ActionFinished {
            unit: index,
            action,
            result: r.clone(),
            duration_ms,
        });
        crate::fault::point("after-action");
        Ok(r)
    }

    fn done(&self, j: &mut Journal, index: usize, r: StepResult) -> Result<(), WorkflowError> {
        j.units[index].state = UnitState::Done;
        j.units[index].result = Some(r);
        self.save(j)
    }

    /// Everything a unit's actions need: its handler instance, context, files and directories,
    /// with the small files fetched. `Err` is how the unit ended when it could not be prepared.
    async fn prepare_unit(
        &self,
        j: &mut Journal,
        index: usize,
        run: &Run<'_>,
    ) -> Result<Result<Prepared, UnitOutcome>, WorkflowError> {
        let handler_id = j.units[index].handler_id.clone();
        let handler = match self.handler(&handler_id).await {
            Ok(h) => h,
            Err(r) => return self.fail_unit(j, index, r).map(Err),
        };
        let (ctx, all) = self.unit_context(j, index, run.manifests);
        let streamed = streamed_files(
            self.settings.policy.grants(&handler_id).slot.is_some(),
            &all,
        );
        let wanted: Vec<Wanted> = all.into_iter().filter(|w| !streamed.contains(w)).collect();
        let dirs = self.unit_dirs(j, index).map_err(WorkflowError::DataDir)?;
        let payload = dirs.0.try_clone().map_err(|e| setup_error(&self.data, e))?;
        let work = dirs.1.try_clone().map_err(|e| setup_error(&self.data, e))?;
        let cur = Current {
            index,
            ctx,
            work,
            handler: handler.clone(),
        };
        let policy = self.settings.policy.handler(&handler_id);
        let payload_in_work = policy.is_some_and(|p| p.payload_in_work);
        let late = policy.is_some_and(|p| p.fetch_after_is_installed);
        // Small files first: is-installed may need them (an apt manifest, a script), unless the
        // policy says it does not.
        let early: Vec<Wanted> = wanted
            .iter()
            .filter(|w| !late && w.size <= EARLY_FETCH_LIMIT)
            .cloned()
            .collect();
        let work_copy = payload_in_work.then_some(&cur.work);
        if let Err(r) = self
            .fetch_files(j, index, &early, &payload, work_copy, run)
            .await
        {
            if r.result_code == result::FAILURE_CANCELLED {
                // No handler instance yet: nothing to ask to clean up.
                self.done(j, index, r.clone())?;
                return Ok(Err(UnitOutcome::Cancelled(r)));
            }
            return self.fail_unit(j, index, r).map(Err);
        }
        let streams = match self.streams(j, &streamed) {
            Ok(s) => s,
            Err(r) => return self.fail_unit(j, index, r).map(Err),
        };
        let session = match self
            .open_session(j, index, &handler, dirs, streams.clone(), run)
            .await
        {
            Ok(s) => s,
            Err(r) => return self.fail_unit(j, index, r).map(Err),
        };
        Ok(Ok(Prepared {
            cur,
            session,
            wanted,
            streams,
            payload,
            payload_in_work,
        }))
    }

    /// One phase of a unit: is-installed, then what the lifecycle decides.
    pub(super) async fn run_unit(
        &self,
        j: &mut Journal,
        index: usize,
        phase: Phase,
        run: &Run<'_>,
    ) -> Result<UnitOutcome, WorkflowError> {
        let unit = j.units[index].clone();
        if unit.kind == UnitKind::NoMatchingComponents {
            // Planned as done; nothing to run.
            return Ok(UnitOutcome::Continue);
        }
        if phase == Phase::Install {
            run.observer.event(&Event::UnitStarted {
                unit: index,
                label: unit.label(),
                handler: unit.handler_id.clone(),
            });
        }
        // Not written yet: until the unit's state changes for good, a run cut short starts it over.
        j.units[index].state = UnitState::Running {
            next: Action::IsInstalled,
        };
        let mut p = match self.prepare_unit(j, index, run).await? {
            Ok(p) => p,
            Err(outcome) => return Ok(outcome),
        };
        let installed = self
            .call(j, &p.cur, &mut p.session, Action::IsInstalled, run)
            .await?;
        if installed.result_code == result::FAILURE_CANCELLED || run.cancel.is_cancelled() {
            // A cancel during is-installed ends the unit here; taken for "not installed", it
            // went on to fetch and to call a session the cancel had broken.
            return self.cancel_unit(j, &p.cur, installed, run).await;
        }
        let resumed_after = match unit.state {
            UnitState::AwaitingFollowup { after } => Some(after),
            _ => None,
        };
        let decision =
            lifecycle::after_is_installed(&installed, resumed_after, &unit.handler_id, phase);
        if let Next::Call(next) = decision.next {
            // The rest of the files, before the first action that may use them.
            j.units[index].state = UnitState::Running { next };
            let work_copy = p.payload_in_work.then_some(&p.cur.work);
            let fetched = self
                .fetch_files(j, index, &p.wanted, &p.payload, work_copy, run)
                .await;
            let probed = match fetched {
                Ok(()) if phase == Phase::Download => {
                    self.probe_streamed(p.streams.as_deref()).await
                }
                other => other,
            };
            if let Err(r) = probed {
                if r.result_code == result::FAILURE_CANCELLED {
                    return self.cancel_unit(j, &p.cur, r, run).await;
                }
                return self.fail_unit(j, index, r);
            }
        }
        self.carry_out(j, &mut p, decision, run).await
    }

    /// Carries out the lifecycle's decisions for a unit until it is done with its phase.
    async fn carry_out(
        &self,
        j: &mut Journal,
        p: &mut Prepared,
        mut decision: lifecycle::Decision,
        run: &Run<'_>,
    ) -> Result<UnitOutcome, WorkflowError> {
        let index = p.cur.index;
        loop {
            if let Some(f) = decision.defer {
                j.deferred_followup = Some(lifecycle::merge_deferred(j.deferred_followup, f));
            }
            match decision.next {
                Next::Call(action) => {
                    let r = self.call(j, &p.cur, &mut p.session, action, run).await?;
                    if r.result_code == result::FAILURE_CANCELLED || run.cancel.is_cancelled() {
                        return self.cancel_unit(j, &p.cur, r, run).await;
                    }
                    decision = lifecycle::after(action, &r);
                }
                Next::Downloaded => {
                    let u = &mut j.units[index];
                    u.downloaded = true;
                    u.state = UnitState::Pending;
                    // Saved once the whole phase is through (execute): a crash before that
                    // downloads again, which finds the verified payloads in the store.
                    return Ok(UnitOutcome::Continue);
                }
                Next::Done(r) => {
                    self.done(j, index, r)?;
                    return Ok(UnitOutcome::Continue);
                }
                Next::Fail { result, restore } => {
                    if restore {
                        self.restore(j, &p.cur, &mut p.session, run).await?;
                    }
                    return self.fail_unit(j, index, result);
                }
                Next::Stop(followup, r) => {
                    let after = j.units[index]
                        .actions
                        .last()
                        .map(|a| a.action)
                        .expect("an action asked for it");
                    j.units[index].state = UnitState::AwaitingFollowup { after };
                    self.save(j)?;
                    return Ok(UnitOutcome::Followup(followup, r));
                }
            }
        }
    }

    fn fail_unit(
        &self,
        j: &mut Journal,
        index: usize,
        r: StepResult,
    ) -> Result<UnitOutcome, WorkflowError> {
        self.done(j, index, r.clone())?;
        Ok(UnitOutcome::Failed(r))
    }

    async fn restore(
        &self,
        j: &mut Journal,
        cur: &Current,
        session: &mut Session,
        run: &Run<'_>,
    ) -> Result<(), WorkflowError> {
        // A trapped instance cannot run restore: give it a fresh one.
        if session.is_broken() {
            let fresh = match self.unit_dirs(j, cur.index) {
                Ok(dirs) => {
                    self.open_session(j, cur.index, &cur.handler, dirs, None, run)
                        .await
                }
                Err(e) => Err(StepResult::failure(
                    erc::SANDBOX_SETUP_FAILED,
                    e.to_string(),
                )),
            };
            match fresh {
                Ok(s) => *session = s,
                Err(r) => {
                    j.units[cur.index].actions.push(ActionRecord {
                        action: Action::Restore,
                        result: r,
                        started_at_ms: now_ms(),
                        duration_ms: 0,
                    });
                    return Ok(());
                }
            }
        }
        self.call(j, cur, session, Action::Restore, run).await?;
        let restored = j.units[cur.index].actions.last().is_some_and(|a| {
            a.action == Action::Restore && a.result.result_code == result::RESTORE_SUCCESS
        });
        let handler = &j.units[cur.index].handler_id;
        let covers = self
            .settings
            .policy
            .handler(handler)
            .is_some_and(|p| p.restore_undoes_earlier_steps);
        if restored && covers {
            j.mark_undone(cur.index);
        }
        Ok(())
    }

    /// The running call was stopped: let the handler clean up in a fresh instance.
    async fn cancel_unit(
        &self,
        j: &mut Journal,
        cur: &Current,
        stopped: StepResult,
        run: &Run<'_>,
    ) -> Result<UnitOutcome, WorkflowError> {
        let not_cancelled = CancellationToken::new();
        let cleanup = Run {
            observer: run.observer.clone(),
            cancel: &not_cancelled,
            manifests: run.manifests,
            verified: run.verified,
        };
        if let Ok(dirs) = self.unit_dirs(j, cur.index) {
            if let Ok(mut s) = self
                .open_session(j, cur.index, &cur.handler, dirs, None, &cleanup)
                .await
            {
                self.call(j, cur, &mut s, Action::Cancel, &cleanup).await?;
            }
        }
        let r = StepResult::failure(
            erc::WORKFLOW_CANCELLED,
            format!("deployment cancelled: {}", stopped.result_details),
        )
        .with_code(result::FAILURE_CANCELLED);
        self.done(j, cur.index, r.clone())?;
        Ok(UnitOutcome::Cancelled(r))
    }
}
