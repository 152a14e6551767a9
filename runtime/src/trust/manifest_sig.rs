//! Manifest signatures in ADU's layout.
//!
//! `updateManifestSignature` is a compact JWS whose header is `{"alg", "sjwk"}` and whose payload
//! is `{"sha256": "<base64 sha256 of the exact manifest text>"}`. `sjwk` is itself a compact JWS:
//! its payload is the signing key (a JWK), signed by a root key named by the header's `kid`. Root
//! keys are trusted from files; a root can be disabled by kid, and a signing key disallowed by its
//! RFC 7638 thumbprint.

use super::jws::{Compact, JwsError, PrivateJwk, PublicJwk};
use super::TrustStore;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sandstep_model::codes::{erc, ExtendedResultCode};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Why a manifest signature was refused. The reason numbers follow ADU's JWS results where ADU
/// defines them (2, 4, 5, 6, 7, 9); 3, 8 and 10 are sandstep's for cases ADU folds elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureRefusal {
    #[error("manifest signature is missing")]
    Missing,
    #[error("manifest signature: bad structure: {0}")]
    BadStructure(String),
    #[error("manifest signature: {0}")]
    UnsupportedAlg(String),
    #[error("manifest signature does not verify with its signing key")]
    InvalidSignature,
    #[error("manifest signature: root key `{0}` is disabled")]
    DisabledRoot(String),
    #[error("manifest signature: the signing key names no root key (`kid` missing)")]
    MissingRootKid,
    #[error(
        "manifest signature: root key `{0}` is not trusted (no such key in the trusted roots)"
    )]
    UnknownRoot(String),
    #[error("manifest signature: the signing key's signature by root `{0}` does not verify")]
    SigningKeyNotSignedByRoot(String),
    #[error("manifest signature: the signing key is invalid: {0}")]
    InvalidSigningKey(String),
    #[error("manifest signature: signing key {0} is disallowed")]
    DisallowedSigningKey(String),
    #[error("manifest hash mismatch: the manifest is not the one that was signed")]
    HashMismatch,
}

impl SignatureRefusal {
    /// The extended result code (ADU's 0x80300001 for missing/hash mismatch, 0xA020000N else).
    pub fn erc(&self) -> ExtendedResultCode {
        let reason = match self {
            SignatureRefusal::Missing | SignatureRefusal::HashMismatch => {
                return erc::MANIFEST_SIGNATURE_MISSING_OR_HASH_MISMATCH
            }
            SignatureRefusal::BadStructure(_) => 2,
            SignatureRefusal::UnsupportedAlg(_) => 3,
            SignatureRefusal::InvalidSignature => 4,
            SignatureRefusal::DisabledRoot(_) => 5,
            SignatureRefusal::MissingRootKid => 6,
            SignatureRefusal::UnknownRoot(_) => 7,
            SignatureRefusal::SigningKeyNotSignedByRoot(_) => 8,
            SignatureRefusal::InvalidSigningKey(_) => 9,
            SignatureRefusal::DisallowedSigningKey(_) => 10,
        };
        ExtendedResultCode::from_raw((0xA020_0000u32 | reason) as i32)
    }
}

/// Who signed a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub root_kid: String,
    pub signing_key: String,
}

fn structure(e: JwsError) -> SignatureRefusal {
    match e {
        JwsError::UnsupportedAlg(_) => SignatureRefusal::UnsupportedAlg(e.to_string()),
        other => SignatureRefusal::BadStructure(other.to_string()),
    }
}

/// The base64 sha256 of the manifest text, as the signature's payload carries it.
pub fn manifest_digest(manifest: &str) -> String {
    STANDARD.encode(Sha256::digest(manifest.as_bytes()))
}

/// Verifies `signature` over the exact `manifest` text against the trusted roots.
pub fn verify(
    manifest: &str,
    signature: &str,
    trust: &TrustStore,
) -> Result<Verified, SignatureRefusal> {
    let outer = Compact::parse(signature).map_err(structure)?;
    let alg = outer.alg().map_err(structure)?;
    let sjwk = outer
        .header
        .get("sjwk")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            SignatureRefusal::BadStructure("the header has no `sjwk` (signing key)".into())
        })?;
    let inner = Compact::parse(sjwk).map_err(structure)?;
    inner.alg().map_err(structure)?;
    let kid = inner
        .header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or(SignatureRefusal::MissingRootKid)?;
    if trust.disabled_root_kids.contains(kid) {
        return Err(SignatureRefusal::DisabledRoot(kid.to_owned()));
    }
    let root = trust
        .roots
        .iter()
        .find(|r| r.kid() == Some(kid))
        .ok_or_else(|| SignatureRefusal::UnknownRoot(kid.to_owned()))?;
    inner
        .verify(root)
        .map_err(|_| SignatureRefusal::SigningKeyNotSignedByRoot(kid.to_owned()))?;
    let key_json: Value = serde_json::from_slice(&inner.payload)
        .map_err(|_| SignatureRefusal::InvalidSigningKey("the payload is not a JSON JWK".into()))?;
    let signing_key = PublicJwk::from_value(&key_json)
        .map_err(|e| SignatureRefusal::InvalidSigningKey(e.to_string()))?;
    let thumbprint = signing_key.thumbprint();
    if trust.disallowed_signing_keys.contains(&thumbprint) {
        return Err(SignatureRefusal::DisallowedSigningKey(thumbprint));
    }
    if alg != signing_key.alg() {
        return Err(SignatureRefusal::InvalidSignature);
    }
    outer
        .verify(&signing_key)
        .map_err(|_| SignatureRefusal::InvalidSignature)?;
    let payload: Value = serde_json::from_slice(&outer.payload)
        .map_err(|_| SignatureRefusal::BadStructure("the payload is not JSON".into()))?;
    let claimed = payload
        .get("sha256")
        .and_then(Value::as_str)
        .ok_or_else(|| SignatureRefusal::BadStructure("the payload has no `sha256`".into()))?;
    if claimed != manifest_digest(manifest) {
        return Err(SignatureRefusal::HashMismatch);
    }
    Ok(Verified {
        root_kid: kid.to_owned(),
        signing_key: thumbprint,
    })
}

/// The `sjwk` value: the signing key's public JWK, signed by a root key (whose kid names it).
pub fn sign_signing_key(signing_key: &PublicJwk, root: &PrivateJwk) -> Result<String, JwsError> {
    let kid = root
        .public()
        .kid()
        .ok_or_else(|| JwsError::BadKey("the root key has no `kid`".into()))?
        .to_owned();
    let mut header = Map::new();
    header.insert("kid".into(), json!(kid));
    let payload = serde_json::to_vec(&signing_key.to_value()).expect("a JWK serializes");
    Ok(Compact::sign(header, &payload, root))
}

/// Signs the exact manifest text: `updateManifestSignature`.
pub fn sign(manifest: &str, signing_key: &PrivateJwk, sjwk: &str) -> String {
    let mut header = Map::new();
    header.insert("sjwk".into(), json!(sjwk));
    let payload =
        serde_json::to_vec(&json!({"sha256": manifest_digest(manifest)})).expect("serializes");
    Compact::sign(header, &payload, signing_key)
}
