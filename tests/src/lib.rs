//! Shared helpers for shardline's integration and conformance tests.
//!
//! The tests start the real server (in-process, on port 0) and talk HTTP/1.1
//! to it over real loopback sockets, raw bytes included. Nothing here depends
//! on timing to decide an outcome: every read has a generous deadline
//! ([`GUARD`]) that only stops a hung test.
//!
//! # Layout
//! - [`client`]: a raw-socket client ([`client::Client`]) with a small,
//!   strict HTTP/1.1 response reader that frames by Content-Length, chunked
//!   or close, and knows that HEAD, 1xx, 204 and 304 responses carry no body.
//! - [`server`]: start an in-process server ([`server::TestServer`]) from the
//!   embedded default or a TOML snippet, bound to `127.0.0.1:0`.
//! - [`request`]: builders for request bytes.
//! - [`metrics`]: a strict Prometheus / OpenMetrics text parser.
//! - [`upstream`]: scriptable upstream servers for the gateway tests.
//! - [`tls`]: rcgen certificates in a scratch directory, a rustls client.

#![allow(clippy::unwrap_used)]

pub mod client;
pub mod metrics;
pub mod request;
pub mod server;
pub mod tls;
pub mod upstream;

use std::time::Duration;

/// Deadline for any single wait on the server (a read, an accept, a process
/// exit). Only a hang guard: a passing run never comes near it.
pub const GUARD: Duration = Duration::from_secs(10);

pub use client::{concurrent_requests, Client, ReadError, Response};
pub use request::{get, post};
pub use server::TestServer;
