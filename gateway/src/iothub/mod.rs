//! Azure IoT Hub's device protocol, so the agent stands in for ADU's agent (`[agent] source =
//! "iothub"`):
//!
//! - [`auth`]: connection strings, shared access signatures, the MQTT user name announcing the
//!   Device Update model id;
//! - [`config`]: the `[iothub]` table, and the identity read from a connection string or ADU's
//!   du-config.json, or given by DPS;
//! - [`dps`]: the Device Provisioning Service's `[iothub.dps]` table, topics and answers;
//! - [`provision`]: registering with DPS, and the assignment kept in the data dir;
//! - [`session`]: the MQTT connection, renewed with a new signature before the old expires (and,
//!   provisioned by DPS, registered again when the hub refuses the device);
//! - [`twin`]: the twin's MQTT topics and their answers;
//! - [`component`]: the `deviceUpdate` component's documents in ADU's shapes;
//! - [`device_info`]: the `deviceInformation` component.
//!
//! The agent's loop (`agent::mqtt_loop`, with `agent::hub`) uses them; `sandstep doctor` checks
//! the connection.

pub mod auth;
pub mod component;
pub mod config;
pub mod device_info;
pub mod dps;
pub mod provision;
pub mod session;
pub mod twin;
