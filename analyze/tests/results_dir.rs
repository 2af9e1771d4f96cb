//! `STAMPEDE_RESULTS_DIR`: where `list`, `latest` and `summary` look when no
//! `--dir` is given (the default is `results/` under the working directory).

mod common;

use std::path::Path;
use std::process::Command;

use common::{Builder, s, spread};

/// `analyze args` in `cwd`, with `STAMPEDE_RESULTS_DIR` set to `results_dir`.
fn analyze_with_env(cwd: &Path, results_dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_analyze"))
        .args(args)
        .current_dir(cwd)
        .env("STAMPEDE_RESULTS_DIR", results_dir)
        .output()
        .expect("analyze runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().expect("analyze exited"), stdout)
}

#[test]
fn the_results_directory_comes_from_stampede_results_dir_unless_dir_is_given() {
    let cwd = tempfile::tempdir().unwrap();
    let default_dir = cwd.path().join("results");
    let chosen_dir = cwd.path().join("elsewhere");
    let flag_dir = cwd.path().join("flagged");
    let lat = spread(100, 1_000, 5_000);
    for (dir, name) in [
        (&default_dir, "in-default.json"),
        (&chosen_dir, "in-env.json"),
        (&flag_dir, "in-flag.json"),
    ] {
        std::fs::create_dir(dir).unwrap();
        Builder::burst(&lat, 2.0).write(dir, name);
    }

    for verb in ["list", "latest", "summary"] {
        let (code, stdout) = analyze_with_env(cwd.path(), &chosen_dir, &[verb]);
        assert_eq!(code, 0, "{verb}: {stdout}");
        assert!(stdout.contains("in-env"), "{verb}: {stdout}");
        assert!(!stdout.contains("in-default"), "{verb}: {stdout}");
    }
    // The flag beats the environment.
    let (code, stdout) =
        analyze_with_env(cwd.path(), &chosen_dir, &["list", "--dir", s(&flag_dir)]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("in-flag") && !stdout.contains("in-env"),
        "{stdout}"
    );
}

/// `stress-test.sh test-limits` writes its `stampede.limits.v1` documents into
/// `results/` beside the runs: `list` and `summary` name them and still exit 0,
/// where an unreadable file would make them exit 2.
#[test]
fn limits_documents_in_the_results_directory_are_named_not_called_unreadable() {
    use report::limits::{LIMITS_SCHEMA_V1, LimitsDocument};

    let dir = tempfile::tempdir().unwrap();
    let lat = spread(100, 1_000, 5_000);
    Builder::burst(&lat, 2.0).write(dir.path(), "run.json");
    let doc = LimitsDocument {
        schema: LIMITS_SCHEMA_V1.into(),
        server: "127.0.0.1:2525".into(),
        admin: None,
        started_at: chrono::Utc::now(),
        duration_s: 1.0,
        source_addresses: vec![],
        max_case_time_s: 60.0,
        expectations: Default::default(),
        cases: vec![],
    };
    doc.save(&dir.path().join("limits-server1.json")).unwrap();

    let (code, stdout) = analyze_with_env(dir.path(), dir.path(), &["list"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("run.json"), "{stdout}");
    assert!(
        stdout.contains("limits documents (analyze show FILE): limits-server1.json"),
        "{stdout}"
    );
    let (code, stdout) = analyze_with_env(dir.path(), dir.path(), &["summary"]);
    assert_eq!(code, 0, "{stdout}");

    // A file that really cannot be read still makes list exit 2.
    std::fs::write(dir.path().join("broken.json"), "{").unwrap();
    let (code, _) = analyze_with_env(dir.path(), dir.path(), &["list"]);
    assert_eq!(code, 2);
}
