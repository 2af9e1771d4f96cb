//! SMTP commands and replies, without any I/O.
//!
//! Command syntax is parsed by `smtp-proto` (Stalwart's fuzzed RFC 5321 parser); this
//! module maps its result onto the small set of commands this server implements and
//! decides which parameters are honoured. Line framing (the 512-octet limit, CRLF) is
//! done by the session before a line gets here.

use std::borrow::Cow;
use std::fmt::Write as _;

use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, Error as ParseError, MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8,
    Request,
};

use crate::auth::Mechanism;

/// RFC 5321 4.5.3.1.4: a command line is at most 512 octets including the CRLF.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 5321 4.5.3.1.6: a text line in DATA is at most 1000 octets including the CRLF.
pub const MAX_DATA_LINE: usize = 1000;

/// A command this server understands, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo {
        host: String,
    },
    Helo {
        host: String,
    },
    Mail {
        from: String,
        size: Option<u64>,
    },
    Rcpt {
        to: String,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    /// RFC 3207.
    StartTls,
    /// RFC 4954: `None` for a mechanism this server does not implement; the initial
    /// response as sent (base64, `=` for an empty one), if any.
    Auth {
        mechanism: Option<Mechanism>,
        initial_response: Option<String>,
    },
    /// A registered SMTP command that this server does not implement (EXPN, BDAT,
    /// ...): answered 502.
    NotImplemented(&'static str),
}

/// Why a command line was not accepted; each maps onto one reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command")]
    Unknown,
    #[error("syntax: {0}")]
    Syntax(&'static str),
    #[error("bad sender address")]
    BadSender,
    #[error("bad recipient address")]
    BadRecipient,
    #[error("parameter not supported: {0}")]
    UnsupportedParameter(String),
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
}

impl CommandError {
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unknown => Reply::new(500, "5.5.1", "Command unrecognized"),
            CommandError::Syntax(syntax) => {
                Reply::new(501, "5.5.4", format!("Syntax error, expected: {syntax}"))
            }
            CommandError::BadSender => Reply::new(501, "5.1.7", "Bad sender address syntax"),
            CommandError::BadRecipient => Reply::new(501, "5.1.3", "Bad recipient address syntax"),
            CommandError::UnsupportedParameter(p) => {
                // The parameter is quoted as sent, but a reply carries no control
                // characters (RFC 5321 4.2: textstring is HT, SP and printable).
                let p: String = p
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect();
                Reply::new(
                    555,
                    "5.5.4",
                    format!("Parameter {p} not recognized or not implemented"),
                )
            }
            CommandError::InvalidParameter(p) => {
                Reply::new(501, "5.5.4", format!("Invalid {p} parameter"))
            }
        }
    }
}

/// Parses one command line (ending in LF, at most [`MAX_COMMAND_LINE`] octets).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let command = match parse_with_smtp_proto(line) {
        Err(e @ (CommandError::BadSender | CommandError::BadRecipient)) => {
            parse_address_literal(line).ok_or(e)?
        }
        other => other?,
    };
    refuse_control_characters(command)
}

/// RFC 5321 allows no control character in a domain (4.1.2) nor in a mailbox, even
/// quoted (`qtextSMTP`, `quoted-pairSMTP`), and neither does RFC 6531. smtp-proto 0.2
/// lets them through; they would be echoed in the EHLO/HELO reply and written into
/// spool headers, so they are refused here.
fn refuse_control_characters(command: Command) -> Result<Command, CommandError> {
    let has_control = |text: &str| text.chars().any(char::is_control);
    match &command {
        Command::Ehlo { host } if has_control(host) => Err(CommandError::Syntax("EHLO domain")),
        Command::Helo { host } if has_control(host) => Err(CommandError::Syntax("HELO domain")),
        Command::Mail { from, .. } if has_control(from) => Err(CommandError::BadSender),
        Command::Rcpt { to } if has_control(to) => Err(CommandError::BadRecipient),
        _ => Ok(command),
    }
}

/// smtp-proto 0.2 refuses address literals (`<user@[192.0.2.1]>`, RFC 5321 4.1.3).
/// Such a line is parsed again with the literal replaced by a placeholder domain,
/// and the literal is put back into the result.
fn parse_address_literal(line: &[u8]) -> Option<Command> {
    let open = memchr::memchr(b'<', line)?;
    let close = open + memchr::memchr(b'>', &line[open..])?;
    let address = std::str::from_utf8(&line[open + 1..close]).ok()?;
    let (local, domain) = address.rsplit_once('@')?;
    let literal = domain.strip_prefix('[')?.strip_suffix(']')?;
    let valid = literal.parse::<std::net::Ipv4Addr>().is_ok()
        || literal
            .strip_prefix("IPv6:")
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok());
    if !valid {
        return None;
    }
    let mut substitute = line[..open + 1].to_vec();
    substitute.extend_from_slice(format!("{local}@address.literal").as_bytes());
    substitute.extend_from_slice(&line[close..]);
    match parse_with_smtp_proto(&substitute).ok()? {
        Command::Mail { size, .. } => Some(Command::Mail {
            from: address.to_string(),
            size,
        }),
        Command::Rcpt { .. } => Some(Command::Rcpt {
            to: address.to_string(),
        }),
        _ => None,
    }
}

fn parse_with_smtp_proto(line: &[u8]) -> Result<Command, CommandError> {
    let request = Request::parse(&mut line.iter()).map_err(|e| match e {
        ParseError::UnknownCommand => CommandError::Unknown,
        ParseError::InvalidSenderAddress => CommandError::BadSender,
        ParseError::InvalidRecipientAddress => CommandError::BadRecipient,
        ParseError::SyntaxError { syntax } => CommandError::Syntax(syntax),
        ParseError::InvalidParameter { param } => CommandError::InvalidParameter(param),
        ParseError::UnsupportedParameter { param } => CommandError::UnsupportedParameter(param),
        // A whole line was given, so "needs more data" means the line is malformed.
        _ => CommandError::Syntax("a complete command line"),
    })?;
    Ok(match request {
        Request::Ehlo { host } => Command::Ehlo { host: host.into() },
        Request::Helo { host } => Command::Helo { host: host.into() },
        Request::Mail { from } => {
            // Only the extensions advertised in the EHLO reply are honoured. `AUTH=`
            // (RFC 4954 5) is accepted and ignored, which the RFC allows ("treat it as
            // <>"): a client that authenticated may send it on every MAIL.
            const HONOURED: u64 = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8;
            let unsupported = from.flags & !HONOURED != 0
                || from.trans_id.is_some()
                || from.env_id.is_some()
                || from.solicit.is_some()
                || from.mtrk.is_some()
                || from.by != 0
                || from.hold_for != 0
                || from.hold_until != 0
                || from.mt_priority != 0;
            if unsupported {
                return Err(CommandError::UnsupportedParameter(
                    "(only SIZE, BODY=7BIT|8BITMIME and SMTPUTF8 are supported)".into(),
                ));
            }
            let size = match declared_size(line) {
                Some(size) => Some(size),
                None => (from.size > 0).then_some(from.size as u64),
            };
            Command::Mail {
                from: from.address.into(),
                size,
            }
        }
        Request::Rcpt { to } => {
            if to.flags != 0 || to.orcpt.is_some() || to.rrvs != 0 {
                return Err(CommandError::UnsupportedParameter(
                    "(no RCPT parameters are supported)".into(),
                ));
            }
            Command::Rcpt {
                to: to.address.into(),
            }
        }
        Request::Data => Command::Data,
        Request::Rset => Command::Rset,
        Request::Noop { .. } => Command::Noop,
        Request::Quit => Command::Quit,
        Request::Vrfy { .. } => Command::Vrfy,
        Request::Help { .. } => Command::Help,
        Request::StartTls => Command::StartTls,
        Request::Auth {
            mechanism,
            initial_response,
        } => Command::Auth {
            mechanism: match mechanism {
                AUTH_PLAIN => Some(Mechanism::Plain),
                AUTH_LOGIN => Some(Mechanism::Login),
                _ => None,
            },
            initial_response: (!initial_response.is_empty()).then(|| initial_response.into()),
        },
        other => Command::NotImplemented(other.name()),
    })
}

/// The value of a `SIZE=` parameter read straight from the line, saturating at
/// `u64::MAX`. smtp-proto 0.2 wraps a saturated size back to a small number
/// (`SIZE=` followed by 27 nines parses as a single digit), which would let an
/// absurd declaration through; this reading is used instead whenever it finds one.
fn declared_size(line: &[u8]) -> Option<u64> {
    let params = &line[memchr::memchr(b'>', line)? + 1..];
    let upper = params.to_ascii_uppercase();
    let start = upper
        .windows(6)
        .position(|w| w == b" SIZE=")
        .map(|i| i + 6)?;
    let digits = upper[start..].iter().take_while(|b| b.is_ascii_digit());
    let mut value: u64 = 0;
    let mut any = false;
    for d in digits {
        any = true;
        value = value.saturating_mul(10).saturating_add(u64::from(d - b'0'));
    }
    any.then_some(value)
}

/// One SMTP reply: a code, an RFC 3463 enhanced status code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: &'static str,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            status,
            text: text.into(),
        }
    }

    /// Appends the reply, CRLF-terminated, to an output buffer.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail.
        let _ = write_line(out, self.code, ' ', self.status, &self.text);
    }

    pub fn ok() -> Self {
        Self::new(250, "2.0.0", "OK")
    }
    pub fn sender_ok() -> Self {
        Self::new(250, "2.1.0", "Sender OK")
    }
    pub fn recipient_ok() -> Self {
        Self::new(250, "2.1.5", "Recipient OK")
    }
    pub fn start_data() -> Self {
        Self::new(354, "", "Start mail input; end with <CRLF>.<CRLF>")
    }
    pub fn message_accepted() -> Self {
        Self::new(250, "2.0.0", "Message accepted for delivery")
    }
    pub fn bye() -> Self {
        Self::new(221, "2.0.0", "Bye")
    }
    pub fn vrfy() -> Self {
        Self::new(
            252,
            "2.5.0",
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }
    pub fn help() -> Self {
        Self::new(
            214,
            "2.0.0",
            "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
        )
    }
    pub fn bad_sequence(text: &'static str) -> Self {
        Self::new(503, "5.5.1", text)
    }
    pub fn not_implemented(command: &str) -> Self {
        Self::new(502, "5.5.1", format!("{command} not implemented"))
    }
    pub fn command_line_too_long() -> Self {
        Self::new(500, "5.5.2", "Line too long")
    }
    pub fn data_line_too_long() -> Self {
        Self::new(
            500,
            "5.5.2",
            "Message refused: a line exceeds 1000 octets (RFC 5321 4.5.3.1.6)",
        )
    }
    pub fn too_many_recipients() -> Self {
        Self::new(452, "4.5.3", "Too many recipients")
    }
    pub fn message_too_big() -> Self {
        Self::new(
            552,
            "5.3.4",
            "Message size exceeds fixed maximum message size",
        )
    }
    pub fn connection_memory_exceeded() -> Self {
        Self::new(
            552,
            "5.3.4",
            "Message exceeds the per-connection memory limit",
        )
    }
    pub fn insufficient_storage() -> Self {
        Self::new(452, "4.3.1", "Insufficient system storage, try again later")
    }
    pub fn storage_failed() -> Self {
        Self::new(451, "4.3.0", "Local error in processing, try again later")
    }
    pub fn too_busy() -> Self {
        Self::new(
            421,
            "4.7.0",
            "Too many connections, try again later; closing connection",
        )
    }
    pub fn rate_limited() -> Self {
        Self::new(
            421,
            "4.7.0",
            "Connection rate limit exceeded, try again later; closing connection",
        )
    }
    pub fn idle_timeout() -> Self {
        Self::new(421, "4.4.2", "Idle timeout exceeded; closing connection")
    }
    pub fn session_timeout() -> Self {
        Self::new(
            421,
            "4.4.2",
            "Session time limit exceeded; closing connection",
        )
    }
    pub fn handshake_timeout() -> Self {
        Self::new(
            421,
            "4.4.2",
            "Timeout waiting for EHLO/HELO; closing connection",
        )
    }
    pub fn shutting_down() -> Self {
        Self::new(421, "4.3.2", "Server shutting down; closing connection")
    }
    /// RFC 3207 4: the client starts its handshake after this.
    pub fn ready_to_start_tls() -> Self {
        Self::new(220, "2.0.0", "Ready to start TLS")
    }
    /// RFC 3207 4: a server that requires TLS answers other commands so.
    pub fn tls_required() -> Self {
        Self::new(530, "5.7.0", "Must issue a STARTTLS command first")
    }
    /// RFC 4954 6.
    pub fn auth_required() -> Self {
        Self::new(530, "5.7.0", "Authentication required")
    }
    /// RFC 4954 6.
    pub fn encryption_required() -> Self {
        Self::new(
            538,
            "5.7.11",
            "Encryption required for requested authentication mechanism",
        )
    }
    pub fn auth_succeeded() -> Self {
        Self::new(235, "2.7.0", "Authentication successful")
    }
    pub fn auth_invalid() -> Self {
        Self::new(535, "5.7.8", "Authentication credentials invalid")
    }
    pub fn auth_malformed() -> Self {
        Self::new(501, "5.5.2", "Cannot decode the authentication data")
    }
    pub fn auth_cancelled() -> Self {
        Self::new(501, "5.5.2", "Authentication cancelled")
    }
    pub fn auth_unknown_mechanism() -> Self {
        Self::new(504, "5.5.4", "Unrecognized authentication type")
    }
    pub fn auth_blocked() -> Self {
        Self::new(
            421,
            "4.7.0",
            "Too many authentication failures; closing connection",
        )
    }
    /// A SASL challenge (RFC 4954 4): `334` and base64 text, no status code.
    pub fn sasl_challenge(base64: &'static str) -> Self {
        Self::new(334, "", base64)
    }
}

fn write_line(
    out: &mut Vec<u8>,
    code: u16,
    sep: char,
    status: &str,
    text: &str,
) -> std::fmt::Result {
    let mut s = String::with_capacity(8 + status.len() + text.len());
    if status.is_empty() {
        write!(s, "{code}{sep}{text}\r\n")?;
    } else {
        write!(s, "{code}{sep}{status} {text}\r\n")?;
    }
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// The banner sent on connect.
pub fn greeting(domain: &str) -> Reply {
    Reply::new(
        220,
        "",
        format!("{domain} ESMTP Stampede smtp-server ready"),
    )
}

/// Everything the server says in answer to one command or message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A one-line reply.
    Reply(Reply),
    /// The EHLO reply: the greeting line, then one line per extension
    /// (RFC 5321 4.1.1.1); every line but the last has `-` after the code.
    Ehlo {
        greeting: String,
        max_message_size: u64,
        /// STARTTLS is offered (TLS configured and not yet active).
        starttls: bool,
        /// AUTH PLAIN LOGIN is offered.
        auth: bool,
    },
}

impl Response {
    pub fn ehlo(domain: &str, client: &str, max_message_size: u64) -> Self {
        Response::Ehlo {
            greeting: format!("{domain} greets {client}"),
            max_message_size,
            starttls: false,
            auth: false,
        }
    }

    /// The EHLO reply with STARTTLS and AUTH offered as given (no effect on others).
    pub fn offering(self, offer_starttls: bool, offer_auth: bool) -> Self {
        match self {
            Response::Ehlo {
                greeting,
                max_message_size,
                ..
            } => Response::Ehlo {
                greeting,
                max_message_size,
                starttls: offer_starttls,
                auth: offer_auth,
            },
            other => other,
        }
    }

    /// The reply code (the same on every line).
    pub fn code(&self) -> u16 {
        match self {
            Response::Reply(reply) => reply.code,
            Response::Ehlo { .. } => 250,
        }
    }

    /// Appends the response, every line CRLF-terminated, to an output buffer.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Response::Reply(reply) => reply.write_to(out),
            Response::Ehlo {
                greeting,
                max_message_size,
                starttls,
                auth,
            } => {
                let size = format!("SIZE {max_message_size}");
                let mut lines = vec![
                    greeting.as_str(),
                    "PIPELINING",
                    &size,
                    "8BITMIME",
                    "ENHANCEDSTATUSCODES",
                    "SMTPUTF8",
                ];
                if *starttls {
                    lines.push("STARTTLS");
                }
                if *auth {
                    lines.push("AUTH PLAIN LOGIN");
                }
                lines.push("HELP");
                let last = lines.len() - 1;
                for (i, line) in lines.iter().enumerate() {
                    let sep = if i == last { ' ' } else { '-' };
                    let _ = write_line(out, 250, sep, "", line);
                }
            }
        }
    }
}

impl From<Reply> for Response {
    fn from(reply: Reply) -> Self {
        Response::Reply(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_with_size_and_body_parses() {
        let cmd = parse_command(b"MAIL FROM:<a@example.com> SIZE=1234 BODY=8BITMIME\r\n");
        assert_eq!(
            cmd,
            Ok(Command::Mail {
                from: "a@example.com".into(),
                size: Some(1234)
            })
        );
    }

    #[test]
    fn absurd_size_declarations_saturate_instead_of_wrapping() {
        let cmd = parse_command(b"MAIL FROM:<a@b> SIZE=999999999999999999999999999\r\n");
        assert_eq!(
            cmd,
            Ok(Command::Mail {
                from: "a@b".into(),
                size: Some(u64::MAX)
            })
        );
    }

    #[test]
    fn address_literals_are_accepted() {
        assert_eq!(
            parse_command(b"RCPT TO:<user@[192.0.2.1]>\r\n"),
            Ok(Command::Rcpt {
                to: "user@[192.0.2.1]".into()
            })
        );
        assert_eq!(
            parse_command(b"MAIL FROM:<u@[IPv6:2001:db8::1]> SIZE=5\r\n"),
            Ok(Command::Mail {
                from: "u@[IPv6:2001:db8::1]".into(),
                size: Some(5)
            })
        );
        assert_eq!(
            parse_command(b"RCPT TO:<user@[not.an.ip]>\r\n"),
            Err(CommandError::BadRecipient)
        );
    }

    #[test]
    fn auth_commands_parse_into_mechanism_and_initial_response() {
        let auth = |mechanism, initial: Option<&str>| {
            Ok(Command::Auth {
                mechanism,
                initial_response: initial.map(String::from),
            })
        };
        let rows: [(&[u8], Result<Command, CommandError>); 6] = [
            (b"AUTH PLAIN\r\n", auth(Some(Mechanism::Plain), None)),
            (
                b"auth plain AGEAYg==\r\n",
                auth(Some(Mechanism::Plain), Some("AGEAYg==")),
            ),
            (
                b"AUTH LOGIN dXNlcg==\r\n",
                auth(Some(Mechanism::Login), Some("dXNlcg==")),
            ),
            (b"AUTH PLAIN =\r\n", auth(Some(Mechanism::Plain), Some("="))),
            (b"AUTH CRAM-MD5\r\n", auth(None, None)),
            (
                b"AUTH\r\n",
                Err(CommandError::Syntax("AUTH mechanism [initial-response]")),
            ),
        ];
        for (line, expected) in rows {
            assert_eq!(parse_command(line), expected, "{line:?}");
        }
    }

    #[test]
    fn null_reverse_path_is_accepted() {
        assert_eq!(
            parse_command(b"MAIL FROM:<>\r\n"),
            Ok(Command::Mail {
                from: String::new(),
                size: None
            })
        );
    }

    #[test]
    fn unknown_and_unimplemented_commands_differ() {
        assert_eq!(parse_command(b"FROB\r\n"), Err(CommandError::Unknown));
        assert_eq!(
            parse_command(b"EXPN list\r\n"),
            Ok(Command::NotImplemented("EXPN"))
        );
    }

    #[test]
    fn the_auth_parameter_of_mail_is_accepted_and_ignored() {
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b.example> AUTH=<>\r\n"),
            Ok(Command::Mail {
                from: "a@b.example".into(),
                size: None
            })
        );
    }

    #[test]
    fn unadvertised_parameters_are_refused() {
        let err = parse_command(b"MAIL FROM:<a@b> RET=FULL\r\n").unwrap_err();
        assert_eq!(err.reply().code, 555);
    }

    #[test]
    fn missing_brackets_is_a_syntax_error() {
        let err = parse_command(b"MAIL FROM:a@b\r\n").unwrap_err();
        assert_eq!(err.reply().code, 501);
    }

    /// Found by the `session` and `command_line` fuzz targets: smtp-proto 0.2 lets
    /// control characters through in hosts and addresses, and they were echoed in the
    /// EHLO/HELO reply and written into spool headers.
    #[test]
    fn control_characters_in_hosts_and_addresses_are_refused() {
        let rows: [(&[u8], u16, &str); 7] = [
            (b"HELO client\x03\x01EHLO\r\n", 501, "5.5.4"),
            (b"EHLO a\x1bb\r\n", 501, "5.5.4"),
            (b"EHLO a\xc2\x85b\r\n", 501, "5.5.4"),
            (b"MAIL FROM:<\"a\x01b\"@c.example>\r\n", 501, "5.1.7"),
            (b"MAIL FROM:<a\x7fb@c.example>\r\n", 501, "5.1.7"),
            (b"RCPT TO:<a\x7fb@c.example>\r\n", 501, "5.1.3"),
            (b"RCPT TO:<\"x\x08y\"@c.example>\r\n", 501, "5.1.3"),
        ];
        for (line, code, status) in rows {
            let reply = match parse_command(line) {
                Ok(command) => panic!("{line:?} accepted as {command:?}"),
                Err(e) => e.reply(),
            };
            assert_eq!((reply.code, reply.status), (code, status), "{line:?}");
        }
        // UTF-8 hosts and addresses stay accepted (RFC 6531).
        assert!(parse_command("EHLO bücher.example\r\n".as_bytes()).is_ok());
        assert!(parse_command("RCPT TO:<jörg@bücher.example>\r\n".as_bytes()).is_ok());
    }

    /// Found by the `command_line` fuzz target: the 555 reply quoted the parameter as
    /// sent, control characters included.
    #[test]
    fn an_unsupported_parameter_is_quoted_without_control_characters() {
        let err = parse_command(b"MAIL FROM:<a@b.example> X\x01\x1b=1\r\n").unwrap_err();
        let reply = err.reply();
        assert_eq!(reply.code, 555);
        assert!(!reply.text.chars().any(char::is_control), "{reply:?}");
        assert!(reply.text.contains("X??=1"), "{reply:?}");
    }

    #[test]
    fn ehlo_reply_lists_extensions_and_ends_with_space_line() {
        let mut out = Vec::new();
        Response::ehlo("mx", "client", 100).write_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("250-SIZE 100\r\n"));
        assert!(text.contains("250-PIPELINING\r\n"));
        assert!(text.ends_with("250 HELP\r\n"));
        assert!(!text.contains("STARTTLS") && !text.contains("AUTH"));
        let mut out = Vec::new();
        Response::ehlo("mx", "client", 100)
            .offering(true, true)
            .write_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n"),
            "{text}"
        );
    }
}
