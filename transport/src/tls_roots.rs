//! The certificate authorities a TLS client trusts: the PEM file the config names (`ca-file`),
//! else the system's, and the client certificate presented, if any. Shared by the MQTT
//! connection, IoT Hub's, and the replica's PostgreSQL connection.

use std::path::{Path, PathBuf};

/// Why a TLS client could not be set up; each names the setting and file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting} {}: {cause}", path.display())]
    File {
        /// `ca-file`, `client-cert` or `client-key`.
        setting: &'static str,
        path: PathBuf,
        /// In the message, not a `source`: printed once.
        cause: String,
    },
    #[error("client-cert and client-key go together")]
    HalfPair,
    #[error("TLS set-up: {0}")]
    Rustls(String),
}

fn file_error(setting: &'static str, path: &Path, cause: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        setting,
        path: path.to_owned(),
        cause: cause.to_string(),
    }
}

/// The roots: every certificate in `ca_file`, or the system's when none is named.
pub fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(p) => {
            let bad = |e: &dyn std::fmt::Display| file_error("ca-file", p, e);
            let pem = std::fs::read(p).map_err(|e| bad(&e))?;
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            if roots.is_empty() {
                return Err(bad(&"no certificate in it"));
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    Ok(roots)
}

/// A client configuration (ring's provider, safe defaults) trusting `roots`, presenting the
/// certificate chain and key of `client` (PEM files) when given.
pub fn client_config(
    roots: rustls::RootCertStore,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots);
    let Some((cert, key)) = client else {
        return Ok(builder.with_no_client_auth());
    };
    let read = |setting, p: &Path| std::fs::read(p).map_err(|e| file_error(setting, p, e));
    let certs = rustls_pemfile::certs(&mut read("client-cert", cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error("client-cert", cert, e))?;
    if certs.is_empty() {
        return Err(file_error("client-cert", cert, "no certificate in it"));
    }
    let key_der = rustls_pemfile::private_key(&mut read("client-key", key)?.as_slice())
        .map_err(|e| file_error("client-key", key, e))?
        .ok_or_else(|| file_error("client-key", key, "no private key found"))?;
    builder
        .with_client_auth_cert(certs, key_der)
        .map_err(|e| TlsError::Rustls(e.to_string()))
}

/// `client-cert` and `client-key` as a pair: both or neither.
pub fn client_pair<'a>(
    cert: Option<&'a Path>,
    key: Option<&'a Path>,
) -> Result<Option<(&'a Path, &'a Path)>, TlsError> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        _ => Err(TlsError::HalfPair),
    }
}
