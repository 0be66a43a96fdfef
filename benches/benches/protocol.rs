//! Micro-benchmarks for `shardline-protocol`, each in a group with its baseline.
//!
//! Groups report throughput in bytes of input (or output, for encoders) so that
//! results from different message sizes compare. Inputs are built once, outside
//! the timed closures; buffers that the server reuses are reused here too.

use std::hint::black_box;
use std::io::Write;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardline_protocol::chunked::ChunkedDecoder;
use shardline_protocol::date::DateCache;
use shardline_protocol::framing::BodyFraming;
use shardline_protocol::json::write_escaped;
use shardline_protocol::limits::{Limits, MAX_HEADERS_CAP};
use shardline_protocol::request::{self, Parsed, Version};
use shardline_protocol::response::{self, EncodeOptions, Response};

/// A typical API request: origin-form target with a query and six header fields.
const GET_REQUEST: &[u8] = b"GET /v1/users/12345?fields=name,email HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: shardline-bench/1.0 (+https://shardline.dev)\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJl\r\n\
X-Request-Id: 7f3c2a9e-41d2-4b8a-9f6e-0c1d2e3f4a5b\r\n\
\r\n";

/// Requests in the pipelined buffer (a pipelining benchmark client sends 16).
const PIPELINED_REQUESTS: usize = 16;

/// Decoded body size for the chunked benchmarks.
const CHUNKED_BODY_BYTES: usize = 16 * 1024;

/// A fixed instant (2024-02-29 12:00:00 UTC) so Date output does not vary by run.
const FIXED_UNIX_SECS: u64 = 1_709_208_000;

/// Parse cost of one GET with six header fields. The header array is created once
/// outside the timed loop (in both variants) so that its 8 KiB initialisation does
/// not hide the parse itself.
///
/// Baseline: raw `httparse::Request::parse` on the same bytes with a header array
/// of the same size; the gap is shardline's validation on top (RFC 9112 framing,
/// Host, bare-LF scan, target split).
fn parse_single_get(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("parse/single_get");
    group.throughput(Throughput::Bytes(GET_REQUEST.len() as u64));
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    group.bench_function("shardline", |b| {
        b.iter(
            || match request::parse(black_box(GET_REQUEST), &mut headers, &limits) {
                Ok(Parsed::Complete(head)) => head.head_len,
                _ => panic!("the benchmark request must parse"),
            },
        )
    });
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    group.bench_function("httparse_baseline", |b| {
        b.iter(
            || match httparse::Request::new(&mut headers).parse(black_box(GET_REQUEST)) {
                Ok(httparse::Status::Complete(len)) => len,
                _ => panic!("the benchmark request must parse"),
            },
        )
    });
    group.finish();
}

/// Parse cost of 16 pipelined GETs in one read buffer, walked the way the shard
/// walks it (parse one head, advance by its length, repeat).
///
/// Baseline: the same walk with raw `httparse::Request::parse`.
fn parse_pipelined(c: &mut Criterion) {
    let limits = Limits::default();
    let buf = GET_REQUEST.repeat(PIPELINED_REQUESTS);
    let mut group = c.benchmark_group("parse/pipelined_16");
    group.throughput(Throughput::Bytes(buf.len() as u64));
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    group.bench_function("shardline", |b| {
        b.iter(|| {
            let input = black_box(buf.as_slice());
            let mut offset = 0;
            let mut count = 0;
            while offset < input.len() {
                match request::parse(&input[offset..], &mut headers, &limits) {
                    Ok(Parsed::Complete(head)) => {
                        assert_eq!(head.framing, BodyFraming::None, "GETs carry no body");
                        offset += head.head_len;
                        count += 1;
                    }
                    _ => panic!("the benchmark requests must parse"),
                }
            }
            count
        })
    });
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    group.bench_function("httparse_baseline", |b| {
        b.iter(|| {
            let input = black_box(buf.as_slice());
            let mut offset = 0;
            let mut count = 0;
            while offset < input.len() {
                match httparse::Request::new(&mut headers).parse(&input[offset..]) {
                    Ok(httparse::Status::Complete(len)) => {
                        offset += len;
                        count += 1;
                    }
                    _ => panic!("the benchmark requests must parse"),
                }
            }
            count
        })
    });
    group.finish();
}

/// `CHUNKED_BODY_BYTES` of data framed as chunks of `chunk` bytes (RFC 9112 §7.1).
fn chunked_body(chunk: usize) -> (Vec<u8>, Vec<u8>) {
    let data: Vec<u8> = (0..CHUNKED_BODY_BYTES)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let mut encoded = Vec::new();
    for piece in data.chunks(chunk) {
        write!(encoded, "{:x}\r\n", piece.len()).expect("writing to a Vec cannot fail");
        encoded.extend_from_slice(piece);
        encoded.extend_from_slice(b"\r\n");
    }
    encoded.extend_from_slice(b"0\r\n\r\n");
    (data, encoded)
}

/// Decoding a 16 KiB chunked body, in 1 KiB chunks (bulk copy dominates) and in
/// 16-byte chunks (per-chunk parsing dominates).
///
/// Baseline: `Vec::extend_from_slice` of the decoded bytes, the copy every decoder
/// must do at least; the gap is the framing work.
fn chunked_decode(c: &mut Criterion) {
    let limits = Limits::default();
    for chunk in [1024, 16] {
        let (data, encoded) = chunked_body(chunk);
        let mut group = c.benchmark_group(format!("chunked/decode_{chunk}b_chunks"));
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        let mut out = Vec::with_capacity(CHUNKED_BODY_BYTES);
        group.bench_function("shardline", |b| {
            b.iter(|| {
                out.clear();
                let mut decoder = ChunkedDecoder::new(&limits);
                match decoder.decode(black_box(&encoded), &mut out) {
                    Ok(d) if d.done => d.consumed,
                    _ => panic!("the benchmark body must decode completely"),
                }
            })
        });
        group.bench_function("copy_baseline", |b| {
            b.iter(|| {
                out.clear();
                out.extend_from_slice(black_box(&data));
                out.len()
            })
        });
        group.finish();
    }
}

const PLAINTEXT_BODY: &[u8] = b"Hello, World!";

/// Encoding the `/plaintext` response (status line, Date, Content-Type,
/// Content-Length, body) into a reused output buffer.
///
/// Baselines: copying the same bytes pre-rendered (the floor: what a fully cached
/// response costs) and rendering them with `write!` (the obvious std::fmt way).
fn response_encode(c: &mut Criterion) {
    let date = DateCache::new(FIXED_UNIX_SECS);
    let resp = Response {
        status: 200,
        headers: &[],
        content_type: Some(b"text/plain"),
        body: PLAINTEXT_BODY,
    };
    let options = || EncodeOptions {
        version: Version::Http11,
        keep_alive: true,
        head: false,
    };
    let mut prerendered = Vec::new();
    response::encode(&mut prerendered, &resp, options(), &date);

    let mut group = c.benchmark_group("response/encode_plaintext");
    group.throughput(Throughput::Bytes(prerendered.len() as u64));
    let mut out = Vec::with_capacity(4096);
    group.bench_function("shardline", |b| {
        b.iter(|| {
            out.clear();
            response::encode(&mut out, black_box(&resp), options(), &date);
            out.len()
        })
    });
    group.bench_function("prerendered_copy_baseline", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&prerendered));
            out.len()
        })
    });
    group.bench_function("std_fmt_baseline", |b| {
        b.iter(|| {
            out.clear();
            let body = black_box(PLAINTEXT_BODY);
            let date = std::str::from_utf8(date.as_bytes()).unwrap_or("");
            write!(
                out,
                "HTTP/1.1 200 OK\r\nDate: {date}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .expect("writing to a Vec cannot fail");
            out.extend_from_slice(body);
            out.len()
        })
    });
    group.finish();
}

/// The per-request cost of keeping the Date header current: `update` with the
/// second unchanged, which is what nearly every request sees.
///
/// Baseline: `update` with a new second every call, i.e. formatting an
/// IMF-fixdate (RFC 9110 §5.6.7) per request, the cost the cache exists to avoid.
fn date_update(c: &mut Criterion) {
    let mut cache = DateCache::new(FIXED_UNIX_SECS);
    let mut group = c.benchmark_group("date/update");
    group.throughput(Throughput::Bytes(cache.as_bytes().len() as u64));
    group.bench_function("same_second", |b| {
        b.iter(|| {
            cache.update(black_box(FIXED_UNIX_SECS));
            cache.as_bytes()[0]
        })
    });
    let mut secs = FIXED_UNIX_SECS;
    group.bench_function("new_second_baseline", |b| {
        b.iter(|| {
            secs += 1;
            cache.update(black_box(secs));
            cache.as_bytes()[0]
        })
    });
    group.finish();
}

/// JSON string escaping (RFC 8259 §7) of a typical problem `detail` (nothing to
/// escape) and of a string full of quotes, backslashes, control and non-ASCII
/// characters.
///
/// Baseline: `serde_json::to_writer` on the same `&str`, a well-tuned escaper.
fn json_escape(c: &mut Criterion) {
    let inputs = [
        (
            "plain",
            "Content-Length and Transfer-Encoding must not both be present in a request",
        ),
        (
            "escapes",
            "line \"one\"\n\tline two \\ path C:\\tmp\r\n\u{1} bell \u{7} caf\u{e9} \u{1F600} end",
        ),
    ];
    for (name, s) in inputs {
        let mut group = c.benchmark_group(format!("json/escape_{name}"));
        group.throughput(Throughput::Bytes(s.len() as u64));
        let mut out = Vec::with_capacity(1024);
        group.bench_function("shardline", |b| {
            b.iter(|| {
                out.clear();
                write_escaped(&mut out, black_box(s));
                out.len()
            })
        });
        group.bench_function("serde_json_baseline", |b| {
            b.iter(|| {
                out.clear();
                serde_json::to_writer(&mut out, black_box(s))
                    .expect("serializing a str into a Vec cannot fail");
                out.len()
            })
        });
        group.finish();
    }
}

criterion_group!(
    benches,
    parse_single_get,
    parse_pipelined,
    chunked_decode,
    response_encode,
    date_update,
    json_escape
);
criterion_main!(benches);
