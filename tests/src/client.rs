//! A raw-socket HTTP/1.1 client for tests.
//!
//! [`Client`] writes whatever bytes a test gives it and reads responses with
//! a strict little reader: status line and header lines must end in CRLF,
//! the body is framed by `Transfer-Encoding: chunked`, `Content-Length`, or
//! the close of the connection, and responses to HEAD, 1xx, 204 and 304
//! carry no body (RFC 9112 §6.3). Reads wait at most [`GUARD`] in total.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::GUARD;

/// Why no (complete) response could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection (FIN) before the first byte of a
    /// response.
    Eof,
    /// The connection was reset (RST) before the first byte of a response.
    Reset,
    /// Nothing complete arrived within the guard deadline.
    Timeout {
        /// Bytes of the incomplete response received so far.
        partial: Vec<u8>,
    },
    /// The connection ended in the middle of a response.
    Truncated {
        /// Bytes of the incomplete response.
        partial: Vec<u8>,
    },
    /// The bytes are not an HTTP/1.1 response.
    Malformed {
        /// What is wrong.
        why: String,
        /// The unparsed bytes (the start of them).
        bytes: Vec<u8>,
    },
    /// Any other socket error.
    Io(io::Error),
}

impl ReadError {
    /// True when the connection is known to be closed (EOF, reset or closed
    /// mid-response).
    pub fn is_closed(&self) -> bool {
        matches!(
            self,
            ReadError::Eof | ReadError::Reset | ReadError::Truncated { .. }
        )
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Eof => f.write_str("connection closed (EOF) before a response"),
            ReadError::Reset => f.write_str("connection reset before a response"),
            ReadError::Timeout { partial } => write!(
                f,
                "no complete response within {GUARD:?} (got {} bytes: {})",
                partial.len(),
                show(partial)
            ),
            ReadError::Truncated { partial } => write!(
                f,
                "connection closed mid-response after {} bytes: {}",
                partial.len(),
                show(partial)
            ),
            ReadError::Malformed { why, bytes } => {
                write!(f, "malformed response ({why}): {}", show(bytes))
            }
            ReadError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

/// Printable form of some bytes for failure messages: escaped, cut at 400
/// bytes.
pub fn show(bytes: &[u8]) -> String {
    let cut = bytes.len().min(400);
    let mut s: String = bytes[..cut]
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if bytes.len() > cut {
        s.push_str(&format!("... ({} bytes in all)", bytes.len()));
    }
    format!("\"{s}\"")
}

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Status code.
    pub status: u16,
    /// Reason phrase (may be empty).
    pub reason: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, decoded when chunked.
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, Vec<u8>)>,
    /// Whether the body was chunked.
    pub chunked: bool,
    /// Whether the body was delimited by the close of the connection.
    pub close_delimited: bool,
    /// The head as received (status line through the blank line).
    pub raw_head: Vec<u8>,
}

impl Response {
    /// First value of a header field, case-insensitive name, lossy UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of a header field.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// Whether the header field is present.
    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Whether a `Connection` field lists the token (case-insensitive).
    pub fn connection_has(&self, token: &str) -> bool {
        self.header_all("connection")
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// Whether the server announced that it closes the connection after this
    /// response (`Connection: close`, or HTTP/1.0 without keep-alive).
    pub fn closes(&self) -> bool {
        self.connection_has("close")
            || (self.version == "HTTP/1.0" && !self.connection_has("keep-alive"))
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// 1xx other than 101: an interim response (RFC 9110 §15.2).
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// The media type of `Content-Type` without parameters, lower-cased.
    pub fn media_type(&self) -> Option<String> {
        self.header("content-type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }

    /// Short description for failure messages.
    pub fn summary(&self) -> String {
        format!(
            "{} {} {} [{}] body={}",
            self.version,
            self.status,
            self.reason,
            self.headers
                .iter()
                .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
                .collect::<Vec<_>>()
                .join("; "),
            show(&self.body)
        )
    }
}

/// A test client on one TCP connection.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The peer's FIN has been seen.
    eof: bool,
    /// The connection was reset.
    reset: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("buffered", &self.buf.len())
            .field("eof", &self.eof)
            .field("reset", &self.reset)
            .finish()
    }
}

impl Client {
    /// Connects (within [`GUARD`]) with Nagle off.
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, GUARD)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(GUARD)).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            eof: false,
            reset: false,
        }
    }

    /// The underlying socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes all bytes; panics on error.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write of {} bytes: {e}", bytes.len()));
    }

    /// Writes as many bytes as the peer takes; returns false if the write
    /// failed (the peer closed or reset the connection).
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Half-closes the connection: the server sees EOF, we can still read.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Bytes received but not yet parsed as part of a response.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Whether the server's FIN (or a reset) has been seen.
    pub fn saw_close(&self) -> bool {
        self.eof || self.reset
    }

    /// Reads once more into the buffer, waiting until `deadline`. Returns the
    /// number of bytes read (0 at EOF or after a reset).
    fn fill(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        if self.eof || self.reset {
            return Ok(0);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ReadError::Timeout {
                partial: self.buf.clone(),
            });
        }
        let wait = (deadline - now).max(Duration::from_millis(1));
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(0);
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Err(ReadError::Timeout {
                        partial: self.buf.clone(),
                    })
                }
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionReset
                        || e.kind() == io::ErrorKind::ConnectionAborted
                        || e.kind() == io::ErrorKind::BrokenPipe =>
                {
                    self.reset = true;
                    return Ok(0);
                }
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Reads one response, interim (1xx) ones included. `head` says whether
    /// it answers a HEAD request (no body).
    pub fn read_response(&mut self, head: bool) -> Result<Response, ReadError> {
        self.read_response_until(head, Instant::now() + GUARD)
    }

    /// [`Client::read_response`] with an explicit deadline.
    pub fn read_response_until(
        &mut self,
        head: bool,
        deadline: Instant,
    ) -> Result<Response, ReadError> {
        // The head.
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            // A strict reader: the status line must start like one even
            // before the head is complete.
            let probe = &self.buf[..self.buf.len().min(5)];
            if !b"HTTP/".starts_with(probe) {
                return Err(ReadError::Malformed {
                    why: "does not start with HTTP/".into(),
                    bytes: self.buf.clone(),
                });
            }
            if self.fill(deadline)? == 0 {
                return Err(self.closed_error());
            }
        };
        let raw_head = self.buf[..head_end].to_vec();
        let mut resp = parse_head(&raw_head)?;
        let mut pos = head_end;

        let no_body =
            head || (100..200).contains(&resp.status) || resp.status == 204 || resp.status == 304;
        if no_body {
            self.buf.drain(..pos);
            return Ok(resp);
        }
        let te = resp.header_all("transfer-encoding");
        let cl = resp.header_all("content-length");
        if !te.is_empty() {
            let last = te
                .join(",")
                .rsplit(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if last == "chunked" {
                resp.chunked = true;
                pos = self.read_chunked(pos, &mut resp, deadline)?;
                self.buf.drain(..pos);
                return Ok(resp);
            }
            return self.read_to_close(pos, resp, deadline);
        }
        if !cl.is_empty() {
            if cl.len() > 1 && cl.iter().any(|v| v != &cl[0]) {
                return Err(ReadError::Malformed {
                    why: format!("conflicting Content-Length {cl:?}"),
                    bytes: raw_head,
                });
            }
            let n: usize = cl[0].trim().parse().map_err(|_| ReadError::Malformed {
                why: format!("bad Content-Length {:?}", cl[0]),
                bytes: raw_head.clone(),
            })?;
            while self.buf.len() < pos + n {
                if self.fill(deadline)? == 0 {
                    return Err(ReadError::Truncated {
                        partial: self.buf.clone(),
                    });
                }
            }
            resp.body = self.buf[pos..pos + n].to_vec();
            self.buf.drain(..pos + n);
            return Ok(resp);
        }
        self.read_to_close(pos, resp, deadline)
    }

    fn closed_error(&self) -> ReadError {
        if !self.buf.is_empty() {
            ReadError::Truncated {
                partial: self.buf.clone(),
            }
        } else if self.reset {
            ReadError::Reset
        } else {
            ReadError::Eof
        }
    }

    fn read_to_close(
        &mut self,
        pos: usize,
        mut resp: Response,
        deadline: Instant,
    ) -> Result<Response, ReadError> {
        while self.fill(deadline)? > 0 {}
        resp.body = self.buf[pos..].to_vec();
        resp.close_delimited = true;
        self.buf.clear();
        Ok(resp)
    }

    /// Decodes a chunked body starting at `pos`; returns the position after
    /// the trailer section.
    fn read_chunked(
        &mut self,
        mut pos: usize,
        resp: &mut Response,
        deadline: Instant,
    ) -> Result<usize, ReadError> {
        loop {
            let line_end = self.line_end(pos, deadline)?;
            let line = &self.buf[pos..line_end];
            let size_part = line.split(|&b| b == b';').next().unwrap_or(b"");
            let size_str = std::str::from_utf8(size_part).unwrap_or("").trim();
            let size = usize::from_str_radix(size_str, 16).map_err(|_| ReadError::Malformed {
                why: format!("bad chunk size line {}", show(line)),
                bytes: self.buf.clone(),
            })?;
            pos = line_end + 2;
            if size == 0 {
                // Trailer section: field lines up to an empty line.
                loop {
                    let end = self.line_end(pos, deadline)?;
                    if end == pos {
                        return Ok(pos + 2);
                    }
                    let line = self.buf[pos..end].to_vec();
                    if let Some(c) = line.iter().position(|&b| b == b':') {
                        let name = String::from_utf8_lossy(&line[..c]).into_owned();
                        let value = trim_ows(&line[c + 1..]).to_vec();
                        resp.trailers.push((name, value));
                    }
                    pos = end + 2;
                }
            }
            while self.buf.len() < pos + size + 2 {
                if self.fill(deadline)? == 0 {
                    return Err(ReadError::Truncated {
                        partial: self.buf.clone(),
                    });
                }
            }
            if &self.buf[pos + size..pos + size + 2] != b"\r\n" {
                return Err(ReadError::Malformed {
                    why: "chunk data not followed by CRLF".into(),
                    bytes: self.buf.clone(),
                });
            }
            resp.body.extend_from_slice(&self.buf[pos..pos + size]);
            pos += size + 2;
        }
    }

    /// Index of the CRLF that ends the line starting at `pos`.
    fn line_end(&mut self, pos: usize, deadline: Instant) -> Result<usize, ReadError> {
        loop {
            if let Some(i) = find(&self.buf[pos..], b"\r\n") {
                return Ok(pos + i);
            }
            if self.fill(deadline)? == 0 {
                return Err(ReadError::Truncated {
                    partial: self.buf.clone(),
                });
            }
        }
    }

    /// Reads the next final response, collecting interim (1xx) ones on the
    /// way.
    pub fn read_final(&mut self, head: bool) -> Result<(Vec<Response>, Response), ReadError> {
        let deadline = Instant::now() + GUARD;
        let mut interim = Vec::new();
        loop {
            let r = self.read_response_until(head, deadline)?;
            if r.is_interim() {
                interim.push(r);
            } else {
                return Ok((interim, r));
            }
        }
    }

    /// Sends a request and returns its final response; panics if none comes.
    pub fn request(&mut self, bytes: &[u8]) -> Response {
        self.send(bytes);
        let head = bytes.starts_with(b"HEAD ");
        match self.read_final(head) {
            Ok((_, r)) => r,
            Err(e) => panic!("request {}: {e}", show(bytes)),
        }
    }

    /// Reads the next final response; panics with a description if none.
    pub fn response(&mut self) -> Response {
        match self.read_final(false) {
            Ok((_, r)) => r,
            Err(e) => panic!("expected a response: {e}"),
        }
    }

    /// Waits for the server to close the connection and returns any bytes
    /// that arrived before the close. Err(Timeout) if it stays open.
    pub fn read_to_eof(&mut self) -> Result<Vec<u8>, ReadError> {
        let deadline = Instant::now() + GUARD;
        while self.fill(deadline)? > 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// Asserts that the server closes the connection without sending
    /// anything more.
    pub fn expect_closed(&mut self, context: &str) {
        match self.read_to_eof() {
            Ok(rest) if rest.is_empty() => {}
            Ok(rest) => panic!("{context}: expected close, got more bytes: {}", show(&rest)),
            Err(e) => panic!("{context}: expected the server to close the connection: {e}"),
        }
    }

    /// Non-blocking check for bytes (or a close) already available.
    pub fn poll_available(&mut self) -> bool {
        if !self.buf.is_empty() || self.eof || self.reset {
            return true;
        }
        self.stream.set_nonblocking(true).unwrap();
        let mut b = [0u8; 4096];
        let got = match self.stream.read(&mut b) {
            Ok(0) => {
                self.eof = true;
                true
            }
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => {
                self.reset = true;
                true
            }
        };
        self.stream.set_nonblocking(false).unwrap();
        got
    }
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(raw: &[u8]) -> Result<Response, ReadError> {
    let bad = |why: &str| ReadError::Malformed {
        why: why.to_string(),
        bytes: raw.to_vec(),
    };
    // Every line of the head, the last included, ends in CRLF; dropping
    // the blank line leaves "line\r\n" repeated.
    let text = &raw[..raw.len() - 2];
    let mut lines = text
        .split(|&b| b == b'\n')
        .take(text.iter().filter(|&&b| b == b'\n').count());
    let status_line = lines.next().ok_or_else(|| bad("empty head"))?;
    let status_line = status_line
        .strip_suffix(b"\r")
        .ok_or_else(|| bad("status line not ended by CRLF"))?;
    // HTTP-version SP status-code SP [ reason-phrase ]  (RFC 9112 §4)
    if status_line.len() < 12
        || !status_line.starts_with(b"HTTP/1.")
        || status_line[8] != b' '
        || !status_line[9..12].iter().all(u8::is_ascii_digit)
        || (status_line.len() > 12 && status_line[12] != b' ')
    {
        return Err(bad("bad status line"));
    }
    let version = String::from_utf8_lossy(&status_line[..8]).into_owned();
    let status: u16 = std::str::from_utf8(&status_line[9..12])
        .unwrap()
        .parse()
        .unwrap();
    let reason = if status_line.len() > 13 {
        String::from_utf8_lossy(&status_line[13..]).into_owned()
    } else {
        String::new()
    };
    let mut headers = Vec::new();
    for line in lines {
        let line = line
            .strip_suffix(b"\r")
            .ok_or_else(|| bad("header line not ended by CRLF"))?;
        let c = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("header line without colon"))?;
        let name = &line[..c];
        if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
            return Err(bad("bad header name"));
        }
        headers.push((
            String::from_utf8_lossy(name).into_owned(),
            trim_ows(&line[c + 1..]).to_vec(),
        ));
    }
    Ok(Response {
        version,
        status,
        reason,
        headers,
        body: Vec::new(),
        trailers: Vec::new(),
        chunked: false,
        close_delimited: false,
        raw_head: raw.to_vec(),
    })
}

/// Sends `request` on `n` connections at once (each connected first, then
/// released together by a barrier) and returns the `n` responses: for
/// tests of what concurrent requests share, such as cache coalescing.
pub fn concurrent_requests(addr: SocketAddr, n: usize, request: &[u8]) -> Vec<Response> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let barrier = std::sync::Arc::clone(&barrier);
            let request = request.to_vec();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                barrier.wait();
                c.request(&request)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("a client thread panicked"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head_with_headers() {
        let r = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: a b \r\n\r\n").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, "OK");
        assert_eq!(r.header("content-length").as_deref(), Some("2"));
        assert_eq!(r.header("x").as_deref(), Some("a b"));
    }

    #[test]
    fn parses_a_head_without_headers_or_reason() {
        let r = parse_head(b"HTTP/1.1 204\r\n\r\n").unwrap();
        assert_eq!(r.status, 204);
        assert!(r.headers.is_empty());
    }

    #[test]
    fn rejects_bare_lf_in_head() {
        assert!(parse_head(b"HTTP/1.1 200 OK\nA: b\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nA: b\nC: d\r\n\r\n").is_err());
    }
}
