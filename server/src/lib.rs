//! shardline: a thread-per-core, shared-nothing HTTP API server.
//!
//! The product crate: configuration (file + CLI, validated), route actions,
//! the admin listener, resource limits, and the library API for Rust
//! handlers. Sockets, framing and shards live in `shardline-shard`; HTTP
//! parsing and encoding in `shardline-protocol`.
//!
//! ```no_run
//! let config = shardline::Config::default();
//! let server = shardline::Server::new(config)
//!     .handler("hello", |_shard| {
//!         |_req: &shardline::Request<'_>, res: &mut shardline::Response<'_, '_>| {
//!             res.send(200, "text/plain", b"hi")
//!         }
//!     })
//!     .start()
//!     .expect("start");
//! println!("listening on {}", server.local_addr());
//! server.wait().expect("clean exit");
//! ```
//!
//! # Layout
//! - [`config`]: TOML structs, validation with key-naming errors, the
//!   embedded default config.
//! - [`units`]: sizes and durations.
//! - [`cli`]: clap flags, one per `[server]` key.
//! - [`server`]: [`Server`] builder, CPU placement, start, [`RunningServer`].
//! - `app`: the per-shard gateway app: router match, policies, route actions.
//! - [`policy`]: per-route policies (request ids, CORS, API keys, JWT,
//!   scopes, global rate limits and quotas, validation, idempotency keys).
//! - [`handler`]: the [`Handler`] API for library users, and `echo`.
//! - `admin`: `/healthz`, `/readyz` on the admin listener.
//! - `system`: RLIMIT_MEMLOCK / RLIMIT_NOFILE (the crate's only `unsafe`).
//! - [`run`]: what the binary does (signals, ready line, exit codes).

mod admin;
mod aggregate;
mod app;
// Some of the cache's API (stats, variant helpers) is exercised only by its
// own unit tests until the metrics endpoint reads it.
#[allow(dead_code)]
mod cache;
mod cache_glue;
pub mod cli;
pub mod config;
pub mod config_gateway;
pub mod handler;
pub mod policy;
mod proxy;
pub mod run;
pub mod server;
mod system;
pub mod units;
mod upstream;

pub use config::{Config, ConfigError};
pub use handler::{Handler, HandlerFactory, Request, Response};
pub use server::{RunningServer, Server, StartError};
pub use shardline_shard::ShardInfo;
