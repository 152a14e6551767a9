//! The console's TLS: its certificate (made self-signed once when none is configured), and,
//! with `[console] client-ca`, client certificates: verified against that CA during the
//! handshake, and the subject common name of the one a connection presented handed to every
//! request on it as a [`ClientName`].

use super::{ConsoleError, ConsoleFiles};
use axum::middleware::AddExtension;
use axum::Extension;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tower_layer::Layer;

/// The subject common name of the verified client certificate a connection presented, if it
/// presented one (and it has a name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientName(pub Option<String>);

fn fail(path: &Path, problem: String) -> ConsoleError {
    ConsoleError::Tls {
        path: path.display().to_string(),
        problem,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ConsoleError> {
    std::fs::read(path).map_err(|e| fail(path, e.to_string()))
}

/// The certificates in the PEM file at `path`; none is an error naming it.
fn certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConsoleError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(fail(path, "no certificate in it".into()));
    }
    Ok(certs)
}

/// The TLS set-up from the certificate and key files, asking for client certificates from
/// `client_ca` when given; with `self_signed`, a certificate for localhost is made first when
/// the files are not there.
pub(super) fn server_config(
    files: &ConsoleFiles,
    self_signed: bool,
    client_ca: Option<&Path>,
) -> Result<RustlsConfig, ConsoleError> {
    if self_signed && !files.cert.exists() {
        make_self_signed(files)?;
    }
    let certs = certificates(&files.cert)?;
    let key_pem = read(&files.key)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| fail(&files.key, e.to_string()))?
        .ok_or_else(|| fail(&files.key, "no private key in it".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&files.cert, e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| fail(ca, format!("not a CA certificate: {e}")))?;
            }
            // A browser without a certificate still gets the password login.
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| fail(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| fail(&files.cert, e.to_string()))?;
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

/// A self-signed certificate for `localhost` and 127.0.0.1, its key readable by its owner only.
fn make_self_signed(files: &ConsoleFiles) -> Result<(), ConsoleError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| {
        fail(
            &files.cert,
            format!("making a self-signed certificate: {e}"),
        )
    })?;
    let mut key = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&files.key)
        .map_err(|e| fail(&files.key, e.to_string()))?;
    key.write_all(made.signing_key.serialize_pem().as_bytes())
        .map_err(|e| fail(&files.key, e.to_string()))?;
    std::fs::write(&files.cert, made.cert.pem()).map_err(|e| fail(&files.cert, e.to_string()))?;
    tracing::info!(cert = %files.cert.display(), "made a self-signed certificate for the console");
    Ok(())
}

/// The subject common name of a DER certificate, when it has one that is text.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_owned)
}

/// Accepts TLS connections as axum-server's rustls acceptor does, and gives each request on a
/// connection the [`ClientName`] of the certificate it presented (rustls has verified it).
#[derive(Debug, Clone)]
pub(super) struct ClientNameAcceptor(pub RustlsAcceptor);

type Accepted<I, S> = std::io::Result<(TlsStream<I>, AddExtension<S, ClientName>)>;

impl<I, S> Accept<I, S> for ClientNameAcceptor
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Send + 'static,
{
    type Stream = TlsStream<I>;
    type Service = AddExtension<S, ClientName>;
    type Future = Pin<Box<dyn Future<Output = Accepted<I, S>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            let (stream, service) = inner.accept(stream, service).await?;
            let name = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| common_name(leaf));
            Ok((stream, Extension(ClientName(name)).layer(service)))
        })
    }
}
