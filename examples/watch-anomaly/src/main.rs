//! `watch-anomaly`: zinferd's whole command line (run, check, send, bench, fleet) with this crate's stages added.

fn main() -> std::process::ExitCode {
    zinferd::cli::main(zinfer_watch_anomaly::registry())
}
