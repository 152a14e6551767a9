//! The `sandstep-fleet` command.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
