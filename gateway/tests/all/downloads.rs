//! Downloads against a real HTTP server on loopback that misbehaves on demand.

use crate::http::{Behavior, TestServer};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use sandstep::download::{DownloadConfig, DownloadError, Downloader, Fetched, Source, Wanted};
use sandstep_model::codes::erc;
use sha2::{Digest, Sha256};

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

/// The `Wanted` of a file with these bytes (the proxy tests' too).
pub(crate) fn wanted(name: &str, bytes: &[u8]) -> Wanted {
    Wanted {
        id: name.into(),
        file_name: name.into(),
        size: bytes.len() as u64,
        sha256: Sha256::digest(bytes).into(),
        download_handler: None,
    }
}

struct Store {
    dir: tempfile::TempDir,
    downloader: Downloader,
}

fn store() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let handle = Dir::open_ambient_dir(dir.path(), ambient_authority()).unwrap();
    let config = DownloadConfig {
        attempts: 4,
        initial_backoff_ms: 10,
        max_backoff_ms: 50,
        stall_timeout_secs: 1,
        ..DownloadConfig::default()
    };
    Store {
        downloader: Downloader::new(handle, config).unwrap(),
        dir,
    }
}

impl Store {
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
}

async fn fetch(s: &Store, w: &Wanted, url: &str) -> Result<Fetched, DownloadError> {
    s.downloader.fetch(w, Source::Url(url), &|_, _| {}).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_is_fetched_verified_and_stored_by_digest() {
    let server = TestServer::start();
    let bytes = payload(300_000);
    server.put("fw.bin", &bytes);
    let s = store();
    let w = wanted("fw.bin", &bytes);
    let r = fetch(&s, &w, &server.url("fw.bin")).await.unwrap();
    assert_eq!(r, Fetched::Downloaded { bytes: 300_000 });
    assert_eq!(s.names(), vec![w.key()]);
    assert_eq!(std::fs::read(s.dir.path().join(w.key())).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_already_present_is_not_fetched_again() {
    let server = TestServer::start();
    let bytes = payload(1000);
    server.put("a.bin", &bytes);
    let s = store();
    let w = wanted("a.bin", &bytes);
    fetch(&s, &w, &server.url("a.bin")).await.unwrap();
    let again = fetch(&s, &w, &server.url("a.bin")).await.unwrap();
    assert_eq!(again, Fetched::AlreadyPresent);
    assert_eq!(server.requests("a.bin").len(), 1, "no second request");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_stored_copy_is_fetched_again() {
    let server = TestServer::start();
    let bytes = payload(1000);
    server.put("a.bin", &bytes);
    let s = store();
    let w = wanted("a.bin", &bytes);
    fetch(&s, &w, &server.url("a.bin")).await.unwrap();
    std::fs::write(s.dir.path().join(w.key()), b"rot").unwrap();
    let again = fetch(&s, &w, &server.url("a.bin")).await.unwrap();
    assert_eq!(again, Fetched::Downloaded { bytes: 1000 });
    assert_eq!(std::fs::read(s.dir.path().join(w.key())).unwrap(), bytes);
}

/// A partial file torn by a crash (its start garbled) is resumed, fails its hash, and is fetched
/// again from the start, once, instead of failing the step.
#[tokio::test(flavor = "multi_thread")]
async fn a_torn_partial_file_is_fetched_again_from_the_start() {
    let server = TestServer::start();
    let bytes = payload(100_000);
    server.put("t.bin", &bytes);
    let s = store();
    let w = wanted("t.bin", &bytes);
    let mut torn = bytes[..60_000].to_vec();
    torn[..4096].fill(0);
    std::fs::write(s.dir.path().join(format!("{}.partial", w.key())), &torn).unwrap();
    let r = fetch(&s, &w, &server.url("t.bin")).await.unwrap();
    assert_eq!(r, Fetched::Downloaded { bytes: 100_000 });
    assert_eq!(server.requests("t.bin"), vec![Some(60_000), None]);
    assert_eq!(std::fs::read(s.dir.path().join(w.key())).unwrap(), bytes);
}

/// A partial file holding every byte (the agent was stopped after the last byte, before the
/// rename) is checked and kept without asking the server again; one that holds every byte but
/// fails its hash is fetched again from the start.
#[tokio::test(flavor = "multi_thread")]
async fn a_complete_partial_file_is_finished_without_a_request_and_a_wrong_one_fetched_again() {
    let server = TestServer::start();
    let bytes = payload(100_000);
    server.put("c.bin", &bytes);
    let s = store();
    let w = wanted("c.bin", &bytes);
    let partial = s.dir.path().join(format!("{}.partial", w.key()));
    std::fs::write(&partial, &bytes).unwrap();
    let r = fetch(&s, &w, &server.url("c.bin")).await.unwrap();
    assert_eq!(r, Fetched::Downloaded { bytes: 0 });
    assert!(server.requests("c.bin").is_empty());
    assert_eq!(s.names(), vec![w.key()]);

    std::fs::remove_file(s.dir.path().join(w.key())).unwrap();
    let mut wrong = bytes.clone();
    wrong[99_999] ^= 1;
    std::fs::write(&partial, &wrong).unwrap();
    let r = fetch(&s, &w, &server.url("c.bin")).await.unwrap();
    assert_eq!(r, Fetched::Downloaded { bytes: 100_000 });
    assert_eq!(server.requests("c.bin"), vec![None]);
    assert_eq!(std::fs::read(s.dir.path().join(w.key())).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_connection_is_resumed_with_a_range_request() {
    let server = TestServer::start();
    let bytes = payload(200_000);
    server.put("big.bin", &bytes);
    server.behave(
        "big.bin",
        Behavior {
            drop_first: Some((2, 50_000)),
            ..Behavior::default()
        },
    );
    let s = store();
    let w = wanted("big.bin", &bytes);
    let r = fetch(&s, &w, &server.url("big.bin")).await.unwrap();
    assert_eq!(
        server.requests("big.bin"),
        vec![None, Some(50_000), Some(100_000)]
    );
    assert_eq!(
        r,
        Fetched::Downloaded { bytes: 100_000 },
        "the last attempt transferred the rest"
    );
    assert_eq!(std::fs::read(s.dir.path().join(w.key())).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_bytes_fail_with_the_hash_mismatch_code_and_leave_nothing() {
    let server = TestServer::start();
    let bytes = payload(10_000);
    server.put("fw.bin", &bytes);
    server.behave(
        "fw.bin",
        Behavior {
            wrong_bytes: true,
            ..Behavior::default()
        },
    );
    let s = store();
    let w = wanted("fw.bin", &bytes);
    let err = fetch(&s, &w, &server.url("fw.bin")).await.unwrap_err();
    assert_eq!(err.erc(), erc::FILE_HASH_MISMATCH);
    assert_eq!(err.erc().raw(), 0x4000_000C);
    assert!(
        err.to_string().starts_with(&format!(
            "`fw.bin`: sha256 mismatch (expected {}, got ",
            w.key()
        )),
        "{err}"
    );
    assert!(
        err.to_string().ends_with("); the partial file was deleted"),
        "{err}"
    );
    assert!(s.names().is_empty(), "partial deleted: {:?}", s.names());
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_are_retried_with_backoff() {
    let server = TestServer::start();
    let bytes = payload(5000);
    server.put("a.bin", &bytes);
    server.behave(
        "a.bin",
        Behavior {
            fail_first: 2,
            ..Behavior::default()
        },
    );
    let s = store();
    let w = wanted("a.bin", &bytes);
    fetch(&s, &w, &server.url("a.bin")).await.unwrap();
    assert_eq!(server.requests("a.bin").len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_give_up_after_the_configured_attempts() {
    let server = TestServer::start();
    let bytes = payload(5000);
    server.put("a.bin", &bytes);
    server.behave(
        "a.bin",
        Behavior {
            fail_first: 100,
            ..Behavior::default()
        },
    );
    let s = store();
    let w = wanted("a.bin", &bytes);
    let err = fetch(&s, &w, &server.url("a.bin")).await.unwrap_err();
    assert_eq!(server.requests("a.bin").len(), 4);
    assert_eq!(
        err.to_string(),
        format!(
            "`a.bin`: {}: gave up after 4 attempts: HTTP 500",
            server.url("a.bin")
        )
    );
    assert_eq!(err.erc(), erc::WORKFLOW_DOWNLOAD_FAILED);
}

#[tokio::test(flavor = "multi_thread")]
async fn not_found_fails_at_once_naming_the_file() {
    let server = TestServer::start();
    let s = store();
    let w = wanted("missing.bin", b"x");
    let err = fetch(&s, &w, &server.url("missing.bin")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "`missing.bin`: {} answered HTTP 404",
            server.url("missing.bin")
        )
    );
    assert_eq!(server.requests("missing.bin").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn more_bytes_than_size_in_bytes_are_refused() {
    let server = TestServer::start();
    let bytes = payload(4000);
    server.put("a.bin", &bytes);
    server.behave(
        "a.bin",
        Behavior {
            extra_bytes: 100,
            ..Behavior::default()
        },
    );
    let s = store();
    let w = wanted("a.bin", &bytes);
    let err = fetch(&s, &w, &server.url("a.bin")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "`a.bin`: size mismatch: the manifest says 4000 bytes, the source gave 4100"
    );
    assert_eq!(err.erc(), erc::WORKFLOW_FILE_SIZE_MISMATCH);
    assert!(s.names().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_content_length_bigger_than_size_in_bytes_is_refused_before_reading() {
    let server = TestServer::start();
    let bytes = payload(4000);
    server.put("a.bin", &bytes);
    server.behave(
        "a.bin",
        Behavior {
            lie_length: Some(1 << 40),
            ..Behavior::default()
        },
    );
    let s = store();
    let err = fetch(&s, &wanted("a.bin", &bytes), &server.url("a.bin"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "`a.bin`: size mismatch: the manifest says 4000 bytes, the source gave {}",
            1u64 << 40
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_transfer_is_retried() {
    let server = TestServer::start();
    let bytes = payload(4000);
    server.put("a.bin", &bytes);
    server.behave(
        "a.bin",
        Behavior {
            stall_first: Some(std::time::Duration::from_secs(3)),
            ..Behavior::default()
        },
    );
    let s = store();
    let w = wanted("a.bin", &bytes);
    fetch(&s, &w, &server.url("a.bin")).await.unwrap();
    assert_eq!(server.requests("a.bin").len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn local_directories_and_file_urls_are_sources_too() {
    let src = tempfile::tempdir().unwrap();
    let bytes = payload(777);
    std::fs::write(src.path().join("cfg.json"), &bytes).unwrap();
    let s = store();
    let w = wanted("cfg.json", &bytes);
    let dir = Dir::open_ambient_dir(src.path(), ambient_authority()).unwrap();
    let r = s
        .downloader
        .fetch(&w, Source::Directory(&dir), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(r, Fetched::Downloaded { bytes: 777 });

    let s2 = store();
    let url = format!("file://{}", src.path().join("cfg.json").display());
    assert_eq!(
        fetch(&s2, &w, &url).await.unwrap(),
        Fetched::Downloaded { bytes: 777 }
    );

    let wrong = wanted("cfg.json", b"something else");
    let err = s
        .downloader
        .fetch(&wrong, Source::Directory(&dir), &|_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, DownloadError::SizeMismatch { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_or_a_device_named_as_a_local_payload_is_refused_without_blocking() {
    // Opened non-blocking and only when regular: a FIFO would otherwise hold the agent for good.
    let src = tempfile::tempdir().unwrap();
    let fifo = src.path().join("cfg.json");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let s = store();
    let w = wanted("cfg.json", b"whatever");
    let dir = Dir::open_ambient_dir(src.path(), ambient_authority()).unwrap();
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.downloader.fetch(&w, Source::Directory(&dir), &|_, _| {}),
    )
    .await
    .expect("refused at once, not blocked")
    .unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        fetch(&s, &w, "file:///dev/tty"),
    )
    .await
    .expect("refused at once, not blocked")
    .unwrap_err();
    assert!(err.to_string().contains("file:///dev/tty"), "{err}");
}

fn capped_store(bytes_per_sec: u64) -> Store {
    let dir = tempfile::tempdir().unwrap();
    let handle = Dir::open_ambient_dir(dir.path(), ambient_authority()).unwrap();
    let config = DownloadConfig {
        max_bytes_per_sec: Some(bytes_per_sec),
        ..DownloadConfig::default()
    };
    Store {
        downloader: Downloader::new(handle, config).unwrap(),
        dir,
    }
}

/// The cap can only slow a transfer, so its effect is pinned by a lower bound on the time taken
/// (a loaded machine makes it slower still, never faster): two files fetched at once share one
/// cap of 200 KB/s, 600 KB in all, less the 50 KB burst, take at least 2.75 s. How close to the
/// cap downloads run is a benchmark (BENCHMARKS.md), not a test.
#[tokio::test(flavor = "multi_thread")]
async fn the_bandwidth_cap_holds_for_all_transfers_together() {
    let server = TestServer::start();
    let (a, b) = (payload(300_000), payload(300_001));
    server.put("a.bin", &a);
    server.put("b.bin", &b);
    let s = capped_store(200_000);
    let (wa, wb) = (wanted("a.bin", &a), wanted("b.bin", &b));
    let (ua, ub) = (server.url("a.bin"), server.url("b.bin"));
    let started = std::time::Instant::now();
    let (ra, rb) = tokio::join!(fetch(&s, &wa, &ua), fetch(&s, &wb, &ub));
    let took = started.elapsed();
    assert_eq!(ra.unwrap(), Fetched::Downloaded { bytes: 300_000 });
    assert_eq!(rb.unwrap(), Fetched::Downloaded { bytes: 300_001 });
    assert!(
        took >= std::time::Duration::from_millis(2_700),
        "600 KB under a 200 KB/s cap took only {took:?}"
    );
}

/// A transfer under way when its download window closes stops, keeps what it has, and goes on
/// with a Range request from there when the next window opens; the wait is told once, with
/// the opening, and is not counted as a failed attempt.
#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_pauses_when_its_window_closes_and_resumes_from_there_when_it_opens() {
    use sandstep::download::pace::Pace;
    use sandstep::window::Clock;
    use sandstep_model::window::Schedule;
    use std::sync::{Arc, Mutex};
    let server = TestServer::start();
    // Open for 2-3 more seconds, then closed for at least 1. At the deployment's cap of
    // 200 KB/s, at most 650 KB (3 s and the cap's quarter-second burst) plus one read of the
    // HTTP stack (< 420 KB: hyper's largest read buffer) arrive before the close, so 1.2 MB
    // cannot be complete when it comes.
    let a = payload(1_200_000);
    server.put("a.bin", &a);
    let s = store();
    let windows = [
        crate::support::utc_window(-10, 3),
        crate::support::utc_window(5, 3600),
    ];
    let schedule = Schedule::parse(&windows).unwrap();
    let told: Arc<Mutex<Vec<String>>> = Arc::default();
    let t = told.clone();
    let pace = Pace::new(
        Clock::utc(),
        vec![schedule],
        Some(200_000),
        tokio_util::sync::CancellationToken::new(),
        Box::new(move |m| t.lock().unwrap().push(m.shown.clone())),
    );
    let _paced = s.downloader.paced(Arc::new(pace));
    let started = std::time::Instant::now();
    let r = fetch(&s, &wanted("a.bin", &a), &server.url("a.bin")).await;
    let took = started.elapsed();
    assert!(matches!(r, Ok(Fetched::Downloaded { .. })), "{r:?}");
    let requests = server.requests("a.bin");
    assert_eq!(requests.len(), 2, "one pause, one resume: {requests:?}");
    assert_eq!(requests[0], None);
    let resumed_at = requests[1].expect("resumed with a Range request");
    assert!((1..1_200_000).contains(&resumed_at), "{requests:?}");
    assert!(took >= std::time::Duration::from_millis(3_900), "{took:?}");
    let told = told.lock().unwrap();
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(told[0].ends_with(" UTC"), "{told:?}");
    assert_eq!(s.names(), vec![hex::encode(Sha256::digest(&a))]);
}
