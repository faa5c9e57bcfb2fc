//! `zinferd`: parse the command line, run, map errors to an exit code. All logic lives in the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
