//! sandstep: a sandboxed multi-step update agent for Linux gateways.
//!
//! Layout:
//! - [`agent`]: the gateway daemon: desired state over MQTT (or HTTP polling) in, reports out.
//! - [`shadow`]: the device-state replica (SQLite or PostgreSQL) and its phased rollouts.
//! - [`mqtt`]: the MQTT connection shared by agent, replica and operator commands.
//! - [`tls_roots`]: the CAs TLS clients trust (MQTT, the replica's PostgreSQL).
//! - [`iothub`]: Azure IoT Hub's device protocol and ADU's twin documents, for the ADU drop-in
//!   (`[agent] source = "iothub"`; the agent's loop drives it through `agent::hub`).
//! - [`bindings`]: the one host `bindgen!` over `wit/`.
//! - [`sandbox`]: engine, precompiled cache, stores with limits, WASI over cap-std directories,
//!   and [`sandbox::Session`], which runs a handler's lifecycle calls and always yields a result.
//! - [`capability`]: host interfaces handlers import (`host` for all; `process` when granted).
//! - [`trust`]: handler signatures (wasmsign2), manifest signatures (JWS), trusted keys.
//! - [`workflow`]: deployments as persisted state machines: plan, journal, units, results.
//! - [`download`]: verified, resumable downloads into a content-addressed store, and streams
//!   straight into a destination (a firmware slot).
//! - [`blockindex`]: block indexes of firmware images, and which blocks an update must fetch.
//! - [`digest`]: the accelerated sha256 of the data path.
//! - [`clock`]: wall-clock timestamps (limits use the monotonic clock).
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
//! `bench` (the benchmark suite behind `sandstep bench`), `fleet_sim` (N simulated agents
//! against one broker, for the fleet benchmark) and `fuzzing` (the fuzz targets' bodies, shared
//! by `fuzz/` and the test suite's smoke run).
//!
//! The plain data (manifests, codes, step results) lives in `sandstep-model`, without wasmtime.

pub mod agent;
#[cfg(feature = "dev-tools")]
pub mod bench;
pub mod bindings;
pub mod blockindex;
pub mod capability;
pub mod clock;
pub mod config;
pub mod datadir;
pub mod defaults;
pub mod digest;
pub mod download;
pub mod fault;
#[cfg(feature = "dev-tools")]
pub mod fleet_sim;
#[cfg(feature = "dev-tools")]
pub mod fuzzing;
pub mod iothub;
pub mod loader;
pub mod mqtt;
pub mod policy;
pub mod registry;
pub mod sandbox;
pub mod shadow;
pub mod tls_roots;
pub mod trust;
pub mod wasm_binary;
pub mod workflow;
