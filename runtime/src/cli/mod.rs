//! Command-line interface: argument parsing, logging set-up, and one module per command group.

#[cfg(feature = "dev-tools")]
mod bench;
mod common;
mod deployment;
mod dev;
mod doctor;
mod firmware;
mod fleet;
mod handler;
mod handler_kit;
mod key;
mod manifest;
mod manifest_authoring;
mod rollout;
mod run;
mod step;
mod trust;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// sandstep: run multi-step update manifests in sandboxed WebAssembly handlers.
#[derive(Debug, Parser)]
#[command(name = "sandstep", version, about)]
struct Cli {
    /// Log filter (tracing env-filter syntax); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(flatten)]
    common: common::Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a deployment (an update manifest, or a deployment document) on this machine.
    Run(run::RunArgs),
    /// Manage, sign and verify handlers.
    #[command(subcommand)]
    Handler(handler::HandlerCommand),
    /// Generate signing keys.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Write, convert and sign manifests.
    #[command(subcommand)]
    Manifest(manifest::ManifestCommand),
    /// Firmware images: block indexes for updates that fetch only what changed.
    #[command(subcommand)]
    Firmware(firmware::FirmwareCommand),
    /// Manage trusted keys.
    #[command(subcommand)]
    Trust(trust::TrustCommand),
    /// The gateway agent: desired state over MQTT (or HTTP polling) in, reported state out.
    Agent,
    /// The device-state replica (software-update pattern): stores shadows, publishes deltas.
    Shadow,
    /// Publish a signed deployment as desired state for devices or a group.
    Deploy(fleet::DeployArgs),
    /// Show the devices' state, progress and last results (from the replica's shadows), or a
    /// rollout's phases (`--rollout ID`).
    Status(fleet::StatusArgs),
    /// Phased rollouts to a group that stop themselves when devices fail.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Simulate N agents in this process against the broker and replica processes, run a phased
    /// rollout to them, and measure how long until every result is stored.
    #[cfg(feature = "dev-tools")]
    FleetSim(fleet::FleetSimArgs),
    /// Run the benchmark suite (see BENCHMARKS.md; scripts/bench.sh prepares and runs it).
    #[cfg(feature = "dev-tools")]
    Bench(bench::BenchArgs),
    /// Check this gateway's set-up (config, data dir, trust keys, handlers, wasm engine,
    /// broker) and print what to fix; fails when a check fails.
    Doctor {
        /// Seconds to wait for the broker.
        #[arg(long, default_value_t = 5)]
        broker_timeout: u64,
    },
    /// Cancel a device's running deployment.
    Cancel {
        #[arg(long)]
        device: String,
    },
    /// Development tools for a single step.
    #[command(subcommand)]
    Step(step::StepCommand),
    /// Handler development: run a handler on a manifest in a throwaway data directory.
    #[command(subcommand)]
    Dev(dev::DevCommand),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args, &cli.common).await,
            Command::Handler(cmd) => handler::run(cmd, &cli.common).await,
            Command::Key(cmd) => key::run(cmd),
            Command::Manifest(cmd) => manifest::run(cmd),
            Command::Firmware(cmd) => firmware::run(cmd),
            Command::Trust(cmd) => trust::run(cmd, &cli.common),
            Command::Step(cmd) => step::run(cmd).await,
            Command::Dev(cmd) => dev::run(cmd),
            Command::Agent => fleet::agent(&cli.common).await,
            Command::Shadow => fleet::shadow(&cli.common).await,
            Command::Deploy(args) => fleet::deploy(args, &cli.common).await,
            Command::Status(args) => fleet::status(args, &cli.common).await,
            Command::Rollout(cmd) => rollout::run(cmd, &cli.common).await,
            Command::Cancel { device } => fleet::cancel(device, &cli.common).await,
            #[cfg(feature = "dev-tools")]
            Command::Bench(args) => bench::run(args).await,
            Command::Doctor { broker_timeout } => doctor::run(broker_timeout, &cli.common).await,
            #[cfg(feature = "dev-tools")]
            Command::FleetSim(args) => fleet::fleet_sim(args, &cli.common).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
