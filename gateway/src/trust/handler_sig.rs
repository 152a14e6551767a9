//! Handler signatures: Ed25519 in the wasmsign2 format (a `signature` custom section, first in the
//! file; tool-conventions Signatures.md), with the `wasmsign2` crate as the implementation.
//!
//! A component may carry several signatures (one per signer); it is accepted when at least one
//! trusted key verifies it, and the verifying keys are reported as its signers.
//!
//! Every load re-verifies, so verification is on the hot path of a handler call. The accepting
//! path ([`verify`]) hashes the signed bytes with the accelerated sha256 of [`crate::digest`]
//! under the same semantics as wasmsign2's whole-module verification (the hash of everything after
//! the `signature` section must be among the hashes a trusted key signed, over the message
//! `"wasmsig" || version || content type || hash function || hashes`). wasmsign2 itself hashes in
//! portable code at half the speed; it runs only when that path does not accept, to name the
//! refusal precisely. A test pins that both agree.

use super::TrustedHandlerKey;
use crate::wasm_binary::{leb_u32, section};
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
    #[error("signed by {signers}, whose scope does not cover handler id `{id}` (a key's NAME.scope lists the vendors, handlers or ids it may sign)")]
    OutOfScope { signers: String, id: String },
}

fn custom_name(s: &Section) -> Option<&str> {
    match s {
        Section::Custom(c) => Some(c.name()),
        _ => None,
    }
}

fn parse(component: &[u8]) -> Result<Module, HandlerSignatureError> {
    check_layout(component)?;
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
    check_layout(component)?;
    match accept(component, trusted) {
        Some(names) => Ok(names),
        None => verify_with_wasmsign2(component, trusted),
    }
}

/// Checks that every length in the file fits in the file before wasmsign2 reads it: wasmsign2
/// allocates whatever a section header or a signature field declares (up to 4 GiB) before
/// reading, so a few crafted bytes could exhaust a gateway's memory (found by the
/// `handler_signature` fuzz target).
fn check_layout(component: &[u8]) -> Result<(), HandlerSignatureError> {
    let bad = |why: String| Err(HandlerSignatureError::Malformed(why));
    if component.len() < 8 || &component[..4] != b"\0asm" {
        return bad("not a WebAssembly binary (no `\\0asm` header)".into());
    }
    let mut at = 8;
    let mut index = 0;
    while at < component.len() {
        let Some(s) = section(component, at) else {
            return bad(format!(
                "section {index} at byte {at} declares more bytes than the file holds"
            ));
        };
        if s.name == Some(SIGNATURE_SECTION.as_bytes()) && !signature_payload_fits(s.payload) {
            return bad(format!(
                "the `signature` section at byte {at} declares more bytes than it holds"
            ));
        }
        at = s.end;
        index += 1;
    }
    Ok(())
}

/// Walks wasmsign2's signature data (version, content type, hash function, then signed-hash
/// sets of hashes and signatures, each a length-prefixed slice) checking that every declared
/// length and count fits in the bytes that are there.
fn signature_payload_fits(p: &[u8]) -> bool {
    /// A length-prefixed slice at `*at`, advancing past it.
    fn slice<'a>(b: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
        let len = leb_u32(b, at)? as usize;
        let end = at.checked_add(len).filter(|&e| e <= b.len())?;
        let s = &b[*at..end];
        *at = end;
        Some(s)
    }
    fn signed_hashes(b: &[u8]) -> Option<()> {
        let mut at = 0;
        let hashes = leb_u32(b, &mut at)? as usize;
        at = at
            .checked_add(hashes.checked_mul(32)?)
            .filter(|&e| e <= b.len())?;
        for _ in 0..leb_u32(b, &mut at)? {
            let sig = slice(b, &mut at)?;
            let mut s = 0;
            slice(sig, &mut s)?; // key id
            s = s.checked_add(1).filter(|&e| e <= sig.len())?; // algorithm
            slice(sig, &mut s)?;
        }
        Some(())
    }
    let walk = || -> Option<()> {
        let mut at = 3.min(p.len()); // version, content type, hash function: one byte each
        for _ in 0..leb_u32(p, &mut at)? {
            signed_hashes(slice(p, &mut at)?)?;
        }
        Some(())
    };
    walk().is_some()
}

/// The fast accepting path: `Some(signers)` when a trusted key verifies the whole component,
/// `None` otherwise (then wasmsign2 decides, and names the reason).
fn accept(component: &[u8], trusted: &[TrustedHandlerKey]) -> Option<Vec<String>> {
    if component.len() < 8 || &component[..4] != b"\0asm" {
        return None;
    }
    let first = section(component, 8)?;
    if first.id != 0 || first.name != Some(SIGNATURE_SECTION.as_bytes()) {
        return None;
    }
    let (payload, body_start) = (first.payload, first.end);
    // Exactly one signature section: walk the rest (headers only).
    let mut at = body_start;
    while at < component.len() {
        let s = section(component, at)?;
        if s.name == Some(SIGNATURE_SECTION.as_bytes()) {
            return None;
        }
        at = s.end;
    }
    let data = wasmsign2::CustomSection::new(SIGNATURE_SECTION.into(), payload.to_vec())
        .signature_data()
        .ok()?;
    // wasmsign2's constants: specification version 1, content type 1 (module), hash 1 (sha256).
    if data.specification_version != 1 || data.content_type != 1 || data.hash_function != 1 {
        return None;
    }
    let hash = crate::digest::Sha256::digest(&component[body_start..]);
    let mut names = Vec::new();
    for t in trusted {
        let verified = data.signed_hashes_set.iter().any(|set| {
            if !set.hashes.iter().any(|h| h[..] == hash[..]) {
                return false;
            }
            let mut msg = b"wasmsig".to_vec();
            msg.extend_from_slice(&[1, 1, 1]);
            for h in &set.hashes {
                msg.extend_from_slice(h);
            }
            set.signatures.iter().any(|sig| {
                let ids_differ =
                    matches!((&sig.key_id, t.key.key_id()), (Some(a), Some(b)) if a != b);
                !ids_differ
                    && ed25519_compact::Signature::from_slice(&sig.signature)
                        .is_ok_and(|s| t.key.pk.verify(&msg, &s).is_ok())
            })
        });
        if verified && !names.contains(&t.name) {
            names.push(t.name.clone());
        }
    }
    (!names.is_empty()).then_some(names)
}

/// wasmsign2's verification, with the refusal classified.
fn verify_with_wasmsign2(
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

#[cfg(test)]
mod tests {
    use super::*;
    use wasmsign2::KeyPair;

    /// A minimal component with a custom section of `n` bytes of payload.
    fn component(n: usize) -> Vec<u8> {
        let mut b = b"\0asm\x0d\x00\x01\x00".to_vec();
        let name = b"payload";
        let mut body = vec![name.len() as u8];
        body.extend_from_slice(name);
        body.extend((0..n).map(|i| (i % 251) as u8));
        b.push(0);
        let mut len = body.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            b.push(if len == 0 { byte } else { byte | 0x80 });
            if len == 0 {
                break;
            }
        }
        b.extend(body);
        b
    }

    fn trusted(kp: &KeyPair, name: &str) -> TrustedHandlerKey {
        TrustedHandlerKey {
            name: name.into(),
            key: kp.pk.clone().attach_default_key_id(),
            scope: Vec::new(),
        }
    }

    #[test]
    fn the_fast_path_and_wasmsign2_agree() {
        let (a, b, c) = (
            KeyPair::generate(),
            KeyPair::generate(),
            KeyPair::generate(),
        );
        let plain = component(100_000);
        let by_a = sign(&plain, &a.sk, &a.pk).unwrap();
        let by_ab = sign(&by_a, &b.sk, &b.pk).unwrap();
        let mut tampered = by_a.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let truncated = by_a[..by_a.len() - 10].to_vec();
        let (ta, tb, tc) = (trusted(&a, "a"), trusted(&b, "b"), trusted(&c, "c"));
        let cases: Vec<(&str, &[u8], Vec<TrustedHandlerKey>)> = vec![
            ("signed by a, a trusted", &by_a, vec![ta.clone()]),
            (
                "signed by a, b and c trusted",
                &by_a,
                vec![tb.clone(), tc.clone()],
            ),
            (
                "signed by a and b, both trusted",
                &by_ab,
                vec![ta.clone(), tb.clone()],
            ),
            ("signed by a and b, b trusted", &by_ab, vec![tb.clone()]),
            ("tampered", &tampered, vec![ta.clone()]),
            ("truncated", &truncated, vec![ta.clone()]),
            ("unsigned", &plain, vec![ta.clone()]),
            ("no trusted keys", &by_a, vec![]),
        ];
        for (what, bytes, keys) in cases {
            let fast = accept(bytes, &keys);
            let reference = verify_with_wasmsign2(bytes, &keys);
            assert_eq!(fast, reference.clone().ok(), "{what}: {reference:?}");
        }
        assert_eq!(accept(&by_ab, &[ta, tb]).unwrap(), ["a", "b"]);
    }

    #[test]
    fn lengths_beyond_the_file_are_refused_before_wasmsign2_allocates_them() {
        let kp = KeyPair::generate();
        let keys = [trusted(&kp, "k")];
        // The fuzzer's find: a section header declaring gigabytes in a 142-byte file.
        let found = include_bytes!("../../../fuzz/regressions/handler_signature/oom-section-size");
        assert_eq!(
            verify(found, &keys).unwrap_err().to_string(),
            "the component cannot be read: section 1 at byte 41 declares more bytes than the file holds"
        );
        // A signature section whose signed-hash set claims a 4 GiB slice.
        let mut b = b"\0asm\x0d\x00\x01\x00".to_vec();
        let mut body = vec![9u8];
        body.extend_from_slice(b"signature");
        body.extend_from_slice(&[1, 1, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        b.push(0);
        b.push(body.len() as u8);
        b.extend(body);
        for err in [
            verify(&b, &keys).unwrap_err(),
            sign(&b, &kp.sk, &kp.pk).unwrap_err(),
        ] {
            assert_eq!(
                err.to_string(),
                "the component cannot be read: the `signature` section at byte 8 declares more bytes than it holds"
            );
        }
        // Not WebAssembly at all.
        assert_eq!(
            verify(b"MZ\x90\x00", &keys).unwrap_err().to_string(),
            "the component cannot be read: not a WebAssembly binary (no `\\0asm` header)"
        );
    }

    #[test]
    fn a_second_signature_section_is_refused_by_both() {
        let a = KeyPair::generate();
        let signed = sign(&component(1000), &a.sk, &a.pk).unwrap();
        // Append a copy of the signature section at the end.
        let end = section(&signed, 8).unwrap().end;
        let mut dup = signed.clone();
        dup.extend_from_slice(&signed[8..end]);
        let keys = [trusted(&a, "a")];
        assert_eq!(accept(&dup, &keys), None);
        assert_eq!(
            verify(&dup, &keys),
            Err(HandlerSignatureError::Duplicated(2))
        );
    }
}
