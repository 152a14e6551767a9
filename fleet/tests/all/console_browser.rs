//! The console in a real browser: Debian's headless chromium driven through chromium-driver
//! (WebDriver), against a console over PostgreSQL holding 10,002 devices, beside a real replica
//! on mosquitto. An operator logs in, finds a device, opens it, starts a rollout from a
//! deployment file (the replica deploys its first phase), sees one of its devices fail, as the
//! device reports it over MQTT, on the rollout's page and the device's without reloading, and
//! pauses the rollout; a result and a device id holding HTML show as text and run nothing; a
//! form another site submits changes nothing; a viewer gets no controls. Screenshots go to target/console-screenshots for a person to look at.

use crate::console::{deployment_file, start_with, Running, HTML_ID};
use fantoccini::{Client, ClientBuilder, Locator};
use sandstep_fleet::rollout::Rollout;
use sandstep_fleet::store::{Database, Store};
use sandstep_testkit::{free_port, prerequisite_missing, repo_root, Broker, Postgres, Proc};
use serde_json::json;
use std::time::Duration;

/// chromium-driver on a free port, and a headless chromium session through it.
async fn browser(dir: &std::path::Path) -> Option<(Proc, Client)> {
    if !std::path::Path::new("/usr/bin/chromedriver").exists() {
        prerequisite_missing("chromium-driver (Debian's chromium and chromium-driver packages)");
        return None;
    }
    let port = free_port();
    let mut cmd = std::process::Command::new("/usr/bin/chromedriver");
    cmd.arg(format!("--port={port}"));
    let driver = Proc::spawn(cmd, dir.join("chromedriver.log"));
    driver.wait_for_output("started successfully");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
            "--ignore-certificate-errors", "--window-size=1280,900",
            &format!("--user-data-dir={}", dir.join("profile").display())]}),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a chromium session");
    Some((driver, client))
}

/// Saves a screenshot as target/console-screenshots/NAME.png.
async fn screenshot(b: &Client, name: &str) {
    let dir = repo_root().join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = b.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn text_of(b: &Client, css: &str) -> String {
    let found = b
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await;
    match found {
        Ok(e) => e.text().await.unwrap(),
        Err(e) => {
            let page = b.source().await.unwrap_or_default();
            panic!("{css}: {e}; the page:\n{page}")
        }
    }
}

/// Waits until the element `css` says `want` (the page refreshing itself).
async fn until_text(b: &Client, css: &str, want: &str) {
    let t = std::time::Instant::now();
    loop {
        let now = match b.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if now == want {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{css} says `{now}`, not `{want}`"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn log_in(b: &Client, con: &Running, user: &str, password: &str) {
    b.goto(&format!("{}/login", con.url)).await.unwrap();
    b.find(Locator::Id("user"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    b.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    b.find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Logged in once the fleet page is there (going on sooner races the login's cookie).
    text_of(b, "#devices").await;
}

async fn click(b: &Client, id: &str) {
    b.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .click()
        .await
        .unwrap();
}

/// A device of rollout `id` the replica has deployed to.
async fn deployed_member(db: &Database, id: &str) -> String {
    let mut store = Store::open(db).await.unwrap();
    let t = std::time::Instant::now();
    loop {
        let (r, _): (Rollout, u64) = store.rollout(id).await.unwrap().unwrap();
        let members = store.members(&r).await.unwrap();
        if let Some(m) = members.iter().find(|m| m.deployed.is_some()) {
            return m.id.clone();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the replica deployed nothing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `device` reports over MQTT (the replica layout's update topic) that rollout `id` failed.
fn report_failure(broker: &Broker, device: &str, id: &str) {
    let report = json!({"state": {"reported": {
        "workflow": {"action": 3, "id": id}, "status": "failed", "state": 255,
        "failedAt": 9_000, "lastInstallResult": {"resultCode": 0,
            "extendedResultCodes": "B0100002", "resultDetails": "download failed",
            "stepResults": {}}}}});
    let sent = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
        .args([
            "-t",
            &format!("state/{device}/update"),
            "-m",
            &report.to_string(),
        ])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_browser_an_operator_finds_a_device_starts_a_rollout_sees_a_failure_live_and_pauses_it(
) {
    let Some(pg) = Postgres::start() else { return };
    let Some(broker) = Broker::start() else {
        return;
    };
    let mqtt = format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n", broker.port);
    let con = start_with(Some(&pg.url), &mqtt).await;
    let mut replica = fleet_cmd(&con);
    replica.arg("shadow");
    let _replica = Proc::spawn(replica, con.dir.path().join("replica.log"));
    let Some((_driver, b)) = browser(con.dir.path()).await else {
        return;
    };
    log_in(&b, &con, "alice", "correct horse").await;
    assert!(text_of(&b, ".count")
        .await
        .starts_with("10002 of 10002 device(s)"));
    screenshot(&b, "1-fleet").await;
    b.find(Locator::Id("q"))
        .await
        .unwrap()
        .send_keys("gw-04242")
        .await
        .unwrap();
    click(&b, "search").await;
    until_text(&b, ".count", "1 of 10002 device(s)").await;
    b.find(Locator::LinkText("gw-04242"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(text_of(&b, "#status").await, "completed");
    screenshot(&b, "2-device").await;

    // HTML a device reported is text on the page, and nothing of it runs.
    b.goto(&format!("{}/devices/gw-evil", con.url))
        .await
        .unwrap();
    let steps = text_of(&b, "#steps").await;
    assert!(steps.contains("<img src=x onerror=alert(2)>"), "{steps}");
    assert!(b.get_alert_text().await.is_err(), "no script ran");
    b.goto(&format!("{}/devices?q=onerror", con.url))
        .await
        .unwrap();
    until_text(&b, ".count", "1 of 10002 device(s)").await;
    b.find(Locator::LinkText(HTML_ID))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        text_of(&b, "h1").await,
        HTML_ID,
        "the id that is markup, as text"
    );
    assert!(b.get_alert_text().await.is_err(), "no script ran");
    screenshot(&b, "3-escaped").await;

    // A rollout from a deployment file signed elsewhere; the replica deploys its first phase.
    b.goto(&format!("{}/rollouts", con.url)).await.unwrap();
    let file = deployment_file(con.dir.path());
    b.find(Locator::Id("deployment"))
        .await
        .unwrap()
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    for (id, value) in [("group", "north"), ("rollout-id", "ro-browser")] {
        b.find(Locator::Id(id))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    click(&b, "start").await;
    until_text(&b, "#state", "running").await;
    let db = Database::parse(&pg.url, Default::default()).unwrap();
    let device = deployed_member(&db, "ro-browser").await;

    // One of its devices fails, reported over MQTT: the open page shows it without a reload.
    report_failure(&broker, &device, "ro-browser");
    until_text(
        &b,
        "#phases tbody tr:first-child .failures",
        "1 (0/B0100002)",
    )
    .await;
    screenshot(&b, "4-failed-live").await;
    click(&b, "pause").await;
    until_text(&b, "#state", "paused").await;
    assert!(text_of(&b, "#audit").await.contains("console:alice"));
    screenshot(&b, "5-paused").await;

    // Another site's page submits a form to abort it, in the same browser: refused (the
    // session cookie is SameSite=Strict, and the Origin and CSRF checks stand behind it).
    let attack = format!(
        "data:text/html,<form method=post action='{}/rollouts/ro-browser/abort'>\
         <input name=csrf value=guess></form><script>document.forms[0].submit()</script>",
        con.url
    );
    b.goto(&attack).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The form reached the console, which saw no session (the cookie stayed home) and sent
    // the browser to its login.
    let landed = b.current_url().await.unwrap();
    assert_eq!(landed.path(), "/login", "{landed}");
    b.goto(&format!("{}/rollouts/ro-browser", con.url))
        .await
        .unwrap();
    assert_eq!(text_of(&b, "#state").await, "paused", "not aborted");
    b.goto(&format!("{}/devices/{device}", con.url))
        .await
        .unwrap();
    assert_eq!(text_of(&b, "#status").await, "failed");

    // A viewer sees the rollout, without its controls.
    b.delete_all_cookies().await.unwrap();
    log_in(&b, &con, "victor", "battery staple").await;
    b.goto(&format!("{}/rollouts/ro-browser", con.url))
        .await
        .unwrap();
    assert_eq!(text_of(&b, "#state").await, "paused");
    assert!(b.find(Locator::Id("resume")).await.is_err(), "no controls");
    b.goto(&format!("{}/rollouts", con.url)).await.unwrap();
    text_of(&b, "#rollouts").await;
    assert!(b.find(Locator::Id("new-rollout")).await.is_err(), "no form");
    screenshot(&b, "6-viewer").await;
    b.close().await.unwrap();
}

/// `sandstep-fleet` with the console's config and data dir.
fn fleet_cmd(con: &Running) -> std::process::Command {
    let mut c = crate::fleet();
    c.arg("--config")
        .arg(con.config())
        .arg("--data-dir")
        .arg(con.dir.path().join("data"));
    c
}
