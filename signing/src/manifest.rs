//! ADU's manifest signature, the signing side: `updateManifestSignature` is a compact JWS whose
//! header is `{"alg", "sjwk"}` and whose payload is `{"sha256": "<base64 sha256 of the exact
//! manifest text>"}`; `sjwk` is a compact JWS over the signing key's public JWK, signed by a
//! root key that its header's `kid` names. The gateway verifies these (its `trust::manifest_sig`);
//! operators make them (`sandstep manifest sign`, `sandstep-fleet deploy`).

use crate::jws::{Compact, JwsError, PrivateJwk, PublicJwk};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map};
use sha2::{Digest, Sha256};

/// The base64 sha256 of the manifest text, as the signature's payload carries it.
pub fn manifest_digest(manifest: &str) -> String {
    STANDARD.encode(Sha256::digest(manifest.as_bytes()))
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
