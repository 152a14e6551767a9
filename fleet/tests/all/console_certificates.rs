//! Logging in to the console with a client certificate: accounts marked `certificate` (`console
//! add-user --certificate`), a `[console] client-ca` (a CA made by openssl, scripts/test-ca.sh),
//! and a real TLS client (rustls through reqwest) presenting certificates it issued and one it
//! did not. The password login goes on beside it.

use crate::console::{add_account, log_in, page, start_full};
use crate::fleet;
use sandstep_fleet::store::{Database, Store};
use std::path::Path;

/// A client presenting `identity` (certificate and key, PEM) and trusting only `ca`, cookies
/// kept, redirects not followed.
fn client_with(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let mut b = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .tls_built_in_root_certs(false)
        .add_root_certificate(root);
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).unwrap();
        pem.extend(std::fs::read(key).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_account_logs_in_with_its_client_certificate_and_no_other_way() {
    let certs = tempfile::tempdir().unwrap();
    let ca_dir = certs.path().join("ca");
    let other_dir = certs.path().join("other");
    // ops-bot (a certificate account), alice (a password account), nobody (no account).
    sandstep_testkit::test_ca_with(&ca_dir, &["ops-bot", "alice", "nobody"]);
    sandstep_testkit::test_ca_with(&other_dir, &["ops-bot"]);
    let console = format!(
        "cert = \"{0}/server.pem\"\nkey = \"{0}/server.key\"\nclient-ca = \"{0}/ca.pem\"\n",
        ca_dir.display()
    );
    let con = start_full(None, "", &console, &[("ops-bot", "viewer")]).await;
    let url = con.url.clone();
    let ca = ca_dir.join("ca.pem");
    let cert_of = |dir: &Path, file: &str| {
        (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        )
    };

    // The certificate logs ops-bot in: the login page starts its session and sends it on.
    let (cert, key) = cert_of(&ca_dir, "client");
    let bot = client_with(&ca, Some((&cert, &key)));
    assert_eq!(page(&bot, &format!("{url}/devices")).await.0, 303);
    let r = bot.get(format!("{url}/login")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 303, "logged in at once");
    assert_eq!(r.headers()["location"], "/devices");
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("Secure; HttpOnly; SameSite=Strict"),
        "{cookie}"
    );
    let (status, html) = page(&bot, &format!("{url}/devices")).await;
    assert_eq!(status, 200);
    assert!(html.contains("ops-bot (viewer)"), "{html}");
    // It has no password to guess: the password form never logs it in.
    let plain = client_with(&ca, None);
    for password in ["certificate", "", "correct horse"] {
        let r = log_in(&plain, &url, "ops-bot", password).await;
        assert_eq!(r.status().as_u16(), 401, "{password:?}");
    }

    // A certificate naming a password account, or no account, logs nobody in and says why.
    for file in ["client-alice", "client-nobody"] {
        let (cert, key) = cert_of(&ca_dir, file);
        let c = client_with(&ca, Some((&cert, &key)));
        let (status, html) = page(&c, &format!("{url}/login")).await;
        assert_eq!(status, 200, "{file}: the login form");
        let name = file.trim_start_matches("client-");
        assert!(
            html.contains(&format!("name `{name}` is no certificate account")),
            "{file}: {html}"
        );
        assert_eq!(page(&c, &format!("{url}/devices")).await.0, 303, "{file}");
    }
    // Without a certificate, the password login is as before.
    let r = log_in(&plain, &url, "alice", "correct horse").await;
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(page(&plain, &format!("{url}/devices")).await.0, 200);

    // A certificate for the same name from another CA ends the handshake.
    let (cert, key) = cert_of(&other_dir, "client");
    let forged = client_with(&ca, Some((&cert, &key)));
    let e = forged.get(format!("{url}/login")).send().await;
    assert!(
        e.is_err(),
        "a certificate the client-ca did not issue: {e:?}"
    );

    // The audit log has how each logged in.
    let db = Database::Sqlite(con.dir.path().join("data/shadow.sqlite"));
    let audit = Store::open(&db)
        .await
        .unwrap()
        .audit(None, 10)
        .await
        .unwrap();
    let logins: Vec<(&str, &str)> = audit
        .iter()
        .filter(|e| e.action == "login")
        .map(|e| (e.who.as_str(), e.detail.as_str()))
        .collect();
    assert_eq!(
        logins,
        [
            ("console:alice", "operator (password)"),
            ("console:ops-bot", "viewer (client certificate)")
        ]
    );
}

#[test]
fn a_certificate_account_without_a_client_ca_or_a_bad_client_ca_stops_the_console_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = dir.path().join("fleet.toml");
    let accounts = data.join("console-accounts");
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    for (console, says) in [
        (
            String::new(),
            format!(
                "{} has accounts that log in with a certificate, but [console] client-ca is not set",
                accounts.display()
            ),
        ),
        (
            format!("client-ca = \"{}\"\n", not_pem.display()),
            format!("{}: no certificate in it", not_pem.display()),
        ),
        (
            "client-ca = \"/nonexistent/ca.pem\"\n".into(),
            "/nonexistent/ca.pem: No such file".into(),
        ),
    ] {
        std::fs::write(
            &config,
            format!("[console]\nlisten = \"127.0.0.1:0\"\n{console}"),
        )
        .unwrap();
        add_account(&config, &data, "ops-bot", "operator", None);
        let out = fleet()
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .arg("console")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{console}");
        assert!(stderr.contains(&says), "{console}: {stderr}");
    }
}
