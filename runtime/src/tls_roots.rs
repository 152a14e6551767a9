//! The certificate authorities a TLS client trusts: the PEM file the config names (`ca-file`),
//! else the system's, and the client certificate presented, if any. Shared by the MQTT
//! connection and the replica's PostgreSQL connection.

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

/// A client configuration (ring's provider, safe defaults) trusting `roots`, presenting the
/// certificate chain and key of `client` (PEM files) when given. Errors name the file.
pub fn client_config(
    roots: rustls::RootCertStore,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, String> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let Some((cert, key)) = client else {
        return Ok(builder.with_no_client_auth());
    };
    let read =
        |what: &str, p: &Path| std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()));
    let certs = rustls_pemfile::certs(&mut read("client-cert", cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("client-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "client-cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key_der = rustls_pemfile::private_key(&mut read("client-key", key)?.as_slice())
        .map_err(|e| format!("client-key {}: {e}", key.display()))?
        .ok_or_else(|| format!("client-key {}: no private key found", key.display()))?;
    builder
        .with_client_auth_cert(certs, key_der)
        .map_err(|e| e.to_string())
}

/// `client-cert` and `client-key` as a pair: both or neither.
pub fn client_pair<'a>(
    cert: Option<&'a Path>,
    key: Option<&'a Path>,
) -> Result<Option<(&'a Path, &'a Path)>, String> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        _ => Err("client-cert and client-key go together".into()),
    }
}
