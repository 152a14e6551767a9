//! A test IoT Hub: IoT Hub's side of its documented MQTT device protocol, played on a real
//! mosquitto, for the agent's `source = "iothub"`. No IoT Hub is reachable from the test machines;
//! this follows Microsoft's public documentation ("Communicate with an IoT hub using the MQTT
//! protocol", "Control access to IoT Hub using shared access signatures", "Understand and use
//! device twins in IoT Hub"), not a live hub.
//!
//! - The gate: TLS on loopback with a throwaway CA's server certificate (scripts/test-ca.sh). It
//!   reads each MQTT CONNECT and refuses it (CONNACK 5, not authorized) unless the client id is
//!   the device, the user name is `<host>/<device>/?api-version=...&model-id=...` and the password
//!   a shared access signature for `<host>/devices/<device>`, signed with the device's key and
//!   not expired. Accepted connections are passed to mosquitto.
//! - The twin service: a client of mosquitto that answers `$iothub/twin/GET` with the whole
//!   twin (200), stores reported patches (JSON merge patch; 204 with the new version), and sends
//!   desired patches with their `$version`. It can be told to throttle (429) reported patches.

use base64::Engine;
use sandstep_transport::mqtt::{Mqtt, MqttConfig, MqttEvent};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the gate decided for one CONNECT.
#[derive(Debug, Clone)]
pub struct Admission {
    pub client_id: String,
    pub user_name: String,
    pub password: String,
    /// `None`: accepted; else why it was refused.
    pub refused: Option<String>,
}

/// The twin: desired and reported documents with their versions, and every reported patch.
#[derive(Debug, Default)]
pub struct Twin {
    pub desired: Map<String, Value>,
    pub desired_version: u64,
    pub reported: Map<String, Value>,
    pub reported_version: u64,
    pub patches: Vec<Value>,
    pub gets: u32,
}

pub struct TestHub {
    rt: tokio::runtime::Runtime,
    pub host: &'static str,
    pub device: String,
    /// The device id the gate accepts (`device` until renamed).
    gate_device: Arc<Mutex<String>>,
    pub key: String,
    pub port: u16,
    pub certs: tempfile::TempDir,
    pub admissions: Arc<Mutex<Vec<Admission>>>,
    pub twin: Arc<Mutex<Twin>>,
    /// Reported patches still to answer with 429.
    pub throttle: Arc<AtomicU32>,
    /// The network between device and hub is down: sessions end, connections are dropped.
    cut: Arc<(std::sync::atomic::AtomicBool, tokio::sync::Notify)>,
    service: Arc<tokio::sync::Mutex<Option<Mqtt>>>,
}

/// JSON merge patch (RFC 7386), as the twin merges reported and desired patches.
pub fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => {
                let entry = target
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                merge(entry.as_object_mut().unwrap(), p);
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

impl TestHub {
    /// A hub for `device` in front of the mosquitto listening on `broker_port`.
    pub fn start(broker_port: u16, device: &str) -> TestHub {
        let key = base64::engine::general_purpose::STANDARD
            .encode(fastrand::u64(..).to_le_bytes().repeat(4));
        Self::start_with_key(broker_port, device, &key)
    }

    /// A hub where `device` has the key `key` (base64).
    pub fn start_with_key(broker_port: u16, device: &str, key: &str) -> TestHub {
        let certs = tempfile::tempdir().unwrap();
        sandstep_testkit::test_ca(certs.path(), Some(device));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let admissions = Arc::new(Mutex::new(Vec::new()));
        let gate_device = Arc::new(Mutex::new(device.to_owned()));
        let cut: Arc<(std::sync::atomic::AtomicBool, tokio::sync::Notify)> = Default::default();
        let check = {
            let (device, key) = (gate_device.clone(), key.to_owned());
            Arc::new(move |c: &Connect, certificate: &[u8]| {
                hub_check(&device.lock().unwrap(), &key, c, certificate)
            })
        };
        let port = serve_gate(
            &rt,
            certs.path(),
            broker_port,
            admissions.clone(),
            cut.clone(),
            check,
        );
        let hub = TestHub {
            rt,
            host: "localhost",
            device: device.to_owned(),
            gate_device,
            key: key.to_owned(),
            port,
            certs,
            admissions,
            twin: Default::default(),
            throttle: Default::default(),
            cut,
            service: Default::default(),
        };
        hub.start_service(broker_port);
        hub
    }

    /// The hub knows the device by another id from now on (as when DPS assigns it anew): the
    /// old id is refused.
    pub fn rename_device(&self, id: &str) {
        *self.gate_device.lock().unwrap() = id.to_owned();
    }

    /// Cuts the network between devices and the hub (`true`), or mends it.
    pub fn cut(&self, down: bool) {
        self.cut.0.store(down, Ordering::SeqCst);
        if down {
            self.cut.1.notify_waiters();
        }
    }

    /// The device's connection string.
    pub fn connection_string(&self) -> String {
        format!(
            "HostName={};DeviceId={};SharedAccessKey={}",
            self.host, self.device, self.key
        )
    }

    pub fn ca(&self) -> PathBuf {
        self.certs.path().join("ca.pem")
    }

    fn start_service(&self, broker_port: u16) {
        let (twin, throttle) = (self.twin.clone(), self.throttle.clone());
        serve_requests(
            &self.rt,
            broker_port,
            "test-hub-twin-service",
            &[
                "$iothub/twin/GET/#",
                "$iothub/twin/PATCH/properties/reported/#",
            ],
            self.service.clone(),
            move |topic, payload| answer(&twin, &throttle, topic, payload),
        );
    }

    /// Changes the desired properties as the Device Update service does, and sends the patch.
    pub fn set_desired(&self, patch: Value) {
        let body = {
            let mut t = self.twin.lock().unwrap();
            merge(&mut t.desired, patch.as_object().unwrap());
            t.desired_version += 1;
            let mut body = patch.as_object().unwrap().clone();
            body.insert("$version".into(), Value::from(t.desired_version));
            (t.desired_version, Value::Object(body))
        };
        let service = self.service.clone();
        self.rt.block_on(async move {
            let guard = service.lock().await;
            guard
                .as_ref()
                .unwrap()
                .publish(
                    &format!("$iothub/twin/PATCH/properties/desired/?$version={}", body.0),
                    body.1.to_string().into_bytes(),
                    false,
                )
                .await
                .unwrap();
        });
    }

    /// The service's `deviceUpdate.service` for `deployment` (ADU's deployment document).
    pub fn deploy(&self, deployment: &Value) {
        self.set_desired(json!({"deviceUpdate": {"__t": "c", "service": deployment}}));
    }

    /// The reported `deviceUpdate.agent` once it satisfies `f`.
    pub fn wait_agent(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        self.wait_reported(what, |r| r.pointer("/deviceUpdate/agent").is_some_and(&f))
            .pointer("/deviceUpdate/agent")
            .cloned()
            .unwrap()
    }

    /// The whole reported document once it satisfies `f`.
    pub fn wait_reported(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            let r = Value::Object(self.twin.lock().unwrap().reported.clone());
            if f(&r) {
                return r;
            }
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "timed out waiting for {what}; reported: {r:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn accepted_connections(&self) -> usize {
        let a = self.admissions.lock().unwrap();
        a.iter().filter(|a| a.refused.is_none()).count()
    }

    /// Tries to connect with `password` (and the device's id and user name); the gate's answer.
    pub fn try_connect(&self, password: &str) -> MqttEvent {
        let cfg = MqttConfig {
            url: format!("mqtts://{}:{}", self.host, self.port),
            username: Some(format!(
                "{}/{}/?api-version=2021-04-12&model-id=dtmi%3Aazure%3Aiot%3AdeviceUpdateModel%3B3",
                self.host, self.device
            )),
            password: Some(password.to_owned()),
            ca_file: Some(self.ca()),
            reconnect_min_ms: 60_000,
            ..Default::default()
        };
        self.rt.block_on(async {
            let mut c = Mqtt::connect(&cfg, &self.device).unwrap();
            loop {
                match tokio::time::timeout(Duration::from_secs(15), c.recv()).await {
                    Ok(Some(ev @ (MqttEvent::Connected | MqttEvent::Disconnected(_)))) => {
                        return ev
                    }
                    Ok(Some(_)) => {}
                    other => panic!("no answer from the gate: {other:?}"),
                }
            }
        })
    }
}

/// A service on mosquitto (`broker_port`) as `client_id`: subscribes to `filters`, then answers
/// each request with what `answer` makes of it (topic, body). The connection is put in
/// `service`, where others may publish on it too.
pub fn serve_requests(
    rt: &tokio::runtime::Runtime,
    broker_port: u16,
    client_id: &str,
    filters: &[&str],
    service: Arc<tokio::sync::Mutex<Option<Mqtt>>>,
    answer: impl Fn(&str, &[u8]) -> Option<(String, Vec<u8>)> + Send + 'static,
) {
    rt.block_on(async {
        let cfg = MqttConfig {
            url: format!("mqtt://127.0.0.1:{broker_port}"),
            ..Default::default()
        };
        let mut c = Mqtt::connect(&cfg, client_id).unwrap();
        while !matches!(c.recv().await, Some(MqttEvent::Connected)) {}
        for f in filters {
            c.subscribe(f).await.unwrap();
        }
        let mut acks = 0;
        while acks < filters.len() {
            if let Some(MqttEvent::SubAck) = c.recv().await {
                acks += 1;
            }
        }
        *service.lock().await = Some(c);
    });
    rt.spawn(async move {
        loop {
            let ev = {
                let mut guard = service.lock().await;
                let c = guard.as_mut().unwrap();
                tokio::time::timeout(Duration::from_millis(50), c.recv()).await
            };
            let Ok(Some(MqttEvent::Message { topic, payload, .. })) = ev else {
                continue;
            };
            if let Some((topic, body)) = answer(&topic, &payload) {
                let guard = service.lock().await;
                let c = guard.as_ref().unwrap();
                c.publish(&topic, body, false).await.unwrap();
            }
        }
    });
}

/// The twin service's answer to a request on `topic`.
fn answer(
    twin: &Mutex<Twin>,
    throttle: &AtomicU32,
    topic: &str,
    payload: &[u8],
) -> Option<(String, Vec<u8>)> {
    let rid = topic.split("$rid=").nth(1)?.split('&').next()?.to_owned();
    let mut t = twin.lock().unwrap();
    if topic.starts_with("$iothub/twin/GET/") {
        t.gets += 1;
        let mut desired = t.desired.clone();
        desired.insert("$version".into(), Value::from(t.desired_version));
        let mut reported = t.reported.clone();
        reported.insert("$version".into(), Value::from(t.reported_version));
        let body = json!({"desired": desired, "reported": reported});
        return Some((
            format!("$iothub/twin/res/200/?$rid={rid}"),
            body.to_string().into_bytes(),
        ));
    }
    if throttle
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return Some((format!("$iothub/twin/res/429/?$rid={rid}"), Vec::new()));
    }
    let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(payload) else {
        let body = json!({"message": "the body is not a JSON object"});
        return Some((
            format!("$iothub/twin/res/400/?$rid={rid}"),
            body.to_string().into_bytes(),
        ));
    };
    merge(&mut t.reported, &patch);
    t.patches.push(Value::Object(patch));
    t.reported_version += 1;
    Some((
        format!(
            "$iothub/twin/res/204/?$rid={rid}&$version={}",
            t.reported_version
        ),
        Vec::new(),
    ))
}

pub fn tls_acceptor(certs: &Path) -> tokio_rustls::TlsAcceptor {
    let chain =
        rustls_pemfile::certs(&mut std::fs::read(certs.join("server.pem")).unwrap().as_slice())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
    let key = rustls_pemfile::private_key(
        &mut std::fs::read(certs.join("server.key")).unwrap().as_slice(),
    )
    .unwrap()
    .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // A client certificate is optional (SAS devices have none); one that is sent must chain to
    // the test CA, as IoT Hub checks CA-signed device certificates.
    let roots = sandstep_transport::tls_roots::roots(Some(&certs.join("ca.pem"))).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Decides on one CONNECT: `None` to accept, else why not. The second argument is the client
/// certificate's DER (empty when none was sent).
pub type Check = Arc<dyn Fn(&Connect, &[u8]) -> Option<String> + Send + Sync>;

/// Serves a TLS gate on a loopback port (returned) in front of mosquitto on `broker_port`: each
/// CONNECT is judged by `check` and recorded in `admissions`; accepted ones are passed on.
pub fn serve_gate(
    rt: &tokio::runtime::Runtime,
    certs: &Path,
    broker_port: u16,
    admissions: Arc<Mutex<Vec<Admission>>>,
    cut: Arc<(std::sync::atomic::AtomicBool, tokio::sync::Notify)>,
    check: Check,
) -> u16 {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let gate = Gate {
        broker_port,
        admissions,
        check,
    };
    rt.spawn(gate.serve(listener, tls_acceptor(certs), cut));
    port
}

/// The gate in front of mosquitto.
#[derive(Clone)]
struct Gate {
    broker_port: u16,
    admissions: Arc<Mutex<Vec<Admission>>>,
    check: Check,
}

/// A CONNECT packet's fields the gate checks.
pub struct Connect {
    bytes: Vec<u8>,
    pub client_id: String,
    pub user_name: String,
    pub password: String,
}

/// The hub's rule: client id the device, the user name announcing ADU's model id, and a valid
/// shared access signature for the device, or no password and a certificate naming it.
fn hub_check(device: &str, key: &str, c: &Connect, certificate: &[u8]) -> Option<String> {
    if c.client_id != device {
        return Some(format!("client id {} is not the device", c.client_id));
    }
    let want = format!(
        "localhost/{device}/?api-version=2021-04-12&model-id=dtmi%3Aazure%3Aiot%3AdeviceUpdateModel%3B3"
    );
    if c.user_name != want {
        return Some(format!("user name {} (want {want})", c.user_name));
    }
    if names(certificate, device) && c.password.is_empty() {
        return None; // authenticated by its X.509 certificate
    }
    check_sas(&c.password, &format!("localhost/devices/{device}"), key).err()
}

/// Whether a certificate's subject names `id` (CN = id). A search of the DER for the id is
/// enough for the test CA's certificates, whose only other name is its own.
pub fn names(certificate: &[u8], id: &str) -> bool {
    !certificate.is_empty() && certificate.windows(id.len()).any(|w| w == id.as_bytes())
}

impl Gate {
    async fn serve(
        self,
        listener: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        cut: Arc<(std::sync::atomic::AtomicBool, tokio::sync::Notify)>,
    ) {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            if cut.0.load(Ordering::SeqCst) {
                continue; // dropped: the device sees its connection fail
            }
            let gate = self.clone();
            let acceptor = acceptor.clone();
            let cut = cut.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                tokio::select! {
                    _ = gate.session(tls) => {}
                    _ = cut.1.notified() => {}
                }
            });
        }
    }

    async fn session(&self, mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) {
        let certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        let Some(c) = read_connect(&mut tls).await else {
            return;
        };
        let refused = (self.check)(&c, &certificate);
        self.admissions.lock().unwrap().push(Admission {
            client_id: c.client_id.clone(),
            user_name: c.user_name.clone(),
            password: c.password.clone(),
            refused: refused.clone(),
        });
        if refused.is_some() {
            // CONNACK, return code 5: not authorized.
            let _ = tls.write_all(&[0x20, 0x02, 0x00, 0x05]).await;
            let _ = tls.shutdown().await;
            return;
        }
        let Ok(mut broker) = tokio::net::TcpStream::connect(("127.0.0.1", self.broker_port)).await
        else {
            return;
        };
        if broker.write_all(&c.bytes).await.is_ok() {
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
        }
    }
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// Checks a `SharedAccessSignature sr=..&sig=..&se=..` for `resource` under `key` (base64), as
/// the documentation describes it: HMAC-SHA256 of `<url-encoded resource>\n<expiry>`.
pub fn check_sas(password: &str, resource: &str, key: &str) -> Result<(), String> {
    let fields = password
        .strip_prefix("SharedAccessSignature ")
        .ok_or("the password is not a SharedAccessSignature")?;
    let get = |name: &str| {
        fields
            .split('&')
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .ok_or(format!("no {name}"))
    };
    let (sr, sig, se) = (get("sr")?, get("sig")?, get("se")?);
    if !percent_decode(sr).eq_ignore_ascii_case(resource) {
        return Err(format!("token for {sr}, not {resource}"));
    }
    let expiry: u64 = se.parse().map_err(|_| "se is not a number")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if expiry <= now {
        return Err(format!("token expired at {expiry} (now {now})"));
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        format!("{sr}\n{se}").as_bytes(),
    );
    let expected = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    if percent_decode(sig) != expected {
        return Err("signature does not match the device's key".into());
    }
    Ok(())
}

/// Reads an MQTT 3.1.1 CONNECT (fixed header, variable header, payload).
async fn read_connect<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<Connect> {
    let mut bytes = vec![s.read_u8().await.ok()?];
    if bytes[0] != 0x10 {
        return None;
    }
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = s.read_u8().await.ok()?;
        bytes.push(b);
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.ok()?;
    bytes.extend_from_slice(&body);
    let mut r = Reader(&body);
    let _protocol = r.string()?;
    let _level = r.u8()?;
    let flags = r.u8()?;
    let _keep_alive = r.u16()?;
    let client_id = r.string()?;
    if flags & 0x04 != 0 {
        r.string()?;
        r.string()?;
    }
    let user_name = if flags & 0x80 != 0 {
        r.string()?
    } else {
        String::new()
    };
    let password = if flags & 0x40 != 0 {
        r.string()?
    } else {
        String::new()
    };
    Some(Connect {
        bytes,
        client_id,
        user_name,
        password,
    })
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = usize::from(self.u16()?);
        if self.0.len() < n {
            return None;
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8(s.to_vec()).ok()
    }
}
