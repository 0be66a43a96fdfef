//! Builders for request bytes. Every request carries `Host: localhost`
//! (HTTP/1.1 requires it, RFC 9112 §3.2).

/// `GET path HTTP/1.1` with Host and the extra header lines given (each
/// without CRLF).
pub fn get(path: &str, extra: &[&str]) -> Vec<u8> {
    request("GET", path, extra, None)
}

/// `POST path HTTP/1.1` with Host, the extra header lines, a Content-Length
/// and the body.
pub fn post(path: &str, extra: &[&str], body: &[u8]) -> Vec<u8> {
    request("POST", path, extra, Some(body))
}

/// Any method; `body: Some` adds Content-Length.
pub fn request(method: &str, path: &str, extra: &[&str], body: Option<&[u8]>) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n").into_bytes();
    for h in extra {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(b) = body {
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
        out.extend_from_slice(b);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A chunked body made of the given chunks (each non-empty), with the last
/// chunk and an empty trailer section.
pub fn chunked(chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
