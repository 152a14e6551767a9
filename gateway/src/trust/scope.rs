//! What a handler key may sign, on handler id boundaries (`vendor/name:version`).
//!
//! A scope line names a vendor (`contoso`, or `contoso/`), one handler of a vendor in every
//! version (`contoso/modem`), or one id (`contoso/modem:1`). It is never a bare string prefix:
//! `contoso` does not cover `contosoevil/x:1`, nor `contoso/modem` cover `contoso/modem-evil:1`.

use std::fmt;

/// One line of a key's scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every id of this vendor (the part before the first `/`).
    Vendor(String),
    /// Every version of `vendor/name`.
    Handler(String),
    /// Exactly this id.
    Id(String),
}

/// A scope line that names no vendor, handler or id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope `{line}`: {why} (a scope is a vendor `contoso`, a handler `contoso/modem` or an id `contoso/modem:1`)")]
pub struct ScopeError {
    pub line: String,
    pub why: &'static str,
}

impl Scope {
    /// Reads one scope line (surrounding blanks ignored).
    pub fn parse(line: &str) -> Result<Scope, ScopeError> {
        let text = line.trim();
        let err = |why| ScopeError {
            line: text.to_owned(),
            why,
        };
        if text.is_empty() {
            return Err(err("it is empty"));
        }
        if text.chars().any(char::is_whitespace) {
            return Err(err("it contains a blank"));
        }
        if text.contains(':') {
            return match sandstep_model::manifest::is_handler_id(text) {
                true => Ok(Scope::Id(text.to_owned())),
                false => Err(err("it is not a handler id")),
            };
        }
        match text.split_once('/') {
            None => Ok(Scope::Vendor(text.to_owned())),
            Some((vendor, "")) if !vendor.is_empty() && !vendor.contains('/') => {
                Ok(Scope::Vendor(vendor.to_owned()))
            }
            Some((vendor, name)) if !vendor.is_empty() && !name.is_empty() => {
                match name.ends_with('/') {
                    true => Err(err("it ends with `/` after a handler name")),
                    false => Ok(Scope::Handler(text.to_owned())),
                }
            }
            Some(_) => Err(err("its vendor or handler name is empty")),
        }
    }

    /// The scope as a `.scope` file line reads it back.
    pub fn line(&self) -> &str {
        match self {
            Scope::Vendor(v) => v,
            Scope::Handler(s) | Scope::Id(s) => s,
        }
    }

    /// Whether handler `id` lies within this scope.
    pub fn covers(&self, id: &str) -> bool {
        match self {
            Scope::Vendor(v) => id.split_once('/').is_some_and(|(vendor, _)| vendor == v),
            Scope::Handler(h) => id.rsplit_once(':').is_some_and(|(front, _)| front == h),
            Scope::Id(i) => id == i,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Vendor(v) => write!(f, "{v}/*"),
            Scope::Handler(h) => write!(f, "{h}:*"),
            Scope::Id(i) => f.write_str(i),
        }
    }
}

/// Reads a `.scope` file: one scope a line; blank lines and `#` comments skipped. The first bad
/// line is the error, with its number.
pub fn parse_scope(text: &str) -> Result<Vec<Scope>, (usize, ScopeError)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(n, l)| Scope::parse(l).map_err(|e| (n, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(scope: &str, id: &str) -> bool {
        Scope::parse(scope).unwrap().covers(id)
    }

    #[test]
    fn a_vendor_scope_covers_that_vendors_ids_and_no_vendor_whose_name_starts_alike() {
        for s in ["contoso", "contoso/"] {
            assert!(covers(s, "contoso/modem:1"));
            assert!(covers(s, "contoso/a/b:12"));
            assert!(!covers(s, "contosoevil/x:1"), "{s}");
            assert!(!covers(s, "contoso-evil/x:1"), "{s}");
            assert!(!covers(s, "microsoft/apt:1"), "{s}");
        }
    }

    #[test]
    fn a_handler_scope_covers_its_versions_only() {
        assert!(covers("contoso/modem", "contoso/modem:1"));
        assert!(covers("contoso/modem", "contoso/modem:22"));
        assert!(!covers("contoso/modem", "contoso/modem-evil:1"));
        assert!(!covers("contoso/modem", "contoso/modemx:1"));
        assert!(!covers("contoso/modem", "contoso/other:1"));
    }

    #[test]
    fn an_id_scope_covers_that_id_alone() {
        assert!(covers("contoso/modem:1", "contoso/modem:1"));
        assert!(!covers("contoso/modem:1", "contoso/modem:10"));
        assert!(!covers("contoso/modem:1", "contoso/modem:2"));
    }

    #[test]
    fn scope_lines_that_name_nothing_are_refused_with_the_line() {
        for bad in [
            "/",
            "/modem",
            "contoso//",
            "contoso/modem/",
            "contoso/modem:x",
            "con toso",
            ":1",
        ] {
            let e = Scope::parse(bad).unwrap_err();
            assert_eq!(e.line, bad);
        }
        let (line, e) = parse_scope("# keys\ncontoso\n\nbad line\n").unwrap_err();
        assert_eq!(line, 4);
        assert!(e.to_string().contains("`bad line`"), "{e}");
        assert_eq!(
            parse_scope("contoso/\n# c\nfabrikam/cam:2").unwrap(),
            vec![
                Scope::Vendor("contoso".into()),
                Scope::Id("fabrikam/cam:2".into())
            ]
        );
    }
}
