//! The `ember` command: subcommands over the Ember libraries, plus TPC-H data and queries.

pub mod bench;
pub mod cli;
pub mod serve;
pub mod sql;
pub mod tpch;

use std::process::ExitCode;

use cli::{Cli, Command, Dataset};

/// Runs a parsed command line; errors are printed once, as one clear message.
pub fn run(cli: Cli) -> ExitCode {
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Datagen(args) => match args.dataset {
                Dataset::Tpch {
                    scale_factor,
                    output,
                } => datagen(scale_factor, &output),
            },
            Command::Sql(args) => sql::run(args).await,
            Command::Scheduler(config) => serve::scheduler(config).await,
            Command::Executor(config) => serve::executor(config).await,
            Command::Standalone(args) => serve::standalone(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn datagen(scale_factor: f64, output: &std::path::Path) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let tables = tpch::generate(scale_factor, output)?;
    // Marks the data complete, so `ember bench` and the tests reuse it.
    std::fs::write(output.join("_SUCCESS"), scale_factor.to_string())?;
    for (table, rows) in tables {
        println!("{table:>10}: {rows} rows");
    }
    eprintln!(
        "TPC-H SF {scale_factor} written to {} in {:.1}s",
        output.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
