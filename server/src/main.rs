//! The `shardline` binary: all of it lives in the library (`shardline::run`).

use std::process::ExitCode;

// mimalloc over glibc malloc: see README "Allocator" for the measurement.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    shardline::run::main()
}
