//! What several commands share: config, data dir, sandbox.

use anyhow::{Context as _, Result};
use clap::Args;
use sandstep::capability::ledger::ProgramLedger;
use sandstep::config::Config;
use sandstep::datadir::{self, DataDir};
use sandstep::sandbox::{EngineOptions, Sandbox};
use std::path::PathBuf;
use std::sync::Arc;

/// The config file the package installs.
pub const SYSTEM_CONFIG: &str = "/etc/sandstep/config.toml";

/// `--config` and `--data-dir`.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Configuration file (TOML). Default: $SANDSTEP_CONFIG, else /etc/sandstep/config.toml when
    /// it exists (the package installs it), else the embedded defaults.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Where sandstep keeps journals, downloads, handlers and state
    /// (default: /var/lib/sandstep as root, else ~/.local/state/sandstep).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

impl Common {
    /// The config file in effect, if any (see `--config`).
    pub fn config_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.config {
            return Some(p.clone());
        }
        match std::env::var_os("SANDSTEP_CONFIG") {
            // Set but empty: the embedded defaults, whatever is installed.
            Some(v) if v.is_empty() => None,
            Some(v) => Some(PathBuf::from(v)),
            None => Some(PathBuf::from(SYSTEM_CONFIG)).filter(|p| p.exists()),
        }
    }

    /// Where the config comes from, for humans.
    pub fn config_source(&self) -> String {
        match self.config_path() {
            Some(p) => format!("{} parses", p.display()),
            None => "none: the embedded defaults".into(),
        }
    }

    pub fn load_config(&self) -> Result<Config> {
        match self.config_path() {
            Some(p) => Ok(Config::load(&p)?),
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
    let ledger = ProgramLedger::new(data.programs().context("program ledger")?);
    Ok(Arc::new(
        Sandbox::new(&EngineOptions::default(), Some(cache))?.with_ledger(ledger),
    ))
}

/// Human form of a duration in milliseconds.
pub fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}
