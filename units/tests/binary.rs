//! The `units` binary is what scripts call; check its output and exit codes.

use std::process::Command;

fn units(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_units"))
        .args(args)
        .output()
        .expect("run units");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[test]
fn prints_bytes_and_seconds() {
    assert_eq!(
        units(&["size", "10MiB"]),
        (0, "10485760".into(), String::new())
    );
    assert_eq!(
        units(&["duration", "1h30m"]),
        (0, "5400".into(), String::new())
    );
    assert_eq!(
        units(&["duration", "150ms"]),
        (0, "0.15".into(), String::new())
    );
}

#[test]
fn bad_value_exits_2_with_the_reason() {
    let (code, out, err) = units(&["duration", "abc"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("\"abc\" is not a duration"), "{err}");
    let (code, _, err) = units(&["size", "10k"]);
    assert_eq!(code, 2);
    assert!(err.contains("ambiguous"), "{err}");
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(units(&["weight", "1kg"]).0, 2);
    assert_eq!(units(&[]).0, 2);
}
