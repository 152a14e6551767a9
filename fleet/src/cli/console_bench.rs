//! `sandstep-fleet console-bench` (dev tools): the console's figures for BENCHMARKS.md (group
//! 7b): time to first byte and to fully loaded (the page, then its stylesheet and script, as a
//! browser fetches them) of the fleet page, a search, a deep page and a device's page at
//! 10,000 devices, and the console process's memory. The console runs as its own process
//! (`sandstep-fleet console`) over a SQLite store seeded here.

use super::common::Common;
use anyhow::{bail, Context as _, Result};
use clap::Args;
use sandstep_fleet::console::accounts::{Accounts, Role};
use sandstep_fleet::store::{Database, Store};
use sandstep_model::shadow::Document;
use serde_json::json;
use std::io::BufRead;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

/// `sandstep-fleet console-bench` options.
#[derive(Debug, Args)]
pub struct ConsoleBenchArgs {
    /// Devices in the store.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Requests per page measured.
    #[arg(long, default_value_t = 30)]
    runs: usize,
}

/// The store seeded with `n` devices in two groups.
async fn seed(db: &Database, n: usize) -> Result<()> {
    let mut store = Store::open(db).await?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let docs: Vec<(String, Document)> = chunk
            .iter()
            .map(|i| {
                let doc = json!({"state": {"reported": {
                    "groups": [if i % 2 == 0 { "north" } else { "south" }],
                    "status": "completed", "installedUpdateId": "contoso/gw:1.0",
                    "completedAt": 1_000}}});
                let parsed = Document::parse(doc.to_string().as_bytes()).expect("a report");
                (format!("gw-{i:05}"), parsed)
            })
            .collect();
        store.merge_batch(&docs, 5_000).await?;
    }
    Ok(())
}

/// Median and 95th percentile, in milliseconds.
fn spread(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95))
}

/// The console process's resident and peak memory, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// `sandstep-fleet console-bench`.
pub async fn run(args: ConsoleBenchArgs, _common: &Common) -> Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    seed(&Database::Sqlite(data.join("shadow.sqlite")), args.devices).await?;
    Accounts::add(
        &data.join("console-accounts"),
        "bench",
        Role::Viewer,
        Some("bench password"),
    )?;
    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, "[console]\nlisten = \"127.0.0.1:0\"\n")?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .arg("console")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("console stdout")?).read_line(&mut line)?;
    let Some(url) = line
        .strip_prefix("console at ")
        .and_then(|s| s.split_whitespace().next())
    else {
        let _ = child.kill();
        bail!("the console did not start: {line}");
    };
    let url = url.trim_end_matches('/').to_owned();
    let result = measure(&url, &args, child.id()).await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

async fn measure(url: &str, args: &ConsoleBenchArgs, pid: u32) -> Result<ExitCode> {
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .danger_accept_invalid_certs(true)
        .build()?;
    let login = c
        .post(format!("{url}/login"))
        .form(&[("user", "bench"), ("password", "bench password")])
        .send()
        .await?;
    if !login.status().is_success() {
        bail!("logging in: HTTP {}", login.status());
    }
    // What is measured is the page itself, not a redirect to the login.
    let fleet = c.get(format!("{url}/devices")).send().await?.text().await?;
    let all = format!("{n} of {n} device(s)", n = args.devices);
    if !fleet.contains(&all) {
        bail!("the fleet page does not show {all}");
    }
    println!(
        "| 7b. console, {} devices | first byte (median / p95) | fully loaded (median / p95) |",
        args.devices
    );
    println!("|---|---|---|");
    let last_page = args.devices / 50;
    for (what, path) in [
        ("fleet page", "/devices".to_owned()),
        (
            "search, one match",
            format!("/devices?q=gw-{:05}", args.devices - 1),
        ),
        ("search, half the fleet", "/devices?q=south".to_owned()),
        ("last page", format!("/devices?page={last_page}")),
        ("a device's page", "/devices/gw-00042".to_owned()),
    ] {
        let (mut first, mut full) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            let t = Instant::now();
            let resp = c.get(format!("{url}{path}")).send().await?;
            first.push(t.elapsed().as_secs_f64() * 1000.0);
            if !resp.status().is_success() {
                bail!("{path}: HTTP {}", resp.status());
            }
            resp.bytes().await?;
            for asset in ["/static/console.css", "/static/live.js"] {
                c.get(format!("{url}{asset}")).send().await?.bytes().await?;
            }
            full.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let ((f50, f95), (l50, l95)) = (spread(first), spread(full));
        println!("| {what} | {f50:.1} / {f95:.1} ms | {l50:.1} / {l95:.1} ms |");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (rss, peak) = memory(pid);
    println!("| console memory | {rss:.1} MiB resident | {peak:.1} MiB peak |");
    Ok(ExitCode::SUCCESS)
}
