//! The web console over HTTPS against a store of 10,002 devices: logging in, finding a device,
//! its page with HTML in a result shown as text, starting a rollout from a deployment file,
//! pausing it, the CSRF and Origin rules, a viewer who cannot change anything, and the audit
//! log the command line shows too. (The browser's view of the same is `console_browser`.)

use crate::fleet;
use sandstep_fleet::store::{Database, Store};
use sandstep_model::shadow::Document;
use sandstep_testkit::Proc;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Devices in the store besides `gw-evil`.
pub const DEVICES: usize = 10_000;

/// A console running over a seeded SQLite store, with an operator (alice) and a viewer
/// (victor).
pub struct Running {
    pub dir: tempfile::TempDir,
    pub url: String,
    /// The console process, stopped when this is dropped.
    _proc: Proc,
}

impl Running {
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("fleet.toml")
    }
}

fn report(v: Value) -> (String, Document) {
    let id = v["id"].as_str().unwrap().to_owned();
    let doc = json!({"state": {"reported": v["reported"]}});
    (id, Document::parse(doc.to_string().as_bytes()).unwrap())
}

/// A device id the replica accepts (no `/`, `+`, `#`) that is markup.
pub const HTML_ID: &str = "<img src=x onerror=alert(3)>";

/// `gw-00000` ..., `gw-evil`, whose failure's details hold markup, and [`HTML_ID`].
async fn seed(db: &Database) {
    let mut store = Store::open(db).await.unwrap();
    let mut docs: Vec<(String, Document)> = (0..DEVICES)
        .map(|i| {
            report(json!({"id": format!("gw-{i:05}"), "reported": {
                "groups": [if i % 2 == 0 { "north" } else { "south" }],
                "status": "completed", "installedUpdateId": "contoso/gw/1.0",
                "completedAt": 1_000}}))
        })
        .collect();
    docs.push(report(json!({"id": "gw-evil", "reported": {
        "groups": ["north"], "status": "failed", "state": 255, "failedAt": 2_000,
        "lastInstallResult": {"resultCode": 0, "extendedResultCodes": "B0100002",
            "resultDetails": "<script>alert(1)</script>",
            "stepResults": {"step_0": {"resultCode": 0, "extendedResultCodes": "B0100002",
                "resultDetails": "<img src=x onerror=alert(2)>"}}}}})));
    docs.push(report(
        json!({"id": HTML_ID, "reported": {"status": "completed"}}),
    ));
    store.merge_batch(&docs, 5_000).await.unwrap();
}

/// Starts the console over a fresh seeded SQLite store.
pub async fn start() -> Running {
    start_on(None).await
}

/// Starts the console over a fresh seeded store: the PostgreSQL at `url`, or a SQLite file.
pub async fn start_on(url: Option<&str>) -> Running {
    start_with(url, "").await
}

/// As [`start_on`], with `extra` config text (an `[mqtt]` table for a replica beside it).
pub async fn start_with(url: Option<&str>, extra: &str) -> Running {
    start_full(url, extra, "", &[]).await
}

/// As [`start_with`], with `console` lines in the `[console]` table and accounts (name, role)
/// that log in with a client certificate.
pub async fn start_full(
    url: Option<&str>,
    extra: &str,
    console: &str,
    certificate_accounts: &[(&str, &str)],
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (db, shadow) = match url {
        Some(u) => (
            Database::parse(u, Default::default()).unwrap(),
            format!("[shadow]\ndatabase = \"{u}\"\n"),
        ),
        None => (Database::Sqlite(data.join("shadow.sqlite")), String::new()),
    };
    seed(&db).await;
    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        format!("{extra}{shadow}[console]\nlisten = \"127.0.0.1:0\"\n{console}"),
    )
    .unwrap();
    add_account(&config, &data, "alice", "operator", Some("correct horse"));
    add_account(&config, &data, "victor", "viewer", Some("battery staple"));
    for (name, role) in certificate_accounts {
        add_account(&config, &data, name, role, None);
    }
    let mut cmd = fleet();
    cmd.arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .arg("console");
    let proc = Proc::spawn(cmd, dir.path().join("console.log"));
    proc.wait_for_output("console at https://");
    let out = proc.output();
    let url = out
        .split("console at ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    Running {
        dir,
        url,
        _proc: proc,
    }
}

/// `sandstep-fleet console add-user`: with a password, or `--certificate` without one.
pub fn add_account(config: &Path, data: &Path, name: &str, role: &str, password: Option<&str>) {
    let mut add = fleet();
    add.arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["console", "add-user", name, "--role", role])
        .args(password.is_none().then_some("--certificate"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut add = add.spawn().unwrap();
    use std::io::Write;
    writeln!(add.stdin.take().unwrap(), "{}", password.unwrap_or("")).unwrap();
    assert!(add.wait().unwrap().success(), "add-user {name}");
}

/// A browser-like client: cookies kept, redirects not followed, the self-signed certificate
/// accepted.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

pub async fn log_in(
    c: &reqwest::Client,
    url: &str,
    user: &str,
    password: &str,
) -> reqwest::Response {
    c.post(format!("{url}/login"))
        .form(&[("user", user), ("password", password)])
        .send()
        .await
        .unwrap()
}

pub async fn page(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The CSRF token a page's forms carry.
pub fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

/// A deployment document as `sandstep manifest sign` writes it (unsigned here: the console
/// only passes it on; devices check signatures).
pub fn deployment_file(dir: &Path) -> PathBuf {
    let manifest = json!({
        "manifestVersion": "5", "updateId": {"provider": "contoso", "name": "gw", "version": "2.0"},
        "compatibility": [{"model": "gw"}],
        "instructions": {"steps": [{"handler": "microsoft/script:1", "files": ["f"],
            "handlerProperties": {"scriptFileName": "f.sh", "installedCriteria": "2.0"}}]},
        "files": {"f": {"fileName": "f.sh", "sizeInBytes": 1,
            "hashes": {"sha256": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}},
        "createdDateTime": "2026-12-06T00:00:00Z"});
    let doc = json!({"workflow": {"action": 3, "id": "from-the-signer"},
        "updateManifest": manifest.to_string(),
        "fileUrls": {"f": "http://127.0.0.1:9/f.sh"}});
    let path = dir.join("deployment.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_logs_in_finds_a_device_among_ten_thousand_and_escapes_what_devices_report() {
    let con = start().await;
    let c = client();
    let url = &con.url;
    let r = c.get(format!("{url}/devices")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 303, "not logged in: to the login");
    assert_eq!(page(&c, &format!("{url}/devices/live")).await.0, 401);
    let r = log_in(&c, url, "alice", "wrong password").await;
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.text().await.unwrap().contains("wrong name or password"));
    let r = log_in(&c, url, "nobody", "correct horse").await;
    assert_eq!(r.status().as_u16(), 401);
    let r = log_in(&c, url, "alice", "correct horse").await;
    assert_eq!(r.status().as_u16(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("Secure; HttpOnly; SameSite=Strict"),
        "{cookie}"
    );

    let (status, html) = page(&c, &format!("{url}/devices")).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("10002 of 10002 device(s), page 1 of 201"),
        "{html}"
    );
    let (_, html) = page(&c, &format!("{url}/devices?q=gw-04242")).await;
    assert!(html.contains("1 of 10002 device(s)"), "{html}");
    assert!(html.contains("href=\"/devices/gw-04242\""), "{html}");
    let (_, html) = page(&c, &format!("{url}/devices?q=south&page=1")).await;
    assert!(
        html.contains("5000 of 10002 device(s), page 2 of 100"),
        "{html}"
    );
    assert!(
        html.contains(">gw-00101<"),
        "the second page starts at the 51st match"
    );

    let (_, html) = page(&c, &format!("{url}/devices/gw-evil")).await;
    assert!(
        html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{html}"
    );
    assert!(
        html.contains("&#60;img src=x onerror=alert(2)&#62;"),
        "{html}"
    );
    assert!(
        !html.contains("<script>alert") && !html.contains("<img src=x"),
        "{html}"
    );
    assert!(html.contains("<ol id=\"timeline\">"), "{html}");
    // A device id that is markup: text in the row, percent-encoded in its link, and its page.
    let (_, html) = page(&c, &format!("{url}/devices?q=onerror=alert(3)")).await;
    assert!(
        html.contains(">&#60;img src=x onerror=alert(3)&#62;</a>"),
        "{html}"
    );
    assert!(!html.contains("<img src=x"), "{html}");
    let link = "/devices/%3Cimg%20src%3Dx%20onerror%3Dalert%283%29%3E";
    assert!(html.contains(&format!("href=\"{link}\"")), "{html}");
    let (status, html) = page(&c, &format!("{url}{link}")).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("<h1>&#60;img src=x onerror=alert(3)&#62;</h1>"),
        "{html}"
    );
    assert_eq!(page(&c, &format!("{url}/devices/gw-none")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_starts_and_pauses_a_rollout_a_viewer_cannot_and_every_change_needs_csrf() {
    let con = start().await;
    let url = &con.url;
    let alice = client();
    log_in(&alice, url, "alice", "correct horse").await;
    let (_, html) = page(&alice, &format!("{url}/rollouts")).await;
    let csrf = csrf_of(&html);
    let file = std::fs::read(deployment_file(con.dir.path())).unwrap();
    let form = |token: &str| {
        reqwest::multipart::Form::new()
            .text("csrf", token.to_owned())
            .text("group", "north")
            .text("id", "ro-web")
            .text("phases", "50%,100%")
            .text("soak", "1h")
            .text("max_failure_rate", "")
            .part(
                "deployment",
                reqwest::multipart::Part::bytes(file.clone()).file_name("deployment.json"),
            )
    };
    let refused = alice
        .post(format!("{url}/rollouts"))
        .multipart(form("forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403, "a wrong CSRF token");
    let r = alice
        .post(format!("{url}/rollouts"))
        .multipart(form(&csrf))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303, "{}", r.text().await.unwrap());
    let (_, html) = page(&alice, &format!("{url}/rollouts/ro-web")).await;
    assert!(html.contains("<span id=\"state\">running</span>"), "{html}");
    assert!(html.contains("contoso/gw:2.0"), "{html}");

    let pause = |c: &reqwest::Client, token: String, origin: Option<&str>| {
        let mut req = c
            .post(format!("{url}/rollouts/ro-web/pause"))
            .form(&[("csrf", token)]);
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        req.send()
    };
    let foreign = pause(&alice, csrf.clone(), Some("https://evil.example"))
        .await
        .unwrap();
    assert_eq!(foreign.status().as_u16(), 403, "a cross-site request");
    assert_eq!(
        pause(&alice, String::new(), None)
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );

    let victor = client();
    log_in(&victor, url, "victor", "battery staple").await;
    let (_, html) = page(&victor, &format!("{url}/rollouts/ro-web")).await;
    assert!(
        !html.contains("id=\"pause\""),
        "no pause button for a viewer"
    );
    let r = pause(&victor, csrf_of(&html), None).await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().await.unwrap().contains("victor is a viewer"));

    let own_origin = url.clone();
    let r = pause(&alice, csrf.clone(), Some(&own_origin))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let (_, html) = page(&alice, &format!("{url}/rollouts/ro-web")).await;
    assert!(html.contains("<span id=\"state\">paused</span>"), "{html}");
    assert!(html.contains("console:alice"), "{html}");

    // The command line reads the same audit log.
    let out = fleet()
        .arg("--config")
        .arg(con.config())
        .arg("--data-dir")
        .arg(con.dir.path().join("data"))
        .args(["rollout", "status", "ro-web", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let log: Vec<(&str, &str)> = v["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["who"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        log,
        [
            ("console:alice", "rollout-pause"),
            ("console:alice", "rollout-create")
        ]
    );
}
