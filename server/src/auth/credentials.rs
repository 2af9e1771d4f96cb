//! The users file (`auth_users`) and password checks.
//!
//! The file holds one `user:password` or `user:<PHC string>` a line (argon2id, argon2i
//! or argon2d, as real servers store them); `#` comments and blank lines are ignored.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};

use argon2::password_hash::{self, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// A salted digest of a password that was checked once (see [`Fingerprinter`]).
type Fingerprint = [u8; 32];

/// Why the users file cannot be used. Each names the file, and the line when there is
/// one; none repeats a password.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the users file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {problem}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        problem: LineProblem,
    },
    #[error(
        "{}: no users (expected lines user:password or user:<argon2 PHC hash>)",
        path.display()
    )]
    NoUsers { path: PathBuf },
    #[error("cannot get random bytes from the system for the password cache")]
    Random,
}

/// What is wrong with one line of the users file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("expected user:password (no ':' found)")]
    MissingColon,
    #[error("empty user name")]
    EmptyUser,
    #[error("user name {0:?} contains whitespace or a control character")]
    BadUser(String),
    #[error("user {0:?} has an empty password")]
    EmptyPassword(String),
    // A '$' value is never taken as a clear-text password: a mistyped hash would
    // otherwise quietly become a password nobody knows.
    #[error(
        "user {user:?}: the password starts with '$' but is not a valid argon2 PHC hash \
         ({reason}); a clear-text password starting with '$' must be written hashed"
    )]
    InvalidHash { user: String, reason: String },
    #[error(
        "user {user:?}: unsupported hash algorithm {algorithm:?} (argon2id, argon2i or argon2d)"
    )]
    UnsupportedAlgorithm { user: String, algorithm: String },
    #[error("user {user:?} is already defined on line {first_line}")]
    Duplicate { user: String, first_line: usize },
}

/// The users allowed to authenticate and their passwords.
pub struct Credentials {
    users: HashMap<String, User>,
    fingerprinter: Fingerprinter,
    /// Full argon2 checks done, so tests can see the cache at work.
    #[cfg(test)]
    full_checks: AtomicU64,
}

struct User {
    /// Where the user is defined, for the duplicate error.
    line: usize,
    secret: Secret,
}

enum Secret {
    /// A password written in clear in the file, kept only as its fingerprint.
    Clear(Fingerprint),
    /// A validated PHC string, and the fingerprint of the password once one matched.
    ///
    /// This is the auth cache (as in Dovecot): argon2 costs milliseconds of CPU by
    /// design, and a load test authenticates on every connection, so the first correct
    /// check is remembered and later ones cost one cheap fingerprint. It holds at most
    /// one fixed-size value per user of the file, so it is bounded by the file itself;
    /// failed checks are never remembered (a wrong password always pays full price).
    Hashed {
        phc: String,
        verified: OnceLock<Fingerprint>,
    },
}

impl Credentials {
    /// Reads and validates the users file. Every error names the file and the line.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let content = std::fs::read(path).map_err(|source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut credentials = Credentials {
            users: HashMap::new(),
            fingerprinter: Fingerprinter::new()?,
            #[cfg(test)]
            full_checks: AtomicU64::new(0),
        };
        for (index, raw) in content.split(|&b| b == b'\n').enumerate() {
            let line = index + 1;
            let in_line = |problem| CredentialsError::Line {
                path: path.to_owned(),
                line,
                problem,
            };
            let text = std::str::from_utf8(raw).map_err(|_| in_line(LineProblem::NotUtf8))?;
            if let Some((user, password)) = parse_line(text).map_err(in_line)? {
                credentials.add(user, password, line).map_err(in_line)?;
            }
        }
        if credentials.users.is_empty() {
            return Err(CredentialsError::NoUsers {
                path: path.to_owned(),
            });
        }
        Ok(credentials)
    }

    /// Whether `password` is `user`'s password.
    ///
    /// Blocking: a first check against a hashed password runs argon2 (milliseconds of
    /// CPU), so call it off the async runtime's worker threads (`spawn_blocking`).
    /// Unknown users cost the same fingerprint as a cached check.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let fingerprint = self.fingerprinter.fingerprint(password);
        let Some(known) = self.users.get(user) else {
            return false;
        };
        match &known.secret {
            Secret::Clear(expected) => constant_time_eq(&fingerprint, expected),
            Secret::Hashed { phc, verified } => {
                if verified
                    .get()
                    .is_some_and(|cached| constant_time_eq(cached, &fingerprint))
                {
                    return true;
                }
                let matches = self.check_phc(phc, password);
                if matches {
                    // Another thread may have set it first, with the same password.
                    let _ = verified.set(fingerprint);
                }
                matches
            }
        }
    }

    /// How many users the file defines.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    fn add(&mut self, user: &str, password: &str, line: usize) -> Result<(), LineProblem> {
        let secret = if password.starts_with('$') {
            validate_phc(user, password)?;
            Secret::Hashed {
                phc: password.to_owned(),
                verified: OnceLock::new(),
            }
        } else {
            Secret::Clear(self.fingerprinter.fingerprint(password.as_bytes()))
        };
        match self.users.entry(user.to_owned()) {
            Entry::Occupied(first) => Err(LineProblem::Duplicate {
                user: user.to_owned(),
                first_line: first.get().line,
            }),
            Entry::Vacant(slot) => {
                slot.insert(User { line, secret });
                Ok(())
            }
        }
    }

    fn check_phc(&self, phc: &str, password: &[u8]) -> bool {
        #[cfg(test)]
        self.full_checks.fetch_add(1, Ordering::Relaxed);
        // Validated at load; the parameters come from the PHC string itself.
        PasswordHash::new(phc)
            .is_ok_and(|hash| Argon2::default().verify_password(password, &hash).is_ok())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// Hashes `password` as a PHC string with argon2id and the argon2 crate's default
/// costs (19 MiB, 2 passes: OWASP's recommendation), for the users file.
pub fn hash_password(password: &str) -> Result<String, password_hash::Error> {
    let mut salt = [0u8; argon2::RECOMMENDED_SALT_LEN];
    random_bytes(&mut salt).map_err(|_| password_hash::Error::Crypto)?;
    let salt = SaltString::encode_b64(&salt)?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Splits a line into user and password; `None` for blank and comment lines.
fn parse_line(line: &str) -> Result<Option<(&str, &str)>, LineProblem> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    // The user name cannot hold ':', the password can.
    let (user, password) = line.split_once(':').ok_or(LineProblem::MissingColon)?;
    if user.is_empty() {
        return Err(LineProblem::EmptyUser);
    }
    if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(LineProblem::BadUser(user.to_owned()));
    }
    if password.is_empty() {
        return Err(LineProblem::EmptyPassword(user.to_owned()));
    }
    Ok(Some((user, password)))
}

/// Checks everything about a PHC string that can be checked without the password,
/// so that a hash that could never match is a load error, not a silent 535.
fn validate_phc(user: &str, phc: &str) -> Result<(), LineProblem> {
    let invalid = |reason: String| LineProblem::InvalidHash {
        user: user.to_owned(),
        reason,
    };
    let hash = PasswordHash::new(phc).map_err(|e| invalid(e.to_string()))?;
    if Algorithm::try_from(hash.algorithm).is_err() {
        // Name the algorithm only of a complete hash: in `$word` the word may be a
        // clear-text password, which an error message must not repeat.
        return Err(if hash.salt.is_some() && hash.hash.is_some() {
            LineProblem::UnsupportedAlgorithm {
                user: user.to_owned(),
                algorithm: hash.algorithm.to_string(),
            }
        } else {
            invalid("not an argon2 hash".into())
        });
    }
    if let Some(version) = hash.version {
        Version::try_from(version).map_err(|e| invalid(e.to_string()))?;
    }
    Params::try_from(&hash).map_err(|e| invalid(e.to_string()))?;
    let salt = hash.salt.ok_or_else(|| invalid("no salt".into()))?;
    let mut salt_bytes = [0u8; 64];
    let salt_len = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| invalid(format!("salt: {e}")))?
        .len();
    if salt_len < argon2::MIN_SALT_LEN {
        return Err(invalid(format!(
            "salt of {salt_len} bytes, argon2 needs at least {}",
            argon2::MIN_SALT_LEN
        )));
    }
    if hash.hash.is_none() {
        return Err(invalid("no hash value".into()));
    }
    Ok(())
}

/// Turns passwords into [`Fingerprint`]s: SHA-256 over a random 16-byte prefix drawn
/// once per process, then the password.
///
/// The fingerprint needs no slowness: it only stands in for a password the full
/// argon2 check has already proven, and anyone able to read it in this process's
/// memory could as well read the passwords arriving in clear. It must be cheap, since
/// a load test authenticates on every connection: argon2 at its minimum cost measured
/// 20-45 µs here, SHA-256 well under one. The secret prefix makes fingerprints useless
/// outside this process. The SHA-256 is ring's, reached through the rustls provider
/// the server already links, rather than another dependency.
struct Fingerprinter {
    sha256: &'static dyn rustls::crypto::hash::Hash,
    prefix: [u8; 16],
}

impl Fingerprinter {
    fn new() -> Result<Self, CredentialsError> {
        let mut prefix = [0u8; 16];
        random_bytes(&mut prefix).map_err(|_| CredentialsError::Random)?;
        Ok(Self {
            sha256: sha256(),
            prefix,
        })
    }

    fn fingerprint(&self, password: &[u8]) -> Fingerprint {
        let mut context = self.sha256.start();
        context.update(&self.prefix);
        context.update(password);
        let digest = context.finish();
        let mut fingerprint = Fingerprint::default();
        // SHA-256 gives exactly the 32 bytes of a fingerprint.
        for (to, from) in fingerprint.iter_mut().zip(digest.as_ref()) {
            *to = *from;
        }
        fingerprint
    }
}

/// ring's SHA-256, as carried by the TLS 1.3 cipher suite named for it.
fn sha256() -> &'static dyn rustls::crypto::hash::Hash {
    match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(suite) => suite.common.hash_provider,
        rustls::SupportedCipherSuite::Tls12(suite) => suite.common.hash_provider,
    }
}

/// The server's one source of secure randomness is its TLS stack's (ring's).
fn random_bytes(buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(buf)
}

/// Compares without an early exit, so the time taken does not tell how many leading
/// bytes matched.
fn constant_time_eq(a: &Fingerprint, b: &Fingerprint) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A PHC string at argon2's minimum costs, so the tests stay fast in debug builds.
    fn cheap_phc(password: &str, algorithm: Algorithm) -> String {
        let params = Params::new(Params::MIN_M_COST, 1, 1, None).unwrap();
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        Argon2::new(algorithm, Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    fn users_file(content: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content.as_bytes()).unwrap();
        file
    }

    fn load(content: &str) -> Result<Credentials, CredentialsError> {
        Credentials::load(users_file(content).path())
    }

    fn full_checks(credentials: &Credentials) -> u64 {
        credentials.full_checks.load(Ordering::Relaxed)
    }

    #[test]
    fn clear_and_hashed_users_verify() {
        let content = format!(
            "# submission users\n\
             \n\
             alice:wonderland\r\n\
             \x20  # indented comment\n\
             bob:pass:with:colons and spaces \n\
             carol:{}\n\
             dave:{}\n\
             erin:{}\n",
            cheap_phc("carol-pw", Algorithm::Argon2id),
            cheap_phc("dave-pw", Algorithm::Argon2i),
            cheap_phc("erin-pw", Algorithm::Argon2d),
        );
        let credentials = load(&content).unwrap();
        assert_eq!(credentials.len(), 5);
        let rows: [(&str, &[u8], bool); 14] = [
            ("alice", b"wonderland", true),
            ("alice", b"wonderland\r", false),
            ("alice", b"Wonderland", false),
            ("alice", b"wonderlan", false),
            ("alice", b"", false),
            ("Alice", b"wonderland", false),
            ("bob", b"pass:with:colons and spaces ", true),
            ("bob", b"pass:with:colons and spaces", false),
            ("carol", b"carol-pw", true),
            ("carol", b"dave-pw", false),
            ("dave", b"dave-pw", true),
            ("erin", b"erin-pw", true),
            ("erin", b"erin-p", false),
            ("mallory", b"wonderland", false),
        ];
        for (user, password, expected) in rows {
            assert_eq!(
                credentials.verify(user, password),
                expected,
                "{user}:{}",
                String::from_utf8_lossy(password)
            );
        }
    }

    #[test]
    fn a_repeated_correct_login_skips_argon2() {
        let credentials = load(&format!("u:{}\n", cheap_phc("pw", Algorithm::Argon2id))).unwrap();
        assert!(credentials.verify("u", b"pw"));
        assert_eq!(full_checks(&credentials), 1);
        for _ in 0..5 {
            assert!(credentials.verify("u", b"pw"));
        }
        assert_eq!(
            full_checks(&credentials),
            1,
            "cached after the first success"
        );
    }

    #[test]
    fn failed_checks_are_never_cached() {
        let credentials = load(&format!("u:{}\n", cheap_phc("pw", Algorithm::Argon2id))).unwrap();
        assert!(!credentials.verify("u", b"wrong"));
        assert!(!credentials.verify("u", b"wrong"));
        assert_eq!(full_checks(&credentials), 2);
        assert!(credentials.verify("u", b"pw"));
        // A wrong password after a cached success still gets the full check, and fails.
        assert!(!credentials.verify("u", b"wrong"));
        assert_eq!(full_checks(&credentials), 4);
        assert!(credentials.verify("u", b"pw"));
        assert_eq!(full_checks(&credentials), 4);
    }

    #[test]
    fn clear_text_passwords_never_need_argon2() {
        let credentials = load("u:pw\n").unwrap();
        assert!(credentials.verify("u", b"pw"));
        assert!(!credentials.verify("u", b"px"));
        assert_eq!(full_checks(&credentials), 0);
    }

    #[test]
    fn concurrent_checks_agree() {
        let content = format!("u:{}\nv:plain\n", cheap_phc("pw", Algorithm::Argon2id));
        let credentials = std::sync::Arc::new(load(&content).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let credentials = credentials.clone();
                std::thread::spawn(move || {
                    (0..20).all(|_| {
                        credentials.verify("u", b"pw")
                            && credentials.verify("v", b"plain")
                            && !credentials.verify("u", format!("bad{i}").as_bytes())
                    })
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().unwrap());
        }
    }

    #[test]
    fn hash_password_writes_a_phc_string_the_file_accepts() {
        let phc = hash_password("s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert_ne!(hash_password("s3cret").unwrap(), phc, "random salt");
        let credentials = load(&format!("user:{phc}\n")).unwrap();
        assert!(credentials.verify("user", b"s3cret"));
        assert!(!credentials.verify("user", b"s3cret "));
    }

    #[test]
    fn bad_lines_are_errors_naming_file_and_line() {
        let good = cheap_phc("pw", Algorithm::Argon2id);
        let bcrypt = "$2y$10$abcdefghijklmnopqrstuu5TQJ5mD/RrdBXg9z6JAn8Xar4w6fMfG";
        let rows: Vec<(String, usize, &str)> = vec![
            ("a:1\nno colon here\n".into(), 2, "no ':' found"),
            (":pw\n".into(), 1, "empty user name"),
            ("a b:pw\n".into(), 1, "whitespace"),
            (" a:pw\n".into(), 1, "whitespace"),
            ("a:\n".into(), 1, "empty password"),
            ("a:1\nb:2\na:3\n".into(), 3, "already defined on line 1"),
            (
                "a:$argon2id$oops\n".into(),
                1,
                "not a valid argon2 PHC hash",
            ),
            ("a:$secret\n".into(), 1, "not a valid argon2 PHC hash"),
            (format!("a:{bcrypt}\n"), 1, "not a valid argon2 PHC hash"),
            (
                "a:$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n".into(),
                1,
                "unsupported hash algorithm \"pbkdf2-sha256\"",
            ),
            (
                format!("a:{}\n", good.replace("$v=19", "$v=20")),
                1,
                "not a valid argon2 PHC hash",
            ),
            (
                "a:$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaGhhc2hoYXNo\n".into(),
                1,
                "salt of 4 bytes",
            ),
            (
                "a:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ\n".into(),
                1,
                "no hash value",
            ),
        ];
        for (content, line, problem) in rows {
            let file = users_file(&content);
            let message = match Credentials::load(file.path()) {
                Ok(_) => panic!("{content:?} loaded"),
                Err(e) => e.to_string(),
            };
            let prefix = format!("{}:{line}: ", file.path().display());
            assert!(
                message.starts_with(&prefix) && message.contains(problem),
                "{content:?} gave {message:?}, expected {prefix}...{problem}..."
            );
        }
    }

    #[test]
    fn errors_never_show_a_password() {
        for content in ["a:topsecret\na:topsecret\n", "a:$topsecret\n"] {
            let message = load(content).err().unwrap().to_string();
            assert!(!message.contains("topsecret"), "{message}");
        }
    }

    #[test]
    fn a_non_utf8_line_is_an_error() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"a:1\nb:\xff\n").unwrap();
        let message = Credentials::load(file.path()).err().unwrap().to_string();
        assert_eq!(message, format!("{}:2: not UTF-8", file.path().display()));
    }

    #[test]
    fn a_file_without_users_is_an_error() {
        for content in ["", "# only a comment\n\n"] {
            let message = load(content).err().unwrap().to_string();
            assert!(message.contains("no users"), "{message}");
        }
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.txt");
        let message = Credentials::load(&path).err().unwrap().to_string();
        assert!(
            message.starts_with(&format!("cannot read the users file {}: ", path.display())),
            "{message}"
        );
    }

    #[test]
    fn fingerprints_are_sha256_with_a_per_process_prefix() {
        let digest = sha256().hash(b"abc");
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        // FIPS 180-2's "abc" example.
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let (one, two) = (Fingerprinter::new().unwrap(), Fingerprinter::new().unwrap());
        assert_eq!(one.fingerprint(b"pw"), one.fingerprint(b"pw"));
        assert_ne!(one.fingerprint(b"pw"), one.fingerprint(b"px"));
        assert_ne!(one.fingerprint(b"pw"), two.fingerprint(b"pw"));
    }

    #[test]
    fn debug_output_hides_users_and_secrets() {
        let credentials = load("alice:wonderland\n").unwrap();
        let shown = format!("{credentials:?}");
        assert!(
            !shown.contains("alice") && !shown.contains("wonderland"),
            "{shown}"
        );
    }
}
