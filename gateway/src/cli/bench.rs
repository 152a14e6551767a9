//! `sandstep bench`: runs the benchmark suite and prints the figures (see BENCHMARKS.md).

use anyhow::{Context as _, Result};
use clap::Args;
use sandstep::bench;
use sandstep::trust::{handler_sig, TrustedHandlerKey};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Smaller sizes and fewer iterations (a couple of minutes).
    #[arg(long)]
    quick: bool,
    /// Where the built components are (scripts/build-components.sh).
    #[arg(long, default_value = "target/wasm")]
    wasm_dir: PathBuf,
    /// A broker for the agent-footprint figure (skipped without one).
    #[arg(long)]
    broker: Option<String>,
    /// The binary the package ships (built without the dev tools), for its size and the agent's
    /// idle memory; default: this one.
    #[arg(long)]
    package_bin: Option<PathBuf>,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Only these groups: sandbox (1, 2), data-path (3, 4), steps (5), size, agent (6), languages (8).
    /// Default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Handler components of the same template in each language, as rust.wasm, python.wasm and
    /// js.wasm (scripts/bench.sh builds them with `handler new` and `handler build`); group 8
    /// measures those present.
    #[arg(long)]
    lang_dir: Option<PathBuf>,
}

pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    let read = |name: &str| -> Result<Vec<u8>> {
        let p = args.wasm_dir.join(format!("{name}.wasm"));
        std::fs::read(&p)
            .with_context(|| format!("{} (run scripts/build-components.sh)", p.display()))
    };
    let kp = wasmsign2::KeyPair::generate();
    let keys = Keys {
        key: TrustedHandlerKey {
            name: "bench".into(),
            key: kp.pk.clone().attach_default_key_id(),
            scope: Vec::new(),
        },
        key_bytes: kp.pk.to_bytes(),
    };
    let sign = |b: Vec<u8>| handler_sig::sign(&b, &kp.sk, &kp.pk).expect("sign");
    let guests = Guests {
        probe: sign(read("probe")?),
        guest: sign(read("bench-guest")?),
        firmware: sign(read("firmware")?),
    };
    let q = args.quick;
    let mut all = serde_json::Map::new();
    println!("| benchmark | figure | target |");
    println!("|---|---|---|");
    let wanted = |g: &str| args.only.is_empty() || args.only.iter().any(|o| o == g);
    let package_bin = match &args.package_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    if wanted("sandbox") {
        sandbox_figures(&guests, &keys, q, &mut all).await?;
    }
    if wanted("data-path") {
        data_path_figures(&guests, &keys, q, &mut all).await?;
    }
    if wanted("steps") {
        step_figures(&guests, &keys, q, &mut all).await?;
    }
    if wanted("size") {
        binary_size(&package_bin, &mut all)?;
    }
    if let Some(dir) = args.lang_dir.as_deref().filter(|_| wanted("languages")) {
        language_figures(dir, &sign, &keys, q, &mut all).await?;
    }
    match &args.broker {
        Some(url) if wanted("agent") => agent_figures(url, &package_bin, &mut all),
        Some(_) => {}
        None => println!("| 6. agent idle RSS | skipped: no --broker | - |"),
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&all)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The signed components the benchmarks run.
struct Guests {
    probe: Vec<u8>,
    guest: Vec<u8>,
    firmware: Vec<u8>,
}

/// The key they are signed with, as the agent trusts it.
struct Keys {
    key: TrustedHandlerKey,
    key_bytes: Vec<u8>,
}

type Figures = serde_json::Map<String, serde_json::Value>;

/// 8: the same handler written in Rust, Python and JavaScript: size, install, call.
async fn language_figures(
    dir: &std::path::Path,
    sign: &dyn Fn(Vec<u8>) -> Vec<u8>,
    k: &Keys,
    q: bool,
    all: &mut Figures,
) -> Result<()> {
    let mut figures = serde_json::Map::new();
    for lang in ["rust", "python", "js"] {
        let path = dir.join(format!("{lang}.wasm"));
        let Ok(bytes) = std::fs::read(&path) else {
            println!("| 8. {lang} handler | skipped: no {} | - |", path.display());
            continue;
        };
        let f = bench::language(&sign(bytes), &k.key, &k.key_bytes, if q { 50 } else { 200 }).await;
        println!(
            "| 8. {lang} handler ({:.1} MB): install (compile) / call through the agent's loader | {} / {} | - |",
            f.component_bytes as f64 / 1e6,
            f.install,
            f.call
        );
        figures.insert(lang.into(), serde_json::to_value(&f)?);
    }
    all.insert("languages".into(), figures.into());
    Ok(())
}

/// 1 and 2: a handler call's cost, and a sandboxed computation against native code.
async fn sandbox_figures(g: &Guests, k: &Keys, q: bool, all: &mut Figures) -> Result<()> {
    let (guest, key) = (&g.guest, &k.key);
    let h = bench::handler_call(guest, key, &k.key_bytes, if q { 100 } else { 500 }).await;
    println!(
        "| 1. handler call, compile each time ({} B component) | {} | - |",
        h.component_bytes, h.compile_each_time
    );
    println!(
        "| 1. handler call, precompiled cache + signature check | {} | < 0.25 ms |",
        h.cached_with_signature
    );
    println!(
        "| 1. handler call, cache + pooling allocator + signature | {} | < 0.25 ms |",
        h.cached_pooling_with_signature
    );
    println!(
        "| 1. handler call through the agent's loader (verdict and component kept) | {} | < 0.2 ms |",
        h.agent_loader
    );
    println!(
        "| 1. handler call, compiled in memory + signature | {} | - |",
        h.in_memory_with_signature
    );
    println!(
        "| 1. signature check alone (share of the cached call) | {} ({:.0}%) | - |",
        h.signature_check, h.signature_share_percent
    );
    all.insert("handler_call".into(), serde_json::to_value(&h)?);

    let s = bench::sandbox_vs_native(guest, if q { 16 } else { 64 }, if q { 3 } else { 5 }).await;
    println!(
        "| 2. CRC-32 of {} MiB: native | {} | - |",
        s.payload_bytes >> 20,
        s.native
    );
    println!(
        "| 2. CRC-32 of {} MiB: sandboxed handler | {} | - |",
        s.payload_bytes >> 20,
        s.sandbox
    );
    println!("| 2. sandbox / native | {:.2}x | <= 1.5x |", s.ratio);
    all.insert("sandbox_vs_native".into(), serde_json::to_value(&s)?);

    Ok(())
}

/// 3, 4 and 5: sha256, the firmware path over HTTP, a 10-step manifest.
async fn data_path_figures(g: &Guests, k: &Keys, q: bool, all: &mut Figures) -> Result<()> {
    let (firmware, key, key_bytes) = (&g.firmware, &k.key, &k.key_bytes);
    let sh = bench::sha256_speed(if q { 256 } else { 1024 }).await;
    println!(
        "| 3. sha256 of {} MiB: sandstep / openssl | {:.0} / {:.0} MB/s = {:.2} | >= 0.9 |",
        sh.bytes >> 20,
        sh.sandstep_mb_s,
        sh.openssl_mb_s,
        sh.ratio
    );
    all.insert("sha256".into(), serde_json::to_value(&sh)?);

    // A gateway's cap is typically 100 KB/s to a few MB/s; 10 MB/s for 60 s (6 s quick).
    let cap = bench::bandwidth_cap(10_000_000, if q { 6 } else { 60 }).await;
    println!(
        "| 4b. download under a {} MB/s cap over {:.0} s: achieved vs cap, CPU | {:+.2} %, {:.1} % of a core | within 5 % |",
        cap.cap_bytes_per_sec / 1_000_000,
        cap.seconds,
        cap.deviation_percent,
        cap.cpu_percent
    );
    all.insert("bandwidth_cap".into(), serde_json::to_value(&cap)?);

    for mib in if q { vec![100] } else { vec![100, 1024] } {
        let f = bench::firmware_path(firmware, key, key_bytes, mib);
        println!(
            "| 4. firmware {} MiB over loopback HTTP: sandstep / curl | {:.0} / {:.0} MB/s = {:.2}, peak RSS {:.1} MiB | >= 0.8, < 64 MiB |",
            mib, f.sandstep_mb_s, f.curl_mb_s, f.ratio, f.sandstep_peak_rss_mib
        );
        println!(
            "| 4. firmware {} MiB: sandstep / (curl + fsync of the slot) | {:.0} / {:.0} MB/s = {:.2} | - |",
            mib, f.sandstep_mb_s, f.curl_fsync_mb_s, f.ratio_to_curl_fsync
        );
        println!(
            "| 4. firmware {} MiB: sandstep's time by stage (ms) | {} | - |",
            mib, f.breakdown
        );
        all.insert(format!("firmware_{mib}mib"), serde_json::to_value(&f)?);
    }

    Ok(())
}

/// 5: sandstep's own time per step of a 10-step manifest.
async fn step_figures(g: &Guests, k: &Keys, q: bool, all: &mut Figures) -> Result<()> {
    let m = bench::many_steps(&g.probe, &k.key, &k.key_bytes, if q { 3 } else { 10 }).await;
    println!("| 5. 10-step manifest, total | {} | - |", m.total);
    println!(
        "| 5. sandstep's overhead per step (journal fsyncs included) | {:.2} ms | < 2 ms |",
        m.overhead_per_step_ms
    );
    all.insert("ten_steps".into(), serde_json::to_value(&m)?);

    Ok(())
}

/// 6: the binary's size, as built and stripped.
fn binary_size(exe: &std::path::Path, all: &mut Figures) -> Result<()> {
    let size = std::fs::metadata(exe)?.len();
    let stripped = std::env::temp_dir().join(format!("sandstep-stripped-{}", std::process::id()));
    std::fs::copy(exe, &stripped)?;
    let strip_ok = std::process::Command::new("strip")
        .arg(&stripped)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let stripped_size = std::fs::metadata(&stripped)?.len();
    let _ = std::fs::remove_file(&stripped);
    println!(
        "| 6. gateway binary size: as built / stripped | {:.1} / {} MB | < 15 MB stripped |",
        size as f64 / 1e6,
        if strip_ok {
            format!("{:.1}", stripped_size as f64 / 1e6)
        } else {
            "(no strip)".into()
        }
    );
    all.insert(
        "binary_bytes".into(),
        serde_json::json!({"as_built": size, "stripped": stripped_size}),
    );
    Ok(())
}

/// 6: the agent's idle memory with a broker (the fleet figures, 7, are `sandstep-fleet bench`).
fn agent_figures(url: &str, exe: &std::path::Path, all: &mut Figures) {
    let rss = bench::agent_idle_rss(url, exe);
    println!("| 6. agent idle RSS, MQTT connected | {rss:.1} MiB | < 8 MiB |");
    all.insert("agent_idle_rss_mib".into(), serde_json::json!(rss));
}
