//! shardline-shard: one shard of a thread-per-core HTTP server, and the set
//! of them.
//!
//! A shard is a glommio executor pinned to one CPU. It owns its own
//! SO_REUSEPORT listener, its connections, its buffer pools, its Date
//! header and its counters; nothing on the request path takes a lock or
//! touches another core's memory. The crate knows sockets and framing but
//! not what a route does: that is an [`App`] built per shard by the server.
//!
//! # Layout
//! - [`set`]: start every shard (ordered binding so port 0 works), drain, join.
//! - `shard`: one shard's accept loops, connection cap, Date timer, drain,
//!   and its counters ([`ShardCounters`], read through [`local_counters`]).
//! - `conn`: the connection loop: read, parse all pipelined requests, answer,
//!   one write; header-read and idle timeouts.
//! - [`app`]: the [`App`] / [`AppFactory`] boundary and [`Exchange`].
//! - [`router`]: method + path-template matching.
//! - [`buffers`]: per-shard read/write buffer pools (idle connections hold none).
//! - [`cpus`]: CPU lists and the process affinity mask.
//! - `event`: a shard-local one-shot event (drain).
//! - [`hash`]: the fixed byte-string hash for shard-local tables and owner shards.
//! - [`look`]: yield-and-look socket reads (`read_yields`).
//! - [`mesh`]: shard-to-shard messages (owner shards of global state).
//! - [`readiness`]: socket readiness from one epoll instance per shard.
//! - [`timeouts`]: read deadlines checked by one coarse sweep per shard.
//! - [`tls`]: TLS termination (rustls over the shard's socket), reloadable
//!   acceptor, client-certificate identity.
//! - `transport`: plain TCP or TLS behind one read/write boundary.

pub mod app;
pub mod buffers;
mod conn;
pub mod cpus;
mod event;
pub mod hash;
pub mod look;
pub mod mesh;
pub mod readiness;
pub mod router;
pub mod set;
mod shard;
pub mod stream;
pub mod sys;
pub mod timeouts;
pub mod tls;
mod transport;

pub use app::{App, AppFactory, Dispatch, Exchange, Refusal, ShardInfo, StreamFuture};
pub use readiness::ReadinessMode;
pub use router::{Match, Methods, Params, RouteError, Router};
pub use set::{
    ExecutorTuning, ListenerPlacement, ListenerSpec, ShardLimits, ShardSet, ShardSetConfig,
    ShutdownHandle, StartError,
};
pub use shard::{local_counters, HandshakeResult, ShardCounters, ShardState, TimeoutKind};
pub use shardline_protocol as protocol;
pub use stream::{BodyError, ClientIo, StreamRequest};
pub use tls::TlsAcceptor;
