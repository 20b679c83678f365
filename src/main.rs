use std::process::ExitCode;

use clap::Parser;

/// jemalloc rather than the system allocator: a gateway holds tens of
/// thousands of sockets, each a few dozen small long-lived allocations, and
/// glibc's per-chunk headers and arena fragmentation added about 0.7 KiB per
/// idle socket (6.71 -> 6.03 KiB measured by `cargo bench --bench handshake`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = sockgate::cli::Cli::parse();
    sockgate::telemetry::init(cli.config.log_format);
    match sockgate::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sockgate: {err:#}");
            ExitCode::FAILURE
        }
    }
}
