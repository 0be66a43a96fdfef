//! The `shardline` binary: all of it lives in the library (`shardline::run`).

use std::process::ExitCode;

// jemalloc by measurement (README "Allocator"): equal to mimalloc and glibc
// on small requests, whose hot path does not allocate, and 1.5x less CPU per
// request than either on 200 KB uploads. Build with
// `--no-default-features` (glibc) or `--no-default-features --features
// mimalloc` to repeat the comparison.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    shardline::run::main()
}
