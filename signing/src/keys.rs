//! Key files, as `sandstep key generate` writes them: the secret at `NAME` (mode 0600, never
//! overwritten), the public key at `NAME.pub`.
//!
//! - handler keys: Ed25519 in wasmsign2's raw format (interchangeable with the `wasmsign2` tool);
//! - manifest keys (root and signing keys): a JWK (RSA or Ed25519) with its private members, and
//!   the public JWK beside it.

use crate::jws::{JwsError, PrivateJwk};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Signs handler components (Ed25519, wasmsign2).
    Handler,
    /// Signs manifests or signing keys, RSA 3072 (RS256, as ADU).
    ManifestRsa,
    /// Signs manifests or signing keys, Ed25519 (EdDSA).
    ManifestEd25519,
}

/// Why a key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {cause}")]
    Io {
        path: String,
        /// In the message, not a `source`: printed once.
        cause: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        cause: source,
    }
}

/// `NAME.pub` beside `NAME`.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut s = secret.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Generates a key pair; returns (secret path, public path). Refuses to overwrite either file.
pub fn generate(
    out: &Path,
    kind: KeyKind,
    kid: Option<String>,
) -> Result<(PathBuf, PathBuf), KeyError> {
    let public = public_path(out);
    for p in [out, &public] {
        if p.exists() {
            return Err(KeyError::Invalid {
                path: p.display().to_string(),
                reason: "already exists; not overwriting a key".into(),
            });
        }
    }
    let (secret_bytes, public_bytes) = match kind {
        KeyKind::Handler => {
            let kp = wasmsign2::KeyPair::generate();
            (kp.sk.to_bytes(), kp.pk.to_bytes())
        }
        KeyKind::ManifestRsa | KeyKind::ManifestEd25519 => {
            let kid = kid.or_else(|| out.file_name().map(|n| n.to_string_lossy().into_owned()));
            let key = if kind == KeyKind::ManifestRsa {
                PrivateJwk::generate_rsa(3072, kid).map_err(|e| KeyError::Invalid {
                    path: out.display().to_string(),
                    reason: e.to_string(),
                })?
            } else {
                PrivateJwk::generate_ed25519(kid)
            };
            let pretty = |v| serde_json::to_vec_pretty(&v).expect("a JWK serializes");
            (pretty(key.to_value()), pretty(key.public().to_value()))
        }
    };
    write_new(out, &secret_bytes, 0o600)?;
    write_new(&public, &public_bytes, 0o644)?;
    Ok((out.to_owned(), public))
}

/// A handler signing key and its public half.
pub fn load_handler_key(
    path: &Path,
) -> Result<(wasmsign2::SecretKey, wasmsign2::PublicKey), KeyError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let sk = wasmsign2::SecretKey::from_bytes(&bytes).map_err(|e| KeyError::Invalid {
        path: path.display().to_string(),
        reason: format!(
            "not a handler secret key ({e}); make one with `sandstep key generate --out NAME`"
        ),
    })?;
    let pk =
        wasmsign2::PublicKey::from_bytes(&[&[0x01u8][..], sk.sk.public_key().as_ref()].concat())
            .map_err(|e| KeyError::Invalid {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
    Ok((sk, pk))
}

/// A manifest key (private JWK).
pub fn load_private_jwk(path: &Path) -> Result<PrivateJwk, KeyError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let invalid = |reason: String| KeyError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not a JWK: {e}")))?;
    PrivateJwk::from_value(&v).map_err(|e: JwsError| invalid(e.to_string()))
}
