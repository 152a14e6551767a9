//! Handler signatures: Ed25519 in the wasmsign2 format (a `signature` custom section, first in the
//! file; tool-conventions Signatures.md), with the `wasmsign2` crate as the implementation.
//!
//! A component may carry several signatures (one per signer); it is accepted when at least one
//! trusted key verifies it, and the verifying keys are reported as its signers.

use super::TrustedHandlerKey;
use std::io::Cursor;
use wasmsign2::{Module, PublicKey, PublicKeySet, SecretKey, Section, WSError};

const SIGNATURE_SECTION: &str = "signature";

/// Why a component's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerSignatureError {
    #[error("unsigned: the component has no `signature` section")]
    Unsigned,
    #[error("the `signature` section is not the first section of the component (it was moved)")]
    Moved,
    #[error("the component holds {0} `signature` sections; exactly one, first, is allowed")]
    Duplicated(usize),
    #[error("signed only by untrusted keys (key ids: {0}); trust a key with `sandstep trust add handler KEY.pub`")]
    Untrusted(String),
    #[error("the signature does not match the component: it was modified after signing")]
    Tampered,
    #[error("no trusted handler keys: add one with `sandstep trust add handler KEY.pub`")]
    NoTrustedKeys,
    #[error("the component cannot be read: {0}")]
    Malformed(String),
}

fn custom_name(s: &Section) -> Option<&str> {
    match s {
        Section::Custom(c) => Some(c.name()),
        _ => None,
    }
}

fn parse(component: &[u8]) -> Result<Module, HandlerSignatureError> {
    Module::deserialize(&mut Cursor::new(component))
        .map_err(|e| HandlerSignatureError::Malformed(e.to_string()))
}

/// Adds a signature by `sk` (keeping any existing signatures by other keys).
pub fn sign(
    component: &[u8],
    sk: &SecretKey,
    pk: &PublicKey,
) -> Result<Vec<u8>, HandlerSignatureError> {
    let module = parse(component)?;
    let key_id = pk.clone().attach_default_key_id().key_id().cloned();
    let (signed, _) = sk
        .sign_multi(module, key_id.as_ref(), false, false)
        .map_err(|e| HandlerSignatureError::Malformed(e.to_string()))?;
    let mut out = Vec::with_capacity(component.len() + 256);
    signed
        .serialize(&mut out)
        .map_err(|e| HandlerSignatureError::Malformed(e.to_string()))?;
    Ok(out)
}

/// The key ids recorded in the component's signature section, hex.
fn recorded_key_ids(module: &Module) -> Vec<String> {
    let Some(Section::Custom(c)) = module.sections.first() else {
        return Vec::new();
    };
    let Ok(data) = c.signature_data() else {
        return Vec::new();
    };
    data.signed_hashes_set
        .iter()
        .flat_map(|s| s.signatures.iter())
        .map(|s| {
            s.key_id
                .as_ref()
                .map(hex::encode)
                .unwrap_or_else(|| "(none)".into())
        })
        .collect()
}

/// Verifies `component` against the trusted keys; returns the names of the keys that signed it.
pub fn verify(
    component: &[u8],
    trusted: &[TrustedHandlerKey],
) -> Result<Vec<String>, HandlerSignatureError> {
    let module = parse(component)?;
    let positions: Vec<usize> = module
        .sections
        .iter()
        .enumerate()
        .filter(|(_, s)| custom_name(s) == Some(SIGNATURE_SECTION))
        .map(|(i, _)| i)
        .collect();
    match positions[..] {
        [] => return Err(HandlerSignatureError::Unsigned),
        [0] => {}
        [_] => return Err(HandlerSignatureError::Moved),
        _ => return Err(HandlerSignatureError::Duplicated(positions.len())),
    }
    if trusted.is_empty() {
        return Err(HandlerSignatureError::NoTrustedKeys);
    }
    let mut set = PublicKeySet::empty();
    for t in trusted {
        // Two trust files may hold the same key; one entry is enough.
        let _ = set.insert(t.key.clone());
    }
    match set.verify(&mut Cursor::new(component), None) {
        Ok(valid) => {
            let mut names: Vec<String> = trusted
                .iter()
                .filter(|t| valid.iter().any(|v| v.to_bytes() == t.key.to_bytes()))
                .map(|t| t.name.clone())
                .collect();
            names.dedup();
            Ok(names)
        }
        Err(WSError::VerificationFailed) => {
            let ids = recorded_key_ids(&module);
            let known = trusted.iter().any(|t| {
                t.key
                    .key_id()
                    .is_some_and(|id| ids.contains(&hex::encode(id)))
            });
            if known {
                Err(HandlerSignatureError::Tampered)
            } else {
                Err(HandlerSignatureError::Untrusted(ids.join(", ")))
            }
        }
        Err(WSError::NoSignatures) => Err(HandlerSignatureError::Unsigned),
        Err(e) => Err(HandlerSignatureError::Malformed(e.to_string())),
    }
}
