//! SMTP AUTH (RFC 4954) building blocks, all free of network I/O:
//! - `credentials`: the users file (`auth_users`), password checks with argon2 and a
//!   cache of successful checks;
//! - `sasl`: the PLAIN (RFC 4616) and LOGIN mechanisms' wire decoding;
//! - `guard`: the per-IP limit on failed attempts (`auth_max_failures` per
//!   `auth_failure_window`), the brute-force defence.
//!
//! The session decides what to answer; these types only say whether a credential is
//! well formed, whether it is right, and whether an address has failed too often.
//!
//! Public (not just crate-visible) so that integration tests can write users files
//! with real argon2 hashes through [`hash_password`].

mod credentials;
mod guard;
mod sasl;

pub use credentials::{Credentials, CredentialsError, LineProblem, hash_password};
pub use guard::FailureGuard;
pub use sasl::{
    LOGIN_PASSWORD_CHALLENGE, LOGIN_USER_CHALLENGE, Mechanism, PlainCredentials, SaslError,
    decode_base64, decode_login_user, decode_plain,
};
