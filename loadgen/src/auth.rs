//! SMTP AUTH (RFC 4954) on the client side, without I/O: the credentials of
//! `--auth-user`/`--auth-password` or `--auth-file`, checked, and the exact lines
//! each login sends, encoded once before the run so opening a connection only
//! copies bytes. [`crate::client`] sends them.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::cli::AuthMechanism;

/// One `user:password`. The password never leaves this type except on the wire:
/// `Debug` hides it and nothing serializes it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Credential {
    /// A user and password as given; neither may be empty or hold a NUL (PLAIN's
    /// separator, RFC 4616 section 2) or a line break.
    pub fn new(user: &str, password: &str) -> Result<Credential, String> {
        let bad = |s: &str| s.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n'));
        if user.is_empty() {
            return Err("empty user name".into());
        }
        if password.is_empty() {
            return Err(format!("empty password for user {user:?}"));
        }
        if bad(user) || bad(password) {
            return Err(format!(
                "user {user:?}: NUL and line breaks cannot be sent in AUTH"
            ));
        }
        Ok(Credential {
            user: user.to_string(),
            password: password.to_string(),
        })
    }
}

/// Reads an `--auth-file`: one `user:password` a line (the password is all after
/// the first `:`), `#` comments and blank lines ignored, the format the reference
/// server's `auth_users` takes. Errors name the file and the line.
pub fn read_auth_file(path: &Path) -> Result<Vec<Credential>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_auth_lines(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_auth_lines(text: &str) -> Result<Vec<Credential>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let at = |why: String| format!("line {}: {why}", i + 1);
        let (user, password) = line
            .split_once(':')
            .ok_or_else(|| at("expected user:password".into()))?;
        out.push(Credential::new(user.trim(), password).map_err(at)?);
    }
    if out.is_empty() {
        return Err("no user:password line".into());
    }
    Ok(out)
}

/// What one login sends: the AUTH command, then the answer to each 334 challenge
/// in turn, every line ending in CRLF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub mechanism: AuthMechanism,
    pub steps: Vec<Vec<u8>>,
}

impl Login {
    /// PLAIN sends everything with the command (an initial response, RFC 4954
    /// section 4; PLAIN is client-first, so servers take it); LOGIN answers the
    /// server's two challenges, user name then password.
    pub fn new(mechanism: AuthMechanism, c: &Credential) -> Login {
        let line = |text: String| format!("{text}\r\n").into_bytes();
        let steps = match mechanism {
            AuthMechanism::Plain => {
                let blob = format!("\0{}\0{}", c.user, c.password);
                vec![line(format!("AUTH PLAIN {}", BASE64.encode(blob)))]
            }
            AuthMechanism::Login => vec![
                line("AUTH LOGIN".into()),
                line(BASE64.encode(&c.user)),
                line(BASE64.encode(&c.password)),
            ],
        };
        Login { mechanism, steps }
    }

    /// The AUTH command alone, without credentials: sent to a server that did not
    /// advertise the mechanism, so its refusal (503, 504) is what gets counted and
    /// no password goes to a server that did not ask for one.
    pub fn bare(mechanism: AuthMechanism) -> &'static [u8] {
        match mechanism {
            AuthMechanism::Plain => b"AUTH PLAIN\r\n",
            AuthMechanism::Login => b"AUTH LOGIN\r\n",
        }
    }
}

/// Every login of a run, handed out in turn, one per connection, so per-user
/// limits of the server are exercised.
#[derive(Debug)]
pub struct Logins {
    logins: Vec<Login>,
    next: AtomicUsize,
}

impl Logins {
    /// `None` when `credentials` is empty.
    pub fn new(mechanism: AuthMechanism, credentials: &[Credential]) -> Option<Logins> {
        (!credentials.is_empty()).then(|| Logins {
            logins: credentials
                .iter()
                .map(|c| Login::new(mechanism, c))
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// The login for the next connection.
    pub fn next(&self) -> &Login {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.logins.len();
        &self.logins[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_files_parse_with_comments_and_colons_in_passwords() {
        let creds =
            parse_auth_lines("# users\n\nalice:secret\r\nbob:pa:ss\n  # indented comment\n")
                .unwrap();
        assert_eq!(creds.len(), 2);
        assert_eq!(creds[1].user, "bob");
        assert_eq!(creds[1].password, "pa:ss");
    }

    #[test]
    fn bad_auth_files_name_the_line() {
        let rows: [(&str, &str); 4] = [
            ("alice:x\nbob\n", "line 2: expected user:password"),
            (":x\n", "line 1: empty user name"),
            ("alice:\n", "line 1: empty password for user \"alice\""),
            ("# nothing\n\n", "no user:password line"),
        ];
        for (text, want) in rows {
            assert_eq!(parse_auth_lines(text).unwrap_err(), want, "{text:?}");
        }
    }

    #[test]
    fn logins_encode_rfc_4616_and_the_login_challenges() {
        let c = Credential::new("alice", "secret").unwrap();
        // printf '\0alice\0secret' | base64
        assert_eq!(
            Login::new(AuthMechanism::Plain, &c).steps,
            [b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n".to_vec()]
        );
        assert_eq!(
            Login::new(AuthMechanism::Login, &c).steps,
            [
                b"AUTH LOGIN\r\n".to_vec(),
                b"YWxpY2U=\r\n".to_vec(),
                b"c2VjcmV0\r\n".to_vec()
            ]
        );
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn logins_rotate_over_connections() {
        let creds = [
            Credential::new("a", "1").unwrap(),
            Credential::new("b", "2").unwrap(),
        ];
        let logins = Logins::new(AuthMechanism::Login, &creds).unwrap();
        let users: Vec<_> = (0..4).map(|_| logins.next().steps[1].clone()).collect();
        assert_eq!(users[0], users[2]);
        assert_ne!(users[0], users[1]);
        assert!(Logins::new(AuthMechanism::Plain, &[]).is_none());
    }
}
