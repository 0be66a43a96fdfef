//! HTTP/1.1 request parsing, body framing and response encoding over byte
//! slices, for the shardline server.
//!
//! No sockets, no executor, no clock: callers hand in bytes (and the current
//! second for the Date cache) and get back borrowed views and appended
//! output. Parsing is zero-copy (every string in a [`request::RequestHead`]
//! borrows from the input buffer) and does not allocate: header fields go
//! into caller-owned stack storage, errors are `Copy`, and the chunked
//! decoder appends to the caller's buffer. This crate sits at the security
//! boundary, so it is strict: anything two HTTP parsers could read
//! differently (the root of request smuggling, RFC 9112 §11.2) is refused
//! with a 4xx/5xx [`error::Error`] rather than guessed at.
//!
//! # Layout
//!
//! - [`limits`]: [`limits::Limits`] and the `DEFAULT_*` / cap constants.
//! - [`error`]: [`error::ErrorKind`], [`error::Error`] (status, metric label,
//!   RFC 9457 title/detail/type) and [`error::Fault`].
//! - [`request`]: [`request::parse`], one request head at a time (pipelining
//!   is the caller's loop), with request-line, target, Host, Connection and
//!   Expect rules.
//! - [`framing`]: [`framing::body_framing`], Content-Length and
//!   Transfer-Encoding rules (RFC 9112 §6).
//! - [`chunked`]: [`chunked::ChunkedDecoder`], an incremental chunked body
//!   decoder (RFC 9112 §7.1).
//! - [`response`]: [`response::encode`], [`response::encode_problem`] and
//!   [`response::encode_error`] (RFC 9457 problem details).
//! - [`response_head`]: [`response_head::parse_response`], the gateway's
//!   strict parser of upstream response heads (status line, framing per
//!   RFC 9112 §6.3, keep-alive), with its own [`response_head::ResponseError`].
//! - [`date`]: [`date::DateCache`], the IMF-fixdate Date value (RFC 9110 §5.6.7).
//! - [`json`]: JSON string escaping (RFC 8259 §7) and a simd-json validity check.
//!
//! # Line endings: bare LF is rejected
//!
//! RFC 9112 §2.2 lets a recipient accept a bare LF as a line terminator. We
//! do not: a bare LF anywhere in a request head, a chunk-size line, after
//! chunk data or in a trailer section is answered `400` with
//! [`error::ErrorKind::BareLf`], because a front-end that treats LF
//! differently from us could otherwise smuggle a request past it. A bare CR
//! (CR not followed by LF) is likewise `400` [`error::ErrorKind::BareCr`]
//! (RFC 9112 §2.2: MUST be treated as invalid or replaced by SP; we refuse).
//! The check is one pass over the head bytes, shared with finding the end of
//! the head.
//!
//! # Deliberately stricter than the RFCs
//!
//! Each of these is allowed by the letter of RFC 9110/9112 but is a known
//! source of parser disagreement, so it is refused with a 4xx:
//! - Content-Length with leading zeros (`005`), or repeated with equal values;
//! - an empty Host (RFC 9112 §3.2 allows it only for targets without an
//!   authority, which we never serve), a Host holding `,`, and a Host that
//!   differs from an absolute-form target's authority;
//! - empty elements in Transfer-Encoding, and `Content_Length` /
//!   `Transfer_Encoding` field names;
//! - BWS around `;` and `=` in chunk extensions, and trailer fields that carry
//!   framing, routing, authentication or content-format fields;
//! - request-targets with bytes outside RFC 3986 (a few that browsers leave
//!   unescaped in queries excepted) or percent-encoded control characters in
//!   the path.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chunked;
pub mod date;
pub mod error;
pub mod framing;
pub mod json;
pub mod limits;
pub mod request;
pub mod response;
pub mod response_head;
mod syntax;

pub use chunked::{ChunkedDecoder, Decoded};
pub use date::DateCache;
pub use error::{Error, ErrorKind, Fault};
pub use framing::{body_framing, BodyFraming};
pub use limits::{Limits, MAX_HEADERS_CAP};
pub use request::{parse, Parsed, RequestHead, Version};
pub use response::{encode, encode_error, encode_problem, EncodeOptions, Response, CONTINUE_100};
pub use syntax::is_forwarded_value;

/// Re-exported so callers can build header storage without naming httparse
/// in their own Cargo.toml: `[EMPTY_HEADER; MAX_HEADERS_CAP]`.
pub use httparse::{Header, EMPTY_HEADER};
