//! Root key updates from deployments: ADU's `rootKeyPackageUrl`.
//!
//! Before it reads a deployment's manifest, ADU's agent downloads the root key package the
//! deployment names, checks it against the roots it was built with, and stores it when it
//! differs from the one it holds (`RootKeyWorkflow_UpdateRootKeys`,
//! `src/rootkey_workflow/src/rootkey_workflow.c`, called from `AzureDeviceUpdateCoreInterface_
//! PropertyUpdateCallback` in `src/agent/adu_core_interface/src/adu_core_interface.c`). From then
//! on the stored package's roots also vouch for signing keys, and its disabled roots and signing
//! keys are refused (`RootKeyUtility_GetKeyForKid`, `src/utils/root_key_utils/src/
//! root_key_util.c`).
//!
//! sandstep's "built-in" roots are the operator's (`sandstep trust add root`): every one of them,
//! or those `[trust] root-package-signers` names, must have signed a package
//! (`RootKeyUtility_ValidateRootKeyPackageWithHardcodedKeys` requires every compiled-in root).
//! Two rules are sandstep's own: a package older (`published`) than the stored one is refused,
//! so a replayed package cannot undo a revocation; and the stored package is checked again at
//! every start, a failing one refusing every manifest until a deployment brings a good one (ADU
//! fails the same way: `RootKeyUtility_LoadPackageFromDisk` with `validateSignatures`).
//!
//! The decisions here are pure; [`store`] and [`load`] are the file's I/O.

use super::root_package::{self, PackageError, RootKeyPackage};
use cap_std::fs::Dir;
use sandstep_model::codes::{erc, ExtendedResultCode};
use sandstep_signing::jws::PublicJwk;
use sandstep_signing::rootkeys::{self, Problem, RootKeysError, Split};

/// The stored package's name in `<data-dir>/trust/fetched`.
pub const STORED: &str = "rootkeys.json";

/// A package that verified: what it says and its text as fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub package: RootKeyPackage,
    pub text: String,
    /// What the roots signed (`protected`, compact): two packages are the same when it is.
    pub signed: String,
}

/// Why a package was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("root key package is not JSON: {0}")]
    NotJson(String),
    #[error(transparent)]
    Malformed(#[from] PackageError),
    #[error("no root is trusted to sign a root key package (`sandstep trust add root`)")]
    NoSigners,
    #[error("root key package: no signature by root `{0}`, which must sign it")]
    Unsigned(String),
    #[error("root key package: the signature by root `{0}` does not verify")]
    BadSignature(String),
    #[error("root key package is marked `isTest` (signed for test agents); `[trust] accept-test-root-packages` is off")]
    Test,
    #[error("root key package published {offered} is older than the stored one ({stored})")]
    Older { offered: u64, stored: u64 },
}

impl Refusal {
    /// ADU's extended result code for it (sandstep's for [`Refusal::Older`]).
    pub fn erc(&self) -> ExtendedResultCode {
        match self {
            Refusal::NotJson(_) => erc::ROOTKEY_PACKAGE_BAD_JSON,
            Refusal::Malformed(e) => e.erc(),
            Refusal::NoSigners => erc::ROOTKEY_NO_SIGNERS,
            Refusal::Unsigned(_) => erc::ROOTKEY_SIGNATURE_NOT_FOUND,
            Refusal::BadSignature(_) => erc::ROOTKEY_SIGNATURE_INVALID,
            Refusal::Test => erc::ROOTKEY_TEST_PACKAGE,
            Refusal::Older { .. } => erc::WORKFLOW_ROOTKEY_PACKAGE_OLDER,
        }
    }
}

fn split_error(e: RootKeysError) -> Refusal {
    use root_package::parse_code as c;
    let code = match (e.problem, e.member.as_str()) {
        (Problem::NotJson, "") => return Refusal::NotJson(e.reason),
        (_, "protected") => c::PROTECTED_MISSING,
        (_, "signatures") => c::SIGNATURES_MISSING,
        (Problem::NotBase64, _) => c::INVALID_ENCODING,
        (_, m) if m.ends_with(".alg") => c::SIGNATURE_ALG_MISSING,
        (_, m) if m.ends_with(".sig") => c::HASH_OR_SIG_MISSING,
        _ => c::ROOT_KEYS_MISSING,
    };
    Refusal::Malformed(PackageError {
        member: e.member,
        reason: e.reason,
        code,
    })
}

/// Checks package `text` as ADU's agent checks a downloaded one: parsed strictly, signed by
/// every root of `signers`, and not a test package unless `accept_test`.
pub fn verify(text: &str, signers: &[PublicJwk], accept_test: bool) -> Result<Accepted, Refusal> {
    let split: Split = rootkeys::split(text).map_err(split_error)?;
    let v: serde_json::Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .map_err(|e| Refusal::NotJson(e.to_string()))?;
    let package = root_package::parse_published(&v)?;
    for (i, s) in split.signatures.iter().enumerate() {
        if !matches!(s.alg.as_str(), "RS256" | "RS384" | "RS512") {
            return Err(Refusal::Malformed(PackageError {
                member: format!("signatures[{i}]"),
                reason: format!("`alg` {} is not a signing algorithm ADU knows", s.alg),
                code: root_package::parse_code::INVALID_SIGNING_ALG,
            }));
        }
    }
    if signers.is_empty() {
        return Err(Refusal::NoSigners);
    }
    for root in signers {
        let kid = root.kid().unwrap_or_default();
        if split.signature_of(kid).is_none() {
            return Err(Refusal::Unsigned(kid.to_owned()));
        }
        if !split.signed_by(root) {
            return Err(Refusal::BadSignature(kid.to_owned()));
        }
    }
    if package.is_test && !accept_test {
        return Err(Refusal::Test);
    }
    Ok(Accepted {
        package,
        text: text.to_owned(),
        signed: rootkeys::signing_text(&split.protected),
    })
}

/// What to do with a package that verified, given the stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The same package: nothing to store (ADU: `ADUC_ERC_ROOTKEY_PKG_UNCHANGED`).
    Unchanged,
    /// Store it and use it from now on (ADU: `ADUC_ERC_ROOTKEY_PACKAGE_CHANGED`).
    Take,
}

/// Compares `offered` with `stored` (ADU's `ADUC_RootKeyUtility_IsUpdateStoreNeeded`), refusing
/// an older one.
pub fn decide(offered: &Accepted, stored: Option<&Accepted>) -> Result<Decision, Refusal> {
    let Some(stored) = stored else {
        return Ok(Decision::Take);
    };
    if offered.signed == stored.signed {
        return Ok(Decision::Unchanged);
    }
    let (o, s) = (
        offered.package.published.unwrap_or(0),
        stored.package.published.unwrap_or(0),
    );
    if o < s {
        return Err(Refusal::Older {
            offered: o,
            stored: s,
        });
    }
    Ok(Decision::Take)
}

/// Writes `accepted` as the stored package (temporary file, fsync, rename).
pub fn store(dir: &Dir, accepted: &Accepted) -> std::io::Result<()> {
    crate::datadir::write_atomic(dir, STORED, accepted.text.as_bytes(), 0o644)
}

/// Why the stored package is not used (then every manifest is refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoredError {
    #[error("trust/fetched/{STORED}: {0}")]
    Unreadable(String),
    #[error("trust/fetched/{STORED} no longer verifies: {0}")]
    Refused(Refusal),
}

/// The stored package, checked again against `signers`: `None` when there is none.
pub fn load(
    dir: &Dir,
    signers: &[PublicJwk],
    accept_test: bool,
) -> Option<Result<Accepted, StoredError>> {
    let text = match dir.read_to_string(STORED) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(StoredError::Unreadable(e.to_string()))),
    };
    Some(verify(&text, signers, accept_test).map_err(StoredError::Refused))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandstep_signing::jws::PrivateJwk;

    fn root(kid: &str) -> PrivateJwk {
        PrivateJwk::generate_rsa(2048, Some(kid.into())).unwrap()
    }

    fn protected(published: u64, roots: &[&PrivateJwk], extra: &str) -> String {
        let keys: Vec<String> = roots
            .iter()
            .map(|r| {
                let v = r.public().to_value();
                format!(
                    "\"{}\": {{\"keyType\": \"RSA\", \"n\": {}, \"e\": 65537}}",
                    r.public().kid().unwrap(),
                    v["n"]
                )
            })
            .collect();
        format!(
            "{{\"version\": 1, \"published\": {published}, \"disabledRootKeys\": [], \
             \"disabledSigningKeys\": [], {extra}\"rootKeys\": {{{}}}}}",
            keys.join(", ")
        )
    }

    #[test]
    fn a_package_every_signer_signed_is_taken_and_then_unchanged() {
        let a = root("a");
        let text = rootkeys::sign(&protected(10, &[&a], ""), std::slice::from_ref(&a)).unwrap();
        let ok = verify(&text, &[a.public()], false).unwrap();
        assert_eq!(decide(&ok, None), Ok(Decision::Take));
        assert_eq!(decide(&ok, Some(&ok)), Ok(Decision::Unchanged));
    }

    #[test]
    fn a_signer_missing_from_the_package_refuses_it() {
        let (a, b) = (root("a"), root("b"));
        let text = rootkeys::sign(&protected(1, &[&a], ""), std::slice::from_ref(&a)).unwrap();
        let r = verify(&text, &[a.public(), b.public()], false).unwrap_err();
        assert_eq!(r, Refusal::Unsigned("b".into()));
        assert_eq!(r.erc(), erc::ROOTKEY_SIGNATURE_NOT_FOUND);
    }

    #[test]
    fn a_signature_by_another_key_with_the_signers_kid_is_refused() {
        let (a, forger) = (root("a"), root("a"));
        let text =
            rootkeys::sign(&protected(1, &[&forger], ""), std::slice::from_ref(&forger)).unwrap();
        let r = verify(&text, &[a.public()], false).unwrap_err();
        assert_eq!(r.erc(), erc::ROOTKEY_SIGNATURE_INVALID);
    }

    #[test]
    fn an_older_package_is_refused_and_a_newer_one_taken() {
        let a = root("a");
        let sign = |p: u64, extra: &str| {
            let t = rootkeys::sign(&protected(p, &[&a], extra), std::slice::from_ref(&a)).unwrap();
            verify(&t, &[a.public()], false).unwrap()
        };
        let (old, new) = (sign(5, ""), sign(9, "\"isTest\": false, "));
        assert_eq!(
            decide(&old, Some(&new)),
            Err(Refusal::Older {
                offered: 5,
                stored: 9
            })
        );
        assert_eq!(decide(&new, Some(&old)), Ok(Decision::Take));
    }

    #[test]
    fn a_test_package_is_refused_unless_accepted() {
        let a = root("a");
        let t = rootkeys::sign(
            &protected(1, &[&a], "\"isTest\": true, "),
            std::slice::from_ref(&a),
        )
        .unwrap();
        assert_eq!(verify(&t, &[a.public()], false), Err(Refusal::Test));
        assert!(verify(&t, &[a.public()], true).is_ok());
    }

    #[test]
    fn required_members_are_refused_with_adus_codes() {
        let a = root("a");
        let without_published = protected(1, &[&a], "").replace("\"published\": 1, ", "");
        let t = rootkeys::sign(&without_published, std::slice::from_ref(&a)).unwrap();
        let r = verify(&t, &[a.public()], false).unwrap_err();
        assert_eq!(r.erc().raw() as u32, 0x8050_0005, "{r}");
        let r = verify("{\"signatures\": []}", &[a.public()], false).unwrap_err();
        assert_eq!(r.erc().raw() as u32, 0x8050_000D, "{r}");
        let r = verify("not json", &[a.public()], false).unwrap_err();
        assert_eq!(r.erc(), erc::ROOTKEY_PACKAGE_BAD_JSON, "{r}");
        let signed = rootkeys::sign(&protected(1, &[&a], ""), std::slice::from_ref(&a)).unwrap();
        let protected_text = rootkeys::split(&signed).unwrap().protected;
        for (signature, code) in [
            (r#"{"sig": "AAAA"}"#, 0x8050_0008u32),
            (r#"{"alg": "RS256"}"#, 0x8050_0009),
            (r#"{"alg": "RS256", "sig": "!!"}"#, 0x8050_0016),
            (r#"{"alg": "PS256", "sig": "AAAA"}"#, 0x8050_0015),
        ] {
            let text = format!(r#"{{"protected": {protected_text}, "signatures": [{signature}]}}"#);
            let r = verify(&text, &[a.public()], false).unwrap_err();
            assert_eq!(r.erc().raw() as u32, code, "{signature}: {r}");
        }
    }
}
