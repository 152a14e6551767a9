//! ADU's root key package: the file through which Device Update publishes its root keys, the
//! roots it has disabled and the signing keys it has disabled (schema
//! `src/utils/rootkeypackage_utils/inc/aduc/rootkeypackage.schema.json`, parsed by
//! `src/utils/rootkeypackage_utils/src/rootkeypackage_parse.c`).
//!
//! ```json
//! {"protected": {"version": 1, "published": 1694725889,
//!    "disabledRootKeys": ["ADU.200702.R"],
//!    "disabledSigningKeys": [{"alg": "SHA256", "hash": "<base64url sha256 of the key's SPKI>"}],
//!    "rootKeys": {"ADU.200703.R": {"keyType": "RSA", "n": "<base64url>", "e": 65537}}},
//!  "signatures": [{"alg": "RS256", "sig": "..."}]}
//! ```
//!
//! ADU's agent checks `signatures` against the root keys compiled into it before it takes a
//! package. sandstep has no compiled-in roots: the operator who runs `sandstep trust add root`
//! decides, as for a root key file, so the signatures are kept but not what makes it trusted.

use sandstep_signing::jws::{decode_b64, PublicJwk};
use serde_json::Value;

/// The file name suffix of a root key package in a root key directory.
pub const SUFFIX: &str = ".rootkeys.json";

/// What a root key package says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootKeyPackage {
    pub version: Option<u64>,
    pub published: Option<u64>,
    /// The root keys, each with its kid.
    pub roots: Vec<PublicJwk>,
    pub disabled_root_kids: Vec<String>,
    /// Disabled signing keys by ADU's name (base64url sha256 of the SubjectPublicKeyInfo).
    pub disabled_signing_keys: Vec<String>,
}

/// Why a root key package was refused; names the member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("root key package: `{member}`: {reason}")]
pub struct PackageError {
    pub member: String,
    pub reason: String,
}

fn bad(member: impl Into<String>, reason: impl Into<String>) -> PackageError {
    PackageError {
        member: member.into(),
        reason: reason.into(),
    }
}

/// True when `v` has the package's shape (a `protected` object) rather than a JWK's.
pub fn is_package(v: &Value) -> bool {
    v.get("protected").is_some_and(Value::is_object)
}

/// Parses a package (already JSON).
pub fn parse(v: &Value) -> Result<RootKeyPackage, PackageError> {
    let protected = v
        .get("protected")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("protected", "missing, or not an object"))?;
    if !v.get("signatures").is_some_and(Value::is_array) {
        return Err(bad("signatures", "missing, or not an array"));
    }
    let number = |name: &str| protected.get(name).and_then(Value::as_u64);
    let mut pkg = RootKeyPackage {
        version: number("version"),
        published: number("published"),
        ..RootKeyPackage::default()
    };
    let roots = protected
        .get("rootKeys")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("protected.rootKeys", "missing, or not an object"))?;
    for (kid, key) in roots {
        pkg.roots.push(root_key(kid, key)?);
    }
    for (i, kid) in array(protected.get("disabledRootKeys"), "disabledRootKeys")?
        .iter()
        .enumerate()
    {
        let kid = kid
            .as_str()
            .ok_or_else(|| bad(format!("protected.disabledRootKeys[{i}]"), "not a string"))?;
        pkg.disabled_root_kids.push(kid.to_owned());
    }
    for (i, entry) in array(protected.get("disabledSigningKeys"), "disabledSigningKeys")?
        .iter()
        .enumerate()
    {
        pkg.disabled_signing_keys
            .push(disabled_signing_key(i, entry)?);
    }
    Ok(pkg)
}

fn array<'a>(v: Option<&'a Value>, name: &str) -> Result<&'a [Value], PackageError> {
    match v {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(bad(format!("protected.{name}"), "not an array")),
    }
}

/// One entry of `rootKeys`: `e` is a number in ADU's published packages and a base64 string in
/// its schema; both are read.
fn root_key(kid: &str, key: &Value) -> Result<PublicJwk, PackageError> {
    let member = format!("protected.rootKeys.{kid}");
    if key.get("keyType").and_then(Value::as_str) != Some("RSA") {
        return Err(bad(&member, "`keyType` must be \"RSA\""));
    }
    let n = key
        .get("n")
        .and_then(Value::as_str)
        .and_then(decode_b64)
        .ok_or_else(|| bad(&member, "`n` is missing or not base64"))?;
    let e = match key.get("e") {
        Some(Value::Number(e)) => e
            .as_u64()
            .map(|e| {
                e.to_be_bytes()
                    .iter()
                    .copied()
                    .skip_while(|b| *b == 0)
                    .collect()
            })
            .ok_or_else(|| bad(&member, "`e` is not a positive integer"))?,
        Some(Value::String(e)) => decode_b64(e).ok_or_else(|| bad(&member, "`e` is not base64"))?,
        _ => return Err(bad(&member, "`e` is missing")),
    };
    let jwk = serde_json::json!({
        "kty": "RSA",
        "kid": kid,
        "n": base64_url(&n),
        "e": base64_url(&e),
    });
    PublicJwk::from_value(&jwk).map_err(|err| bad(&member, err.to_string()))
}

fn disabled_signing_key(i: usize, entry: &Value) -> Result<String, PackageError> {
    let member = format!("protected.disabledSigningKeys[{i}]");
    match entry.get("alg").and_then(Value::as_str) {
        Some("SHA256") => {}
        Some(other) => {
            return Err(bad(
                member,
                format!("`alg` {other}: only SHA256 names a key the way ADU's agent compares it"),
            ))
        }
        None => return Err(bad(member, "`alg` is missing")),
    }
    let hash = entry
        .get("hash")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(&member, "`hash` is missing"))?;
    // Normalised to unpadded base64url, the form `PublicJwk::spki_sha256` compares with.
    let digest = decode_b64(hash)
        .filter(|d| d.len() == 32)
        .ok_or_else(|| bad(&member, "`hash` is not a base64 sha256"))?;
    Ok(base64_url(&digest))
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn package(protected: Value) -> Value {
        json!({"protected": protected, "signatures": [{"alg": "RS256", "sig": "x"}]})
    }

    #[test]
    fn a_package_without_root_keys_is_refused_by_member() {
        let err = parse(&package(json!({"disabledRootKeys": []}))).unwrap_err();
        assert_eq!(err.member, "protected.rootKeys");
    }

    #[test]
    fn disabled_signing_keys_other_than_sha256_are_refused() {
        let err = parse(&package(json!({
            "rootKeys": {},
            "disabledSigningKeys": [{"alg": "SHA512", "hash": "AA"}]
        })))
        .unwrap_err();
        assert_eq!(err.member, "protected.disabledSigningKeys[0]");
    }

    #[test]
    fn disabled_signing_key_hashes_are_normalised_to_base64url() {
        // The same digest in the standard alphabet with padding.
        let digest = [0xFBu8; 32];
        use base64::Engine as _;
        let standard = base64::engine::general_purpose::STANDARD.encode(digest);
        let pkg = parse(&package(json!({
            "rootKeys": {},
            "disabledSigningKeys": [{"alg": "SHA256", "hash": standard}]
        })))
        .unwrap();
        assert_eq!(pkg.disabled_signing_keys, vec![base64_url(&digest)]);
    }
}
