//! Write sandstep update handlers as WebAssembly components.
//!
//! A handler is a type implementing [`Handler`], exported with [`export_handler!`]. Build the crate
//! as a `cdylib` for `wasm32-wasip2` and the result is a component sandstep can sign, install and run.
//! You never touch the WIT bindings: the SDK converts the host's data into [`Context`] and your
//! [`Outcome`] back into a step result.
//!
//! ```
//! use sandstep_sdk::{codes::result, export_handler, Context, Handler, Outcome, StepResult};
//!
//! #[derive(Default)]
//! struct Hello;
//!
//! impl Handler for Hello {
//!     fn is_installed(&mut self, ctx: &Context) -> Outcome {
//!         let marker = ctx.state_path("installed");
//!         Ok(StepResult::new(if marker.exists() {
//!             result::IS_INSTALLED_INSTALLED
//!         } else {
//!             result::IS_INSTALLED_NOT_INSTALLED
//!         }))
//!     }
//!     fn install(&mut self, ctx: &Context) -> Outcome {
//!         sandstep_sdk::log::info("installing");
//!         std::fs::write(ctx.work_path("greeting"), b"hello")?;
//!         Ok(StepResult::new(result::INSTALL_SUCCESS))
//!     }
//!     fn apply(&mut self, ctx: &Context) -> Outcome {
//!         std::fs::write(ctx.state_path("installed"), b"")?;
//!         Ok(StepResult::new(result::APPLY_SUCCESS))
//!     }
//! }
//!
//! export_handler!(Hello);
//! ```
//!
//! Layout: [`context`] (what a call sees), [`failure`] (errors that become failure results),
//! [`log`] (logging and progress), [`process`] and [`slot`] (capabilities, each granted by the
//! gateway's policy), [`codes`] (ADU's result codes and the extended-code builder).

extern crate self as sandstep_sdk;

pub mod context;
pub mod failure;
pub mod log;
pub mod process;
pub mod slot;

#[doc(hidden)]
pub mod __private;

pub use context::{Component, Context, StepFile, UpdateId, PAYLOAD_DIR, STATE_DIR, WORK_DIR};
pub use failure::{Failure, Outcome};
pub use sandstep_model::codes;
pub use sandstep_model::codes::{ExtendedResultCode, Facility};
pub use sandstep_model::step::{Action, StepResult, MAX_RESULT_DETAILS};

use codes::result;

/// A step handler: ADU's seven lifecycle calls.
///
/// The host creates one instance (with [`Default`]) per step and calls, in order, `is_installed`
/// (900 means "already installed", the step is skipped), `download`, `backup`, `install` and
/// `apply`, all on the same instance, so fields can carry state from one call to the next.
/// `restore` follows a failed `install` or `apply`. `cancel` runs in a fresh instance after the
/// running call was stopped; use it to clean up (files in `/work`, `/state`).
///
/// Return `Ok(StepResult)` with the code for the action, or `Err(Failure)` (often through `?`),
/// which becomes result code 0 with the failure's extended code and details.
///
/// ```
/// use sandstep_sdk::{codes::result, Context, Handler, Outcome, StepResult};
///
/// #[derive(Default)]
/// struct Noop;
///
/// impl Handler for Noop {
///     fn is_installed(&mut self, _: &Context) -> Outcome {
///         Ok(StepResult::new(result::IS_INSTALLED_NOT_INSTALLED))
///     }
///     fn install(&mut self, _: &Context) -> Outcome {
///         Ok(StepResult::new(result::INSTALL_SUCCESS))
///     }
///     fn apply(&mut self, _: &Context) -> Outcome {
///         Ok(StepResult::new(result::APPLY_SUCCESS))
///     }
/// }
/// ```
pub trait Handler: Default + 'static {
    /// Is this step's update already installed? Return 900 (installed) or 901 (not installed).
    fn is_installed(&mut self, ctx: &Context) -> Outcome;

    /// Prepare the step's content. The host has already fetched and verified every step file into
    /// `/payload`, so the default returns 500 (download success).
    fn download(&mut self, _ctx: &Context) -> Outcome {
        Ok(StepResult::new(result::DOWNLOAD_SUCCESS))
    }

    /// Save what `restore` needs. Default: 1001 (backup unsupported, not a failure).
    fn backup(&mut self, _ctx: &Context) -> Outcome {
        Ok(StepResult::new(result::BACKUP_SUCCESS_UNSUPPORTED))
    }

    /// Install the update. Return 600, or 605-608 when a reboot or agent restart is needed.
    fn install(&mut self, ctx: &Context) -> Outcome;

    /// Make the installed update active. Return 700, or 705-708 when a reboot or agent restart is
    /// needed.
    fn apply(&mut self, ctx: &Context) -> Outcome;

    /// Clean up after a cancelled deployment. Default: 800 (cancel success).
    fn cancel(&mut self, _ctx: &Context) -> Outcome {
        Ok(StepResult::new(result::CANCEL_SUCCESS))
    }

    /// Undo a failed install or apply. Default: 1101 (restore unsupported, not a failure).
    fn restore(&mut self, _ctx: &Context) -> Outcome {
        Ok(StepResult::new(result::RESTORE_SUCCESS_UNSUPPORTED))
    }
}

/// Exports a [`Handler`] type as the component's `lifecycle` interface.
///
/// Use it once per crate, at the top level, with a type that implements [`Handler`] and
/// [`Default`]. Panics inside the handler are reported to the host's log before the call traps.
///
/// ```
/// # use sandstep_sdk::{codes::result, Context, Handler, Outcome, StepResult};
/// #[derive(Default)]
/// struct Mine;
/// # impl Handler for Mine {
/// #     fn is_installed(&mut self, _: &Context) -> Outcome { Ok(StepResult::new(901)) }
/// #     fn install(&mut self, _: &Context) -> Outcome { Ok(StepResult::new(600)) }
/// #     fn apply(&mut self, _: &Context) -> Outcome { Ok(StepResult::new(700)) }
/// # }
/// sandstep_sdk::export_handler!(Mine);
/// ```
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
        const _: () = {
            use $crate::__private::{dispatch, WitContext, WitResult};
            use $crate::Action;

            ::std::thread_local! {
                static INSTANCE: ::std::cell::RefCell<::std::option::Option<$handler>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            fn call(action: Action, ctx: WitContext) -> WitResult {
                INSTANCE.with(|cell| {
                    let mut slot = cell.borrow_mut();
                    let handler = slot.get_or_insert_with(<$handler as ::std::default::Default>::default);
                    dispatch(handler, action, ctx)
                })
            }

            struct Export;

            impl $crate::__private::Lifecycle for Export {
                fn is_installed(ctx: WitContext) -> WitResult {
                    call(Action::IsInstalled, ctx)
                }
                fn download(ctx: WitContext) -> WitResult {
                    call(Action::Download, ctx)
                }
                fn backup(ctx: WitContext) -> WitResult {
                    call(Action::Backup, ctx)
                }
                fn install(ctx: WitContext) -> WitResult {
                    call(Action::Install, ctx)
                }
                fn apply(ctx: WitContext) -> WitResult {
                    call(Action::Apply, ctx)
                }
                fn cancel(ctx: WitContext) -> WitResult {
                    call(Action::Cancel, ctx)
                }
                fn restore(ctx: WitContext) -> WitResult {
                    call(Action::Restore, ctx)
                }
            }

            $crate::__private::bindings::__export_all_world!(Export with_types_in $crate::__private::bindings);
        };
    };
}
