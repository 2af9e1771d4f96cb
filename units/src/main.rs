//! `units size VALUE` / `units duration VALUE`: the shared grammar for shell scripts.
//!
//! Prints bytes (sizes) or seconds (durations, as a decimal number) on stdout; a value
//! outside the grammar prints the error on stderr and exits 2, so a script can check
//! an option before it starts anything.

use std::process::ExitCode;

const USAGE: &str = "usage: units size VALUE | units duration VALUE";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, value] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let parsed = match kind.as_str() {
        "size" => units::parse_size(value).map(|bytes| bytes.to_string()),
        "duration" => units::parse_duration(value).map(|d| d.as_secs_f64().to_string()),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match parsed {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::from(2)
        }
    }
}
