//! sandstep: a sandboxed multi-step update agent for Linux gateways.
//!
//! Layout:
//! - [`bindings`]: the one host `bindgen!` over `wit/`.
//! - [`sandbox`]: engine, precompiled cache, stores with limits, WASI over cap-std directories,
//!   and [`sandbox::Session`], which runs a handler's lifecycle calls and always yields a result.
//! - [`capability`]: host interfaces handlers import (`host` for all; `process` when granted).
//!
//! The plain data (manifests, codes, step results) lives in `sandstep-model`, without wasmtime.

pub mod bindings;
pub mod capability;
pub mod sandbox;
