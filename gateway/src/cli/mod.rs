//! Command-line interface: argument parsing, logging set-up, and one module per command group.

mod agent;
#[cfg(feature = "dev-tools")]
mod bench;
mod common;
mod dev;
mod dev_cache;
mod doctor;
mod firmware;
mod forward;
mod handler;
mod handler_build;
mod handler_kit;
mod key;
mod manifest;
mod manifest_authoring;
mod run;
mod status;
mod step;
mod trust;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// sandstep: run multi-step update manifests in sandboxed WebAssembly handlers.
#[derive(Debug, Parser)]
#[command(
    name = "sandstep",
    version,
    about,
    after_help = "Fleet commands (shadow, deploy, cancel, rollout, fleet-sim) are sandstep-fleet's; \
                  typed here, they run it when it is installed."
)]
struct Cli {
    /// Log filter (`warn`, `info,sandstep::process=debug`); RUST_LOG overrides it.
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
    /// The gateway agent: desired state over MQTT, HTTP polling or IoT Hub in, reported state
    /// out.
    Agent,
    /// This gateway's state, progress and last result, as its agent last reported them (a
    /// fleet's: `sandstep-fleet status`).
    Status(status::StatusArgs),
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
    /// Development tools for a single step.
    #[command(subcommand)]
    Step(step::StepCommand),
    /// Handler development: run a handler on a manifest in a throwaway data directory.
    #[command(subcommand)]
    Dev(dev::DevCommand),
}

pub fn main() -> ExitCode {
    if let Some(command) = fleet_command(std::env::args().skip(1)) {
        return match forward::exec_fleet(&command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    if let Err(e) = sandstep_transport::logging::init(&cli.log) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
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
            Command::Step(cmd) => step::run(cmd, &cli.common).await,
            Command::Dev(cmd) => dev::run(cmd),
            Command::Agent => agent::agent(&cli.common).await,
            Command::Status(args) => status::run(args, &cli.common).await,
            #[cfg(feature = "dev-tools")]
            Command::Bench(args) => bench::run(args).await,
            Command::Doctor { broker_timeout } => doctor::run(broker_timeout, &cli.common).await,
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

/// The command word of `args` (global options and their values skipped) when it is one of the
/// fleet's.
fn fleet_command(args: impl Iterator<Item = String>) -> Option<String> {
    let mut args = args;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--log" | "--config" | "--data-dir" => {
                args.next();
            }
            _ if a.starts_with('-') => {}
            _ => return forward::FLEET_COMMANDS.contains(&a.as_str()).then_some(a),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn fleet_commands_are_found_after_global_options_and_only_as_the_command() {
        let find = |line: &str| super::fleet_command(line.split_whitespace().map(String::from));
        assert_eq!(find("deploy --device d").as_deref(), Some("deploy"));
        assert_eq!(
            find("--config c.toml --log info rollout list").as_deref(),
            Some("rollout")
        );
        assert_eq!(find("--config=c.toml shadow").as_deref(), Some("shadow"));
        assert_eq!(
            find("--data-dir deploy run m.json"),
            None,
            "a value, not the command"
        );
        assert_eq!(find("run deploy.json"), None);
        assert_eq!(find("status --json"), None, "status is the gateway's own");
    }
}
