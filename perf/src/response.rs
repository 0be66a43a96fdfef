//! A minimal HTTP/1.1 response reader for the load generator: httparse for the
//! status line and headers, then Content-Length or chunked framing (the chunked
//! decoder is the server's own, from `shardline-protocol`). Bodies are counted and
//! dropped, never kept, so the buffer stays the size of a head plus one read.

use std::fmt;
use std::io::{self, Read};

use shardline_protocol::chunked::ChunkedDecoder;
use shardline_protocol::limits::Limits;

/// Header fields a response head may carry; more is a malformed response for our
/// purposes (servers under test send fewer than 20).
const MAX_RESPONSE_HEADERS: usize = 64;
/// A response head larger than this is treated as an error rather than buffered
/// without bound.
const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;
/// Bytes asked of the socket per read; large enough to take many pipelined
/// responses at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Chunked bodies are decoded only to find their end; this caps one body.
const MAX_CHUNKED_BODY_BYTES: u64 = 1 << 40;

/// Why a response could not be read.
#[derive(Debug)]
pub enum ResponseError {
    /// httparse rejected the status line or a header field.
    Malformed(httparse::Error),
    /// The head did not end within [`MAX_RESPONSE_HEAD_BYTES`].
    HeadTooLarge,
    /// Content-Length missing digits, not a number, or listed twice with different values.
    BadContentLength,
    /// A body with neither Content-Length nor chunked framing (it would end only at
    /// connection close, which a keep-alive benchmark cannot use).
    UnframedBody,
    /// The chunked body did not follow RFC 9112 §7.1.
    Chunked(shardline_protocol::error::Error),
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::Malformed(e) => write!(f, "malformed response head: {e}"),
            ResponseError::HeadTooLarge => {
                write!(f, "response head over {MAX_RESPONSE_HEAD_BYTES} bytes")
            }
            ResponseError::BadContentLength => write!(f, "invalid Content-Length in response"),
            ResponseError::UnframedBody => write!(
                f,
                "response body has neither Content-Length nor chunked framing"
            ),
            ResponseError::Chunked(e) => write!(f, "bad chunked response body: {e}"),
        }
    }
}

impl std::error::Error for ResponseError {}

/// What the caller learns about one complete response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseMeta {
    pub status: u16,
    /// The server will close the connection after this response.
    pub close: bool,
}

#[derive(Debug)]
enum State {
    Head,
    Fixed {
        meta: ResponseMeta,
        remaining: u64,
    },
    Chunked {
        meta: ResponseMeta,
        decoder: Box<ChunkedDecoder>,
    },
}

/// Reads responses from a byte stream that may hold several pipelined responses
/// and may split any of them anywhere.
#[derive(Debug)]
pub struct ResponseReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    state: State,
    /// Decoded chunk data lands here and is thrown away.
    scratch: Vec<u8>,
}

impl Default for ResponseReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseReader {
    pub fn new() -> Self {
        Self {
            buf: vec![0; READ_CHUNK_BYTES],
            start: 0,
            end: 0,
            state: State::Head,
            scratch: Vec::new(),
        }
    }

    /// Bytes received but not yet consumed by a complete response.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Forgets any buffered bytes and partial response (for reuse on a new connection).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.state = State::Head;
    }

    /// One `read` from `src` into the buffer. Returns the byte count (0 = end of stream).
    pub fn read_from(&mut self, src: &mut impl Read) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < READ_CHUNK_BYTES / 4 {
            // Move the unconsumed tail to the front instead of growing.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_CHUNK_BYTES / 4 {
            // Only a head that is still incomplete can fill the buffer; its size is
            // bounded by MAX_RESPONSE_HEAD_BYTES in `next`.
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = src.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// The next complete response from the buffered bytes, if there is one.
    pub fn next_response(&mut self) -> Result<Option<ResponseMeta>, ResponseError> {
        self.next_response_to(false)
    }

    /// Like [`ResponseReader::next_response`], for the answer to a HEAD request
    /// when `head_request` is set: its Content-Length describes a body that is
    /// not sent (RFC 9110 §9.3.2).
    pub fn next_response_to(
        &mut self,
        head_request: bool,
    ) -> Result<Option<ResponseMeta>, ResponseError> {
        loop {
            match &mut self.state {
                State::Head => {
                    let Some((len, next)) =
                        parse_head(&self.buf[self.start..self.end], head_request)?
                    else {
                        if self.buffered() > MAX_RESPONSE_HEAD_BYTES {
                            return Err(ResponseError::HeadTooLarge);
                        }
                        return Ok(None);
                    };
                    self.start += len;
                    match next {
                        Head::Interim => {}
                        Head::Done(meta) => return Ok(Some(meta)),
                        Head::Fixed(meta, remaining) => {
                            self.state = State::Fixed { meta, remaining }
                        }
                        Head::Chunked(meta) => {
                            let limits = Limits {
                                max_body_bytes: MAX_CHUNKED_BODY_BYTES,
                                ..Limits::default()
                            };
                            self.state = State::Chunked {
                                meta,
                                decoder: Box::new(ChunkedDecoder::new(&limits)),
                            };
                        }
                    }
                }
                State::Fixed { meta, remaining } => {
                    let meta = *meta;
                    // Not `self.buffered()`: `remaining` still borrows `self.state`.
                    let available = (self.end - self.start) as u64;
                    let take = available.min(*remaining);
                    *remaining -= take;
                    // `take` <= buffered(), which is a usize.
                    self.start += take as usize;
                    if *remaining > 0 {
                        return Ok(None);
                    }
                    self.state = State::Head;
                    return Ok(Some(meta));
                }
                State::Chunked { meta, decoder } => {
                    let meta = *meta;
                    let decoded = decoder
                        .decode(&self.buf[self.start..self.end], &mut self.scratch)
                        .map_err(ResponseError::Chunked)?;
                    self.scratch.clear();
                    self.start += decoded.consumed;
                    if !decoded.done {
                        return Ok(None);
                    }
                    self.state = State::Head;
                    return Ok(Some(meta));
                }
            }
        }
    }
}

/// What a complete head says comes next.
enum Head {
    /// A 1xx interim response (RFC 9110 §15.2): skip it, the final one follows.
    Interim,
    /// No body (204, 304, or Content-Length: 0).
    Done(ResponseMeta),
    Fixed(ResponseMeta, u64),
    Chunked(ResponseMeta),
}

/// Parses one head at the start of `bytes`: `None` if it is not complete yet.
/// `head_request`: the response answers a HEAD request and has no body.
fn parse_head(bytes: &[u8], head_request: bool) -> Result<Option<(usize, Head)>, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(bytes).map_err(ResponseError::Malformed)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    // httparse sets both once the head is complete; the fallbacks are unreachable.
    let status = resp.code.unwrap_or(0);
    let http10 = resp.version == Some(0);
    if (100..200).contains(&status) && status != 101 {
        return Ok(Some((len, Head::Interim)));
    }

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut close_token = false;
    let mut keep_alive_token = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value).ok_or(ResponseError::BadContentLength)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(ResponseError::BadContentLength);
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // RFC 9112 §6.3: chunked as the final coding frames the body.
            chunked = last_token(h.value).is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close_token |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    // RFC 9112 §9.3: HTTP/1.0 is persistent only with "keep-alive".
    let close = close_token || (http10 && !keep_alive_token);
    let meta = ResponseMeta { status, close };

    // RFC 9112 §6.3 rule 1: these responses never have a body.
    if head_request || status == 204 || status == 304 {
        return Ok(Some((len, Head::Done(meta))));
    }
    let head = if chunked {
        Head::Chunked(meta)
    } else {
        match content_length {
            Some(0) => Head::Done(meta),
            Some(n) => Head::Fixed(meta, n),
            None => return Err(ResponseError::UnframedBody),
        }
    };
    Ok(Some((len, head)))
}

fn parse_content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn last_token(value: &[u8]) -> Option<&[u8]> {
    value
        .rsplit(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .find(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(reader: &mut ResponseReader, mut input: &[u8]) -> Vec<ResponseMeta> {
        let mut out = Vec::new();
        while reader.read_from(&mut input).expect("reading from a slice") > 0 {
            while let Some(meta) = reader.next_response().expect("valid responses") {
                out.push(meta);
            }
        }
        out
    }

    const PLAINTEXT: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";

    #[test]
    fn content_length_responses_pipelined() {
        let input = [PLAINTEXT; 3].concat();
        let got = read_all(&mut ResponseReader::new(), &input);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|m| m.status == 200 && !m.close));
    }

    #[test]
    fn split_byte_by_byte() {
        let input = [PLAINTEXT, PLAINTEXT].concat();
        let mut reader = ResponseReader::new();
        let mut count = 0;
        for b in input.chunks(1) {
            let mut src = b;
            reader.read_from(&mut src).expect("reading from a slice");
            while let Some(meta) = reader.next_response().expect("valid") {
                assert_eq!(meta.status, 200);
                count += 1;
            }
        }
        assert_eq!(count, 2);
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn chunked_and_interim_and_no_body() {
        let input = b"HTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let got = read_all(&mut ResponseReader::new(), input);
        let statuses: Vec<u16> = got.iter().map(|m| m.status).collect();
        assert_eq!(statuses, [200, 204, 404]);
        assert!(got[2].close);
    }

    #[test]
    fn head_responses_have_no_body() {
        let input = [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n"[..],
            PLAINTEXT,
        ]
        .concat();
        let mut reader = ResponseReader::new();
        let mut src = input.as_slice();
        reader.read_from(&mut src).expect("reading from a slice");
        assert_eq!(
            reader
                .next_response_to(true)
                .expect("valid")
                .map(|m| m.status),
            Some(200)
        );
        assert_eq!(
            reader
                .next_response_to(false)
                .expect("valid")
                .map(|m| m.status),
            Some(200)
        );
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn http10_without_keep_alive_closes() {
        let input = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        let got = read_all(&mut ResponseReader::new(), input);
        assert!(got[0].close);
    }

    #[test]
    fn bad_framing_is_an_error() {
        for input in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\nbody until close",
            b"HTP/1.1 200 OK\r\n\r\n",
        ] {
            let mut reader = ResponseReader::new();
            let mut src = input;
            reader.read_from(&mut src).expect("reading from a slice");
            assert!(reader.next_response().is_err(), "{input:?}");
        }
    }

    #[test]
    fn large_body_does_not_grow_buffer() {
        let body = vec![b'x'; 1 << 20];
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        let input = [head.as_bytes(), &body].concat();
        let mut reader = ResponseReader::new();
        assert_eq!(read_all(&mut reader, &input).len(), 1);
        assert_eq!(reader.buf.len(), READ_CHUNK_BYTES);
    }
}
