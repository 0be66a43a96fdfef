//! Criterion micro-benchmarks for shardline. The library itself is empty: the
//! benchmarks live under `benches/` and each one is measured side by side with the
//! baseline it is judged against (named in its doc comment), so a report reads as
//! "shardline vs. the floor or the obvious alternative", not as a bare number.
//!
//! # Layout
//!
//! - `benches/protocol.rs`: request parsing (one GET; 16 pipelined), chunked
//!   decoding, response encoding, Date header update, JSON string escaping.
//!
//! Run with `cargo bench -p shardline-benches` (or append `-- parse` to filter by
//! name); `cargo bench -p shardline-benches --no-run` only compiles them.
