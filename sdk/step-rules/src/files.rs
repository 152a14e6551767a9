//! `sandstep/files:1`:
//!
//! - `destination`: an absolute file path, no `.` or `..` parts, not in `/payload`, `/work` or
//!   `/state` (the step's own folders);
//! - `fileName`: which step file, required when the step has more than one;
//! - `installedCriteria`: `md5:<32 hex>`, `sha256:<64 hex>`, bare hex of 32 or 64 digits, or any
//!   other label; a value that names a digest kind (`md5:`, `sha256:`) must be that digest.

/// What the installed content is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criteria {
    Md5(String),
    Sha256(String),
    /// Anything else: recorded in the handler's /state when installed.
    Label(String),
}

/// A broken rule, worded for `handlerProperties`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleError {
    /// `destination` is not a plain absolute file path outside the step's folders.
    Destination(String),
    /// The step has this many files and no `fileName`.
    WhichFile(usize),
    /// `fileName` names no step file.
    NoSuchFile(String),
    /// `installedCriteria` is missing.
    NoCriteria,
    /// `installedCriteria` names a digest kind but is not one (`sha256:x`).
    NotADigest {
        criteria: String,
        kind: &'static str,
    },
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleError::Destination(d) => write!(f, "handlerProperties.destination `{d}` must be an absolute file path in a directory the policy maps in"),
            RuleError::WhichFile(n) => write!(f, "step has {n} files; say which with handlerProperties.fileName"),
            RuleError::NoSuchFile(n) => write!(f, "handlerProperties.fileName `{n}` is not one of the step's files"),
            RuleError::NoCriteria => f.write_str("handlerProperties.installedCriteria is required (a digest or a label)"),
            RuleError::NotADigest { criteria, kind } => write!(
                f,
                "handlerProperties.installedCriteria `{criteria}` is not a {kind} digest ({} hex digits after `{kind}:`)",
                if *kind == "md5" { 32 } else { 64 }
            ),
        }
    }
}

impl std::error::Error for RuleError {}

/// Reads `installedCriteria`.
pub fn parse_criteria(c: &str) -> Result<Criteria, RuleError> {
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    let (kind, v) = match c.split_once(':') {
        Some((k, v)) => (Some(k.to_ascii_lowercase()), v),
        None => (None, c),
    };
    let not_a = |kind| RuleError::NotADigest {
        criteria: c.to_owned(),
        kind,
    };
    match (kind.as_deref(), v.len()) {
        (Some("md5") | None, 32) if hex(v) => Ok(Criteria::Md5(v.to_ascii_lowercase())),
        (Some("sha256") | None, 64) if hex(v) => Ok(Criteria::Sha256(v.to_ascii_lowercase())),
        (Some("md5"), _) => Err(not_a("md5")),
        (Some("sha256"), _) => Err(not_a("sha256")),
        _ => Ok(Criteria::Label(c.to_owned())),
    }
}

/// Checks `destination`.
pub fn check_destination(d: &str) -> Result<(), RuleError> {
    let path = std::path::Path::new(d);
    let plain = path.is_absolute()
        && path.file_name().is_some()
        && !d.ends_with('/')
        && !d.split('/').any(|p| p == ".." || p == ".")
        && !["/payload", "/work", "/state"]
            .iter()
            .any(|r| path.starts_with(r));
    if plain {
        Ok(())
    } else {
        Err(RuleError::Destination(d.to_owned()))
    }
}

/// Which of the step's `files` the step places: `file_name`, else the only one.
pub fn which_file<'a>(file_name: Option<&str>, files: &[&'a str]) -> Result<&'a str, RuleError> {
    crate::named_or_only(file_name, files).map_err(|p| match p {
        crate::Pick::NoSuch(n) => RuleError::NoSuchFile(n),
        crate::Pick::Several(n) => RuleError::WhichFile(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criteria_that_name_a_digest_must_be_one() {
        let md5 = "d41d8cd98f00b204e9800998ecf8427e";
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(parse_criteria(md5), Ok(Criteria::Md5(md5.into())));
        assert_eq!(
            parse_criteria(&format!("SHA256:{}", sha.to_uppercase())),
            Ok(Criteria::Sha256(sha.into()))
        );
        assert_eq!(parse_criteria("v1.2"), Ok(Criteria::Label("v1.2".into())));
        assert_eq!(
            parse_criteria("build:42"),
            Ok(Criteria::Label("build:42".into()))
        );
        for bad in ["sha256:x", &format!("sha256:{md5}"), "md5:zz", "md5:"] {
            let e = parse_criteria(bad).unwrap_err();
            assert!(matches!(e, RuleError::NotADigest { .. }), "{bad}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn destinations_and_files_are_checked_by_name() {
        assert!(check_destination("/dest/app/main.py").is_ok());
        for bad in [
            "dest/x",
            "/dest/../etc/passwd",
            "/dest/./x",
            "/work/x",
            "/state/y",
            "/dest/",
            "/",
        ] {
            assert_eq!(
                check_destination(bad),
                Err(RuleError::Destination(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(which_file(None, &["a"]), Ok("a"));
        assert_eq!(which_file(Some("b"), &["a", "b"]), Ok("b"));
        assert_eq!(which_file(None, &["a", "b"]), Err(RuleError::WhichFile(2)));
        assert_eq!(
            which_file(Some("c"), &["a"]),
            Err(RuleError::NoSuchFile("c".into()))
        );
    }
}
