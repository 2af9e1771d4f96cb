//! Result files stay readable by whatever read PrixFixe's: every key of each file
//! from PrixFixe's Python generator (the fixtures in report/tests/fixtures/prixfixe)
//! is in a Stampede result of the same mode, with a value of the same JSON kind.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

use common::{TestServer, config, run};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../report/tests/fixtures/prixfixe");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "PrixFixe fixtures in {}", dir.display());
    files
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Where `theirs` has a key that `ours` lacks or holds as another kind of value,
/// as `path: problem`. Maps whose keys are data (`error_breakdown`) are compared as
/// maps, not key by key.
fn missing(theirs: &Value, ours: &Value, path: &str, out: &mut Vec<String>) {
    let (Value::Object(theirs), Value::Object(ours)) = (theirs, ours) else {
        return;
    };
    for (key, their_value) in theirs {
        let here = format!("{path}{key}");
        match ours.get(key) {
            None => out.push(format!("{here}: missing")),
            Some(our_value) if kind(our_value) != kind(their_value) => out.push(format!(
                "{here}: {} in PrixFixe's, {} in ours",
                kind(their_value),
                kind(our_value)
            )),
            Some(_) if key == "error_breakdown" => {}
            Some(our_value) => missing(their_value, our_value, &format!("{here}."), out),
        }
    }
}

/// A real Stampede result of the mode `fixture` was written in, as saved JSON.
async fn our_result(fixture: &Value, dir: &Path) -> Value {
    let server = TestServer::start(TestServer::accepting()).await;
    let sustained = !fixture["target_rate"].is_null();
    let args: &[&str] = if sustained {
        &["--mode", "sustained", "--rate", "50", "--duration", "0.2"]
    } else {
        &["--messages", "10", "--workers", "2"]
    };
    let result = run(config(&[server.addr], args)).await;
    let path = dir.join(if sustained {
        "sustained.json"
    } else {
        "burst.json"
    });
    result.save(&path).expect("result saved");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[tokio::test]
async fn every_prixfixe_key_is_in_a_stampede_result_of_the_same_mode() {
    let dir = tempfile::tempdir().unwrap();
    for file in fixtures() {
        let theirs: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let ours = our_result(&theirs, dir.path()).await;
        let mut problems = Vec::new();
        missing(&theirs, &ours, "", &mut problems);
        assert!(problems.is_empty(), "{}: {problems:#?}", file.display());
    }
}
