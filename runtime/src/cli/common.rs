//! What several commands share: config, data dir, sandbox.

use anyhow::{Context as _, Result};
use clap::Args;
use sandstep::config::Config;
use sandstep::datadir::{self, DataDir};
use sandstep::sandbox::{EngineOptions, Sandbox};
use std::path::PathBuf;
use std::sync::Arc;

/// `--config` and `--data-dir`.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Configuration file (TOML). Without it, the embedded defaults apply.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Where sandstep keeps journals, downloads, handlers and state
    /// (default: /var/lib/sandstep as root, else ~/.local/state/sandstep).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

impl Common {
    pub fn load_config(&self) -> Result<Config> {
        match &self.config {
            Some(p) => Ok(Config::load(p)?),
            None => Ok(Config::default()),
        }
    }

    pub fn data_dir(&self, config: &Config) -> Result<DataDir> {
        let path = self
            .data_dir
            .clone()
            .or_else(|| config.data_dir.clone())
            .unwrap_or_else(datadir::default_path);
        Ok(DataDir::open(&path)?)
    }
}

/// The sandbox with the data dir's component cache.
pub fn sandbox(data: &DataDir) -> Result<Arc<Sandbox>> {
    let cache = data.component_cache().context("component cache")?;
    Ok(Arc::new(Sandbox::new(
        &EngineOptions::default(),
        Some(cache),
    )?))
}

/// Human form of a duration in milliseconds.
pub fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}
