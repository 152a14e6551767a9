//! sandstep-fleet: the fleet side of sandstep. It runs where the fleet is steered (a server, an
//! operator's machine), never on a gateway, and links no wasmtime: the gateway's package does
//! not carry it, and it does not carry the gateway.
//!
//! Layout:
//! - [`replica`]: the device-state replica (`sandstep-fleet shadow`), the software-update
//!   pattern's cloud side: stores each device's desired and reported documents, publishes
//!   deltas, drives rollouts. Several replicas can share one PostgreSQL.
//! - [`record`]: the pure rules for one device's record (merging reports in their order,
//!   answers, deltas).
//! - [`rollout`]: the pure rules of phased rollouts (phases, failure limits, soak, nudges).
//! - [`operate`]: operator actions on rollouts (create, pause, resume, abort), shared by the
//!   command line and the console, each written to the audit log.
//! - [`store`]: where records and rollouts are kept: SQLite or PostgreSQL, one interface,
//!   versioned migrations, writes checked against the version read.
//! - [`config`]: the fleet side's reading of the config file.
//! - [`console`]: the web console over the store (HTTPS, accounts, live pages).
//! - [`fleet_sim`] (feature `dev-tools`): N simulated agents against real replicas, for the
//!   fleet benchmark.
//!
//! Both halves speak through `sandstep-transport` (MQTT, TLS) and share the documents of
//! `sandstep-model`; the operator commands sign deployments with `sandstep-signing`.

pub mod config;
pub mod console;
#[cfg(feature = "dev-tools")]
pub mod fleet_sim;
pub mod operate;
pub mod record;
pub mod replica;
pub mod rollout;
pub mod store;
