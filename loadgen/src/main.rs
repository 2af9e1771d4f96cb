//! `loadgen`: flags in, a result file and a summary out. The work is in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use loadgen::Config;

fn main() -> ExitCode {
    let config = match Config::from_cli(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => {
            // clap prints its own help/version and usage errors.
            if let Some(ce) = e.downcast_ref::<clap::Error>() {
                ce.exit();
            }
            eprintln!("loadgen: error: {e}");
            return ExitCode::from(2);
        }
    };
    // The main thread is shard 0; `loadgen::run` starts the others (`runtime.rs`).
    let runtime = match loadgen::main_runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mut config: Config) -> anyhow::Result<()> {
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
    }
    Ok(())
}
