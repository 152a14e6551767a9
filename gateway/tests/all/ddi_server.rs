//! A small hawkBit played from its published Direct Device Integration API (eclipse.dev/hawkbit
//! `apis/ddi_api`, and the DDI model classes' documented shapes): one tenant, one controller,
//! update actions with chunks and artifacts, cancel actions, the feedback channels, and the
//! config-data link. It checks the `TargetToken` on every API request (401 otherwise), keeps
//! offering an action until its feedback closes it, and records every request.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// An update action as the server holds it.
#[derive(Debug, Clone)]
pub struct Action {
    pub id: u64,
    /// `[(filename, href, sha256 hex)]`
    pub artifacts: Vec<(String, String, String)>,
    pub closed: bool,
}

#[derive(Default)]
struct State {
    /// This server's origin, for the absolute links it hands out (as hawkBit does).
    origin: String,
    token: String,
    actions: Vec<Action>,
    /// (cancel id, the action it stops, closed)
    cancels: Vec<(u64, u64, bool)>,
    ask_config: bool,
    /// (method, path, body) of every request.
    log: Vec<(String, String, Value)>,
    /// Links in the controller resource point here instead (another server's origin).
    foreign_links: Option<String>,
}

/// The server; it lives as long as the test process.
pub struct DdiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

pub const TENANT: &str = "DEFAULT";

impl DdiServer {
    pub fn start(token: &str) -> DdiServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            origin: format!("http://{addr}"),
            token: token.to_owned(),
            ..State::default()
        }));
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        DdiServer { addr, state }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Assigns an update action to the controller.
    pub fn assign(&self, id: u64, artifacts: Vec<(String, String, String)>) {
        self.state.lock().unwrap().actions.push(Action {
            id,
            artifacts,
            closed: false,
        });
    }

    /// Asks the controller to cancel action `stop` (cancel action `id`).
    pub fn cancel(&self, id: u64, stop: u64) {
        self.state.lock().unwrap().cancels.push((id, stop, false));
    }

    pub fn ask_config(&self) {
        self.state.lock().unwrap().ask_config = true;
    }

    /// The controller resource's links name this origin instead of the server's.
    pub fn foreign_links(&self, origin: &str) {
        self.state.lock().unwrap().foreign_links = Some(origin.to_owned());
    }

    /// The bodies posted to `path_suffix` (e.g. `deploymentBase/7/feedback`), in order.
    pub fn posted(&self, path_suffix: &str) -> Vec<Value> {
        let s = self.state.lock().unwrap();
        s.log
            .iter()
            .filter(|(m, p, _)| (m == "POST" || m == "PUT") && p.ends_with(path_suffix))
            .map(|(_, _, b)| b.clone())
            .collect()
    }

    /// Every request's method and path.
    pub fn requests(&self) -> Vec<(String, String)> {
        let s = self.state.lock().unwrap();
        s.log
            .iter()
            .map(|(m, p, _)| (m.clone(), p.clone()))
            .collect()
    }

    pub fn is_closed(&self, id: u64) -> bool {
        let s = self.state.lock().unwrap();
        s.actions.iter().any(|a| a.id == id && a.closed)
    }
}

struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Value,
}

fn read_request(conn: &TcpStream) -> std::io::Result<Request> {
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let (mut length, mut authorization) = (0usize, None);
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').unwrap_or((h, ""));
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap_or(0),
            "authorization" => authorization = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok(Request {
        method,
        path,
        authorization,
        body,
    })
}

fn respond(mut conn: &TcpStream, status: u16, body: Option<Value>) -> std::io::Result<()> {
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: application/hal+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let req = read_request(&conn)?;
    let mut s = state.lock().unwrap();
    s.log
        .push((req.method.clone(), req.path.clone(), req.body.clone()));
    if req.authorization.as_deref() != Some(&format!("TargetToken {}", s.token)) {
        return respond(&conn, 401, None);
    }
    let prefix = format!("/{TENANT}/controller/v1/");
    let Some(rest) = req.path.strip_prefix(&prefix) else {
        return respond(&conn, 404, None);
    };
    let rest = rest.split('?').next().unwrap_or_default().to_owned();
    let parts: Vec<&str> = rest.split('/').collect();
    let (status, body) = route(&mut s, &req.method, &parts, &req.body);
    drop(s);
    respond(&conn, status, body)
}

fn route(s: &mut State, method: &str, parts: &[&str], body: &Value) -> (u16, Option<Value>) {
    match (method, parts) {
        ("GET", [controller]) => (200, Some(controller_base(s, controller))),
        ("GET", [_, "deploymentBase", id]) => {
            match s.actions.iter().find(|a| a.id.to_string() == *id) {
                Some(a) => (200, Some(deployment_base(a))),
                None => (404, None),
            }
        }
        ("POST", [_, "deploymentBase", id, "feedback"]) => {
            let closed = body.pointer("/status/execution") == Some(&json!("closed"));
            match s.actions.iter_mut().find(|a| a.id.to_string() == *id) {
                Some(a) if a.closed => (410, None),
                Some(a) => {
                    a.closed |= closed;
                    (200, None)
                }
                None => (404, None),
            }
        }
        ("GET", [_, "cancelAction", id]) => {
            match s.cancels.iter().find(|c| c.0.to_string() == *id) {
                Some((cid, stop, _)) => (
                    200,
                    Some(
                        json!({"id": cid.to_string(), "cancelAction": {"stopId": stop.to_string()}}),
                    ),
                ),
                None => (404, None),
            }
        }
        ("POST", [_, "cancelAction", id, "feedback"]) => {
            let closed = body.pointer("/status/execution") == Some(&json!("closed"));
            let Some(c) = s.cancels.iter_mut().find(|c| c.0.to_string() == *id) else {
                return (404, None);
            };
            c.2 |= closed;
            let stop = c.1;
            if closed {
                if let Some(a) = s.actions.iter_mut().find(|a| a.id == stop) {
                    a.closed = true;
                }
            }
            (200, None)
        }
        ("PUT", [_, "configData"]) => {
            s.ask_config = false;
            (200, None)
        }
        _ => (404, None),
    }
}

/// The controller resource: polling every second, and a link for each thing to do.
fn controller_base(s: &State, controller: &str) -> Value {
    let origin = s.foreign_links.clone().unwrap_or_else(|| s.origin.clone());
    let link = |tail: String| json!({"href": format!("{origin}/{TENANT}/controller/v1/{controller}/{tail}")});
    let mut links = serde_json::Map::new();
    if let Some((cid, _, _)) = s.cancels.iter().find(|c| !c.2) {
        links.insert("cancelAction".into(), link(format!("cancelAction/{cid}")));
    } else if let Some(a) = s.actions.iter().find(|a| !a.closed) {
        links.insert(
            "deploymentBase".into(),
            link(format!("deploymentBase/{}?c=-2127183556", a.id)),
        );
    }
    if s.ask_config {
        links.insert("configData".into(), link("configData".into()));
    }
    json!({"config": {"polling": {"sleep": "00:00:01"}}, "_links": links})
}

fn deployment_base(a: &Action) -> Value {
    let artifacts: Vec<Value> = a
        .artifacts
        .iter()
        .map(|(name, href, sha256)| {
            json!({
                "filename": name,
                "hashes": {"sha256": sha256, "sha1": "", "md5": ""},
                "size": 0,
                "_links": {"download-http": {"href": href}}
            })
        })
        .collect();
    json!({
        "id": a.id.to_string(),
        "deployment": {
            "download": "forced",
            "update": "forced",
            "chunks": [{"part": "os", "version": "1.0", "name": "sandstep update", "artifacts": artifacts}]
        }
    })
}
