//! The one host `bindgen!` over `wit/`: every other module imports its types from here.
//!
//! All imports are async (the process and slot capabilities do real I/O) and trappable: a host
//! function's outer `wasmtime::Result` traps the guest (host bug, policy violation), the inner
//! WIT `result` is a value the handler sees.

// The generated linker code for the type-only `types` interface has unused parameters.
#![allow(unused_variables)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "sandstep:handler/all",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::exports::sandstep::handler::lifecycle;
pub use self::sandstep::handler::{host, process, slot, types};
