//! The `ember` binary: parses the command line and hands over to `ember::run`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = ember::cli::Cli::parse();
    ember::run(cli)
}
