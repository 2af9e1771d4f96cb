//! `loadgen`: flags in, a result file and a summary out. The work is in the library.
//!
//! Exit codes (DESIGN.md, and `loadgen --help`): 0 ok; 1 the run could not be
//! carried out; 2 bad usage; 99 a `--require` gate missed (k6's code); 130
//! interrupted. The result file is written before 99 and 130.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use loadgen::Config;
use report::RunResult;

/// The run could not be carried out.
const EXIT_RUN_FAILED: u8 = 1;
/// A bad flag or value.
const EXIT_USAGE: u8 = 2;
/// A `--require` gate was missed (k6's code for a crossed threshold).
const EXIT_GATE_MISSED: u8 = 99;
/// Ctrl-C: 128 + SIGINT, as a shell reports it.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    // `loadgen limits ...` is a command of its own; everything else is a load run.
    if std::env::args_os().nth(1).is_some_and(|a| a == "limits") {
        return limits_main();
    }
    let config = match Config::from_cli(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => {
            // clap prints its own help/version and usage errors.
            if let Some(ce) = e.downcast_ref::<clap::Error>() {
                ce.exit();
            }
            eprintln!("loadgen: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // The main thread is shard 0; `loadgen::run` starts the others (`runtime.rs`).
    let runtime = match loadgen::main_runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUN_FAILED);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(result) => exit_code(&result),
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::from(EXIT_RUN_FAILED)
        }
    }
}

/// 130 for a run cut short by Ctrl-C, 99 for a missed gate, else 0.
fn exit_code(result: &RunResult) -> ExitCode {
    if result.interrupted() {
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    let gates = result.gates.as_deref().unwrap_or_default();
    let missed = gates.iter().filter(|g| !g.passed).count();
    if missed == 0 {
        return ExitCode::SUCCESS;
    }
    match gates.iter().find(|g| g.aborted_run) {
        Some(g) => eprintln!(
            "loadgen: gate {:?} could no longer be met; the run was stopped early (exit {EXIT_GATE_MISSED})",
            g.gate
        ),
        None => {
            // Named on stderr too, so a `--quiet` run in CI says which.
            let which: Vec<String> = gates
                .iter()
                .filter(|g| !g.passed)
                .map(|g| format!("{} ({} {})", g.gate, g.figure, g.observed_text()))
                .collect();
            eprintln!(
                "loadgen: {missed} of {} gates missed (exit {EXIT_GATE_MISSED}): {}",
                gates.len(),
                which.join(", ")
            )
        }
    }
    ExitCode::from(EXIT_GATE_MISSED)
}

async fn run(mut config: Config) -> anyhow::Result<RunResult> {
    let interactive = std::io::stdout().is_terminal();
    config.progress = interactive && !config.quiet;
    let interrupt = CancellationToken::new();
    let on_signal = interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "loadgen: interrupted; finishing messages in flight (Ctrl-C again to quit now, without a result)"
            );
            on_signal.cancel();
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("loadgen: interrupted twice; no result written");
            std::process::exit(130);
        }
    });
    // The default name carries the start time; fixed now so `run.config` records it.
    let path = match &config.output {
        Some(p) => p.clone(),
        None => config.default_output(chrono::Utc::now()),
    };
    config.output = Some(path.clone());
    let quiet = config.quiet;
    let result = loadgen::run(config, interrupt).await?;
    result.save(&path).context("writing the result file")?;
    if !quiet {
        print!("{}", loadgen::summary(&result));
        println!("  {:<22} {}", "result", path.display());
        if let Some(gates) = &result.gates {
            print!("{}", loadgen::gates_table(gates));
        }
    }
    Ok(result)
}

/// `loadgen limits`: 0 when every case that ran passed, 1 when one failed or the
/// suite could not run, 2 for bad usage.
fn limits_main() -> ExitCode {
    use clap::Parser;
    use loadgen::limits::{LimitsArgs, Settings};
    let args = match LimitsArgs::try_parse_from(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let settings = match Settings::from_args(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loadgen limits: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let document_path = settings.output.clone();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen limits: error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUN_FAILED);
        }
    };
    match runtime.block_on(loadgen::limits::run(settings)) {
        Ok(doc) => {
            print!("{}", doc.table());
            if let Some(path) = document_path {
                println!("document: {}", path.display());
            }
            if doc.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_RUN_FAILED)
            }
        }
        Err(e) => {
            eprintln!("loadgen limits: error: {e:#}");
            ExitCode::from(EXIT_RUN_FAILED)
        }
    }
}
