//! The `shardline` binary: all of it lives in the library (`shardline::run`).

use std::process::ExitCode;

// mimalloc over glibc malloc: glommio allocates a small `Rc` per io_uring
// operation, and mimalloc's thread-local free lists serve those without
// contention. README "Allocator" has the measurement.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    shardline::run::main()
}
