//! Incremental decoder for the chunked transfer coding (RFC 9112 §7.1).
//!
//! A byte-level state machine: input may be split anywhere, and each byte is
//! looked at once. It owns no buffers; decoded data is appended to the
//! caller's `Vec`, and trailer fields are validated then discarded (never
//! merged into the header section, RFC 9112 §7.1.2 / RFC 9110 §6.5.1).

use crate::error::{Error, ErrorKind};
use crate::limits::{Limits, MAX_CHUNK_SIZE_HEX_DIGITS};
use crate::syntax::{hex_val, is_tchar};

/// Longest trailer field name we need to compare against
/// [`FORBIDDEN_TRAILER_FIELDS`] ("proxy-authorization", 19 bytes), rounded up;
/// longer names cannot be on the list and are not buffered.
pub const TRAILER_NAME_PROBE_BYTES: usize = 24;

/// Fields refused in a trailer section. RFC 9110 §6.5.1: fields needed for
/// framing, routing, authentication, request modifiers or content format
/// cannot be processed after the content. We discard trailers anyway, but a
/// client sending these is trying to make some hop act on them: refuse.
pub const FORBIDDEN_TRAILER_FIELDS: &[&str] = &[
    "authorization",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "cookie",
    "expect",
    "host",
    "keep-alive",
    "max-forwards",
    "proxy-authorization",
    "proxy-connection",
    "range",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Outcome of one [`ChunkedDecoder::decode`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of input used. When `done` is false this is all of the input.
    pub consumed: usize,
    /// The last chunk and the trailer section are complete; the next request
    /// (if pipelined) starts at `input[consumed..]`.
    pub done: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In `chunk-size` (1*HEXDIG).
    Size,
    /// Just after ';': a chunk-ext-name must start.
    ExtNameStart,
    /// In a chunk-ext-name.
    ExtName,
    /// Just after '=': a token or quoted-string must start.
    ExtValueStart,
    /// In a token chunk-ext-val.
    ExtToken,
    /// Inside a quoted-string chunk-ext-val.
    ExtQuoted,
    /// After a backslash inside a quoted-string.
    ExtQuotedPair,
    /// After the closing quote: ';' or CR must follow.
    ExtAfterQuoted,
    /// CR of the size line seen; LF must follow.
    SizeLf,
    /// Inside chunk-data.
    Data,
    /// chunk-data done; CR must follow.
    DataCr,
    /// CR after chunk-data seen; LF must follow.
    DataLf,
    /// At the start of a trailer field line or the final CRLF.
    TrailerLineStart,
    /// In a trailer field name.
    TrailerName,
    /// In a trailer field value.
    TrailerValue,
    /// CR of a trailer field line seen; LF must follow.
    TrailerLf,
    /// CR of the final empty line seen; LF must follow.
    TrailerEndLf,
    /// Body complete.
    Done,
}

/// Incremental chunked body decoder (RFC 9112 §7.1). No allocation of its own.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    max_body_bytes: u64,
    max_size_line_bytes: usize,
    max_trailer_bytes: usize,
    /// Decoded bytes emitted so far.
    body_len: u64,
    /// Size being read, then data bytes left in the current chunk.
    size: u64,
    size_digits: usize,
    /// Bytes of the current size line, without CRLF.
    line_len: usize,
    /// Bytes of the trailer section so far.
    trailer_len: usize,
    name: [u8; TRAILER_NAME_PROBE_BYTES],
    name_len: usize,
}

impl ChunkedDecoder {
    /// A decoder for one chunked body, applying `limits.max_body_bytes`,
    /// `max_chunk_ext_bytes` and `max_trailer_bytes`.
    pub fn new(limits: &Limits) -> Self {
        ChunkedDecoder {
            state: State::Size,
            max_body_bytes: limits.max_body_bytes,
            max_size_line_bytes: limits.max_chunk_ext_bytes,
            max_trailer_bytes: limits.max_trailer_bytes,
            body_len: 0,
            size: 0,
            size_digits: 0,
            line_len: 0,
            trailer_len: 0,
            name: [0; TRAILER_NAME_PROBE_BYTES],
            name_len: 0,
        }
    }

    /// Decoded body bytes emitted so far.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Whether the whole chunked body, trailers included, has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes as much of `input` as possible, appending decoded data to
    /// `out`. Stops right after the final CRLF of the trailer section, so
    /// pipelined bytes that follow are left unconsumed. After an error the
    /// decoder must not be used again (the connection is to be closed).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Decoded, Error> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => break,
                State::Data => {
                    let avail = input.len() - i;
                    // The chunk may be larger than usize on 32-bit targets.
                    let n = usize::try_from(self.size).map_or(avail, |left| left.min(avail));
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    // n <= size, and size + body_len <= max_body_bytes was
                    // checked when the size line was read.
                    self.size -= n as u64;
                    self.body_len += n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                }
                _ => {
                    self.step(input[i])?;
                    i += 1;
                }
            }
        }
        Ok(Decoded {
            consumed: i,
            done: self.state == State::Done,
        })
    }

    /// Advances by one byte in every state except `Data` and `Done`.
    fn step(&mut self, b: u8) -> Result<(), Error> {
        use State::*;
        match self.state {
            Size | ExtNameStart | ExtName | ExtValueStart | ExtToken | ExtQuoted
            | ExtQuotedPair | ExtAfterQuoted
                if b != b'\r' =>
            {
                // Policy (crate doc): bare LF is refused everywhere in the
                // framing, RFC 9112 §2.2 / §7.1.
                if b == b'\n' {
                    return Err(ErrorKind::BareLf.into());
                }
                self.line_len += 1;
                if self.line_len > self.max_size_line_bytes {
                    return Err(ErrorKind::ChunkExtTooLong.into());
                }
                self.size_line_byte(b)
            }
            Size | ExtName | ExtToken | ExtAfterQuoted => {
                // b == CR ends the size line.
                self.end_of_size()?;
                self.state = SizeLf;
                Ok(())
            }
            // CR where a name, value or closing quote must come:
            // "5;\r\n" (RFC 9112 §7.1.1 requires a name after ';').
            ExtNameStart | ExtValueStart | ExtQuoted | ExtQuotedPair => {
                Err(ErrorKind::ChunkExtInvalid.into())
            }
            SizeLf => {
                if b != b'\n' {
                    return Err(ErrorKind::BareCr.into());
                }
                self.line_len = 0;
                self.size_digits = 0;
                self.state = if self.size == 0 {
                    // last-chunk: the trailer section follows (RFC 9112 §7.1).
                    TrailerLineStart
                } else {
                    Data
                };
                Ok(())
            }
            DataCr => match b {
                b'\r' => {
                    self.state = DataLf;
                    Ok(())
                }
                b'\n' => Err(ErrorKind::BareLf.into()),
                // RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF
                // chunk-data CRLF. Extra data is a framing error.
                _ => Err(ErrorKind::ChunkDataTerminator.into()),
            },
            DataLf => {
                if b != b'\n' {
                    return Err(ErrorKind::BareCr.into());
                }
                self.size = 0;
                self.state = Size;
                Ok(())
            }
            TrailerLineStart | TrailerName | TrailerValue | TrailerLf | TrailerEndLf => {
                self.trailer_len += 1;
                if self.trailer_len > self.max_trailer_bytes {
                    return Err(ErrorKind::TrailerTooLarge.into());
                }
                self.trailer_byte(b)
            }
            Data | Done => Ok(()),
        }
    }

    /// A byte of the size line other than CR or LF.
    fn size_line_byte(&mut self, b: u8) -> Result<(), Error> {
        use State::*;
        let invalid_ext = || Err(ErrorKind::ChunkExtInvalid.into());
        match self.state {
            Size => {
                if let Some(v) = hex_val(b) {
                    // RFC 9112 §7.1: chunk-size = 1*HEXDIG; at most 16 digits
                    // so the value always fits u64.
                    if self.size_digits == MAX_CHUNK_SIZE_HEX_DIGITS {
                        return Err(ErrorKind::ChunkSizeTooLong.into());
                    }
                    self.size = self.size << 4 | u64::from(v);
                    self.size_digits += 1;
                    Ok(())
                } else if b == b';' {
                    // No BWS before ';': RFC 9112 §7.1.1 allows it, but it
                    // is where parsers disagree ("5 ;x"), so we refuse.
                    self.end_of_size()?;
                    self.state = ExtNameStart;
                    Ok(())
                } else {
                    // Sign, "0x", whitespace, '_': not 1*HEXDIG.
                    Err(ErrorKind::ChunkSizeInvalid.into())
                }
            }
            // chunk-ext = *( BWS ";" BWS chunk-ext-name
            //               [ BWS "=" BWS chunk-ext-val ] )   (RFC 9112 §7.1.1)
            // accepted here without BWS.
            ExtNameStart => {
                if is_tchar(b) {
                    self.state = ExtName;
                    Ok(())
                } else {
                    invalid_ext()
                }
            }
            ExtName => match b {
                b'=' => {
                    self.state = ExtValueStart;
                    Ok(())
                }
                b';' => {
                    self.state = ExtNameStart;
                    Ok(())
                }
                _ if is_tchar(b) => Ok(()),
                _ => invalid_ext(),
            },
            ExtValueStart => match b {
                b'"' => {
                    self.state = ExtQuoted;
                    Ok(())
                }
                _ if is_tchar(b) => {
                    self.state = ExtToken;
                    Ok(())
                }
                _ => invalid_ext(),
            },
            ExtToken => match b {
                b';' => {
                    self.state = ExtNameStart;
                    Ok(())
                }
                _ if is_tchar(b) => Ok(()),
                _ => invalid_ext(),
            },
            // quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE
            // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
            // (RFC 9110 §5.6.4)
            ExtQuoted => match b {
                b'"' => {
                    self.state = ExtAfterQuoted;
                    Ok(())
                }
                b'\\' => {
                    self.state = ExtQuotedPair;
                    Ok(())
                }
                b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => Ok(()),
                _ => invalid_ext(),
            },
            // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
            ExtQuotedPair => match b {
                b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => {
                    self.state = ExtQuoted;
                    Ok(())
                }
                _ => invalid_ext(),
            },
            ExtAfterQuoted => {
                if b == b';' {
                    self.state = ExtNameStart;
                    Ok(())
                } else {
                    invalid_ext()
                }
            }
            _ => Ok(()),
        }
    }

    /// The chunk-size is complete (at ';' or CR of a size line).
    fn end_of_size(&mut self) -> Result<(), Error> {
        if self.state == State::Size {
            if self.size_digits == 0 {
                return Err(ErrorKind::ChunkSizeInvalid.into());
            }
            // Refuse an oversized body before reading any of its data
            // (RFC 9110 §15.5.14).
            if self.size > self.max_body_bytes.saturating_sub(self.body_len) {
                return Err(ErrorKind::BodyTooLarge.into());
            }
        }
        Ok(())
    }

    /// A byte of the trailer section: `*( field-line CRLF ) CRLF`
    /// (RFC 9112 §7.1.2), field-line as in the header section (RFC 9112 §5).
    fn trailer_byte(&mut self, b: u8) -> Result<(), Error> {
        use State::*;
        match (self.state, b) {
            (TrailerLineStart, b'\r') => self.state = TrailerEndLf,
            (TrailerLineStart, _) if is_tchar(b) => {
                self.name_len = 0;
                self.push_name_byte(b);
                self.state = TrailerName;
            }
            (TrailerName, b':') => {
                if self.name_is_forbidden() {
                    return Err(ErrorKind::TrailerForbiddenField.into());
                }
                self.state = TrailerValue;
            }
            (TrailerName, _) if is_tchar(b) => self.push_name_byte(b),
            // field-value = *field-content: VCHAR, SP, HTAB, obs-text; no
            // other CTL (RFC 9110 §5.5).
            (TrailerValue, b'\r') => self.state = TrailerLf,
            (TrailerValue, b'\t' | 0x20..=0x7e | 0x80..=0xff) => {}
            (TrailerLf | TrailerEndLf, b'\n') => {
                self.state = if self.state == TrailerLf {
                    TrailerLineStart
                } else {
                    Done
                };
            }
            (TrailerLf | TrailerEndLf, _) => return Err(ErrorKind::BareCr.into()),
            (_, b'\n') => return Err(ErrorKind::BareLf.into()),
            // Leading whitespace (obs-fold, RFC 9112 §5.2), whitespace before
            // the colon (RFC 9112 §5.1), a missing colon, or a CTL.
            _ => return Err(ErrorKind::TrailerInvalid.into()),
        }
        Ok(())
    }

    fn push_name_byte(&mut self, b: u8) {
        if let Some(slot) = self.name.get_mut(self.name_len) {
            *slot = b.to_ascii_lowercase();
        }
        self.name_len = self.name_len.saturating_add(1);
    }

    fn name_is_forbidden(&self) -> bool {
        self.name_len <= TRAILER_NAME_PROBE_BYTES
            && FORBIDDEN_TRAILER_FIELDS
                .iter()
                .any(|f| f.as_bytes() == &self.name[..self.name_len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` in one call; returns (data, consumed) or the error.
    fn decode_all(input: &[u8], limits: &Limits) -> Result<(Vec<u8>, usize, bool), ErrorKind> {
        let mut dec = ChunkedDecoder::new(limits);
        let mut out = Vec::new();
        let d = dec.decode(input, &mut out).map_err(|e| e.kind())?;
        Ok((out, d.consumed, d.done))
    }

    /// Feeds `input` one byte at a time.
    fn decode_bytewise(input: &[u8], limits: &Limits) -> Result<(Vec<u8>, usize, bool), ErrorKind> {
        let mut dec = ChunkedDecoder::new(limits);
        let mut out = Vec::new();
        let mut consumed = 0;
        for i in 0..input.len() {
            let d = dec.decode(&input[i..=i], &mut out).map_err(|e| e.kind())?;
            consumed += d.consumed;
            if d.done {
                return Ok((out, consumed, true));
            }
            assert_eq!(d.consumed, 1, "an unfinished decoder consumes all input");
        }
        Ok((out, consumed, false))
    }

    fn err(input: &[u8]) -> ErrorKind {
        let whole = decode_all(input, &Limits::default());
        let bytewise = decode_bytewise(input, &Limits::default());
        assert_eq!(
            whole.clone().err(),
            bytewise.err(),
            "same verdict whole and bytewise"
        );
        match whole {
            Err(k) => k,
            Ok(r) => panic!(
                "expected an error for {:?}, got {r:?}",
                String::from_utf8_lossy(input)
            ),
        }
    }

    fn ok(input: &[u8]) -> Vec<u8> {
        let (out, consumed, done) =
            decode_all(input, &Limits::default()).expect("valid chunked body");
        assert!(done);
        assert_eq!(consumed, input.len());
        out
    }

    #[test]
    fn rfc9112_7_1_decodes_chunks_and_stops_after_last_chunk() {
        let input = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let (out, consumed, done) = decode_all(input, &Limits::default()).expect("valid");
        assert_eq!(out, b"hello world");
        assert!(done);
        assert_eq!(&input[consumed..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn rfc9112_7_1_decodes_when_fed_byte_by_byte() {
        let input: &[u8] = b"5;name=value;q=\"a \\\"b\\\" c\"\r\nhello\r\nA\r\n0123456789\r\n\
            1\r\n!\r\n0;last\r\nX-Checksum: abc\r\nX-Other:\tv v\r\n\r\nNEXT";
        let (out, consumed, done) = decode_bytewise(input, &Limits::default()).expect("valid");
        assert!(done);
        assert_eq!(out, b"hello0123456789!");
        assert_eq!(&input[consumed..], b"NEXT");
    }

    #[test]
    fn rfc9112_7_1_any_split_point_gives_the_same_result() {
        let input: &[u8] = b"3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\n";
        for split in 0..=input.len() {
            let mut dec = ChunkedDecoder::new(&Limits::default());
            let mut out = Vec::new();
            let a = dec.decode(&input[..split], &mut out).expect("first part");
            assert_eq!(a.consumed, split);
            let b = dec.decode(&input[split..], &mut out).expect("second part");
            assert!(b.done || a.done);
            assert_eq!(out, b"abc0123456789abcdef", "split at {split}");
            assert_eq!(dec.body_len(), 19);
        }
    }

    #[test]
    fn rfc9112_7_1_incomplete_body_is_not_done() {
        let (out, consumed, done) =
            decode_all(b"5\r\nhello\r\n", &Limits::default()).expect("ok so far");
        assert_eq!((out.as_slice(), consumed, done), (&b"hello"[..], 10, false));
        let (_, _, done) =
            decode_all(b"5\r\nhello\r\n0\r\n", &Limits::default()).expect("ok so far");
        assert!(!done, "the trailer section's final CRLF is still missing");
    }

    #[test]
    fn rfc9112_7_1_decode_after_done_consumes_nothing() {
        let mut dec = ChunkedDecoder::new(&Limits::default());
        let mut out = Vec::new();
        assert!(dec.decode(b"0\r\n\r\n", &mut out).expect("valid").done);
        assert!(dec.is_done());
        let again = dec.decode(b"more", &mut out).expect("no error");
        assert_eq!(
            again,
            Decoded {
                consumed: 0,
                done: true
            }
        );
    }

    #[test]
    fn rfc9112_7_1_empty_body_and_uppercase_hex() {
        assert_eq!(ok(b"0\r\n\r\n"), b"");
        assert_eq!(ok(b"A\r\nhelloworld\r\n0\r\n\r\n"), b"helloworld");
        assert_eq!(ok(b"a\r\nhelloworld\r\n000\r\n\r\n"), b"helloworld");
        assert_eq!(ok(b"0005\r\nhello\r\n0\r\n\r\n"), b"hello");
    }

    #[test]
    fn rfc9112_7_1_chunk_size_must_be_hex_digits_only() {
        for input in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b"-1\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"1_0\r\nhello world!!!!!\r\n0\r\n\r\n",
            b"\r\n",
            b"g\r\n",
            b"5 ;a\r\nhello\r\n0\r\n\r\n",
            b"5\t\r\nhello\r\n0\r\n\r\n",
            b";a\r\n",
        ] {
            assert_eq!(
                err(input),
                ErrorKind::ChunkSizeInvalid,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn rfc9112_7_1_chunk_size_over_16_hex_digits_is_refused() {
        assert_eq!(
            err(b"FFFFFFFFFFFFFFFF0\r\nhello\r\n0\r\n\r\n"),
            ErrorKind::ChunkSizeTooLong
        );
        assert_eq!(
            err(b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
            ErrorKind::ChunkSizeTooLong
        );
        // 16 digits are fine as far as syntax goes (the body limit applies).
        assert_eq!(err(b"FFFFFFFFFFFFFFFF\r\n"), ErrorKind::BodyTooLarge);
        assert_eq!(ok(b"0000000000000005\r\nhello\r\n0\r\n\r\n"), b"hello");
    }

    #[test]
    fn rfc9112_7_1_1_accepts_well_formed_extensions() {
        assert_eq!(ok(b"5;ext=value\r\nhello\r\n0\r\n\r\n"), b"hello");
        assert_eq!(
            ok(b"5;a;b=c;d=\"q;\\\"x\\\\\"\r\nhello\r\n0\r\n\r\n"),
            b"hello"
        );
        assert_eq!(ok(b"5;e=\"\"\r\nhello\r\n0;z\r\n\r\n"), b"hello");
    }

    #[test]
    fn rfc9112_7_1_1_rejects_malformed_extensions() {
        for input in [
            &b"5;\r\nhello\r\n0\r\n\r\n"[..],
            b"5;bad[=x\r\nhello\r\n0\r\n\r\n",
            b"5;\x00ext\r\nhello\r\n0\r\n\r\n",
            b"5;a=\r\nhello\r\n",
            b"5;a =b\r\nhello\r\n",
            b"5;a= b\r\nhello\r\n",
            b"5; a\r\nhello\r\n",
            b"5;a=\"unterminated\r\nhello\r\n",
            b"5;a=\"x\"y\r\nhello\r\n",
            b"5;a=\"x\x01\"\r\nhello\r\n",
            b"5;a=b=c\r\nhello\r\n",
            b"5;;a\r\nhello\r\n",
        ] {
            assert_eq!(
                err(input),
                ErrorKind::ChunkExtInvalid,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn rfc9112_7_1_1_size_line_over_limit_is_refused() {
        let limits = Limits {
            max_chunk_ext_bytes: 8,
            ..Limits::default()
        };
        assert!(decode_all(b"5;abcdef\r\nhello\r\n0\r\n\r\n", &limits).is_ok());
        assert_eq!(
            decode_all(b"5;abcdefg\r\nhello\r\n", &limits).err(),
            Some(ErrorKind::ChunkExtTooLong)
        );
        assert_eq!(
            decode_bytewise(b"5;abcdefg", &limits).err(),
            Some(ErrorKind::ChunkExtTooLong)
        );
        // A 64 KiB extension at default limits.
        let mut big = b"5;ext=".to_vec();
        big.extend(std::iter::repeat(b'a').take(65_536));
        assert_eq!(err(&big), ErrorKind::ChunkExtTooLong);
    }

    #[test]
    fn rfc9112_7_1_chunk_data_must_end_with_crlf() {
        for input in [
            &b"5\r\nhello!!\r\n0\r\n\r\n"[..],
            b"5\r\nhello0\r\n\r\n",
            b"5\r\nhelloX",
        ] {
            assert_eq!(
                err(input),
                ErrorKind::ChunkDataTerminator,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn rfc9112_2_2_rejects_bare_lf_in_chunked_framing() {
        for input in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5;\nhello\r\n0\r\n\r\n",
            b"5;a=b\nhello\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"0\r\nX: y\n\r\n",
            b"0\r\nX\n",
        ] {
            assert_eq!(
                err(input),
                ErrorKind::BareLf,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn rfc9112_2_2_rejects_bare_cr_in_chunked_framing() {
        for input in [
            &b"5\rhello\r\n0\r\n\r\n"[..],
            b"5;a\rX\r\nhello\r\n",
            b"5\r\nhello\rX",
            b"0\r\nX: y\rZ\r\n\r\n",
            b"0\r\n\rX",
        ] {
            assert_eq!(
                err(input),
                ErrorKind::BareCr,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn rfc9112_7_1_2_trailer_fields_are_validated_and_discarded() {
        assert_eq!(
            ok(b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Empty:\r\n\r\n"),
            b"hello"
        );
    }

    #[test]
    fn rfc9112_7_1_2_rejects_malformed_trailer_lines() {
        for input in [
            &b"0\r\n continued\r\n\r\n"[..],
            b"0\r\nX : v\r\n\r\n",
            b"0\r\nNoColon\r\n\r\n",
            b"0\r\nX: a\x00b\r\n\r\n",
            b"0\r\nX: \x7f\r\n\r\n",
            b"0\r\n: v\r\n\r\n",
            b"0\r\nBad[Name: v\r\n\r\n",
            b"0\r\n\tX: v\r\n\r\n",
        ] {
            assert_eq!(
                err(input),
                ErrorKind::TrailerInvalid,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn rfc9110_6_5_1_rejects_framing_routing_and_auth_fields_in_trailers() {
        for name in [
            "Content-Length",
            "transfer-encoding",
            "HOST",
            "Authorization",
            "Content-Type",
            "TE",
            "Trailer",
        ] {
            let input = format!("5\r\nhello\r\n0\r\n{name}: x\r\n\r\n");
            assert_eq!(
                err(input.as_bytes()),
                ErrorKind::TrailerForbiddenField,
                "{name}"
            );
        }
        // A longer name that starts like a forbidden one is fine.
        assert_eq!(
            ok(b"0\r\nContent-Length-Checksum: 1\r\nX-Proxy-Authorization-Hint-Long: 2\r\n\r\n"),
            b""
        );
    }

    #[test]
    fn rfc6585_5_trailer_section_over_limit_is_431() {
        let limits = Limits {
            max_trailer_bytes: 10,
            ..Limits::default()
        };
        // "X: 1234\r\n" (9) + "\r\n" (2) = 11 > 10; "X: 12\r\n\r\n" is 9.
        assert_eq!(
            decode_all(b"0\r\nX: 1234\r\n\r\n", &limits).err(),
            Some(ErrorKind::TrailerTooLarge)
        );
        assert!(decode_all(b"0\r\nX: 12\r\n\r\n", &limits).is_ok());
        assert_eq!(Error::from(ErrorKind::TrailerTooLarge).status(), 431);
    }

    #[test]
    fn rfc9110_15_5_14_chunked_body_over_limit_is_413_before_its_data() {
        let limits = Limits {
            max_body_bytes: 8,
            ..Limits::default()
        };
        assert_eq!(
            decode_all(b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n", &limits).map(|r| r.0),
            Ok(b"helloabc".to_vec())
        );
        let mut dec = ChunkedDecoder::new(&limits);
        let mut out = Vec::new();
        let e = dec
            .decode(b"5\r\nhello\r\n4\r\n", &mut out)
            .expect_err("over limit");
        assert_eq!(e.kind(), ErrorKind::BodyTooLarge);
        assert_eq!(out, b"hello", "the oversized chunk's data was never read");
        assert_eq!(dec.body_len(), 5);
        assert_eq!(
            decode_all(b"9;x\r\n", &limits).err(),
            Some(ErrorKind::BodyTooLarge)
        );
    }
}
