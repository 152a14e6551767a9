//! ADU's root key package, the signature side: how its `protected` part is signed and how the
//! signatures are laid out. What a package means (roots, disabled roots, disabled signing keys)
//! and whether a gateway takes one is the gateway's (`sandstep::trust::root_package`).
//!
//! Facts from ADU's agent (github:Azure/iot-hub-device-update):
//! - The signed bytes are `protected` as parson serialises it (`json_serialize_to_string`, in
//!   `RootKeyPackage_ParseProtectedPropertiesString`, `src/utils/rootkeypackage_utils/src/
//!   rootkeypackage_parse.c`): compact, members in document order, `/` written `\/`.
//! - `signatures[i]` is the signature of the root named by the i-th member of
//!   `protected.rootKeys` (`RootKeyUtility_GetSignatureForKey`, `src/utils/root_key_utils/src/
//!   root_key_util.c`), RS256 over those bytes (`RootKeyUtility_ValidatePackageWithKey`).
//!
//! Strings and numbers are kept as written: parson would rewrite `\u0041` escapes and
//! non-integer numbers, which ADU's published packages do not contain; such a package simply
//! fails to verify.

use crate::jws::{decode_b64, PrivateJwk, PublicJwk};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Largest root key package accepted, in bytes (ADU's are about 2 KiB).
pub const MAX_PACKAGE_BYTES: usize = 256 * 1024;

/// Why package text could not be split or signed; `member` names where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("root key package: `{member}`: {reason}")]
pub struct RootKeysError {
    pub member: String,
    pub reason: String,
    pub problem: Problem,
}

/// What is wrong with the member (ADU's agent has a code for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The text (or the member) is not the JSON it must be, or is too large.
    NotJson,
    /// A required member is missing.
    Missing,
    /// A signature is not base64.
    NotBase64,
    /// The roots given cannot sign this package.
    CannotSign,
}

fn bad(problem: Problem, member: impl Into<String>, reason: impl Into<String>) -> RootKeysError {
    RootKeysError {
        member: member.into(),
        reason: reason.into(),
        problem,
    }
}

/// One entry of `signatures`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub alg: String,
    pub sig: Vec<u8>,
}

/// A package split into what was signed and the signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// `protected`, exactly as written.
    pub protected: String,
    /// The kids of `protected.rootKeys`, in document order.
    pub root_kids: Vec<String>,
    pub signatures: Vec<Signature>,
}

/// The members of a JSON object in document order; a repeated name is refused, as parson
/// refuses it (`json_object_add`).
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut out: Vec<(String, Box<RawValue>)> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!("`{k}` appears twice")));
                    }
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Members {
    fn parse(text: &str, member: &str) -> Result<Members, RootKeysError> {
        serde_json::from_str(text)
            .map_err(|e| bad(Problem::NotJson, member, format!("not a JSON object: {e}")))
    }

    fn get(&self, name: &str) -> Option<&RawValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| &**v)
    }
}

/// Splits package text into `protected` (as written), its root kids in order, and `signatures`.
pub fn split(text: &str) -> Result<Split, RootKeysError> {
    if text.len() > MAX_PACKAGE_BYTES {
        return Err(bad(
            Problem::NotJson,
            "",
            format!(
                "{} bytes is over the {MAX_PACKAGE_BYTES} byte limit",
                text.len()
            ),
        ));
    }
    let top = Members::parse(text.trim_start_matches('\u{feff}'), "")?;
    let protected = top
        .get("protected")
        .filter(|p| p.get().starts_with('{'))
        .ok_or_else(|| bad(Problem::Missing, "protected", "missing, or not an object"))?;
    let root_kids = match Members::parse(protected.get(), "protected")?.get("rootKeys") {
        Some(r) => Members::parse(r.get(), "protected.rootKeys")?
            .0
            .into_iter()
            .map(|(k, _)| k)
            .collect(),
        None => Vec::new(),
    };
    let list: Vec<serde_json::Value> = top
        .get("signatures")
        .and_then(|s| serde_json::from_str(s.get()).ok())
        .ok_or_else(|| bad(Problem::Missing, "signatures", "missing, or not an array"))?;
    let mut signatures = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let member = |name: &str| format!("signatures[{i}].{name}");
        let text = |name: &str| {
            s.get(name)
                .and_then(|a| a.as_str())
                .ok_or_else(|| bad(Problem::Missing, member(name), "missing, or not a string"))
        };
        let alg = text("alg")?;
        let sig = decode_b64(text("sig")?)
            .ok_or_else(|| bad(Problem::NotBase64, member("sig"), "not base64"))?;
        signatures.push(Signature {
            alg: alg.to_owned(),
            sig,
        });
    }
    Ok(Split {
        protected: protected.get().to_owned(),
        root_kids,
        signatures,
    })
}

/// The bytes a root signs: `protected` as parson serialises it (compact, `/` as `\/`).
pub fn signing_text(protected: &str) -> String {
    let mut out = String::with_capacity(protected.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in protected.chars() {
        if !in_string {
            match c {
                ' ' | '\t' | '\n' | '\r' => {}
                '"' => {
                    in_string = true;
                    out.push(c);
                }
                _ => out.push(c),
            }
            continue;
        }
        if escaped {
            escaped = false;
            out.push(c);
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                out.push(c);
            }
            '"' => {
                in_string = false;
                out.push(c);
            }
            '/' => out.push_str("\\/"),
            _ => out.push(c),
        }
    }
    out
}

impl Split {
    /// The signature that root `kid` made, if the package holds one: the entry at the index of
    /// `kid` among `protected.rootKeys`.
    pub fn signature_of(&self, kid: &str) -> Option<&Signature> {
        let i = self.root_kids.iter().position(|k| k == kid)?;
        self.signatures.get(i)
    }

    /// Whether `root` signed the package (RS256, over [`signing_text`]).
    pub fn signed_by(&self, root: &PublicJwk) -> bool {
        let Some(kid) = root.kid() else {
            return false;
        };
        let Some(s) = self.signature_of(kid) else {
            return false;
        };
        s.alg == "RS256"
            && root
                .verify(
                    crate::jws::Alg::Rs256,
                    signing_text(&self.protected).as_bytes(),
                    &s.sig,
                )
                .is_ok()
    }
}

/// A package: `protected` (JSON object text, kept as written) signed by `roots`, each an RSA
/// key whose kid is a member of `protected.rootKeys`. The signing roots must be the first
/// members of `rootKeys` (a signature's place is its root's place there); roots listed after
/// them are carried unsigned.
pub fn sign(protected: &str, roots: &[PrivateJwk]) -> Result<String, RootKeysError> {
    let wrapped = format!("{{\"protected\":{protected},\"signatures\":[]}}");
    let split = split(&wrapped)?;
    let mut signatures = Vec::new();
    for (i, kid) in split.root_kids.iter().enumerate() {
        let Some(root) = roots.iter().find(|r| r.public().kid() == Some(kid)) else {
            if let Some(late) = roots.iter().find(|r| {
                let k = r.public().kid().map(str::to_owned);
                split.root_kids[i..]
                    .iter()
                    .any(|later| Some(later) == k.as_ref())
            }) {
                return Err(bad(
                    Problem::CannotSign,
                    "protected.rootKeys",
                    format!(
                        "`{}` signs but comes after `{kid}`, which does not: list the signing roots first",
                        late.public().kid().unwrap_or_default()
                    ),
                ));
            }
            break;
        };
        if !matches!(root, PrivateJwk::Rsa { .. }) {
            return Err(bad(
                Problem::CannotSign,
                format!("protected.rootKeys.{kid}"),
                "only RSA roots sign a root key package (ADU verifies RS256)",
            ));
        }
        let sig = root.sign(signing_text(protected).as_bytes());
        signatures.push(serde_json::json!({"alg": "RS256", "sig": URL_SAFE_NO_PAD.encode(sig)}));
    }
    for r in roots {
        let kid = r.public().kid().map(str::to_owned).unwrap_or_default();
        if !split.root_kids.contains(&kid) {
            return Err(bad(
                Problem::CannotSign,
                "protected.rootKeys",
                format!(
                    "signing root `{kid}` is not listed; a root signs only a package that lists it"
                ),
            ));
        }
    }
    let signatures = serde_json::to_string_pretty(&signatures).expect("serializes");
    Ok(format!(
        "{{\n\"protected\": {protected},\n\"signatures\": {signatures}\n}}\n"
    ))
}

/// What a package says, for [`Contents::protected`] to write.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    pub version: u64,
    /// Seconds since the epoch; gateways refuse a package older than the one they hold.
    pub published: u64,
    pub is_test: bool,
    /// RSA roots with kids, in order (the signing roots first).
    pub roots: Vec<PublicJwk>,
    pub disabled_root_kids: Vec<String>,
    /// Signing keys by ADU's name (base64url sha256 of the SubjectPublicKeyInfo).
    pub disabled_signing_keys: Vec<String>,
}

impl Contents {
    /// `protected` in ADU's layout (member order as ADU's published packages have it).
    pub fn protected(&self) -> Result<String, RootKeysError> {
        let mut root_keys = serde_json::Map::new();
        for r in &self.roots {
            let PublicJwk::Rsa {
                n,
                e,
                kid: Some(kid),
            } = r
            else {
                return Err(bad(
                    Problem::CannotSign,
                    "protected.rootKeys",
                    "a root key package lists RSA keys with a kid only",
                ));
            };
            let e = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            let mut key = serde_json::Map::new();
            key.insert("keyType".into(), "RSA".into());
            key.insert("n".into(), URL_SAFE_NO_PAD.encode(n).into());
            key.insert("e".into(), e.into());
            root_keys.insert(kid.clone(), key.into());
        }
        // serde_json's map sorts: write the members (and the roots) in order by hand.
        let roots: Vec<String> = self
            .roots
            .iter()
            .filter_map(|r| r.kid())
            .map(|kid| format!("{}: {}", json_str(kid), root_keys[kid]))
            .collect();
        let signing: Vec<String> = self
            .disabled_signing_keys
            .iter()
            .map(|h| format!("{{\"alg\": \"SHA256\", \"hash\": {}}}", json_str(h)))
            .collect();
        let disabled: Vec<String> = self
            .disabled_root_kids
            .iter()
            .map(|k| json_str(k))
            .collect();
        Ok(format!(
            "{{\n  \"isTest\": {},\n  \"version\": {},\n  \"published\": {},\n  \"disabledRootKeys\": [{}],\n  \"disabledSigningKeys\": [{}],\n  \"rootKeys\": {{{}}}\n}}",
            self.is_test,
            self.version,
            self.published,
            disabled.join(", "),
            signing.join(", "),
            roots.join(", ")
        ))
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_text_is_compact_in_document_order_with_slashes_escaped() {
        let p = "{ \"b\" : [1, 2],\n \"a\": \"x/y \\\" z\" }";
        assert_eq!(signing_text(p), r#"{"b":[1,2],"a":"x\/y \" z"}"#);
    }

    #[test]
    fn a_repeated_member_is_refused() {
        let e = split(r#"{"protected": {}, "protected": {}, "signatures": []}"#).unwrap_err();
        assert!(e.reason.contains("`protected` appears twice"), "{e}");
    }

    #[test]
    fn signatures_follow_the_order_of_root_keys() {
        let a = PrivateJwk::generate_rsa(2048, Some("z-root".into())).unwrap();
        let b = PrivateJwk::generate_rsa(2048, Some("a-root".into())).unwrap();
        let protected = r#"{"version": 1, "rootKeys": {"z-root": {}, "a-root": {}, "new": {}}}"#;
        let text = sign(protected, &[b.clone(), a.clone()]).unwrap();
        let s = split(&text).unwrap();
        assert_eq!(s.root_kids, ["z-root", "a-root", "new"]);
        assert_eq!(s.signatures.len(), 2);
        assert!(s.signed_by(&a.public()) && s.signed_by(&b.public()));
        let forged = text.replace("\"version\": 1", "\"version\": 2");
        assert!(!split(&forged).unwrap().signed_by(&a.public()));
    }

    #[test]
    fn contents_write_roots_in_the_order_given_and_sign() {
        let a = PrivateJwk::generate_rsa(2048, Some("z".into())).unwrap();
        let b = PrivateJwk::generate_rsa(2048, Some("a".into())).unwrap();
        let c = Contents {
            version: 2,
            published: 7,
            roots: vec![a.public(), b.public()],
            disabled_root_kids: vec!["old".into()],
            disabled_signing_keys: vec!["h".into()],
            ..Contents::default()
        };
        let text = sign(&c.protected().unwrap(), std::slice::from_ref(&a)).unwrap();
        let s = split(&text).unwrap();
        assert_eq!(s.root_kids, ["z", "a"]);
        assert!(s.signed_by(&a.public()));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["protected"]["rootKeys"]["a"]["e"], 65537);
        assert_eq!(v["protected"]["disabledSigningKeys"][0]["hash"], "h");
    }

    #[test]
    fn a_signing_root_listed_after_an_unsigned_one_is_refused() {
        let a = PrivateJwk::generate_rsa(2048, Some("a".into())).unwrap();
        let e = sign(r#"{"rootKeys": {"new": {}, "a": {}}}"#, &[a]).unwrap_err();
        assert!(e.reason.contains("list the signing roots first"), "{e}");
    }
}
