//! Manifest signatures in ADU's layout.
//!
//! `updateManifestSignature` is a compact JWS whose header is `{"alg", "sjwk"}` and whose payload
//! is `{"sha256": "<base64 sha256 of the exact manifest text>"}`. `sjwk` is itself a compact JWS:
//! its payload is the signing key (a JWK), signed by a root key named by the header's `kid`. Root
//! keys are trusted from files (JWKs, or ADU's root key packages); a root can be disabled by kid,
//! and a signing key disabled by ADU's name for it (base64url sha256 of its SubjectPublicKeyInfo)
//! or its RFC 7638 thumbprint.

use super::TrustStore;
use sandstep_model::codes::{erc, ExtendedResultCode};
use sandstep_signing::jws::{decode_b64, Compact, JwsError, PublicJwk};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Why a manifest signature was refused, in the order ADU's agent checks
/// (`src/utils/jws_utils/src/jws_utils.c`: `VerifyJWSWithSJWK`, then `VerifySJWK`, then the
/// manifest hash in `src/utils/workflow_utils/src/workflow_utils.c`,
/// `workflow_validate_update_manifest_signature`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureRefusal {
    #[error("manifest signature is missing")]
    Missing,
    #[error("manifest signature: bad structure: {0}")]
    BadStructure(String),
    #[error("manifest signature: the header is not base64 JSON")]
    HeaderEncoding,
    #[error("manifest signature: the signing key's header names no root key (`kid` missing or unreadable)")]
    MissingRootKid,
    #[error("manifest signature: {0}")]
    UnsupportedAlg(String),
    #[error("manifest signature does not verify with its signing key")]
    InvalidSignature,
    #[error("manifest signature: root key `{0}` is disabled")]
    DisabledRoot(String),
    #[error(
        "manifest signature: root key `{0}` is not trusted (no such key in the trusted roots)"
    )]
    UnknownRoot(String),
    #[error("manifest signature: the signing key's signature by root `{0}` does not verify")]
    SigningKeyNotSignedByRoot(String),
    #[error("manifest signature: the signing key is invalid: {0}")]
    InvalidSigningKey(String),
    #[error("manifest signature: signing key {0} is disabled")]
    DisallowedSigningKey(String),
    #[error("manifest hash mismatch: the manifest is not the one that was signed")]
    HashMismatch,
    #[error("manifest signature cannot be checked: {0}")]
    StoredRootKeys(String),
}

impl SignatureRefusal {
    /// ADU's extended result code for the refusal: `0x80300001`
    /// (`ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_MANIFEST_VALIDATION_FAILED`) for a missing signature
    /// or a hash mismatch, `0xA0000005` (`ADUC_ERC_ROOTKEY_SIGNING_KEY_IS_DISABLED`) for a
    /// disabled signing key, else `0xA02000NN` with ADU's `JWSResult` number
    /// (`src/utils/jws_utils/inc/jws_utils.h`).
    pub fn erc(&self) -> ExtendedResultCode {
        let jws_result: u32 = match self {
            SignatureRefusal::Missing | SignatureRefusal::HashMismatch => {
                return erc::MANIFEST_SIGNATURE_MISSING_OR_HASH_MISMATCH
            }
            SignatureRefusal::DisallowedSigningKey(_) => return erc::SIGNING_KEY_IS_DISABLED,
            SignatureRefusal::StoredRootKeys(_) => return erc::ROOTKEY_STORE_LOAD_FAILED,
            // JWSResult_Failed: ADU's VerifySJWK when the inner header or its kid is unreadable.
            SignatureRefusal::MissingRootKid => 0,
            SignatureRefusal::BadStructure(_) => 2,
            // CryptoUtils_IsValidSignature knows only RS256: any other alg fails verification.
            SignatureRefusal::UnsupportedAlg(_)
            | SignatureRefusal::InvalidSignature
            | SignatureRefusal::SigningKeyNotSignedByRoot(_) => 4,
            SignatureRefusal::DisabledRoot(_) => 5,
            // JWSResult_MissingRootKid: no root key found for the kid.
            SignatureRefusal::UnknownRoot(_) => 6,
            SignatureRefusal::HeaderEncoding => 8,
            SignatureRefusal::InvalidSigningKey(_) => 9,
        };
        ExtendedResultCode::from_raw((0xA020_0000u32 | jws_result) as i32)
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

/// Verifies `signature` over the exact `manifest` text against the trusted roots.
pub fn verify(
    manifest: &str,
    signature: &str,
    trust: &TrustStore,
) -> Result<Verified, SignatureRefusal> {
    if let Some(why) = trust.fetched_refusal() {
        return Err(SignatureRefusal::StoredRootKeys(why.to_string()));
    }
    let outer = Compact::parse(signature).map_err(|e| match e {
        JwsError::Header(_) => SignatureRefusal::HeaderEncoding,
        e => structure(e),
    })?;
    let sjwk = outer
        .header
        .get("sjwk")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            SignatureRefusal::BadStructure("the header has no `sjwk` (signing key)".into())
        })?;
    let (kid, signing_key) = verify_signing_key(sjwk, trust)?;
    let alg = outer.alg().map_err(structure)?;
    if alg != signing_key.alg() {
        return Err(SignatureRefusal::InvalidSignature);
    }
    outer
        .verify(&signing_key)
        .map_err(|_| SignatureRefusal::InvalidSignature)?;
    let payload: Value =
        serde_json::from_slice(&outer.payload).map_err(|_| SignatureRefusal::HashMismatch)?;
    let claimed = payload
        .get("sha256")
        .and_then(Value::as_str)
        .ok_or(SignatureRefusal::HashMismatch)?;
    // ADU compares decoded digests (`ADUC_HashUtils_IsValidBufferHash`), so either alphabet works.
    let actual = Sha256::digest(manifest.as_bytes());
    if decode_b64(claimed).as_deref() != Some(actual.as_slice()) {
        return Err(SignatureRefusal::HashMismatch);
    }
    Ok(Verified {
        root_kid: kid,
        signing_key: signing_key.thumbprint(),
    })
}

/// The signing key inside `sjwk`, checked as ADU's `VerifySJWK` checks it: root key by kid (not
/// disabled), the root's signature over it, then the disabled signing keys and the key itself.
fn verify_signing_key(
    sjwk: &str,
    trust: &TrustStore,
) -> Result<(String, PublicJwk), SignatureRefusal> {
    let inner = Compact::parse(sjwk).map_err(|e| match e {
        JwsError::Header(_) => SignatureRefusal::MissingRootKid,
        e => structure(e),
    })?;
    let kid = inner
        .header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or(SignatureRefusal::MissingRootKid)?;
    if trust.root_disabled(kid) {
        return Err(SignatureRefusal::DisabledRoot(kid.to_owned()));
    }
    let root = trust
        .root(kid)
        .ok_or_else(|| SignatureRefusal::UnknownRoot(kid.to_owned()))?;
    inner.alg().map_err(structure)?;
    inner
        .verify(root)
        .map_err(|_| SignatureRefusal::SigningKeyNotSignedByRoot(kid.to_owned()))?;
    let key_json: Value = serde_json::from_slice(&inner.payload)
        .map_err(|_| SignatureRefusal::InvalidSigningKey("the payload is not a JSON JWK".into()))?;
    let signing_key = PublicJwk::from_value(&key_json)
        .map_err(|e| SignatureRefusal::InvalidSigningKey(e.to_string()))?;
    let spki = signing_key.spki_sha256();
    let thumbprint = signing_key.thumbprint();
    if trust.signing_key_disallowed(&[&spki, &thumbprint]) {
        return Err(SignatureRefusal::DisallowedSigningKey(spki));
    }
    // IsSigningKeyDisallowed: an RSA signing key must use the exponent 65537 ("AQAB").
    if let PublicJwk::Rsa { e, .. } = &signing_key {
        if e.as_slice() != [1, 0, 1] {
            return Err(SignatureRefusal::InvalidSigningKey(
                "the RSA exponent is not 65537 (AQAB)".into(),
            ));
        }
    }
    Ok((kid.to_owned(), signing_key))
}
