//! Protocol errors: one [`ErrorKind`] per distinct reason a message is refused.
//!
//! An [`Error`] is `Copy` and carries only its kind; everything a response or
//! a metric needs (status, label, RFC 9457 title/detail/type) is a `&'static`
//! lookup, so producing and reporting an error never allocates.

use core::fmt;

/// Who is at fault for an error; picks the status class and the metric label
/// family. Every parse error in this crate is [`Fault::Client`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The peer sent something we refuse (4xx, and 501/505 for things the
    /// client asked for that we do not implement).
    Client,
    /// We failed (5xx). Not produced by this crate; kept for callers.
    Server,
}

/// Base of every `problem_type` URI (RFC 9457 §3.1.1: a stable URI that
/// identifies the problem type).
pub const PROBLEM_TYPE_BASE: &str = "https://shardline.dev/problems/";

macro_rules! error_kinds {
    ($(
        $(#[$doc:meta])*
        $variant:ident => $status:literal, $label:literal, $dashed:literal, $detail:literal;
    )*) => {
        /// Why a message was refused. One variant per distinct reason, so that
        /// metrics and tests can tell them apart.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorKind {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorKind {
            /// Every kind, for tests and for pre-registering metric labels.
            pub const ALL: &'static [ErrorKind] = &[ $( ErrorKind::$variant, )* ];

            /// HTTP status code answered for this kind.
            pub const fn status(self) -> u16 {
                match self { $( ErrorKind::$variant => $status, )* }
            }

            /// Stable snake_case metric label.
            pub const fn label(self) -> &'static str {
                match self { $( ErrorKind::$variant => $label, )* }
            }

            /// One sentence for the RFC 9457 `detail` member.
            pub const fn detail(self) -> &'static str {
                match self { $( ErrorKind::$variant => $detail, )* }
            }

            /// Stable RFC 9457 `type` URI.
            pub const fn problem_type(self) -> &'static str {
                match self {
                    $( ErrorKind::$variant => concat!("https://shardline.dev/problems/", $dashed), )*
                }
            }
        }
    };
}

error_kinds! {
    /// Request line is not `method SP request-target SP HTTP-version` (RFC 9112 §3),
    /// or too many empty lines precede it (RFC 9112 §2.2).
    BadRequestLine => 400, "bad_request_line", "bad-request-line",
        "The request line must be method, one space, request-target, one space, HTTP version.";
    /// Method is not a token (RFC 9110 §9.1).
    BadMethod => 400, "bad_method", "bad-method",
        "The request method must be a token.";
    /// Version is not `HTTP/DIGIT.DIGIT` (RFC 9112 §2.3).
    BadVersion => 400, "bad_version", "bad-version",
        "The HTTP version is malformed.";
    /// Well-formed version other than 1.0 and 1.1 (RFC 9110 §15.6.6).
    VersionNotSupported => 505, "version_not_supported", "version-not-supported",
        "Only HTTP/1.0 and HTTP/1.1 are supported.";
    /// Field name is not a token, is empty, or is followed by whitespace
    /// before the colon (RFC 9112 §5.1).
    BadHeaderName => 400, "bad_header_name", "bad-header-name",
        "A header field name is not a valid token or is followed by whitespace.";
    /// Field value holds a control character (RFC 9110 §5.5).
    BadHeaderValue => 400, "bad_header_value", "bad-header-value",
        "A header field value contains a control character.";
    /// A line in the head starts with whitespace: obs-fold (RFC 9112 §5.2) or
    /// whitespace before the first field (RFC 9112 §2.2).
    ObsFold => 400, "obs_fold", "obs-fold",
        "Header lines must not start with whitespace (obsolete line folding).";
    /// LF not preceded by CR (RFC 9112 §2.2; our policy rejects it).
    BareLf => 400, "bare_lf", "bare-lf",
        "Lines must end with CRLF; a bare LF was received.";
    /// CR not followed by LF (RFC 9112 §2.2).
    BareCr => 400, "bare_cr", "bare-cr",
        "A CR was not followed by LF.";
    /// HTTP/1.1 request without Host (RFC 9112 §3.2).
    MissingHost => 400, "missing_host", "missing-host",
        "HTTP/1.1 requests must carry a Host header field.";
    /// More than one Host field line (RFC 9112 §3.2).
    DuplicateHost => 400, "duplicate_host", "duplicate-host",
        "The Host header field must appear exactly once.";
    /// Host value is not `uri-host [":" port]` (RFC 9112 §3.2, RFC 3986 §3.2.2).
    BadHost => 400, "bad_host", "bad-host",
        "The Host header field value is not a valid host and optional port.";
    /// A `.` or `..` path segment (RFC 3986 §3.3), also percent-encoded.
    DotSegment => 400, "dot_segment", "dot-segment",
        "The request path contains a '.' or '..' segment; send the path with them resolved.";
    /// Host differs from the authority of an absolute-form target (RFC 9112 §3.2.2).
    HostMismatch => 400, "host_mismatch", "host-mismatch",
        "The Host header field does not match the authority of the request-target.";
    /// More header fields than allowed (RFC 6585 §5).
    TooManyHeaders => 431, "too_many_headers", "too-many-headers",
        "The request has too many header fields.";
    /// The head exceeds the size limit (RFC 6585 §5).
    HeadTooLarge => 431, "head_too_large", "head-too-large",
        "The request head is larger than allowed.";
    /// Request-target exceeds the size limit (RFC 9110 §15.5.15).
    UriTooLong => 414, "uri_too_long", "uri-too-long",
        "The request-target is longer than allowed.";
    /// Request-target is not one of the forms of RFC 9112 §3.2 for this method,
    /// holds a fragment, or holds bytes outside RFC 3986.
    BadTarget => 400, "bad_target", "bad-target",
        "The request-target is not valid for this method.";
    /// Content-Length is not 1*DIGIT without leading zeros, or overflows (RFC 9112 §6.3).
    ContentLengthInvalid => 400, "content_length_invalid", "content-length-invalid",
        "Content-Length must be a plain decimal number.";
    /// Content-Length given more than once, or as a list (RFC 9112 §6.3).
    ContentLengthDuplicate => 400, "content_length_duplicate", "content-length-duplicate",
        "Content-Length must be given exactly once, as a single value.";
    /// Both Content-Length and Transfer-Encoding (RFC 9112 §6.1).
    ContentLengthWithTransferEncoding => 400, "content_length_with_transfer_encoding",
        "content-length-with-transfer-encoding",
        "Content-Length and Transfer-Encoding must not both be present.";
    /// Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1).
    TransferEncodingOnHttp10 => 400, "transfer_encoding_on_http10", "transfer-encoding-on-http10",
        "Transfer-Encoding is not allowed in HTTP/1.0 requests.";
    /// Final transfer coding is not chunked (RFC 9112 §6.3).
    TransferEncodingNotChunkedLast => 400, "transfer_encoding_not_chunked_last",
        "transfer-encoding-not-chunked-last",
        "The final transfer coding of a request must be chunked.";
    /// chunked applied more than once (RFC 9112 §6.1).
    TransferEncodingChunkedTwice => 400, "transfer_encoding_chunked_twice",
        "transfer-encoding-chunked-twice",
        "The chunked transfer coding must not be applied more than once.";
    /// A transfer coding we do not implement, before chunked (RFC 9112 §6.1).
    TransferEncodingUnknown => 501, "transfer_encoding_unknown", "transfer-encoding-unknown",
        "Only the chunked transfer coding is implemented.";
    /// Empty Transfer-Encoding value or list element.
    TransferEncodingEmpty => 400, "transfer_encoding_empty", "transfer-encoding-empty",
        "Transfer-Encoding must not be empty or contain empty list elements.";
    /// A Transfer-Encoding element is not `token *(OWS ";" OWS parameter)`, or
    /// chunked carries parameters (RFC 9112 §7).
    TransferEncodingInvalid => 400, "transfer_encoding_invalid", "transfer-encoding-invalid",
        "Transfer-Encoding contains a malformed transfer coding.";
    /// `Content_Length` / `Transfer_Encoding`: names some gateways read as the
    /// framing fields (RFC 9112 §11.2).
    FramingFieldLookalike => 400, "framing_field_lookalike", "framing-field-lookalike",
        "Content_Length and Transfer_Encoding are refused as look-alikes of framing fields.";
    /// Body larger than the limit (RFC 9110 §15.5.14).
    BodyTooLarge => 413, "body_too_large", "body-too-large",
        "The request body is larger than allowed.";
    /// chunk-size is not 1*HEXDIG (RFC 9112 §7.1).
    ChunkSizeInvalid => 400, "chunk_size_invalid", "chunk-size-invalid",
        "A chunk size must be hexadecimal digits only.";
    /// chunk-size has more than 16 hex digits.
    ChunkSizeTooLong => 400, "chunk_size_too_long", "chunk-size-too-long",
        "A chunk size has too many digits.";
    /// chunk-ext is not `;name[=token|quoted-string]` (RFC 9112 §7.1.1).
    ChunkExtInvalid => 400, "chunk_ext_invalid", "chunk-ext-invalid",
        "A chunk extension is malformed.";
    /// Chunk-size line longer than the limit.
    ChunkExtTooLong => 400, "chunk_ext_too_long", "chunk-ext-too-long",
        "A chunk size line is longer than allowed.";
    /// Chunk data not followed by CRLF (RFC 9112 §7.1).
    ChunkDataTerminator => 400, "chunk_data_terminator", "chunk-data-terminator",
        "Chunk data must be followed by CRLF.";
    /// Trailer field line malformed (RFC 9112 §7.1.2, §5).
    TrailerInvalid => 400, "trailer_invalid", "trailer-invalid",
        "A trailer field is malformed.";
    /// Trailer carries a field that must not be sent as a trailer (RFC 9110 §6.5.1).
    TrailerForbiddenField => 400, "trailer_forbidden_field", "trailer-forbidden-field",
        "A trailer field names a field that is not allowed in trailers.";
    /// Trailer section exceeds the limit (RFC 6585 §5).
    TrailerTooLarge => 431, "trailer_too_large", "trailer-too-large",
        "The trailer section is larger than allowed.";
    /// An expectation other than 100-continue (RFC 9110 §10.1.1).
    ExpectationFailed => 417, "expectation_failed", "expectation-failed",
        "Only the 100-continue expectation is supported.";
}

/// A protocol error. `Copy`, no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Error {
    kind: ErrorKind,
}

impl Error {
    /// Wraps a kind.
    pub const fn new(kind: ErrorKind) -> Self {
        Error { kind }
    }

    /// Why the message was refused.
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Status code to answer with (400, 413, 414, 417, 431, 501, 505).
    pub const fn status(&self) -> u16 {
        self.kind.status()
    }

    /// Parse errors are always the client's fault: the bytes came from it,
    /// including 501/505 (it asked for something we do not implement).
    pub const fn fault(&self) -> Fault {
        Fault::Client
    }

    /// Stable snake_case metric label, e.g. `content_length_invalid`.
    pub const fn label(&self) -> &'static str {
        self.kind.label()
    }

    /// RFC 9457 §3.1.3 `title`: the reason phrase of the status.
    pub fn title(&self) -> &'static str {
        crate::response::reason_phrase(self.status())
    }

    /// RFC 9457 §3.1.4 `detail`: one sentence.
    pub const fn detail(&self) -> &'static str {
        self.kind.detail()
    }

    /// RFC 9457 §3.1.1 `type`: `https://shardline.dev/problems/<label-with-dashes>`.
    pub const fn problem_type(&self) -> &'static str {
        self.kind.problem_type()
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error::new(kind)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.label(), self.detail())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9457_3_1_1_problem_type_is_base_plus_dashed_label() {
        for &k in ErrorKind::ALL {
            let e = Error::new(k);
            let dashed = e.label().replace('_', "-");
            assert_eq!(e.problem_type(), format!("{PROBLEM_TYPE_BASE}{dashed}"));
        }
    }

    #[test]
    fn labels_are_unique_snake_case() {
        // RFC 9457 §3.1.1 types are derived from these labels, so they must be unique.
        let mut seen = std::collections::HashSet::new();
        for &k in ErrorKind::ALL {
            let l = k.label();
            assert!(seen.insert(l), "duplicate label {l}");
            assert!(l
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert_eq!(
                l.to_ascii_uppercase().replace('_', ""),
                format!("{k:?}").to_ascii_uppercase()
            );
        }
    }

    #[test]
    fn rfc9457_3_1_3_every_error_has_title_and_detail() {
        for &k in ErrorKind::ALL {
            let e = Error::new(k);
            assert!(
                !e.title().is_empty(),
                "{k:?} status {} has no reason phrase",
                e.status()
            );
            assert!(e.detail().ends_with('.'));
            assert_eq!(e.fault(), Fault::Client);
        }
    }

    #[test]
    fn status_mapping_follows_the_spec() {
        // RFC 9110 §15.5 / §15.6, RFC 6585 §5: status code per kind.
        use ErrorKind::*;
        let cases = [
            (BadRequestLine, 400),
            (TooManyHeaders, 431),
            (HeadTooLarge, 431),
            (UriTooLong, 414),
            (BodyTooLarge, 413),
            (TransferEncodingUnknown, 501),
            (VersionNotSupported, 505),
            (BadVersion, 400),
            (ExpectationFailed, 417),
            (TrailerTooLarge, 431),
            (ContentLengthWithTransferEncoding, 400),
        ];
        for (k, s) in cases {
            assert_eq!(Error::new(k).status(), s, "{k:?}");
        }
    }

    #[test]
    fn display_names_status_and_label() {
        // RFC 9457 §3.1.3-§3.1.4: title and detail text.
        let e = Error::new(ErrorKind::ContentLengthWithTransferEncoding);
        let s = e.to_string();
        assert!(s.starts_with("400 content_length_with_transfer_encoding: "));
        assert_eq!(e.title(), "Bad Request");
        assert_eq!(
            e.detail(),
            "Content-Length and Transfer-Encoding must not both be present."
        );
    }
}
