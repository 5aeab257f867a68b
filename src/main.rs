//! The `ember` binary: parses the command line (and config file) and hands over to `ember::run`.

fn main() -> std::process::ExitCode {
    match ember::parse_command_line() {
        Ok(cli) => ember::run(cli),
        Err(message) => {
            eprintln!("{message}");
            std::process::ExitCode::FAILURE
        }
    }
}
