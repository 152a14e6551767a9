//! Logins: a random session token in a cookie (`Secure`, `HttpOnly`, `SameSite=Strict`), kept
//! in memory with its account, role, expiry and CSRF token. Every form that changes something
//! carries the CSRF token, and a request whose `Origin` is another site is refused.

use super::accounts::{hex_of, Role};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "sandstep_console";

/// One login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// The token every changing form must carry.
    pub csrf: String,
    expires: Instant,
}

impl Session {
    /// The audit log's name for the account.
    pub fn who(&self) -> String {
        format!("console:{}", self.user)
    }
}

/// The live sessions.
#[derive(Debug)]
pub struct Sessions {
    by_token: Mutex<HashMap<String, Session>>,
    lasts: Duration,
}

/// 32 random bytes in hex.
fn token() -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system's random source works");
    hex_of(&bytes)
}

impl Sessions {
    pub fn new(lasts: Duration) -> Sessions {
        Sessions {
            by_token: Mutex::default(),
            lasts,
        }
    }

    /// Starts a session; its token (the cookie's value).
    pub fn start(&self, user: &str, role: Role) -> String {
        let t = token();
        let s = Session {
            user: user.to_owned(),
            role,
            csrf: token(),
            expires: Instant::now() + self.lasts,
        };
        let mut all = self.by_token.lock().expect("sessions lock");
        all.retain(|_, s| s.expires > Instant::now());
        all.insert(t.clone(), s);
        t
    }

    /// The live session of a `Cookie` header, if any.
    pub fn of(&self, cookie_header: Option<&str>) -> Option<Session> {
        let t = cookie_value(cookie_header?, COOKIE)?;
        let all = self.by_token.lock().expect("sessions lock");
        all.get(t).filter(|s| s.expires > Instant::now()).cloned()
    }

    /// Ends the session of a `Cookie` header.
    pub fn end(&self, cookie_header: Option<&str>) {
        if let Some(t) = cookie_header.and_then(|h| cookie_value(h, COOKIE)) {
            self.by_token.lock().expect("sessions lock").remove(t);
        }
    }
}

/// The `Set-Cookie` value for a new session token.
pub fn set_cookie(token: &str) -> String {
    format!("{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value that ends the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie_value<'h>(header: &'h str, name: &str) -> Option<&'h str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether a changing request may go on: its form's CSRF token is the session's (compared in
/// constant time), and its `Origin`, when sent, is this console (`host`).
pub fn may_change(session: &Session, form_csrf: &str, origin: Option<&str>, host: &str) -> bool {
    let same_origin = origin.is_none_or(|o| o == format!("https://{host}"));
    let a = session.csrf.as_bytes();
    let b = form_csrf.as_bytes();
    let same_token = a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0;
    same_origin && same_token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_ends_or_expires() {
        let s = Sessions::new(Duration::from_secs(60));
        let t = s.start("alice", Role::Operator);
        let header = format!("other=1; {COOKIE}={t}; x=y");
        let found = s.of(Some(&header)).expect("live");
        assert_eq!((found.user.as_str(), found.role), ("alice", Role::Operator));
        assert_eq!(found.who(), "console:alice");
        assert!(s.of(Some("sandstep_console=forged")).is_none());
        assert!(s.of(None).is_none());
        s.end(Some(&header));
        assert!(s.of(Some(&header)).is_none());
        let short = Sessions::new(Duration::ZERO);
        let t = short.start("bob", Role::Viewer);
        assert!(
            short.of(Some(&format!("{COOKIE}={t}"))).is_none(),
            "expired"
        );
        assert!(set_cookie(&t).contains("Secure; HttpOnly; SameSite=Strict"));
    }

    #[test]
    fn a_change_needs_the_sessions_csrf_token_and_no_foreign_origin() {
        let s = Sessions::new(Duration::from_secs(60));
        let t = s.start("alice", Role::Operator);
        let session = s.of(Some(&format!("{COOKIE}={t}"))).unwrap();
        let csrf = session.csrf.clone();
        assert!(may_change(&session, &csrf, None, "127.0.0.1:8443"));
        assert!(may_change(
            &session,
            &csrf,
            Some("https://127.0.0.1:8443"),
            "127.0.0.1:8443"
        ));
        assert!(!may_change(&session, "", None, "127.0.0.1:8443"));
        assert!(!may_change(&session, &csrf[1..], None, "127.0.0.1:8443"));
        assert!(!may_change(
            &session,
            &csrf,
            Some("https://evil.example"),
            "127.0.0.1:8443"
        ));
    }
}
