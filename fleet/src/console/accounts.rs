//! The console's accounts: a file of `NAME ROLE LOGIN` lines (`#` starts a comment), written by
//! `sandstep-fleet console add-user`. LOGIN is an argon2 hash of the account's password, or
//! `certificate`: that account logs in only with a client certificate the console's
//! `client-ca` issued, whose subject common name is NAME. A viewer sees; an operator also
//! starts, pauses, resumes and aborts rollouts.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use std::collections::BTreeMap;
use std::path::Path;

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// Why the accounts file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("{path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path}:{line}: {problem}")]
    Line {
        path: String,
        line: usize,
        problem: String,
    },
    #[error("{path}: {problem}")]
    Write { path: String, problem: String },
}

/// How an account proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Its password, by this argon2 hash.
    Password(String),
    /// A client certificate naming it (the accounts file says `certificate`).
    Certificate,
}

/// The accounts file's word for [`Login::Certificate`].
const CERTIFICATE: &str = "certificate";

#[derive(Debug, Clone)]
struct Account {
    role: Role,
    login: Login,
}

/// The accounts, by name.
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    by_name: BTreeMap<String, Account>,
}

/// A name may be letters, digits, `-`, `_`, `.` and `@`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

impl Accounts {
    /// Reads the file; a line that is not `NAME ROLE LOGIN` with a known role and an argon2
    /// hash or `certificate` is refused, naming the line.
    pub fn load(path: &Path) -> Result<Accounts, AccountsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|cause| AccountsError::Read {
            path: shown.clone(),
            cause,
        })?;
        Accounts::parse(&text, &shown)
    }

    pub fn parse(text: &str, path: &str) -> Result<Accounts, AccountsError> {
        let mut by_name = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |problem: String| AccountsError::Line {
                path: path.to_owned(),
                line: i + 1,
                problem,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, login] = fields[..] else {
                return Err(bad(
                    "expected NAME ROLE HASH (or NAME ROLE certificate)".into()
                ));
            };
            if !valid_name(name) {
                return Err(bad(format!("`{name}` is not a valid account name")));
            }
            let role = Role::parse(role)
                .ok_or_else(|| bad(format!("`{role}` is not a role (viewer or operator)")))?;
            let login = if login == CERTIFICATE {
                Login::Certificate
            } else {
                PasswordHash::new(login)
                    .map_err(|e| bad(format!("not a password hash (nor `{CERTIFICATE}`): {e}")))?;
                Login::Password(login.to_owned())
            };
            if by_name
                .insert(name.to_owned(), Account { role, login })
                .is_some()
            {
                return Err(bad(format!("`{name}` is there twice")));
            }
        }
        Ok(Accounts { by_name })
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Whether any account logs in with a certificate (the console then needs a `client-ca`).
    pub fn any_certificate(&self) -> bool {
        self.by_name.values().any(|a| a.login == Login::Certificate)
    }

    /// The role of `name` when it is an account that logs in with a certificate.
    pub fn by_certificate(&self, name: &str) -> Option<Role> {
        self.by_name
            .get(name)
            .filter(|a| a.login == Login::Certificate)
            .map(|a| a.role)
    }

    /// The role of `name` when `password` is its password. Slow on purpose (argon2): call it
    /// off the async threads. An unknown name, or one that logs in with a certificate, costs
    /// the same as a wrong password.
    pub fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let account = self.by_name.get(name);
        let hash: &str = match account.map(|a| &a.login) {
            Some(Login::Password(hash)) => hash,
            Some(Login::Certificate) | None => dummy_hash(),
        };
        let parsed = PasswordHash::new(hash).ok()?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        account
            .filter(|a| ok && matches!(a.login, Login::Password(_)))
            .map(|a| a.role)
    }

    /// Adds or replaces `name` in the file at `path` (created with mode 0600): with its
    /// password, or (`None`) as an account that logs in with a client certificate.
    pub fn add(
        path: &Path,
        name: &str,
        role: Role,
        password: Option<&str>,
    ) -> Result<(), AccountsError> {
        let shown = path.display().to_string();
        let fail = |problem: String| AccountsError::Write {
            path: shown.clone(),
            problem,
        };
        if !valid_name(name) {
            return Err(fail(format!(
                "`{name}` is not a valid account name (letters, digits, - _ . @)"
            )));
        }
        if password.is_some_and(|p| p.chars().count() < 8) {
            return Err(fail("a password has at least 8 characters".into()));
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(fail(e.to_string())),
        };
        Accounts::parse(&text, &shown)?;
        let login = match password {
            Some(p) => hash(p).map_err(|e| fail(e.to_string()))?,
            None => CERTIFICATE.to_owned(),
        };
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.split_whitespace().next() != Some(name))
            .map(str::to_owned)
            .collect();
        lines.push(format!("{name} {} {login}", role.name()));
        sandstep_transport::private_file::write(path, (lines.join("\n") + "\n").as_bytes())
            .map_err(|e| fail(e.to_string()))
    }
}

/// An argon2id hash of `password` with a fresh salt.
pub fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
}

/// A hash of a random password, verified for unknown names so they take as long as a known
/// name's wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut secret = [0u8; 16];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret);
        hash(&hex_of(&secret)).unwrap_or_default()
    })
}

/// Lower-case hex of `bytes`.
pub fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_added_verified_by_role_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts");
        Accounts::add(&path, "alice", Role::Operator, Some("correct horse")).unwrap();
        Accounts::add(&path, "bob", Role::Viewer, Some("battery staple")).unwrap();
        Accounts::add(&path, "bob", Role::Viewer, Some("battery staple 2")).unwrap();
        let a = Accounts::load(&path).unwrap();
        assert_eq!(a.len(), 2, "bob replaced, not added twice");
        assert_eq!(a.verify("alice", "correct horse"), Some(Role::Operator));
        assert_eq!(a.verify("bob", "battery staple 2"), Some(Role::Viewer));
        assert_eq!(a.verify("bob", "battery staple"), None);
        assert_eq!(a.verify("carol", "correct horse"), None);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        for (text, says) in [
            ("alice admin $argon2id$x", ":1: `admin` is not a role"),
            ("# c\nalice operator nothash", ":2: not a password hash"),
            ("alice operator", ":1: expected NAME ROLE HASH"),
            (
                "alice operator certificates",
                ":1: not a password hash (nor `certificate`)",
            ),
        ] {
            let e = Accounts::parse(text, "f").unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        let e = Accounts::add(&path, "<b>", Role::Viewer, Some("long enough")).unwrap_err();
        assert!(e.to_string().contains("not a valid account name"), "{e}");
        let e = Accounts::add(&path, "dave", Role::Viewer, Some("short")).unwrap_err();
        assert!(e.to_string().contains("at least 8"), "{e}");
    }

    #[test]
    fn a_certificate_account_has_no_password_and_only_it_logs_in_by_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts");
        Accounts::add(&path, "alice", Role::Operator, Some("correct horse")).unwrap();
        let a = Accounts::load(&path).unwrap();
        assert!(!a.any_certificate());
        Accounts::add(&path, "ops-bot", Role::Viewer, None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("ops-bot viewer certificate\n"), "{text}");
        let a = Accounts::load(&path).unwrap();
        assert!(a.any_certificate());
        assert_eq!(a.by_certificate("ops-bot"), Some(Role::Viewer));
        assert_eq!(a.by_certificate("alice"), None, "a password account");
        assert_eq!(a.by_certificate("carol"), None, "no account");
        for password in ["certificate", "", "correct horse"] {
            assert_eq!(a.verify("ops-bot", password), None, "{password:?}");
        }
        assert_eq!(a.verify("alice", "correct horse"), Some(Role::Operator));
    }
}
