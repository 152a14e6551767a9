//! sandstep, the gateway half: a sandboxed multi-step update agent for Linux gateways. Everything
//! here runs on the gateway; the fleet side (replica, stores, rollouts) is the `sandstep-fleet`
//! crate, and no database client is linked here.
//!
//! Layout:
//! - [`agent`]: the gateway daemon: desired state over MQTT (or HTTP polling) in, reports out.
//! - [`iothub`]: Azure IoT Hub's device protocol and ADU's twin documents, for the ADU drop-in
//!   (`[agent] source = "iothub"`; the agent's loop drives it through `agent::hub`).
//! - [`bindings`]: the one host `bindgen!` over `wit/`.
//! - [`sandbox`]: engine, precompiled cache, stores with limits, WASI over cap-std directories,
//!   and [`sandbox::Session`], which runs a handler's lifecycle calls and always yields a result.
//! - [`capability`]: host interfaces handlers import (`host` for all; `process` when granted).
//! - [`trust`]: handler signatures (wasmsign2), manifest signatures (JWS), trusted keys.
//! - [`workflow`]: deployments as persisted state machines: plan, journal, units, results.
//! - [`health`]: health checks that must pass after a reboot or restart before a deployment
//!   commits (a slot on trial is rolled back when they fail).
//! - [`download`]: verified, resumable downloads into a content-addressed store, and streams
//!   straight into a destination (a firmware slot).
//! - [`window`]: maintenance windows on the gateway's clock and time zone.
//! - [`blockindex`]: block indexes of firmware images, and which blocks an update must fetch.
//! - [`digest`]: the accelerated sha256 of the data path.
//! - [`registry`]: which component serves which handler id.
//! - [`loader`]: registry -> signature check -> compiled component -> policy check, on every load.
//! - [`config`]: the TOML configuration; it composes each subsystem's settings.
//! - [`policy`]: per-handler grants, limits and mapped directories.
//! - [`defaults`]: the default handlers and the ids they serve.
//! - [`datadir`]: the data dir, reached through cap-std handles only.
//! - [`wasm_binary`]: a WebAssembly binary's layout (sections, a component's imports), read
//!   before anything else touches the bytes.
//! - [`fault`]: crash points for the fault-injection tests (a no-op in normal builds).
//!
//! Developer tools, only with the `dev-tools` feature (the gateway package is built without):
//! `bench` (the benchmark suite behind `sandstep bench`) and `fuzzing` (the fuzz targets'
//! bodies, shared by `fuzz/` and the test suite's smoke run).
//!
//! Beside it: the plain data (manifests, codes, step results, the reported document) is
//! `sandstep-model`, without wasmtime; the MQTT connection, TLS set-up and the wall clock are
//! `sandstep-transport`; JWS, key files and manifest signing are `sandstep-signing`.

pub mod agent;
#[cfg(feature = "dev-tools")]
pub mod bench;
pub mod bindings;
pub mod blockindex;
pub mod capability;
pub mod config;
pub mod datadir;
pub mod defaults;
pub mod digest;
pub mod download;
pub mod fault;
#[cfg(feature = "dev-tools")]
pub mod fuzzing;
pub mod health;
pub mod iothub;
pub mod loader;
pub mod policy;
pub mod registry;
pub mod sandbox;
pub mod trust;
pub mod wasm_binary;
pub mod window;
pub mod workflow;
