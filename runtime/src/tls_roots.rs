//! The certificate authorities a TLS client trusts: the PEM file the config names (`ca-file`),
//! else the system's. Shared by the MQTT connection and the replica's PostgreSQL connection.

use std::path::Path;

/// The roots: every certificate in `ca_file`, or the system's when none is named. The error
/// names the file and what is wrong with it.
pub fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(p) => {
            let bad = |e: &dyn std::fmt::Display| format!("ca-file {}: {e}", p.display());
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

/// A client configuration (ring's provider, safe defaults) trusting `roots`, no client
/// certificate.
pub fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
