//! The `sandstep-fleet` command line: the replica and the operator commands, one module per
//! command group.

mod common;
mod console;
#[cfg(feature = "dev-tools")]
mod console_bench;
mod deployment;
mod doctor;
mod operator;
mod rollout;
#[cfg(feature = "dev-tools")]
mod sim;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// sandstep-fleet: the fleet side of sandstep: the device-state replica, deployments, rollouts.
#[derive(Debug, Parser)]
#[command(name = "sandstep-fleet", version, about)]
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
    /// The device-state replica (software-update pattern): stores shadows, publishes deltas,
    /// drives rollouts.
    Shadow,
    /// Publish a signed deployment as desired state for devices or a group.
    Deploy(operator::DeployArgs),
    /// Show the devices' state, progress and last results (from the replica's shadows), or a
    /// rollout's phases (`--rollout ID`).
    Status(operator::StatusArgs),
    /// Cancel a device's running deployment.
    Cancel {
        #[arg(long)]
        device: String,
    },
    /// Phased rollouts to a group that stop themselves when devices fail.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// The web console over the replica's store (HTTPS): the fleet, each device, rollouts.
    /// `console add-user NAME --role viewer|operator` adds an account.
    Console {
        #[command(subcommand)]
        command: Option<console::ConsoleCommand>,
    },
    /// Check the fleet side's set-up (config, the replica's store, the broker).
    Doctor {
        /// Seconds to wait for the broker.
        #[arg(long, default_value_t = 5)]
        broker_timeout: u64,
    },
    /// Simulate N agents in this process against the broker and replica processes, run a phased
    /// rollout to them, and measure how long until every result is stored.
    #[cfg(feature = "dev-tools")]
    FleetSim(sim::FleetSimArgs),
    /// The fleet benchmark (group 7 of BENCHMARKS.md; scripts/bench.sh runs it).
    #[cfg(feature = "dev-tools")]
    Bench(sim::BenchArgs),
    /// The console's figures (group 7b): first byte and fully loaded at 10,000 devices, memory.
    #[cfg(feature = "dev-tools")]
    ConsoleBench(console_bench::ConsoleBenchArgs),
}

pub fn main() -> ExitCode {
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
    let common = &cli.common;
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Shadow => operator::shadow(common).await,
            Command::Deploy(args) => operator::deploy(args, common).await,
            Command::Status(args) => operator::status(args, common).await,
            Command::Cancel { device } => operator::cancel(device, common).await,
            Command::Rollout(cmd) => rollout::run(cmd, common).await,
            Command::Console { command } => console::run(command, common).await,
            Command::Doctor { broker_timeout } => doctor::run(broker_timeout, common).await,
            #[cfg(feature = "dev-tools")]
            Command::FleetSim(args) => sim::fleet_sim(args, common).await,
            #[cfg(feature = "dev-tools")]
            Command::Bench(args) => sim::bench(args, common).await,
            #[cfg(feature = "dev-tools")]
            Command::ConsoleBench(args) => console_bench::run(args, common).await,
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
