//! A real HTTP/1.1 server on loopback for download tests, with misbehaviours on demand: dropped
//! connections, wrong bytes, extra bytes, error statuses, lies about Content-Length, stalls.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the server treats one path.
#[derive(Debug, Clone, Default)]
pub struct Behavior {
    /// Answer 500 to this many requests first.
    pub fail_first: u32,
    /// For this many requests, close the connection after sending this many body bytes.
    pub drop_first: Option<(u32, usize)>,
    /// Always answer with this status.
    pub status: Option<u16>,
    /// Serve the file with one byte changed.
    pub wrong_bytes: bool,
    /// Append this many bytes to the file.
    pub extra_bytes: usize,
    /// Announce this Content-Length whatever the body.
    pub lie_length: Option<u64>,
    /// For the first request, wait this long before sending the body.
    pub stall_first: Option<Duration>,
    /// Ignore Range headers (answer 200 with the whole file).
    pub no_range: bool,
    /// Answer HEAD requests with this status (a pre-signed URL signed for GET only: 403).
    pub head_status: Option<u16>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    behaviors: HashMap<String, Behavior>,
    /// (path, requested range start)
    log: Vec<(String, Option<u64>)>,
}

/// The server; it stops when the test process ends.
pub struct TestServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        TestServer { addr, state }
    }

    pub fn put(&self, name: &str, bytes: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(format!("/{name}"), bytes.to_vec());
    }

    pub fn behave(&self, name: &str, b: Behavior) {
        self.state
            .lock()
            .unwrap()
            .behaviors
            .insert(format!("/{name}"), b);
    }

    pub fn base(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    /// The range starts requested for `name`, in order (None: the whole file).
    pub fn requests(&self, name: &str) -> Vec<Option<u64>> {
        let path = format!("/{name}");
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, r)| *r)
            .collect()
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let method = line.split_whitespace().next().unwrap_or("GET").to_owned();
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut range = None;
    let mut range_end: Option<u64> = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            let (start, end) = v.trim().split_once('-').unwrap_or((v.trim(), ""));
            range = start.parse::<u64>().ok();
            range_end = end.parse::<u64>().ok();
        }
    }
    if method == "HEAD" {
        // Headers only; not a transfer, so neither logged nor counted against a behavior.
        let (len, refused) = {
            let s = state.lock().unwrap();
            let refused = s.behaviors.get(&path).and_then(|b| b.head_status);
            (s.files.get(&path).map(Vec::len), refused)
        };
        let head = match (refused, len) {
            (Some(code), _) => {
                format!("HTTP/1.1 {code} Refused\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            }
            (None, Some(n)) => {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n")
            }
            (None, None) => {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            }
        };
        let mut out = conn;
        return out.write_all(head.as_bytes());
    }
    let (body, behavior) = {
        let mut s = state.lock().unwrap();
        s.log.push((path.clone(), range));
        let body = s.files.get(&path).cloned();
        let b = s.behaviors.entry(path.clone()).or_default();
        let current = b.clone();
        if b.fail_first > 0 {
            b.fail_first -= 1;
        }
        if let Some((n, bytes)) = b.drop_first {
            b.drop_first = (n > 1).then_some((n - 1, bytes));
        }
        b.stall_first = None;
        (body, current)
    };
    let mut out = conn;
    let status_line = |code: u16, text: &str| {
        format!("HTTP/1.1 {code} {text}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    if let Some(code) = behavior.status {
        return out.write_all(status_line(code, "Configured").as_bytes());
    }
    if behavior.fail_first > 0 {
        return out.write_all(status_line(500, "Internal Server Error").as_bytes());
    }
    let Some(mut body) = body else {
        return out.write_all(status_line(404, "Not Found").as_bytes());
    };
    if behavior.wrong_bytes {
        let mid = body.len() / 2;
        body[mid] ^= 0xFF;
    }
    body.extend(std::iter::repeat_n(b'X', behavior.extra_bytes));
    let total = body.len() as u64;
    if behavior.no_range {
        range = None;
    }
    let (head, slice) = match range {
        Some(start) if start < total => {
            let last = range_end.unwrap_or(total - 1).min(total - 1);
            (
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{last}/{total}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    last + 1 - start
                ),
                &body[start as usize..=last as usize],
            )
        }
        Some(_) => return out.write_all(status_line(416, "Range Not Satisfiable").as_bytes()),
        None => {
            let len = behavior.lie_length.unwrap_or(total);
            (
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"),
                &body[..],
            )
        }
    };
    out.write_all(head.as_bytes())?;
    if let Some(d) = behavior.stall_first {
        std::thread::sleep(d);
    }
    match behavior.drop_first {
        Some((_, bytes)) => {
            out.write_all(&slice[..bytes.min(slice.len())])?;
            out.flush()?;
            out.shutdown(std::net::Shutdown::Both)
        }
        None => out.write_all(slice),
    }
}
