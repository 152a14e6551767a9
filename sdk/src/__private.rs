//! Glue used by [`export_handler!`](crate::export_handler); not part of the public API.

pub use crate::__bindings as bindings;
pub use crate::__bindings::exports::sandstep::handler::lifecycle::Guest as Lifecycle;
pub use crate::__bindings::sandstep::handler::types::{
    StepContext as WitContext, StepResult as WitResult,
};

use crate::done::Code;
use crate::{Action, Context, Handler, Outcome, StepResult};
use sandstep_model::step::clamp_details;

/// Runs one lifecycle call on `handler` and converts its outcome for the host.
pub fn dispatch<H: Handler>(handler: &mut H, action: Action, ctx: WitContext) -> WitResult {
    install_panic_hook();
    let ctx = Context::from_wit(ctx);
    let result = match action {
        Action::IsInstalled => step_result(handler.is_installed(&ctx)),
        Action::Download => step_result(handler.download(&ctx)),
        Action::Backup => step_result(handler.backup(&ctx)),
        Action::Install => step_result(handler.install(&ctx)),
        Action::Apply => step_result(handler.apply(&ctx)),
        Action::Cancel => step_result(handler.cancel(&ctx)),
        Action::Restore => step_result(handler.restore(&ctx)),
    };
    WitResult {
        result_code: result.result_code,
        extended_result_code: result.extended_result_code,
        result_details: clamp_details(result.result_details),
    }
}

fn step_result<C: Code>(outcome: Outcome<C>) -> StepResult {
    outcome.map_or_else(StepResult::from, StepResult::from)
}

/// Sends a panic's message to the host log before the call traps, so the step result can say why.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            crate::log::error(&format!("panic: {info}"));
        }));
    });
}
