//! `sandstep agent`: the gateway daemon, until SIGTERM, a reboot, or a restart request.

use super::common::Common;
use anyhow::Result;
use sandstep::agent::{self, Agent, AgentExit};
use std::process::ExitCode;

/// `sandstep agent`.
pub async fn agent(common: &Common) -> Result<ExitCode> {
    let config = common.load_config()?;
    let data_path = common
        .data_dir
        .clone()
        .or_else(|| config.data_dir.clone())
        .unwrap_or_else(sandstep::datadir::default_path);
    let restart_code = config.agent.restart_exit_code;
    let agent = Agent::new(config, &data_path)?;
    // What host programs leave behind stays the agent's descendant while it lives.
    if let Err(e) = sandstep::capability::reaper::start() {
        tracing::warn!("cannot become the subreaper of host programs: {e}");
    }
    match agent::run(agent, sandstep_transport::shutdown::on_signal()).await? {
        AgentExit::Shutdown | AgentExit::Rebooting => Ok(ExitCode::SUCCESS),
        AgentExit::Restart => {
            eprintln!("a step asked for an agent restart: exiting with status {restart_code} for the service manager");
            Ok(ExitCode::from(restart_code))
        }
    }
}
