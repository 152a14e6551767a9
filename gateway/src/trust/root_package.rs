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

use sandstep_model::codes::{erc, ExtendedResultCode};
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
    /// `isTest`: signed by ADU's test roots, for test agents only.
    pub is_test: bool,
}

/// Why a root key package was refused; names the member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("root key package: `{member}`: {reason}")]
pub struct PackageError {
    pub member: String,
    pub reason: String,
    /// ADU's number for it under `ADUC_COMPONENT_ROOTKEYPKG_UTIL`
    /// (`ADUC_ERC_UTILITIES_ROOTKEYPKG_PARSE_*`, `rootkeypackage_parse.c`).
    pub code: u32,
}

impl PackageError {
    /// ADU's extended result code for the refusal (`0x805000NN`).
    pub fn erc(&self) -> ExtendedResultCode {
        ExtendedResultCode::from_raw(erc::ROOTKEY_PACKAGE_PARSE_BASE.raw() | self.code as i32)
    }
}

/// ADU's `ADUC_ERC_UTILITIES_ROOTKEYPKG_PARSE_*` numbers.
pub mod parse_code {
    pub const VERSION_MISSING: u32 = 4;
    pub const PUBLISHED_MISSING: u32 = 5;
    pub const DISABLED_ROOT_KEYS_MISSING: u32 = 6;
    pub const HASH_ALG_MISSING: u32 = 7;
    pub const SIGNATURE_ALG_MISSING: u32 = 8;
    pub const HASH_OR_SIG_MISSING: u32 = 9;
    pub const DISABLED_SIGNING_KEYS_MISSING: u32 = 10;
    pub const KEY_TYPE_MISSING: u32 = 11;
    pub const ROOT_KEYS_MISSING: u32 = 12;
    pub const PROTECTED_MISSING: u32 = 13;
    pub const SIGNATURES_MISSING: u32 = 14;
    pub const ROOT_KEYS_EMPTY: u32 = 17;
    pub const SIGNATURES_EMPTY: u32 = 18;
    pub const INVALID_MODULUS: u32 = 19;
    pub const INVALID_HASH_ALG: u32 = 20;
    pub const INVALID_SIGNING_ALG: u32 = 21;
    pub const INVALID_ENCODING: u32 = 22;
    pub const INVALID_KEY_ID: u32 = 23;
    pub const UNSUPPORTED_KEY_TYPE: u32 = 24;
    pub const INVALID_EXPONENT: u32 = 28;
}

fn bad(code: u32, member: impl Into<String>, reason: impl Into<String>) -> PackageError {
    PackageError {
        member: member.into(),
        reason: reason.into(),
        code,
    }
}

/// True when `v` has the package's shape (a `protected` object) rather than a JWK's.
pub fn is_package(v: &Value) -> bool {
    v.get("protected").is_some_and(Value::is_object)
}

/// Parses a package an operator installed (already JSON): `rootKeys` is required, the rest
/// optional (ADU's compiled-in roots, written as a package, have no signatures or dates).
pub fn parse(v: &Value) -> Result<RootKeyPackage, PackageError> {
    parse_with(v, false)
}

/// Parses a package as ADU's agent parses one it downloads (`ADUC_RootKeyPackageUtils_Parse`,
/// `rootkeypackage_parse.c`): `version`, `published`, `disabledRootKeys`,
/// `disabledSigningKeys` are required, `rootKeys` and `signatures` must not be empty.
pub fn parse_published(v: &Value) -> Result<RootKeyPackage, PackageError> {
    parse_with(v, true)
}

fn parse_with(v: &Value, published: bool) -> Result<RootKeyPackage, PackageError> {
    use parse_code as c;
    let protected = v
        .get("protected")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            bad(
                c::PROTECTED_MISSING,
                "protected",
                "missing, or not an object",
            )
        })?;
    let signatures = v
        .get("signatures")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            bad(
                c::SIGNATURES_MISSING,
                "signatures",
                "missing, or not an array",
            )
        })?;
    let number = |name: &str, code: u32| match protected.get(name).and_then(Value::as_u64) {
        None if published => Err(bad(
            code,
            format!("protected.{name}"),
            "missing, or not a whole number",
        )),
        n => Ok(n),
    };
    let mut pkg = RootKeyPackage {
        version: number("version", c::VERSION_MISSING)?,
        published: number("published", c::PUBLISHED_MISSING)?,
        is_test: protected.get("isTest").and_then(Value::as_bool) == Some(true),
        ..RootKeyPackage::default()
    };
    let roots = protected
        .get("rootKeys")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            bad(
                c::ROOT_KEYS_MISSING,
                "protected.rootKeys",
                "missing, or not an object",
            )
        })?;
    if published && roots.is_empty() {
        return Err(bad(c::ROOT_KEYS_EMPTY, "protected.rootKeys", "is empty"));
    }
    if published && signatures.is_empty() {
        return Err(bad(c::SIGNATURES_EMPTY, "signatures", "is empty"));
    }
    for (kid, key) in roots {
        pkg.roots.push(root_key(kid, key)?);
    }
    let disabled_roots = array(protected, "disabledRootKeys", published)?;
    for (i, kid) in disabled_roots.iter().enumerate() {
        let kid = kid.as_str().ok_or_else(|| {
            bad(
                c::INVALID_KEY_ID,
                format!("protected.disabledRootKeys[{i}]"),
                "not a string",
            )
        })?;
        pkg.disabled_root_kids.push(kid.to_owned());
    }
    for (i, entry) in array(protected, "disabledSigningKeys", published)?
        .iter()
        .enumerate()
    {
        pkg.disabled_signing_keys
            .push(disabled_signing_key(i, entry)?);
    }
    Ok(pkg)
}

fn array<'a>(
    protected: &'a serde_json::Map<String, Value>,
    name: &str,
    required: bool,
) -> Result<&'a [Value], PackageError> {
    let code = if name == "disabledRootKeys" {
        parse_code::DISABLED_ROOT_KEYS_MISSING
    } else {
        parse_code::DISABLED_SIGNING_KEYS_MISSING
    };
    match protected.get(name) {
        None if !required => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        _ => Err(bad(
            code,
            format!("protected.{name}"),
            "missing, or not an array",
        )),
    }
}

/// One entry of `rootKeys`: `e` is a number in ADU's published packages and a base64 string in
/// its schema; both are read.
fn root_key(kid: &str, key: &Value) -> Result<PublicJwk, PackageError> {
    use parse_code as c;
    let member = format!("protected.rootKeys.{kid}");
    match key.get("keyType").and_then(Value::as_str) {
        Some("RSA") => {}
        Some(_) => {
            return Err(bad(
                c::UNSUPPORTED_KEY_TYPE,
                &member,
                "`keyType` must be \"RSA\"",
            ))
        }
        None => return Err(bad(c::KEY_TYPE_MISSING, &member, "`keyType` is missing")),
    }
    let n = key
        .get("n")
        .and_then(Value::as_str)
        .and_then(decode_b64)
        .ok_or_else(|| bad(c::INVALID_MODULUS, &member, "`n` is missing or not base64"))?;
    let bad_e = |why: &str| bad(c::INVALID_EXPONENT, &member, why);
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
            .ok_or_else(|| bad_e("`e` is not a positive integer"))?,
        Some(Value::String(e)) => decode_b64(e).ok_or_else(|| bad_e("`e` is not base64"))?,
        _ => return Err(bad_e("`e` is missing")),
    };
    let jwk = serde_json::json!({
        "kty": "RSA",
        "kid": kid,
        "n": base64_url(&n),
        "e": base64_url(&e),
    });
    PublicJwk::from_value(&jwk).map_err(|err| bad(c::INVALID_MODULUS, &member, err.to_string()))
}

fn disabled_signing_key(i: usize, entry: &Value) -> Result<String, PackageError> {
    use parse_code as c;
    let member = format!("protected.disabledSigningKeys[{i}]");
    match entry.get("alg").and_then(Value::as_str) {
        Some("SHA256") => {}
        Some(other) => {
            return Err(bad(
                c::INVALID_HASH_ALG,
                member,
                format!("`alg` {other}: only SHA256 names a key the way ADU's agent compares it"),
            ))
        }
        None => return Err(bad(c::HASH_ALG_MISSING, member, "`alg` is missing")),
    }
    let hash = entry
        .get("hash")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(c::HASH_OR_SIG_MISSING, &member, "`hash` is missing"))?;
    // Normalised to unpadded base64url, the form `PublicJwk::spki_sha256` compares with.
    let digest = decode_b64(hash).filter(|d| d.len() == 32).ok_or_else(|| {
        bad(
            c::INVALID_ENCODING,
            &member,
            "`hash` is not a base64 sha256",
        )
    })?;
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
