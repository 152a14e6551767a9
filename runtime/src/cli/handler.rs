//! `sandstep handler install|list|remove`: the handler registry.

use super::common::Common;
use anyhow::{Context as _, Result};
use clap::Subcommand;
use sandstep::registry::Registry;
use sandstep::workflow::now_ms;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum HandlerCommand {
    /// Register a component as the handler for an id (compiles it into the cache).
    Install {
        /// The handler component (.wasm).
        component: PathBuf,
        /// The handler id it serves, e.g. microsoft/script:1.
        #[arg(long)]
        id: String,
    },
    /// Show the registered handlers.
    List,
    /// Forget a handler id.
    Remove {
        /// The handler id.
        id: String,
    },
}

pub async fn run(cmd: HandlerCommand, common: &Common) -> Result<ExitCode> {
    let config = common.load_config()?;
    let data = common.data_dir(&config)?;
    let registry = Registry::open(data.handlers()?)?;
    match cmd {
        HandlerCommand::Install { component, id } => {
            let bytes = std::fs::read(&component)
                .with_context(|| format!("cannot read {}", component.display()))?;
            // Compile now: a component that is not a handler, or asks for more than its policy
            // grants, is refused here rather than at deployment time.
            let sandbox = super::common::sandbox(&data)?;
            let handler = sandbox
                .load(&component.display().to_string(), bytes.clone().into())
                .await?;
            handler.check_imports(&id, &config.grants(&id))?;
            let entry =
                registry.install(&id, &bytes, &component.display().to_string(), now_ms())?;
            println!(
                "installed {} ({} bytes, sha256 {})",
                entry.id, entry.size, entry.digest
            );
            let caps = handler.capabilities();
            if !caps.is_empty() {
                let names: Vec<&str> = caps.iter().map(|c| c.name()).collect();
                println!("  capabilities: {}", names.join(", "));
            }
        }
        HandlerCommand::List => {
            let entries = registry.list()?;
            if entries.is_empty() {
                println!("no handlers registered in {}", data.path().display());
            }
            for e in entries {
                let grants = config.grants(&e.id);
                let caps = if grants.process.is_some() {
                    "process"
                } else {
                    "-"
                };
                println!(
                    "{:<32} sha256:{}  {:>8} bytes  granted: {caps}",
                    e.id,
                    &e.digest[..16],
                    e.size
                );
            }
        }
        HandlerCommand::Remove { id } => {
            let e = registry.remove(&id)?;
            println!("removed {} (sha256 {})", e.id, e.digest);
        }
    }
    Ok(ExitCode::SUCCESS)
}
