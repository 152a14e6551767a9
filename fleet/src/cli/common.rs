//! What the commands share: the config file and the data dir.

use anyhow::Result;
use clap::Args;
use sandstep_fleet::config::{default_data_dir, FleetConfig, SYSTEM_CONFIG};
use sandstep_fleet::store::Database;
use std::path::{Path, PathBuf};

/// The gateway's config file: read when the fleet's own is not installed, so a machine that
/// runs both halves (or an upgraded one) needs one file.
const GATEWAY_CONFIG: &str = "/etc/sandstep/config.toml";

/// `--config` and `--data-dir`.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Configuration file (TOML). Default: $SANDSTEP_CONFIG, else /etc/sandstep/fleet.toml when
    /// it exists (the fleet package installs it), else /etc/sandstep/config.toml when it exists
    /// (the gateway's), else the embedded defaults.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Where the replica keeps its SQLite store (default: /var/lib/sandstep-shadow as root,
    /// else ~/.local/state/sandstep-shadow).
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
            None => [SYSTEM_CONFIG, GATEWAY_CONFIG]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.exists()),
        }
    }

    pub fn load_config(&self) -> Result<FleetConfig> {
        match self.config_path() {
            Some(p) => Ok(FleetConfig::load(&p)?),
            None => Ok(FleetConfig::default()),
        }
    }

    /// The data dir: `--data-dir`, the config's `data-dir`, or the default.
    pub fn data_dir(&self, config: &FleetConfig) -> PathBuf {
        self.data_dir
            .clone()
            .or_else(|| config.data_dir.clone())
            .unwrap_or_else(default_data_dir)
    }

    /// Where the replica's store is: `[shadow] database`, or `<data-dir>/shadow.sqlite`.
    pub fn database(&self) -> Result<Database> {
        let config = self.load_config()?;
        Ok(match config.shadow.store()? {
            Some(db) => db,
            None => sqlite_in(&self.data_dir(&config))?,
        })
    }
}

/// `<dir>/shadow.sqlite`, the directory made (mode 0700) when missing.
fn sqlite_in(dir: &Path) -> Result<Database> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("data dir {}: {e}", dir.display()))?;
    Ok(Database::Sqlite(dir.join("shadow.sqlite")))
}
