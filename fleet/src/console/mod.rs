//! The web console (`sandstep-fleet console`): the fleet, one device, the rollouts, and
//! starting, pausing, resuming and aborting rollouts, over HTTPS, from the replica's store.
//!
//! - [`accounts`]: the accounts file (argon2 hashes) and the two roles.
//! - [`session`]: logins in secure cookies, and the CSRF rule every change passes.
//! - [`tls`]: the console's certificate, and the client certificates a `client-ca` issues
//!   (an account marked `certificate` logs in with one naming it).
//! - [`view`]: what each page shows, pure (records and rollouts in, rows out).
//! - `pages`: the routes: axum handlers rendering askama templates (`fleet/templates`, every
//!   value HTML-escaped), and the page fragments the pages refresh themselves from (live
//!   updates without reloading: `static/live.js`, the only script).
//!
//! The fleet page is served from a snapshot of every device's row, read from the store in one
//! query every [`REFRESH`], so searching and paging 10,000 devices costs no database round
//! trip. Changes go through [`crate::operate`] and are written to the audit log. The console
//! never holds signing keys: a rollout starts from a deployment document signed elsewhere.

pub mod accounts;
mod pages;
pub mod session;
pub mod tls;
pub mod view;

use crate::config::ConsoleConfig;
use crate::store::Store;
use accounts::Accounts;
use session::Sessions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use view::DeviceRow;

/// How often the fleet page's snapshot is read again.
pub const REFRESH: Duration = Duration::from_secs(2);

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("[console] listen: `{0}` is not an address and port")]
    Listen(String),
    #[error("{path}: {problem}")]
    Tls { path: String, problem: String },
    #[error(transparent)]
    Accounts(#[from] accounts::AccountsError),
    #[error(
        "no accounts in {0}: add one with `sandstep-fleet console add-user NAME --role operator`"
    )]
    NoAccounts(String),
    #[error("{0} has accounts that log in with a certificate, but [console] client-ca is not set: the console would not ask for one")]
    NoClientCa(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("serving the console: {0}")]
    Serve(std::io::Error),
}

/// What every request shares.
pub struct Console {
    store: tokio::sync::Mutex<Store>,
    accounts: Accounts,
    sessions: Sessions,
    rows: RwLock<Arc<Vec<DeviceRow>>>,
}

/// Where the console's files are, resolved from the config and the data dir.
#[derive(Debug, Clone)]
pub struct ConsoleFiles {
    pub accounts: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ConsoleFiles {
    /// The config's paths, or their defaults in `data_dir`.
    pub fn of(config: &ConsoleConfig, data_dir: &Path) -> ConsoleFiles {
        ConsoleFiles {
            accounts: config
                .accounts
                .clone()
                .unwrap_or_else(|| data_dir.join("console-accounts")),
            cert: config
                .cert
                .clone()
                .unwrap_or_else(|| data_dir.join("console-cert.pem")),
            key: config
                .key
                .clone()
                .unwrap_or_else(|| data_dir.join("console-key.pem")),
        }
    }
}

/// Serves the console until the process ends; `ready` is told the address it listens on.
pub async fn serve(
    config: &ConsoleConfig,
    files: &ConsoleFiles,
    store: Store,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ConsoleError> {
    let addr: SocketAddr = config
        .listen
        .parse()
        .map_err(|_| ConsoleError::Listen(config.listen.clone()))?;
    let accounts = Accounts::load(&files.accounts)?;
    if accounts.is_empty() {
        return Err(ConsoleError::NoAccounts(
            files.accounts.display().to_string(),
        ));
    }
    if accounts.any_certificate() && config.client_ca.is_none() {
        return Err(ConsoleError::NoClientCa(
            files.accounts.display().to_string(),
        ));
    }
    let tls = tls::server_config(files, config.cert.is_none(), config.client_ca.as_deref())?;
    let console = Arc::new(Console {
        store: tokio::sync::Mutex::new(store),
        accounts,
        sessions: Sessions::new(Duration::from_secs(config.session_minutes.max(1) * 60)),
        rows: RwLock::default(),
    });
    console.refresh().await?;
    tokio::spawn(refresher(console.clone()));
    let app = pages::router(console);
    let handle = axum_server::Handle::new();
    let acceptor = tls::ClientNameAcceptor(axum_server::tls_rustls::RustlsAcceptor::new(tls));
    let server = axum_server::bind(addr)
        .acceptor(acceptor)
        .handle(handle.clone());
    let serving = tokio::spawn(server.serve(app.into_make_service()));
    if let Some(bound) = handle.listening().await {
        ready(bound);
    }
    serving
        .await
        .map_err(|e| ConsoleError::Serve(std::io::Error::other(e)))?
        .map_err(ConsoleError::Serve)
}

impl Console {
    /// Reads every device's row again.
    async fn refresh(&self) -> Result<(), crate::store::StoreError> {
        let records = self.store.lock().await.records().await?;
        let now = sandstep_transport::clock::now_ms();
        let rows: Vec<DeviceRow> = records
            .iter()
            .map(|(id, r)| view::device_row(id, r, now))
            .collect();
        *self.rows.write().expect("rows lock") = Arc::new(rows);
        Ok(())
    }

    fn rows(&self) -> Arc<Vec<DeviceRow>> {
        self.rows.read().expect("rows lock").clone()
    }
}

async fn refresher(console: Arc<Console>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        if let Err(e) = console.refresh().await {
            tracing::warn!("console: reading the devices: {e}");
        }
    }
}
