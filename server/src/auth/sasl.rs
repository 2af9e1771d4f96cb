//! The SASL mechanisms the server offers, PLAIN (RFC 4616) and LOGIN (the de-facto
//! draft-murchison-sasl-login), decoded from the base64 lines of RFC 4954.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The LOGIN mechanism's first challenge, `Username:` in base64 (sent as `334 ...`).
pub const LOGIN_USER_CHALLENGE: &str = "VXNlcm5hbWU6";
/// The LOGIN mechanism's second challenge, `Password:` in base64.
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// A SASL mechanism the server implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    /// Every mechanism, in the order the EHLO `AUTH` line lists them.
    pub const ALL: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

    /// The mechanism named `name` (SASL names are case-insensitive, RFC 4422 §3.1).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name))
    }

    /// The registered name, as advertised.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a client's SASL response cannot be used (all answered `501 5.5.2`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client answered `*` (RFC 4954 §4).
    #[error("authentication cancelled by the client")]
    Cancelled,
    #[error("invalid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("a PLAIN response is authzid NUL authcid NUL password")]
    PlainFields,
    #[error("empty user name")]
    EmptyUser,
    #[error("empty password")]
    EmptyPassword,
    #[error("the user name or authorization identity is not UTF-8")]
    NotUtf8,
}

/// A decoded PLAIN response. `Debug` leaves the password out, so logging one is safe.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    /// Authorization identity: who the client acts as; empty means the user itself.
    pub authzid: String,
    /// Authentication identity: the user whose password is given.
    pub user: String,
    pub password: Vec<u8>,
}

impl fmt::Debug for PlainCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainCredentials")
            .field("authzid", &self.authzid)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Decodes one client line of an AUTH exchange (initial response or an answer to a
/// `334` challenge).
///
/// Strict RFC 4648 base64: the standard alphabet, canonical padding, no whitespace and
/// no stray bits, so one credential has one spelling. `*` is the client cancelling, and
/// a lone `=` is an empty response (RFC 4954 §4's spelling of a zero-length initial
/// response).
pub fn decode_base64(b64: &str) -> Result<Vec<u8>, SaslError> {
    match b64 {
        "*" => Err(SaslError::Cancelled),
        "=" => Ok(Vec::new()),
        _ => Ok(STANDARD.decode(b64)?),
    }
}

/// Decodes a PLAIN response: `[authzid] NUL authcid NUL passwd` (RFC 4616 §2), where
/// authcid and passwd are non-empty and none of the three contains NUL.
pub fn decode_plain(b64: &str) -> Result<PlainCredentials, SaslError> {
    let message = decode_base64(b64)?;
    let mut fields = message.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslError::PlainFields);
    };
    if user.is_empty() {
        return Err(SaslError::EmptyUser);
    }
    if password.is_empty() {
        return Err(SaslError::EmptyPassword);
    }
    Ok(PlainCredentials {
        authzid: utf8(authzid)?,
        user: utf8(user)?,
        password: password.to_vec(),
    })
}

/// Decodes the LOGIN mechanism's answer to [`LOGIN_USER_CHALLENGE`]: a non-empty
/// UTF-8 user name. (The password answer is plain [`decode_base64`].)
pub fn decode_login_user(b64: &str) -> Result<String, SaslError> {
    let user = decode_base64(b64)?;
    if user.is_empty() {
        return Err(SaslError::EmptyUser);
    }
    utf8(&user)
}

fn utf8(bytes: &[u8]) -> Result<String, SaslError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| SaslError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    #[test]
    fn mechanism_names_are_case_insensitive() {
        let rows = [
            ("PLAIN", Some(Mechanism::Plain)),
            ("plain", Some(Mechanism::Plain)),
            ("Login", Some(Mechanism::Login)),
            ("LOGIN", Some(Mechanism::Login)),
            ("CRAM-MD5", None),
            ("", None),
            ("PLAIN ", None),
        ];
        for (name, expected) in rows {
            assert_eq!(Mechanism::parse(name), expected, "{name:?}");
        }
        assert_eq!(Mechanism::Login.to_string(), "LOGIN");
    }

    #[test]
    fn login_challenges_are_the_usual_prompts() {
        assert_eq!(decode_base64(LOGIN_USER_CHALLENGE).unwrap(), b"Username:");
        assert_eq!(
            decode_base64(LOGIN_PASSWORD_CHALLENGE).unwrap(),
            b"Password:"
        );
    }

    #[test]
    fn base64_is_strict() {
        let rows: [(&str, Result<&[u8], ()>); 12] = [
            ("dGVzdA==", Ok(b"test")),
            ("dGVzdDE=", Ok(b"test1")),
            ("dGVzdDEy", Ok(b"test12")),
            ("", Ok(b"")),
            ("=", Ok(b"")),
            ("dGVzdA", Err(())),     // padding missing
            ("dGVzdA=", Err(())),    // padding short
            ("dGVzdA===", Err(())),  // padding long
            ("dGVz dA==", Err(())),  // whitespace
            ("dGVzdA==\r", Err(())), // line end left in
            ("dGVzdB==", Err(())),   // non-zero trailing bits
            ("dGVzdA-_", Err(())),   // URL-safe alphabet
        ];
        for (input, expected) in rows {
            let got = decode_base64(input);
            match expected {
                Ok(bytes) => assert_eq!(got.as_deref(), Ok(bytes), "{input:?}"),
                Err(()) => assert!(
                    matches!(got, Err(SaslError::Base64(_))),
                    "{input:?} gave {got:?}"
                ),
            }
        }
    }

    #[test]
    fn a_star_cancels() {
        assert_eq!(decode_base64("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_plain("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_login_user("*"), Err(SaslError::Cancelled));
    }

    #[test]
    fn plain_decodes_the_three_fields() {
        let got = decode_plain(&b64(b"\0alice\0s3cret:pw")).unwrap();
        assert_eq!(got.authzid, "");
        assert_eq!(got.user, "alice");
        assert_eq!(got.password, b"s3cret:pw");

        let got = decode_plain(&b64(b"admin\0alice\0pw")).unwrap();
        assert_eq!(
            (got.authzid.as_str(), got.user.as_str()),
            ("admin", "alice")
        );

        // RFC 4616 §4's example: UTF-8 user and password.
        let got = decode_plain(&b64("\0tim\0tanstaaftanstaaf".as_bytes())).unwrap();
        assert_eq!(got.user, "tim");
        let got = decode_plain(&b64("\0jürgen\0pässword".as_bytes())).unwrap();
        assert_eq!(got.user, "jürgen");
        assert_eq!(got.password, "pässword".as_bytes());
    }

    #[test]
    fn plain_rejects_malformed_messages() {
        let rows: [(&[u8], SaslError); 9] = [
            (b"alice\0pw", SaslError::PlainFields),
            (b"alice", SaslError::PlainFields),
            (b"", SaslError::PlainFields),
            (b"\0alice\0pw\0extra", SaslError::PlainFields),
            (b"\0\0pw", SaslError::EmptyUser),
            (b"\0alice\0", SaslError::EmptyPassword),
            (b"\0\xff\xfe\0pw", SaslError::NotUtf8),
            (b"\xc3\0alice\0pw", SaslError::NotUtf8),
            (b"\0\0", SaslError::EmptyUser),
        ];
        for (message, expected) in rows {
            assert_eq!(decode_plain(&b64(message)), Err(expected), "{message:?}");
        }
        assert!(matches!(
            decode_plain("not base64!"),
            Err(SaslError::Base64(_))
        ));
    }

    #[test]
    fn login_user_must_be_non_empty_utf8() {
        assert_eq!(decode_login_user(&b64(b"alice")).as_deref(), Ok("alice"));
        assert_eq!(decode_login_user("="), Err(SaslError::EmptyUser));
        assert_eq!(decode_login_user(&b64(b"\xff")), Err(SaslError::NotUtf8));
    }

    #[test]
    fn debug_output_hides_the_password() {
        let creds = decode_plain(&b64(b"\0alice\0hunter2")).unwrap();
        let shown = format!("{creds:?}");
        assert!(
            shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
