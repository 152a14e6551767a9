//! Compact JWS and JWK, for the two algorithms manifest signatures use: RS256 (ADU's) and EdDSA
//! (Ed25519, for self-hosted fleets). Nothing else is accepted: `none`, `HS256` and the rest are
//! refused by name.

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use rsa::pkcs1v15::{Signature as RsaSignature, SigningKey, VerifyingKey};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest compact JWS accepted, in bytes.
pub const MAX_JWS_BYTES: usize = 64 * 1024;

/// A signature algorithm sandstep accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    EdDsa,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::EdDsa => "EdDSA",
        }
    }
}

/// Why a JWS or JWK was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    #[error("not a compact JWS: {0}")]
    Structure(String),
    /// The first part does not decode to a JSON object (ADU tells this apart from structure).
    #[error("not a compact JWS: {0}")]
    Header(String),
    #[error("algorithm `{0}` is not accepted (only RS256 and EdDSA)")]
    UnsupportedAlg(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("invalid key: {0}")]
    BadKey(String),
}

/// A public key as a JWK: RSA (`n`, `e`) or OKP Ed25519 (`x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicJwk {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
        kid: Option<String>,
    },
    Ed25519 {
        x: [u8; 32],
        kid: Option<String>,
    },
}

/// Decodes base64 the way ADU's agent does (`src/utils/crypto_utils/src/base64_utils.c`,
/// `Base64URLDecode`): `-` and `_` are read as `+` and `/`, padding is optional, so text in the
/// URL-safe alphabet, the standard one, or a mix of both decodes. Real ADU signing keys carry `+`
/// and `/` in `n`, inside a JWS that is otherwise base64url.
pub fn decode_b64(text: &str) -> Option<Vec<u8>> {
    let standard: String = text
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    STANDARD_NO_PAD.decode(standard).ok()
}

fn b64(v: &Value, field: &str) -> Result<Vec<u8>, JwsError> {
    let s = v
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| JwsError::BadKey(format!("missing `{field}`")))?;
    decode_b64(s).ok_or_else(|| JwsError::BadKey(format!("`{field}` is not base64")))
}

fn kid(v: &Value) -> Option<String> {
    v.get("kid").and_then(Value::as_str).map(str::to_owned)
}

impl PublicJwk {
    /// Parses a JWK object (private members, if any, are ignored).
    pub fn from_value(v: &Value) -> Result<PublicJwk, JwsError> {
        match v.get("kty").and_then(Value::as_str) {
            Some("RSA") => {
                let jwk = PublicJwk::Rsa {
                    n: b64(v, "n")?,
                    e: b64(v, "e")?,
                    kid: kid(v),
                };
                let bits = jwk.rsa()?.0.n().bits();
                if bits < MIN_RSA_BITS {
                    return Err(JwsError::BadKey(format!(
                        "RSA key of {bits} bits; at least {MIN_RSA_BITS} needed"
                    )));
                }
                Ok(jwk)
            }
            Some("OKP") => {
                if v.get("crv").and_then(Value::as_str) != Some("Ed25519") {
                    return Err(JwsError::BadKey("OKP keys must have crv Ed25519".into()));
                }
                let x = b64(v, "x")?;
                let x: [u8; 32] = x
                    .try_into()
                    .map_err(|_| JwsError::BadKey("`x` must be 32 bytes".into()))?;
                Ok(PublicJwk::Ed25519 { x, kid: kid(v) })
            }
            Some(other) => Err(JwsError::BadKey(format!(
                "key type `{other}` is not supported (RSA, OKP)"
            ))),
            None => Err(JwsError::BadKey("missing `kty`".into())),
        }
    }

    pub fn kid(&self) -> Option<&str> {
        match self {
            PublicJwk::Rsa { kid, .. } | PublicJwk::Ed25519 { kid, .. } => kid.as_deref(),
        }
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Alg {
        match self {
            PublicJwk::Rsa { .. } => Alg::Rs256,
            PublicJwk::Ed25519 { .. } => Alg::EdDsa,
        }
    }

    fn rsa(&self) -> Result<(RsaPublicKey,), JwsError> {
        match self {
            PublicJwk::Rsa { n, e, .. } => {
                RsaPublicKey::new(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e))
                    .map(|k| (k,))
                    .map_err(|e| JwsError::BadKey(e.to_string()))
            }
            _ => Err(JwsError::BadKey("not an RSA key".into())),
        }
    }

    /// The JWK as JSON (public members and kid).
    pub fn to_value(&self) -> Value {
        let mut v = match self {
            PublicJwk::Rsa { n, e, .. } => {
                json!({"kty": "RSA", "n": B64URL.encode(n), "e": B64URL.encode(e)})
            }
            PublicJwk::Ed25519 { x, .. } => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": B64URL.encode(x)})
            }
        };
        if let Some(k) = self.kid() {
            v["kid"] = json!(k);
        }
        v
    }

    /// The RFC 7638 thumbprint: base64url(sha256(canonical JSON of the required members)).
    /// This is how a signing key is named in `disallowed-signing-keys`.
    pub fn thumbprint(&self) -> String {
        let canonical = match self {
            PublicJwk::Rsa { n, e, .. } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                B64URL.encode(e),
                B64URL.encode(n)
            ),
            PublicJwk::Ed25519 { x, .. } => format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                B64URL.encode(x)
            ),
        };
        B64URL.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// How ADU names a signing key in a root key package's `disabledSigningKeys`: base64url of the
    /// sha256 of its DER SubjectPublicKeyInfo (`src/utils/jws_utils/src/jws_utils.c`,
    /// `IsSigningKeyDisallowed`, hashing what `CryptoUtils_GenerateRsaPublicKey` encodes).
    pub fn spki_sha256(&self) -> String {
        let der = match self {
            PublicJwk::Rsa { .. } => {
                use rsa::pkcs8::EncodePublicKey as _;
                let (key,) = self.rsa().expect("checked when the JWK was parsed");
                key.to_public_key_der()
                    .expect("an RSA public key encodes")
                    .into_vec()
            }
            PublicJwk::Ed25519 { x, .. } => {
                // RFC 8410: SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING x }.
                let mut der = hex::decode("302a300506032b6570032100").expect("hex");
                der.extend_from_slice(x);
                der
            }
        };
        B64URL.encode(Sha256::digest(&der))
    }

    /// Verifies `signature` over `message` with this key.
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> Result<(), JwsError> {
        match (self, alg) {
            (PublicJwk::Rsa { .. }, Alg::Rs256) => {
                let (key,) = self.rsa()?;
                let sig = RsaSignature::try_from(signature).map_err(|_| JwsError::BadSignature)?;
                VerifyingKey::<Sha256>::new(key)
                    .verify(message, &sig)
                    .map_err(|_| JwsError::BadSignature)
            }
            (PublicJwk::Ed25519 { x, .. }, Alg::EdDsa) => {
                let pk = ed25519_compact::PublicKey::new(*x);
                let sig = ed25519_compact::Signature::from_slice(signature)
                    .map_err(|_| JwsError::BadSignature)?;
                pk.verify(message, &sig).map_err(|_| JwsError::BadSignature)
            }
            (_, alg) => Err(JwsError::BadKey(format!(
                "a {} signature cannot come from this key type",
                alg.name()
            ))),
        }
    }
}

/// A private key (JWK with its private members), as `sandstep key generate` writes it.
#[derive(Clone)]
pub enum PrivateJwk {
    Rsa {
        key: Box<RsaPrivateKey>,
        kid: Option<String>,
    },
    Ed25519 {
        kp: ed25519_compact::KeyPair,
        kid: Option<String>,
    },
}

impl std::fmt::Debug for PrivateJwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateJwk({:?})", self.public().kid())
    }
}

impl PrivateJwk {
    /// A new RSA key (`bits` >= 2048).
    pub fn generate_rsa(bits: usize, kid: Option<String>) -> Result<PrivateJwk, JwsError> {
        if bits < MIN_RSA_BITS {
            return Err(JwsError::BadKey(format!("at least {MIN_RSA_BITS} bits")));
        }
        let key = RsaPrivateKey::new(&mut rand_core::OsRng, bits)
            .map_err(|e| JwsError::BadKey(e.to_string()))?;
        Ok(PrivateJwk::Rsa {
            key: Box::new(key),
            kid,
        })
    }

    /// A new Ed25519 key.
    pub fn generate_ed25519(kid: Option<String>) -> PrivateJwk {
        PrivateJwk::Ed25519 {
            kp: ed25519_compact::KeyPair::generate(),
            kid,
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicJwk {
        match self {
            PrivateJwk::Rsa { key, kid } => PublicJwk::Rsa {
                n: key.n().to_bytes_be(),
                e: key.e().to_bytes_be(),
                kid: kid.clone(),
            },
            PrivateJwk::Ed25519 { kp, kid } => PublicJwk::Ed25519 {
                x: *kp.pk,
                kid: kid.clone(),
            },
        }
    }

    /// The private JWK as JSON.
    pub fn to_value(&self) -> Value {
        let mut v = self.public().to_value();
        match self {
            PrivateJwk::Rsa { key, .. } => {
                let primes = key.primes();
                v["d"] = json!(B64URL.encode(key.d().to_bytes_be()));
                v["p"] = json!(B64URL.encode(primes[0].to_bytes_be()));
                v["q"] = json!(B64URL.encode(primes[1].to_bytes_be()));
            }
            PrivateJwk::Ed25519 { kp, .. } => {
                v["d"] = json!(B64URL.encode(kp.sk.seed().as_ref()));
            }
        }
        v
    }

    /// Parses a private JWK.
    pub fn from_value(v: &Value) -> Result<PrivateJwk, JwsError> {
        let public = PublicJwk::from_value(v)?;
        let kid = public.kid().map(str::to_owned);
        match public {
            PublicJwk::Rsa { n, e, .. } => {
                let big = |f: &str| b64(v, f).map(|b| BigUint::from_bytes_be(&b));
                let key = RsaPrivateKey::from_components(
                    BigUint::from_bytes_be(&n),
                    BigUint::from_bytes_be(&e),
                    big("d")?,
                    vec![big("p")?, big("q")?],
                )
                .map_err(|e| JwsError::BadKey(e.to_string()))?;
                Ok(PrivateJwk::Rsa {
                    key: Box::new(key),
                    kid,
                })
            }
            PublicJwk::Ed25519 { x, .. } => {
                let d = b64(v, "d")?;
                let seed = ed25519_compact::Seed::from_slice(&d)
                    .map_err(|_| JwsError::BadKey("`d` must be a 32-byte seed".into()))?;
                let kp = ed25519_compact::KeyPair::from_seed(seed);
                if *kp.pk != x {
                    return Err(JwsError::BadKey("`x` does not match `d`".into()));
                }
                Ok(PrivateJwk::Ed25519 { kp, kid })
            }
        }
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            PrivateJwk::Rsa { key, .. } => SigningKey::<Sha256>::new((**key).clone())
                .sign(message)
                .to_vec(),
            PrivateJwk::Ed25519 { kp, .. } => kp.sk.sign(message, None).to_vec(),
        }
    }
}

/// A parsed compact JWS.
#[derive(Debug, Clone)]
pub struct Compact {
    pub header: Map<String, Value>,
    pub payload: Vec<u8>,
    signing_input: String,
    signature: Vec<u8>,
}

impl Compact {
    /// Splits and decodes `header.payload.signature`.
    pub fn parse(text: &str) -> Result<Compact, JwsError> {
        let text = text.trim();
        if text.len() > MAX_JWS_BYTES {
            return Err(JwsError::Structure(format!(
                "{} bytes; the limit is {MAX_JWS_BYTES}",
                text.len()
            )));
        }
        let parts: Vec<&str> = text.split('.').collect();
        let [h, p, s] = parts[..] else {
            return Err(JwsError::Structure(format!(
                "{} dot-separated parts, expected 3",
                parts.len()
            )));
        };
        let dec = |part: &str, what: &str| {
            decode_b64(part).ok_or_else(|| JwsError::Structure(format!("the {what} is not base64")))
        };
        let header =
            decode_b64(h).ok_or_else(|| JwsError::Header("the header is not base64".into()))?;
        let header: Value = serde_json::from_slice(&header)
            .map_err(|_| JwsError::Header("the header is not JSON".into()))?;
        let Value::Object(header) = header else {
            return Err(JwsError::Header("the header is not a JSON object".into()));
        };
        Ok(Compact {
            header,
            payload: dec(p, "payload")?,
            signing_input: format!("{h}.{p}"),
            signature: dec(s, "signature")?,
        })
    }

    /// The header's algorithm, if it is one sandstep accepts.
    pub fn alg(&self) -> Result<Alg, JwsError> {
        match self.header.get("alg").and_then(Value::as_str) {
            Some("RS256") => Ok(Alg::Rs256),
            Some("EdDSA") => Ok(Alg::EdDsa),
            Some(other) => Err(JwsError::UnsupportedAlg(other.to_owned())),
            None => Err(JwsError::Structure("the header has no `alg`".into())),
        }
    }

    /// Verifies the signature with `key`.
    pub fn verify(&self, key: &PublicJwk) -> Result<(), JwsError> {
        let alg = self.alg()?;
        if alg != key.alg() {
            return Err(JwsError::BadKey(format!(
                "header says {} but the key is for {}",
                alg.name(),
                key.alg().name()
            )));
        }
        key.verify(alg, self.signing_input.as_bytes(), &self.signature)
    }

    /// Signs `payload` with `header` (whose `alg` is set from the key).
    pub fn sign(mut header: Map<String, Value>, payload: &[u8], key: &PrivateJwk) -> String {
        header.insert("alg".into(), json!(key.public().alg().name()));
        let h =
            B64URL.encode(serde_json::to_vec(&Value::Object(header)).expect("a map serializes"));
        let p = B64URL.encode(payload);
        let sig = key.sign(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", B64URL.encode(sig))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_round_trip_and_tamper() {
        let k = PrivateJwk::generate_ed25519(Some("k1".into()));
        let jws = Compact::sign(Map::new(), b"hello", &k);
        let c = Compact::parse(&jws).unwrap();
        c.verify(&k.public()).unwrap();
        assert_eq!(c.payload, b"hello");
        let other = PrivateJwk::generate_ed25519(None);
        assert_eq!(c.verify(&other.public()), Err(JwsError::BadSignature));
        let back = PrivateJwk::from_value(&k.to_value()).unwrap();
        assert_eq!(back.public(), k.public());
    }

    #[test]
    fn rsa_round_trip() {
        let k = PrivateJwk::generate_rsa(2048, Some("root".into())).unwrap();
        let jws = Compact::sign(Map::new(), b"payload", &k);
        Compact::parse(&jws).unwrap().verify(&k.public()).unwrap();
        let back = PrivateJwk::from_value(&k.to_value()).unwrap();
        assert_eq!(back.public(), k.public());
        assert_eq!(
            PublicJwk::from_value(&k.public().to_value()).unwrap(),
            k.public()
        );
    }

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // RFC 7638 section 3.1.
        let v = json!({"kty": "RSA", "e": "AQAB", "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
        let jwk = PublicJwk::from_value(&v).unwrap();
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn structure_errors_name_the_problem() {
        assert_eq!(
            Compact::parse("a.b").unwrap_err(),
            JwsError::Structure("2 dot-separated parts, expected 3".into())
        );
        assert_eq!(
            Compact::parse("!!.e30.e30").unwrap_err(),
            JwsError::Header("the header is not base64".into())
        );
        let none = format!(
            "{}.{}.",
            B64URL.encode(r#"{"alg":"none"}"#),
            B64URL.encode("{}")
        );
        assert_eq!(
            Compact::parse(&none).unwrap().alg().unwrap_err(),
            JwsError::UnsupportedAlg("none".into())
        );
    }

    #[test]
    fn small_rsa_keys_are_refused() {
        let v = json!({"kty": "RSA", "e": "AQAB", "n": B64URL.encode([0xC3u8; 128])});
        assert_eq!(
            PublicJwk::from_value(&v).unwrap_err(),
            JwsError::BadKey("RSA key of 1024 bits; at least 2048 needed".into())
        );
    }
}
