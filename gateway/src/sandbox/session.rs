//! A session: one store and one instance for one step's sequence of lifecycle calls.

use super::limits::{LimitExceeded, Limits, StoreLimiter};
use super::output::GuestOutput;
use super::quota;
use super::store::{CallTags, HostState};
use super::{HandlerComponent, Sandbox, SandboxError, SessionSetup, SetupError};
use crate::bindings::{self, All, AllPre};
use crate::capability::host::{HostCtx, LOG_BURST, LOG_PER_SEC};
use crate::capability::process::{MappedDir, ProcessCtx};
use crate::capability::slot::SlotCtx;
use crate::capability::Capability;
use sandstep_model::codes::{erc, result};
use sandstep_model::{Action, StepContext, StepResult};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx};

/// One store and instance; calls run one at a time, in order.
pub struct Session {
    store: Store<HostState>,
    instance: All,
    ticker: Arc<super::engine::EpochTicker>,
    limits: Limits,
    handler_id: String,
    /// The folders the handler writes, measured against their quotas while calls run.
    metered: Arc<Vec<quota::Metered>>,
    /// Set once a call trapped or was stopped: the instance must not be used again.
    broken: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("handler_id", &self.handler_id)
            .field("broken", &self.broken)
            .finish()
    }
}

impl Sandbox {
    /// Checks the component's imports against the grants, builds the WASI context over the step's
    /// directories, and instantiates the component in a fresh store.
    pub async fn session(
        &self,
        handler: &HandlerComponent,
        setup: SessionSetup,
    ) -> Result<Session, SandboxError> {
        let SessionSetup {
            handler_id,
            tags,
            dirs,
            grants,
            limits,
            events,
            streams,
        } = setup;
        handler.check_imports(&handler_id, &grants)?;
        let setup_err = |cause: SetupError| SandboxError::Setup {
            handler: handler_id.clone(),
            cause,
        };
        let metered = Arc::new(metered(&dirs, &limits).map_err(setup_err)?);
        let tags = Arc::new(tags);
        let (wasi, mapped) = wasi_ctx(&dirs, &tags, grants.process.is_some()).map_err(setup_err)?;
        let host = HostCtx::new(tags, events);
        let slot_policy = grants.slot.as_ref().and_then(|g| g.policy.clone());
        let slot = match grants.slot {
            Some(grant) => Some(
                SlotCtx::for_step(grant, dirs.payload.dir(), streams.clone(), &host)
                    .map_err(|e| setup_err(SetupError::Payload(e)))?,
            ),
            None => None,
        };
        let program_writable = dirs.program_writable.clone();
        let process = grants.process.map(|policy| {
            ProcessCtx::for_step(policy, &handler_id, mapped, self.ledger.clone())
                .writing_also(program_writable)
                .with_slots(slot_policy)
        });
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.open_handles);
        let state = HostState {
            wasi,
            table,
            limiter: StoreLimiter::new(limits.memory_bytes),
            deadline: None,
            host,
            process,
            slot,
        };
        let mut store = self.new_store(state);
        let instance = self
            .instantiate(handler, &handler_id, &mut store, &limits)
            .await
            .map_err(setup_err)?;
        Ok(Session {
            store,
            instance,
            ticker: self.running().ticker.clone(),
            limits,
            handler_id,
            metered,
            broken: None,
        })
    }

    /// A store with the memory limiter and the epoch deadline check.
    fn new_store(&self, state: HostState) -> Store<HostState> {
        let mut store = Store::new(&self.running().engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|ctx| match ctx.data().deadline {
            Some((at, action, limit)) if Instant::now() >= at => {
                Err(wasmtime::Error::new(LimitExceeded::Time { action, limit }))
            }
            // Yield to tokio on every tick, so signals, MQTT and cancellation stay live.
            _ => Ok(UpdateDeadline::Yield(1)),
        });
        store.set_epoch_deadline(1);
        store
    }

    /// The component's imports resolved against the linker of its capabilities (kept with it).
    fn pre_instantiated<'h>(
        &self,
        handler: &'h HandlerComponent,
    ) -> Result<&'h AllPre<HostState>, SetupError> {
        if let Some(pre) = handler.pre.get() {
            return Ok(pre);
        }
        let linker = self
            .linker(handler.capabilities())
            .map_err(|e| SetupError::Linker(e.to_string()))?;
        let pre = linker
            .instantiate_pre(&handler.component)
            .and_then(AllPre::new)
            .map_err(|e| SetupError::NotAHandler(format!("{e:#}")))?;
        Ok(handler.pre.get_or_init(|| pre))
    }

    /// Instantiates the component with the linker of its granted capabilities. Instantiation
    /// runs the component's initializers: it is held to the is-installed limit.
    async fn instantiate(
        &self,
        handler: &HandlerComponent,
        handler_id: &str,
        store: &mut Store<HostState>,
        limits: &Limits,
    ) -> Result<All, SetupError> {
        let pre = self.pre_instantiated(handler)?;
        let _active = self.running().ticker.active();
        store.data_mut().deadline = Some((
            Instant::now() + limits.is_installed,
            Action::IsInstalled,
            limits.is_installed,
        ));
        let instance = pre.instantiate_async(&mut *store).await.map_err(|e| {
            let r = describe_failure(&e, store, handler_id, "instantiation");
            SetupError::Instantiation(r.result_details)
        });
        store.data_mut().deadline = None;
        instance
    }
}

/// The WASI context over the step's directories (no sockets, output re-emitted as log events),
/// and, for a handler that may run `programs`, the directories as the process capability sees
/// them.
fn wasi_ctx(
    dirs: &super::dirs::StepDirs,
    tags: &Arc<CallTags>,
    programs: bool,
) -> Result<(WasiCtx, Vec<MappedDir>), SetupError> {
    let mut wasi = WasiCtx::builder();
    // Filesystem calls run inline: faster than a blocking-pool hop, and the store's future
    // still yields on every epoch tick. Must be set before the preopens are added.
    wasi.allow_blocking_current_thread(true)
        .stdout(GuestOutput::new(tags.clone(), "stdout"))
        .stderr(GuestOutput::new(tags.clone(), "stderr"))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    let mut mapped = Vec::new();
    for p in dirs.all() {
        let perms = if p.writable() {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(p.fd_path(), p.guest_path(), perms)
            .map_err(|e| SetupError::Preopen {
                guest: p.guest_path().to_owned(),
                cause: format!("{e:#}"),
            })?;
        if !programs {
            continue; // only the process capability maps guest paths to host paths
        }
        mapped.push(MappedDir {
            writable: p.writable(),
            guest: p.guest_path().to_owned(),
            host: p.host_path().map_err(|cause| SetupError::Locate {
                guest: p.guest_path().to_owned(),
                cause,
            })?,
        });
    }
    Ok((wasi.build(), mapped))
}

impl Session {
    /// Whether an earlier call trapped or was stopped (then a new session is needed).
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// The call tags of this session.
    pub fn tags(&self) -> &CallTags {
        &self.store.data().host.tags
    }

    /// Runs one lifecycle call under the action's time limit. Never fails: limits, traps and
    /// cancellation become failure results. After one of those the session is broken.
    pub async fn call(
        &mut self,
        action: Action,
        ctx: &StepContext,
        cancel: &CancellationToken,
    ) -> StepResult {
        if let Some(reason) = &self.broken {
            return StepResult::failure(
                erc::SANDBOX_TRAP,
                format!(
                    "handler `{}` cannot be called again in this session: {reason}",
                    self.handler_id
                ),
            );
        }
        if cancel.is_cancelled() {
            // Cancelled before it began: the call does not start (the select below would pick
            // either branch at random).
            return self.conclude(action, Ended::Cancelled);
        }
        let wit_ctx = to_wit(ctx);
        let limit = self.limits.time_limit(action);
        self.store.data_mut().deadline = Some((Instant::now() + limit, action, limit));
        self.store.data_mut().host.clear_panic();
        let _active = self.ticker.active();

        let lifecycle = self.instance.sandstep_handler_lifecycle();
        let store = &mut self.store;
        let call = async {
            match action {
                Action::IsInstalled => lifecycle.call_is_installed(store, &wit_ctx).await,
                Action::Download => lifecycle.call_download(store, &wit_ctx).await,
                Action::Backup => lifecycle.call_backup(store, &wit_ctx).await,
                Action::Install => lifecycle.call_install(store, &wit_ctx).await,
                Action::Apply => lifecycle.call_apply(store, &wit_ctx).await,
                Action::Cancel => lifecycle.call_cancel(store, &wit_ctx).await,
                Action::Restore => lifecycle.call_restore(store, &wit_ctx).await,
            }
        };
        // The epoch deadline stops guest code at `limit`; this one also covers the time the
        // guest spends waiting in a host call (a program, a slot write), which epochs cannot
        // interrupt. Dropping the call stops what the host was doing for it.
        let wall = tokio::time::sleep(limit + HOST_CALL_SLACK);
        let outcome = tokio::select! {
            r = call => Ended::Returned(r),
            _ = cancel.cancelled() => Ended::Cancelled,
            breach = quota::exceeded(self.metered.clone()) => Ended::OverQuota(breach),
            _ = wall => Ended::TimedOut(limit),
        };
        self.store.data_mut().deadline = None;
        self.report_dropped_logs();
        // What was written since the last poll counts too.
        let outcome = match outcome {
            Ended::Returned(r) => match quota::check(&self.metered).await {
                Some(breach) => Ended::OverQuota(breach),
                None => Ended::Returned(r),
            },
            other => other,
        };

        self.conclude(action, outcome)
    }

    /// The step result of a call that ended as `outcome`; a call that did not return marks the
    /// session broken (its instance may be mid-way through anything).
    fn conclude(&mut self, action: Action, outcome: Ended) -> StepResult {
        match outcome {
            Ended::Returned(Ok(r)) => validate(
                action,
                StepResult {
                    result_code: r.result_code,
                    extended_result_code: r.extended_result_code,
                    result_details: r.result_details,
                },
            ),
            Ended::OverQuota(breach) => {
                let msg = match breach {
                    quota::Breach::Over {
                        guest,
                        used,
                        limit,
                        knob,
                    } => format!(
                        "handler `{}` stopped in `{action}`: its {guest} holds {used} bytes, more \
                         than its quota of {limit} bytes (limits {knob})",
                        self.handler_id
                    ),
                    quota::Breach::Unmeasurable { guest, why } => format!(
                        "handler `{}` stopped in `{action}`: its {guest} cannot be measured \
                         against its quota: {why}",
                        self.handler_id
                    ),
                    quota::Breach::DiskLow {
                        guest,
                        free,
                        reserve,
                    } => format!(
                        "handler `{}` stopped in `{action}`: the file system holding its {guest} \
                         has {free} bytes free, less than the {reserve} bytes kept for the \
                         journal (limits disk-reserve-bytes)",
                        self.handler_id
                    ),
                };
                tracing::warn!(handler = %self.handler_id, %action, "{msg}");
                self.broken = Some(msg.clone());
                StepResult::failure(erc::SANDBOX_WORK_QUOTA, msg)
            }
            Ended::Returned(Err(e)) => {
                let r = describe_failure(&e, &self.store, &self.handler_id, action.name());
                tracing::warn!(handler = %self.handler_id, %action, "{}", r.result_details);
                self.broken = Some(r.result_details.clone());
                r
            }
            Ended::TimedOut(limit) => {
                let msg = format!(
                    "handler `{}` stopped in `{action}` at its time limit of {limit:?} while it \
                     waited in a host call (its host program was stopped with it)",
                    self.handler_id
                );
                tracing::warn!(handler = %self.handler_id, %action, "{msg}");
                self.broken = Some(msg.clone());
                StepResult::failure(erc::SANDBOX_TIME_LIMIT, msg)
            }
            Ended::Cancelled => {
                let msg = format!(
                    "`{action}` of handler `{}` was stopped: the deployment was cancelled",
                    self.handler_id
                );
                self.broken = Some(msg.clone());
                StepResult::failure(erc::SANDBOX_CANCELLED, msg)
                    .with_code(result::FAILURE_CANCELLED)
            }
        }
    }

    /// At the end of a call: the progress held back is passed on, and dropped log lines (a
    /// flood, not a fast action) are said once.
    fn report_dropped_logs(&mut self) {
        let host = &mut self.store.data_mut().host;
        host.flush_progress();
        let logs = host.take_dropped();
        if logs > 0 {
            tracing::warn!(
                handler = %host.tags.handler_id, step = %host.tags.step,
                "dropped {logs} log lines past the limit ({LOG_BURST} at once, then {LOG_PER_SEC}/s)",
            );
        }
    }

    /// Whether a capability is linked into this session.
    pub fn has(&self, cap: Capability) -> bool {
        self.store.data().has(cap)
    }
}

/// How long past its time limit a call may run before the host stops it: guest code is stopped
/// by the epoch deadline at the limit (with its own message); this catches a host call.
const HOST_CALL_SLACK: std::time::Duration = std::time::Duration::from_millis(250);

/// How a call ended.
enum Ended {
    Returned(wasmtime::Result<bindings::types::StepResult>),
    Cancelled,
    /// The action's time limit passed while the guest waited in a host call.
    TimedOut(std::time::Duration),
    /// A folder outgrew its quota or could not be measured (fail closed).
    OverQuota(quota::Breach),
}

/// The folders a session meters: `/work` and `/state` against their quotas, and each writable
/// mapped dir against what it held at the start plus `dir-growth-bytes`.
fn metered(
    dirs: &super::dirs::StepDirs,
    limits: &Limits,
) -> Result<Vec<quota::Metered>, SetupError> {
    let handle = |p: &super::dirs::Preopen| {
        p.dir().try_clone().map_err(|cause| SetupError::Handle {
            guest: p.guest_path().to_owned(),
            cause,
        })
    };
    let (work, state) = (handle(&dirs.work)?, handle(&dirs.state)?);
    let reserve = |d: &cap_std::fs::Dir| quota::floor(d, limits.disk_reserve_bytes);
    let mut out = vec![
        quota::Metered {
            guest: dirs.work.guest_path().to_owned(),
            reserve: reserve(&work),
            dir: work,
            limit: limits.work_bytes,
            knob: "work-bytes",
        },
        quota::Metered {
            guest: dirs.state.guest_path().to_owned(),
            reserve: reserve(&state),
            dir: state,
            limit: limits.state_bytes,
            knob: "state-bytes",
        },
    ];
    for p in dirs.extra.iter().filter(|p| p.writable()) {
        let dir = handle(p)?;
        let start = quota::usage(&dir).map_err(|e| SetupError::Measure {
            guest: p.guest_path().to_owned(),
            cause: e.to_string(),
        })?;
        out.push(quota::Metered {
            guest: p.guest_path().to_owned(),
            reserve: reserve(&dir),
            dir,
            limit: start.saturating_add(limits.dir_growth_bytes),
            knob: "dir-growth-bytes",
        });
    }
    Ok(out)
}

/// Checks codes that only make sense for some actions and clamps details.
fn validate(action: Action, r: StepResult) -> StepResult {
    let details = r.result_details.clone();
    let r = r.with_details(details);
    if !result::is_known(r.result_code) {
        return StepResult::failure(
            erc::SANDBOX_INVALID_RESULT,
            format!(
                "{action} returned result code {}, which is neither a failure (<= 0) nor a success code ADU defines",
                r.result_code
            ),
        );
    }
    if action == Action::IsInstalled
        && r.is_success()
        && r.result_code != result::IS_INSTALLED_INSTALLED
        && r.result_code != result::IS_INSTALLED_NOT_INSTALLED
    {
        return StepResult::failure(
            erc::SANDBOX_INVALID_RESULT,
            format!(
                "is-installed returned result code {}; expected 900 (installed), 901 (not installed) or a failure",
                r.result_code
            ),
        );
    }
    r
}

/// Turns a trap or host error into a failure result naming the cause.
fn describe_failure(
    e: &wasmtime::Error,
    store: &Store<HostState>,
    handler: &str,
    what: &str,
) -> StepResult {
    if let Some(limit) = e.downcast_ref::<LimitExceeded>() {
        let code = match limit {
            LimitExceeded::Time { .. } => erc::SANDBOX_TIME_LIMIT,
            LimitExceeded::Memory { .. } | LimitExceeded::Table { .. } => erc::SANDBOX_MEMORY_LIMIT,
        };
        return StepResult::failure(
            code,
            format!("handler `{handler}` stopped in `{what}`: {limit}"),
        );
    }
    let full = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<wasmtime::component::ResourceTableError>(),
            Some(wasmtime::component::ResourceTableError::Full)
        )
    });
    if full {
        let max = store.data().table.max_capacity();
        return StepResult::failure(
            erc::SANDBOX_HANDLE_LIMIT,
            format!(
                "handler `{handler}` stopped in `{what}`: it holds more than {max} handles (open \
                 files, directories, streams) at once (limits open-handles)"
            ),
        );
    }
    let panic = store
        .data()
        .host
        .last_panic()
        .map(|p| format!(" ({p})"))
        .unwrap_or_default();
    let cause = match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => e.to_string(),
    };
    StepResult::failure(
        erc::SANDBOX_TRAP,
        format!("handler `{handler}` trapped in `{what}`: {cause}{panic}"),
    )
}

fn to_wit(ctx: &StepContext) -> bindings::types::StepContext {
    use bindings::types as t;
    t::StepContext {
        workflow_id: ctx.workflow_id.clone(),
        update_id: t::UpdateId {
            provider: ctx.update_id.provider.clone(),
            name: ctx.update_id.name.clone(),
            version: ctx.update_id.version.clone(),
        },
        handler_id: ctx.handler_id.clone(),
        step_index: ctx.step_index,
        level: ctx.level,
        handler_properties: serde_json::Value::Object(ctx.handler_properties.clone()).to_string(),
        installed_criteria: ctx.installed_criteria().map(str::to_owned),
        files: ctx
            .files
            .iter()
            .map(|f| t::StepFile {
                id: f.id.clone(),
                name: f.name.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
                path: format!("{}/{}", super::dirs::PAYLOAD, f.name),
            })
            .collect(),
        selected_component: ctx.component.as_ref().map(|c| t::Component {
            id: c.id.clone(),
            name: c.name.clone(),
            group: c.group.clone(),
            manufacturer: c.manufacturer.clone(),
            model: c.model.clone(),
            version: c.version.clone(),
            properties: c.property_pairs(),
        }),
    }
}
