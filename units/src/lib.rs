//! One grammar for sizes and durations, shared by every Stampede binary and script.
//!
//! Before this crate, `10k` meant 10,000 bytes to `smtp-server` and 10,240 to `loadgen`,
//! and loadgen's durations took no units while the server's did. Every flag, config key
//! and script option that takes a size or a duration now goes through these two
//! functions (scripts through the `units` binary), so a value means the same thing
//! everywhere.
//!
//! - Sizes: a number with an optional unit. `KiB`/`MiB`/`GiB`/`TiB` are binary (1024),
//!   `KB`/`MB`/`GB`/`TB` decimal (1000), `B` or no unit is bytes; case does not matter.
//!   A bare `k`, `m`, `g` or `t` is refused: half of all users read it one way and half
//!   the other, so the error names both spellings.
//! - Durations: `150ms`, `30s`, `2m`, `1h30m`, `1h 30m`, or a plain number of seconds
//!   (`30`, `0.5`).
//!
//! The grammar itself comes from well-kept crates (`bytesize`, `humantime`); this crate
//! adds only the two rules they do not have (no ambiguous bare prefix, plain seconds)
//! and typed errors that quote the value.

use std::time::Duration;

/// Why a size or duration was refused. The message quotes the value and says what
/// would have been accepted, so a caller only has to add the flag or key name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error(
        "{value:?} is ambiguous: write {number}{prefix}iB ({binary} bytes) or {number}{prefix}B ({decimal} bytes)"
    )]
    AmbiguousSize {
        value: String,
        number: String,
        prefix: char,
        binary: u64,
        decimal: u64,
    },
    #[error("{value:?} is not a size (expected e.g. 2500, 64KiB, 10MiB, 1GiB or 10MB)")]
    BadSize { value: String },
    #[error("{value:?} is too large a size")]
    SizeOverflow { value: String },
    #[error("{value:?} is not a duration (expected e.g. 150ms, 30s, 2m, 1h30m or plain seconds)")]
    BadDuration { value: String },
}

/// Parses a byte size: `2500`, `64KiB`, `1.5MiB`, `10MB`, `1GiB`, `10 KiB`.
pub fn parse_size(value: &str) -> Result<u64, UnitError> {
    let text = value.trim();
    let (number, unit) = split_number(text);
    if number.is_empty() {
        return Err(UnitError::BadSize {
            value: value.to_string(),
        });
    }
    refuse_bare_prefix(value, number, unit.trim())?;
    let bytes = text
        .parse::<bytesize::ByteSize>()
        .map_err(|_| UnitError::BadSize {
            value: value.to_string(),
        })?
        .as_u64();
    // bytesize saturates instead of failing; a saturated value is never what was meant.
    if bytes == u64::MAX {
        return Err(UnitError::SizeOverflow {
            value: value.to_string(),
        });
    }
    Ok(bytes)
}

/// Parses a duration: `150ms`, `30s`, `2m`, `1h30m`, or plain seconds (`30`, `0.5`).
pub fn parse_duration(value: &str) -> Result<Duration, UnitError> {
    let text = value.trim();
    let bad = || UnitError::BadDuration {
        value: value.to_string(),
    };
    if text.is_empty() {
        return Err(bad());
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let seconds: f64 = text.parse().map_err(|_| bad())?;
        return Duration::try_from_secs_f64(seconds).map_err(|_| bad());
    }
    humantime::parse_duration(text).map_err(|_| bad())
}

/// Splits `1.5MiB` into (`1.5`, `MiB`).
fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    text.split_at(end)
}

/// `10k` reads as 10,000 to some users and 10,240 to others; refuse it and name both.
fn refuse_bare_prefix(value: &str, number: &str, unit: &str) -> Result<(), UnitError> {
    let mut chars = unit.chars();
    let (Some(prefix), None) = (chars.next(), chars.next()) else {
        return Ok(());
    };
    let exponent = match prefix.to_ascii_lowercase() {
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        _ => return Ok(()),
    };
    let n: f64 = number.parse().unwrap_or(0.0);
    let scaled = |base: f64| (n * base.powi(exponent)).round() as u64;
    Err(UnitError::AmbiguousSize {
        value: value.to_string(),
        number: number.to_string(),
        prefix: prefix.to_ascii_uppercase(),
        binary: scaled(1024.0),
        decimal: scaled(1000.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_binary_and_decimal_units() {
        let table: &[(&str, u64)] = &[
            ("2500", 2500),
            ("0", 0),
            ("10B", 10),
            ("64KiB", 65_536),
            ("64kib", 65_536),
            ("10 KiB", 10_240),
            ("1.5MiB", 1_572_864),
            ("10MiB", 10_485_760),
            ("1GiB", 1_073_741_824),
            ("10KB", 10_000),
            ("10kB", 10_000),
            ("10MB", 10_000_000),
            ("2GB", 2_000_000_000),
        ];
        for (input, bytes) in table {
            assert_eq!(parse_size(input), Ok(*bytes), "{input}");
        }
    }

    #[test]
    fn bare_prefix_is_refused_naming_both_spellings() {
        for input in ["10k", "10K", "10m", "1g"] {
            let err = parse_size(input).unwrap_err().to_string();
            assert!(err.contains("ambiguous"), "{input}: {err}");
        }
        let err = parse_size("10k").unwrap_err().to_string();
        assert!(err.contains("10KiB (10240 bytes)"), "{err}");
        assert!(err.contains("10KB (10000 bytes)"), "{err}");
    }

    #[test]
    fn bad_sizes_are_refused() {
        for input in [
            "",
            "ten",
            "-1",
            "10 parsecs",
            "KiB",
            "99999999999999999999GiB",
        ] {
            assert!(parse_size(input).is_err(), "{input:?} was accepted");
        }
        assert!(
            parse_size("ten")
                .unwrap_err()
                .to_string()
                .contains("\"ten\"")
        );
    }

    #[test]
    fn durations_with_units_and_plain_seconds() {
        let table: &[(&str, Duration)] = &[
            ("150ms", Duration::from_millis(150)),
            ("30s", Duration::from_secs(30)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("1h 30m", Duration::from_secs(5400)),
            ("30", Duration::from_secs(30)),
            ("0.5", Duration::from_millis(500)),
            ("0", Duration::ZERO),
        ];
        for (input, expected) in table {
            assert_eq!(parse_duration(input), Ok(*expected), "{input}");
        }
    }

    #[test]
    fn bad_durations_are_refused() {
        for input in ["", "soon", "-1", "-1s", "10 parsecs", "1..5", "abc"] {
            assert!(parse_duration(input).is_err(), "{input:?} was accepted");
        }
        assert!(
            parse_duration("abc")
                .unwrap_err()
                .to_string()
                .contains("\"abc\" is not a duration")
        );
    }
}
