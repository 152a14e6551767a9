//! An MQTT connection (rumqttc) for the agent, the replica and the operator commands: MQTT 3.1.1
//! or 5, TCP or TLS (CA, client certificate), username and password, and reconnection with
//! exponential backoff and jitter. Whatever the protocol, users see one event stream.

use rumqttc::QoS;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Largest MQTT packet accepted or sent: desired documents are checked against their own,
/// smaller limits so that an oversized one is reported, not a reason to drop the connection.
pub const MAX_PACKET: usize = 16 << 20;

/// The `[mqtt]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Client id (default: the device id, or a generated one for operator commands).
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// CA certificate(s) (PEM) for `mqtts://`; default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `v311` or `v5`.
    pub protocol: Protocol,
    pub keep_alive_secs: u64,
    /// Reconnection backoff: first delay and cap, in milliseconds (with ±50% jitter).
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: None,
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            protocol: Protocol::V311,
            keep_alive_secs: 30,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
        }
    }
}

/// The MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    V311,
    V5,
}

/// What happened on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttEvent {
    /// (Re)connected: subscribe again and flush what waits.
    Connected,
    /// The broker refused the connection because of who the client is (CONNACK: bad user name
    /// or password, not authorized): credentials may need renewing. A `Disconnected` follows.
    Refused,
    /// The connection broke; it is retried with backoff.
    Disconnected(String),
    /// A message arrived.
    Message {
        topic: String,
        payload: Vec<u8>,
        retained: bool,
    },
    /// The broker acknowledged a QoS 1 publish; under MQTT 5 it may say it refused it (its
    /// ACL: `NotAuthorized`), which MQTT 3.1.1 brokers never tell.
    PubAck { refused: Option<String> },
    /// The broker acknowledged a subscription; retained messages for it follow.
    SubAck,
}

/// Passes a connection's events on; a broken connection is reported and retried with backoff.
struct Forwarder {
    config: MqttConfig,
    tx: mpsc::UnboundedSender<MqttEvent>,
    attempt: u32,
}

impl Forwarder {
    fn new(config: &MqttConfig, tx: mpsc::UnboundedSender<MqttEvent>) -> Self {
        Forwarder {
            config: config.clone(),
            tx,
            attempt: 0,
        }
    }

    /// Handles one poll of the event loop; false once nobody listens any more.
    async fn pass<E: Broken>(&mut self, polled: Result<Option<MqttEvent>, E>) -> bool {
        let event = match polled {
            Ok(Some(MqttEvent::Connected)) => {
                self.attempt = 0;
                MqttEvent::Connected
            }
            Ok(Some(ev)) => ev,
            Ok(None) => return true,
            Err(e) => {
                if e.credentials_refused() {
                    let _ = self.tx.send(MqttEvent::Refused);
                }
                let _ = self.tx.send(MqttEvent::Disconnected(e.to_string()));
                tokio::time::sleep(backoff(&self.config, self.attempt)).await;
                self.attempt += 1;
                return true;
            }
        };
        self.tx.send(event).is_ok()
    }
}

/// A broken connection's error, which says whether the broker refused the client's identity.
trait Broken: std::fmt::Display {
    fn credentials_refused(&self) -> bool;
}

impl Broken for rumqttc::ConnectionError {
    fn credentials_refused(&self) -> bool {
        use rumqttc::ConnectReturnCode as C;
        matches!(
            self,
            rumqttc::ConnectionError::ConnectionRefused(C::BadUserNamePassword | C::NotAuthorized)
        )
    }
}

impl Broken for rumqttc::v5::ConnectionError {
    fn credentials_refused(&self) -> bool {
        use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C;
        matches!(
            self,
            rumqttc::v5::ConnectionError::ConnectionRefused(
                C::BadUserNamePassword | C::NotAuthorized | C::BadAuthenticationMethod
            )
        )
    }
}

/// The event an MQTT 3.1.1 packet means, if any.
fn from_v311(event: rumqttc::Event) -> Option<MqttEvent> {
    use rumqttc::{Event, Packet};
    match event {
        Event::Incoming(Packet::ConnAck(_)) => Some(MqttEvent::Connected),
        Event::Incoming(Packet::Publish(p)) => Some(MqttEvent::Message {
            topic: p.topic.clone(),
            payload: p.payload.to_vec(),
            retained: p.retain,
        }),
        Event::Incoming(Packet::PubAck(_)) => Some(MqttEvent::PubAck { refused: None }),
        Event::Incoming(Packet::SubAck(_)) => Some(MqttEvent::SubAck),
        _ => None,
    }
}

/// The event an MQTT 5 packet means, if any.
fn from_v5(event: rumqttc::v5::Event) -> Option<MqttEvent> {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::Event;
    match event {
        Event::Incoming(Packet::ConnAck(_)) => Some(MqttEvent::Connected),
        Event::Incoming(Packet::Publish(p)) => Some(MqttEvent::Message {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
            retained: p.retain,
        }),
        Event::Incoming(Packet::PubAck(ack)) => Some(MqttEvent::PubAck {
            refused: refusal(ack.reason),
        }),
        Event::Incoming(Packet::SubAck(_)) => Some(MqttEvent::SubAck),
        _ => None,
    }
}

/// An MQTT 3.1.1 client and the task that runs its event loop, turning packets into events.
fn connect_v311(
    config: &MqttConfig,
    client_id: &str,
    host: String,
    port: u16,
    transport: rumqttc::Transport,
    tx: mpsc::UnboundedSender<MqttEvent>,
) -> (Client, tokio::task::JoinHandle<()>) {
    let mut o = rumqttc::MqttOptions::new(client_id, host, port);
    o.set_keep_alive(Duration::from_secs(config.keep_alive_secs.max(5)))
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_transport(transport)
        .set_clean_session(true);
    if let (Some(u), Some(p)) = (&config.username, &config.password) {
        o.set_credentials(u, p);
    }
    let (client, mut el) = rumqttc::AsyncClient::new(o, 256);
    let mut fwd = Forwarder::new(config, tx);
    let task = tokio::spawn(async move {
        loop {
            let ev = el.poll().await.map(from_v311);
            if !fwd.pass(ev).await {
                return;
            }
        }
    });
    (Client::V4(client), task)
}

/// An MQTT 5 client and the task that runs its event loop, turning packets into events.
fn connect_v5(
    config: &MqttConfig,
    client_id: &str,
    host: String,
    port: u16,
    transport: rumqttc::Transport,
    tx: mpsc::UnboundedSender<MqttEvent>,
) -> (Client, tokio::task::JoinHandle<()>) {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, host, port);
    o.set_keep_alive(Duration::from_secs(config.keep_alive_secs.max(5)))
        .set_max_packet_size(Some(MAX_PACKET as u32))
        .set_transport(transport)
        .set_clean_start(true);
    if let (Some(u), Some(p)) = (&config.username, &config.password) {
        o.set_credentials(u, p);
    }
    let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 256);
    let mut fwd = Forwarder::new(config, tx);
    let task = tokio::spawn(async move {
        loop {
            let ev = el.poll().await.map(from_v5);
            if !fwd.pass(ev).await {
                return;
            }
        }
    });
    (Client::V5(client), task)
}

/// An MQTT 5 PUBACK's reason, when it says the publish was refused.
fn refusal(reason: rumqttc::v5::mqttbytes::v5::PubAckReason) -> Option<String> {
    use rumqttc::v5::mqttbytes::v5::PubAckReason as R;
    match reason {
        R::Success | R::NoMatchingSubscribers => None,
        other => Some(format!("{other:?}")),
    }
}

/// What the agent's loop needs of a connection: the next event, subscribe, publish (QoS 1).
/// [`Mqtt`] is the real one; tests drive the loop through an in-process one.
pub trait Transport {
    fn recv(&mut self) -> impl std::future::Future<Output = Option<MqttEvent>> + Send;
    fn subscribe(
        &self,
        filter: &str,
    ) -> impl std::future::Future<Output = Result<(), MqttError>> + Send;
    fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> impl std::future::Future<Output = Result<(), MqttError>> + Send;
}

impl Transport for Mqtt {
    async fn recv(&mut self) -> Option<MqttEvent> {
        Mqtt::recv(self).await
    }
    async fn subscribe(&self, filter: &str) -> Result<(), MqttError> {
        Mqtt::subscribe(self, filter).await
    }
    async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), MqttError> {
        Mqtt::publish(self, topic, payload, retain).await
    }
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("mqtt url `{0}`: expected mqtt://host:port or mqtts://host:port")]
    Url(String),
    #[error("mqtt TLS: {0}")]
    Tls(#[from] crate::tls_roots::TlsError),
    #[error("mqtt: {0}")]
    Client(String),
}

enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// A connection; its event loop runs on a task until the connection is dropped.
pub struct Mqtt {
    client: Client,
    events: mpsc::UnboundedReceiver<MqttEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why [`probe`] found no broker to talk to.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Setup(#[from] MqttError),
    #[error("{0}")]
    Refused(String),
    /// The broker refused the client's credentials (bad user name or password, not
    /// authorized).
    #[error("{0}")]
    CredentialsRefused(String),
    #[error("the connection ended")]
    Ended,
    #[error("no answer within {}s", .0.as_secs())]
    Silent(Duration),
}

/// Connects as `client_id` and waits up to `wait` for the broker's first answer: connected,
/// or why not (the checks of `doctor`).
pub async fn probe(config: &MqttConfig, client_id: &str, wait: Duration) -> Result<(), ProbeError> {
    let mut conn = Mqtt::connect(config, client_id)?;
    let answer = async {
        let mut credentials = false;
        loop {
            match conn.recv().await {
                Some(MqttEvent::Connected) => return Ok(()),
                Some(MqttEvent::Refused) => credentials = true,
                Some(MqttEvent::Disconnected(e)) if credentials => {
                    return Err(ProbeError::CredentialsRefused(e))
                }
                Some(MqttEvent::Disconnected(e)) => return Err(ProbeError::Refused(e)),
                None => return Err(ProbeError::Ended),
                Some(_) => {}
            }
        }
    };
    tokio::time::timeout(wait, answer)
        .await
        .map_err(|_| ProbeError::Silent(wait))?
}

fn tls(config: &MqttConfig) -> Result<rumqttc::Transport, MqttError> {
    let roots = crate::tls_roots::roots(config.ca_file.as_deref())?;
    let client =
        crate::tls_roots::client_pair(config.client_cert.as_deref(), config.client_key.as_deref())?;
    let client_config = crate::tls_roots::client_config(roots, client)?;
    Ok(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        Arc::new(client_config),
    )))
}

fn backoff(config: &MqttConfig, attempt: u32) -> Duration {
    let base = config
        .reconnect_min_ms
        .saturating_mul(1u64 << attempt.min(20))
        .min(config.reconnect_max_ms);
    Duration::from_millis((base as f64 * (0.5 + fastrand::f64())) as u64)
}

impl Mqtt {
    /// Connects (in the background: events tell when it is up).
    pub fn connect(config: &MqttConfig, client_id: &str) -> Result<Mqtt, MqttError> {
        let (secure, rest) = if let Some(r) = config.url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = config.url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(MqttError::Url(config.url.clone()));
        };
        let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse::<u16>()
                    .map_err(|_| MqttError::Url(config.url.clone()))?,
            ),
            None => (rest.to_owned(), if secure { 8883 } else { 1883 }),
        };
        let transport = if secure {
            tls(config)?
        } else {
            rumqttc::Transport::Tcp
        };
        // Unbounded: the network loop must never wait on a consumer that may itself be waiting
        // for the network loop (to take its publish requests): that would deadlock.
        let (tx, rx) = mpsc::unbounded_channel();
        let (client, task) = match config.protocol {
            Protocol::V311 => connect_v311(config, client_id, host, port, transport, tx),
            Protocol::V5 => connect_v5(config, client_id, host, port, transport, tx),
        };
        Ok(Mqtt {
            client,
            events: rx,
            task,
        })
    }

    /// The next event (None once the connection is gone for good).
    pub async fn recv(&mut self) -> Option<MqttEvent> {
        self.events.recv().await
    }

    /// The next event if one is already waiting.
    pub fn try_recv(&mut self) -> Option<MqttEvent> {
        self.events.try_recv().ok()
    }

    /// Subscribes (QoS 1).
    pub async fn subscribe(&self, filter: &str) -> Result<(), MqttError> {
        match &self.client {
            Client::V4(c) => c
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .map_err(|e| MqttError::Client(e.to_string())),
            Client::V5(c) => c
                .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .await
                .map_err(|e| MqttError::Client(e.to_string())),
        }
    }

    /// Publishes (QoS 1).
    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<(), MqttError> {
        match &self.client {
            Client::V4(c) => c
                .publish(topic, QoS::AtLeastOnce, retain, payload)
                .await
                .map_err(|e| MqttError::Client(e.to_string())),
            Client::V5(c) => c
                .publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    retain,
                    payload,
                )
                .await
                .map_err(|e| MqttError::Client(e.to_string())),
        }
    }
}
