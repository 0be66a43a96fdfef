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
//! - [`config_tls`]: `[server.tls]` (HTTPS listener, certificates, mTLS).
//! - `tls`: building the rustls server config from it; SNI; reload.
//! - [`units`]: sizes and durations.
//! - [`cli`]: clap flags, one per `[server]` key; `check`, `--log-level`.
//! - [`check`]: the effective config as TOML (`shardline check`).
//! - [`server`]: [`Server`] builder, CPU placement, start, [`RunningServer`].
//! - `app`: the per-shard gateway app: router match, policies, route actions.
//! - [`policy`]: per-route policies (request ids, CORS, API keys, JWT,
//!   scopes, global rate limits and quotas, validation, idempotency keys).
//! - [`handler`]: the [`Handler`] API for library users, and `echo`.
//! - [`config_obs`]: `[observability]` and `[[slos]]`.
//! - `admin`: `/healthz`, `/readyz`, `/metrics`, `/admin/slo`,
//!   `POST /admin/reload` on the admin listener.
//! - `obs`: metrics, access/audit logs, SLOs, tracing, and the shard
//!   messaging that gathers them (`obs::hub`); `audit` is `obs::audit`.
//! - `reload`: config reload on SIGHUP and `POST /admin/reload`.
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
pub mod check;
pub mod cli;
pub mod config;
pub mod config_gateway;
pub mod config_obs;
pub mod config_tls;
pub mod handler;
pub(crate) mod obs;
pub mod policy;
mod proxy;
mod reload;
pub mod run;
pub mod server;
mod system;
mod tls;
pub mod units;
mod upstream;

pub use config::{Config, ConfigError};
pub use handler::{Handler, HandlerFactory, Request, Response};
/// The audit log API for policy code: `audit::record(&Decision { .. })`.
#[allow(unused_imports)]
pub(crate) use obs::audit;
pub use server::{ControlHandle, RunningServer, Server, StartError, TlsReloadHandle};
pub use shardline_shard::{ReadinessMode, ShardInfo};
