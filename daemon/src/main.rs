//! `zinferd`: zinferd's command line with zinfer's built-in stages. All logic lives in the library; a binary with
//! stages of its own is this file with a bigger registry (see `zinferd::cli`).

fn main() -> std::process::ExitCode {
    zinferd::cli::main(zinferd::default_registry())
}
