//! `sandstep status`: this gateway's own state, as its agent last reported it (the agent keeps
//! its reported document in the data dir, `reported.json`, whatever its source). A fleet's
//! state is `sandstep-fleet status`.

use super::common::Common;
use anyhow::{Context as _, Result};
use clap::Args;
use sandstep_model::status;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

/// `sandstep status` options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Refresh every second.
    #[arg(long)]
    watch: bool,
    /// Print the reported document as JSON.
    #[arg(long)]
    json: bool,
}

/// This gateway's reported document, keyed by its device id.
fn document(common: &Common) -> Result<BTreeMap<String, Value>> {
    let config = common.load_config()?;
    let data = common.data_dir(&config)?;
    let device = config.agent.resolved_device_id()?;
    let doc = match data.root().read("reported.json") {
        Ok(bytes) => serde_json::from_slice(&bytes).context("reported.json")?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({"state": {"reported": {}}}),
        Err(e) => return Err(e).context("reported.json"),
    };
    Ok(BTreeMap::from([(device, doc)]))
}

/// `sandstep status`.
pub async fn run(args: StatusArgs, common: &Common) -> Result<ExitCode> {
    loop {
        let doc = document(common)?;
        if args.json {
            println!("{}", serde_json::to_string(&doc)?);
        } else {
            if args.watch {
                print!("\x1b[2J\x1b[H");
            }
            print!(
                "{}",
                status::table(&doc, sandstep_transport::clock::now_ms())
            );
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
