//! What the gateway and the fleet side share to reach each other, and nothing else: neither
//! half's logic lives here.
//!
//! - [`mqtt`]: one MQTT connection (rumqttc; 3.1.1 or 5, TCP or TLS, reconnection with backoff)
//!   as a stream of [`mqtt::MqttEvent`]s, behind the [`mqtt::Transport`] trait so loops can be
//!   driven by a fake in tests. Used by the agent, IoT Hub's session, the replica and the
//!   operator commands.
//! - [`tls_roots`]: the CAs a TLS client trusts and the client certificate it presents (MQTT,
//!   IoT Hub, the replica's PostgreSQL).
//! - [`clock`]: wall-clock timestamps, as journals, reports and rollouts record them.
//! - [`shutdown`]: the signals that stop the agent and the replica.
//! - [`logging`]: both programs' log set-up (`--log`, `RUST_LOG`).
//! - [`private_file`]: owner-only files written whole (keys, the console's accounts).

pub mod clock;
pub mod logging;
pub mod mqtt;
pub mod private_file;
pub mod shutdown;
pub mod tls_roots;
