//! Write sandstep update handlers as WebAssembly components.
//!
//! A handler is a type implementing [`Handler`], exported with [`export_handler!`]. Build the crate
//! as a `cdylib` for `wasm32-wasip2` and the result is a component sandstep can sign, install and run.
//! You never touch the WIT bindings: the SDK converts the host's data into [`Context`] and your
//! [`Outcome`] back into a step result.
//!
//! ```
//! use sandstep_sdk::done::{Applied, Installed, IsInstalled};
//! use sandstep_sdk::{export_handler, Context, Handler, Outcome};
//!
//! #[derive(Default)]
//! struct Hello;
//!
//! impl Handler for Hello {
//!     fn is_installed(&mut self, ctx: &Context) -> Outcome<IsInstalled> {
//!         Ok(if ctx.state_path("installed").exists() {
//!             IsInstalled::Installed.into()
//!         } else {
//!             IsInstalled::NotInstalled.into()
//!         })
//!     }
//!     fn install(&mut self, ctx: &Context) -> Outcome<Installed> {
//!         sandstep_sdk::log::info("installing");
//!         std::fs::write(ctx.work_path("greeting"), b"hello")?;
//!         Ok(Installed::Success.with_details("greeting written"))
//!     }
//!     fn apply(&mut self, ctx: &Context) -> Outcome<Applied> {
//!         std::fs::write(ctx.state_path("installed"), b"")?;
//!         Ok(Applied::Success.into())
//!     }
//! }
//!
//! export_handler!(Hello);
//! ```
//!
//! Layout: [`context`] (what a call sees), [`done`] (each call's result codes, typed),
//! [`failure`] (errors that become failure results), [`files`] (atomic writes), [`log`] (logging and progress), [`process`] and [`slot`] (capabilities, each granted by the
//! gateway's policy), [`codes`] (ADU's result codes and the extended-code builder).

extern crate self as sandstep_sdk;

pub mod context;
pub mod done;
pub mod failure;
pub mod files;
pub mod log;
pub mod process;
pub mod slot;

#[doc(hidden)]
pub mod __bindings;
#[doc(hidden)]
pub mod __private;

pub use context::{Component, Context, StepFile, UpdateId, PAYLOAD_DIR, STATE_DIR, WORK_DIR};
pub use done::Done;
pub use failure::{Failure, Outcome};
pub use sandstep_model::codes;
pub use sandstep_model::codes::{ExtendedResultCode, Facility};
pub use sandstep_model::step::{Action, StepResult, MAX_RESULT_DETAILS};

/// A step handler: ADU's seven lifecycle calls.
///
/// The host creates one instance (with [`Default`]) per step and calls, in order, `is_installed`
/// (900 means "already installed", the step is skipped), `download`, `backup`, `install` and
/// `apply`, all on the same instance, so fields can carry state from one call to the next.
/// `restore` follows a failed `install` or `apply`. `cancel` runs in a fresh instance after the
/// running call was stopped; use it to clean up (files in `/work`, `/state`).
///
/// Each call returns its own code type ([`done`]): `Ok(code.into())`, or
/// `Ok(code.with_details(..))`; a code of another call does not compile. `Err(Failure)` (often
/// through `?`) becomes result code 0 with the failure's extended code and details.
///
/// ```
/// use sandstep_sdk::done::{Applied, Installed, IsInstalled};
/// use sandstep_sdk::{Context, Handler, Outcome};
///
/// #[derive(Default)]
/// struct Noop;
///
/// impl Handler for Noop {
///     fn is_installed(&mut self, _: &Context) -> Outcome<IsInstalled> {
///         Ok(IsInstalled::NotInstalled.into())
///     }
///     fn install(&mut self, _: &Context) -> Outcome<Installed> {
///         Ok(Installed::Success.into())
///     }
///     fn apply(&mut self, _: &Context) -> Outcome<Applied> {
///         Ok(Applied::Success.into())
///     }
/// }
/// ```
///
/// ```compile_fail
/// # use sandstep_sdk::done::{Applied, Installed, IsInstalled};
/// # use sandstep_sdk::{Context, Handler, Outcome};
/// # #[derive(Default)]
/// # struct Wrong;
/// impl Handler for Wrong {
/// #   fn is_installed(&mut self, _: &Context) -> Outcome<IsInstalled> {
/// #       Ok(IsInstalled::NotInstalled.into())
/// #   }
///     // An apply code from install: a compile error, not a refusal at run time.
///     fn install(&mut self, _: &Context) -> Outcome<Installed> {
///         Ok(Applied::Success.into())
///     }
/// #   fn apply(&mut self, _: &Context) -> Outcome<Applied> {
/// #       Ok(Applied::Success.into())
/// #   }
/// }
/// ```
pub trait Handler: Default + 'static {
    /// Is this step's update already installed? Return 900 (installed) or 901 (not installed).
    fn is_installed(&mut self, ctx: &Context) -> Outcome<done::IsInstalled>;

    /// Prepare the step's content. The host has already fetched and verified every step file into
    /// `/payload`, so the default returns 500 (download success).
    fn download(&mut self, _ctx: &Context) -> Outcome<done::Downloaded> {
        Ok(done::Downloaded::Success.into())
    }

    /// Save what `restore` needs. Default: 1001 (backup unsupported, not a failure).
    fn backup(&mut self, _ctx: &Context) -> Outcome<done::BackedUp> {
        Ok(done::BackedUp::Unsupported.into())
    }

    /// Install the update. Return 600, or 605-608 when a reboot or agent restart is needed.
    fn install(&mut self, ctx: &Context) -> Outcome<done::Installed>;

    /// Make the installed update active. Return 700, or 705-708 when a reboot or agent restart is
    /// needed.
    fn apply(&mut self, ctx: &Context) -> Outcome<done::Applied>;

    /// Clean up after a cancelled deployment. Default: 800 (cancel success).
    fn cancel(&mut self, _ctx: &Context) -> Outcome<done::Cancelled> {
        Ok(done::Cancelled::Success.into())
    }

    /// Undo a failed install or apply. Default: 1101 (restore unsupported, not a failure).
    fn restore(&mut self, _ctx: &Context) -> Outcome<done::Restored> {
        Ok(done::Restored::Unsupported.into())
    }
}

/// Exports a [`Handler`] type as the component's `lifecycle` interface.
///
/// Use it once per crate, at the top level, with a type that implements [`Handler`] and
/// [`Default`]. Panics inside the handler are reported to the host's log before the call traps.
///
/// ```
/// # use sandstep_sdk::done::{Applied, Installed, IsInstalled};
/// # use sandstep_sdk::{Context, Handler, Outcome};
/// #[derive(Default)]
/// struct Mine;
/// # impl Handler for Mine {
/// #     fn is_installed(&mut self, _: &Context) -> Outcome<IsInstalled> { Ok(IsInstalled::NotInstalled.into()) }
/// #     fn install(&mut self, _: &Context) -> Outcome<Installed> { Ok(Installed::Success.into()) }
/// #     fn apply(&mut self, _: &Context) -> Outcome<Applied> { Ok(Applied::Success.into()) }
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
