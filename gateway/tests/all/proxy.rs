//! Downloads through a real HTTP proxy: Debian's tinyproxy on loopback, with Basic
//! authentication, named by `[download] proxy` or by the agent's environment (`HTTP_PROXY`).

use crate::cli::{data_dir, ok, unsigned_run, write_manifest};
use crate::downloads::wanted;
use crate::http::TestServer;
use crate::workflow::stateful;
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use sandstep::download::{DownloadConfig, Downloader, Fetched, Source};
use sandstep_testkit::{free_port, Proc};
use serde_json::json;
use std::path::Path;
use std::process::Command;

const TINYPROXY: &str = "/usr/bin/tinyproxy";
const USER: &str = "sandstep";
const PASSWORD: &str = "s3cret";

/// A tinyproxy on a free loopback port that wants Basic authentication; its URL without
/// credentials.
fn tinyproxy(dir: &Path) -> Option<(Proc, String)> {
    if !Path::new(TINYPROXY).exists() {
        sandstep_testkit::prerequisite_missing("tinyproxy (apt-get install tinyproxy)");
        return None;
    }
    let port = free_port();
    let conf = dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\n\
             BasicAuth {USER} {PASSWORD}\nLogLevel Info\nMaxClients 20\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(TINYPROXY);
    cmd.arg("-d").arg("-c").arg(&conf);
    let p = Proc::spawn(cmd, dir.join("tinyproxy.log"));
    p.wait_for_output("Accepting connections");
    Some((p, format!("http://127.0.0.1:{port}")))
}

fn with_credentials(url: &str, password: &str) -> String {
    url.replacen("http://", &format!("http://{USER}:{password}@"), 1)
}

fn downloader(dir: &Path, proxy: String) -> Downloader {
    let handle = Dir::open_ambient_dir(dir, ambient_authority()).unwrap();
    let config = DownloadConfig {
        attempts: 2,
        initial_backoff_ms: 10,
        proxy: Some(proxy),
        ..DownloadConfig::default()
    };
    Downloader::new(handle, config).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_goes_through_the_configured_authenticated_proxy_and_a_wrong_password_fails() {
    let t = tempfile::tempdir().unwrap();
    let Some((proxy, url)) = tinyproxy(t.path()) else {
        return;
    };
    let server = TestServer::start();
    let bytes = vec![7u8; 100_000];
    server.put("fw.bin", &bytes);
    let w = wanted("fw.bin", &bytes);

    let store = tempfile::tempdir().unwrap();
    let d = downloader(store.path(), with_credentials(&url, PASSWORD));
    let r = d
        .fetch(&w, Source::Url(&server.url("fw.bin")), &|_, _| {})
        .await;
    assert_eq!(r.unwrap(), Fetched::Downloaded { bytes: 100_000 });
    let through = format!("opening connection to 127.0.0.1:{}", server.port());
    assert!(proxy.output().contains(&through), "{}", proxy.output());

    let store = tempfile::tempdir().unwrap();
    let d = downloader(store.path(), with_credentials(&url, "wrong"));
    let e = d
        .fetch(&w, Source::Url(&server.url("fw.bin")), &|_, _| {})
        .await
        .unwrap_err()
        .to_string();
    // tinyproxy refuses with 401 (a proxy should send 407); either way the message names it.
    assert!(
        e.contains(&format!("through the proxy http://{USER}:***@127.0.0.1"))
            && e.contains("refused its credentials")
            && !e.contains("wrong"),
        "the proxy's refusal is named, the password is not: {e}"
    );
    assert!(!store.path().join(w.key()).exists(), "nothing stored");
}

/// No `[download] proxy`: the agent's environment names the proxy, as for any program.
#[test]
fn a_deployment_downloads_through_the_proxy_the_environment_names() {
    let t = tempfile::tempdir().unwrap();
    let Some((proxy, url)) = tinyproxy(t.path()) else {
        return;
    };
    let data = data_dir();
    let server = TestServer::start();
    let m = write_manifest(
        t.path(),
        vec![stateful("p", json!({}), &["f.txt"])],
        &[("f.txt", b"through the proxy")],
    );
    server.put("f.txt", b"through the proxy");
    ok(&unsigned_run(&m, server.base(), data.path())
        .env("HTTP_PROXY", with_credentials(&url, PASSWORD))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap());
    let through = format!("opening connection to 127.0.0.1:{}", server.port());
    assert!(proxy.output().contains(&through), "{}", proxy.output());
}

/// `sandstep doctor` says which proxy applies and whether it answers, never its password.
#[test]
fn doctor_checks_the_configured_proxy_without_showing_its_password() {
    let t = tempfile::tempdir().unwrap();
    let Some((_proxy, url)) = tinyproxy(t.path()) else {
        return;
    };
    let doctor = |proxy: &str| {
        let config = t.path().join("c.toml");
        std::fs::write(&config, format!("[download]\nproxy = \"{proxy}\"\n")).unwrap();
        let out = crate::cli::sandstep()
            .arg("doctor")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(t.path().join("data"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let up = doctor(&with_credentials(&url, PASSWORD));
    assert!(up.contains("accepts connections"), "{up}");
    assert!(!up.contains(PASSWORD), "{up}");
    let down = doctor(&format!("http://127.0.0.1:{}", free_port()));
    assert!(
        down.contains("download proxy") && down.contains("refused"),
        "{down}"
    );
}
