//! Azure IoT Hub's device protocol, so the agent can stand in for ADU's agent (`source =
//! "iothub"`). Built so far: [`auth`] (connection strings, shared access signatures, the MQTT
//! user name with the Device Update model id) and [`twin`] (the twin's MQTT topics and their
//! answers). The `deviceUpdate` component's documents and the connection loop come next
//! (issue 20).

pub mod auth;
pub mod twin;
