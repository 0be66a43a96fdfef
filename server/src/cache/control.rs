//! `Cache-Control` (RFC 9111 §5.2, with `stale-if-error` from RFC 5861 §4)
//! and `Vary` (RFC 9110 §12.5.5) parsing.
//!
//! Both take every field line's value (`&[&[u8]]`), because a list-based
//! field may be split across lines (RFC 9110 §5.3) and a directive on the
//! second line counts as much as one on the first.
//!
//! Leniency, and where it errs: directive names are case-insensitive
//! (RFC 9111 §5.2); whitespace is allowed around elements and around `=`;
//! an argument may be a token or a quoted-string (`max-age="60"` is read as
//! 60 although senders must not write it, §5.2.2.1); commas inside quoted
//! strings do not split (`no-cache="a, b"`). A directive with an argument
//! that is not a valid number is ignored (so `max-age=soon` falls back to
//! the route's ttl), but the *flags* that forbid storing (`no-store`,
//! `no-cache`, `private`) take effect whatever argument they carry: reading
//! too much into them only costs a cache miss, reading too little could
//! serve one client's response to another. For the same reason the
//! field-qualified forms `private="Set-Cookie"` and `no-cache="Set-Cookie"`
//! (§5.2.2.4, §5.2.2.7) are treated as the unqualified ones: this cache
//! does not store a response with some fields removed. Unknown directives
//! are ignored (§5.2.3).

use std::time::Duration;

/// RFC 9111 §1.2.2: a delta-seconds value too large to represent is taken
/// as 2^31 seconds (about 68 years), which also keeps `Instant + Duration`
/// far from overflowing.
pub(crate) const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// Response directives that matter to a shared cache (RFC 9111 §5.2.2,
/// RFC 5861 §4). Numeric ones keep the first occurrence with a valid
/// number (RFC 9111 §4.2.1 allows "the first occurrence").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ResponseDirectives {
    /// §5.2.2.5: must not be stored.
    pub(crate) no_store: bool,
    /// §5.2.2.4: must be revalidated before every reuse; this cache does
    /// not revalidate, so it does not store.
    pub(crate) no_cache: bool,
    /// §5.2.2.7: a shared cache must not store it.
    pub(crate) private: bool,
    /// §5.2.2.9: may be stored even for a request with `Authorization`.
    pub(crate) public: bool,
    /// §5.2.2.1.
    pub(crate) max_age: Option<Duration>,
    /// §5.2.2.10: overrides `max-age` for shared caches.
    pub(crate) s_maxage: Option<Duration>,
    /// §5.2.2.2: no stale reuse once expired.
    pub(crate) must_revalidate: bool,
    /// §5.2.2.8: `must-revalidate` for shared caches only.
    pub(crate) proxy_revalidate: bool,
    /// RFC 5861 §4: how long after expiry a stale copy may answer when the
    /// origin fails.
    pub(crate) stale_if_error: Option<Duration>,
}

/// Request directives (RFC 9111 §5.2.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    /// §5.2.1.4: the client wants the origin's answer, not a stored one.
    pub(crate) no_cache: bool,
    /// §5.2.1.5: nothing about this exchange may be stored.
    pub(crate) no_store: bool,
    /// §5.2.1.1: the client accepts no stored response older than this.
    pub(crate) max_age: Option<Duration>,
}

/// A parsed `Vary` (RFC 9110 §12.5.5).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Vary {
    /// `*`: the response varies on things outside the request's fields, so
    /// no stored copy can be selected. Also set for a member that is not a
    /// field name (a token), since the cache could not key on it.
    pub(crate) any: bool,
    /// Field names, lower-cased, sorted and deduplicated, so that
    /// `Vary: Accept-Encoding, accept` and `Vary: Accept, accept-encoding`
    /// compare equal.
    pub(crate) names: Vec<Box<str>>,
}

impl ResponseDirectives {
    pub(crate) fn parse(values: &[&[u8]]) -> Self {
        let mut d = ResponseDirectives::default();
        for_each_directive(values, |name, arg| {
            if is(name, b"no-store") {
                d.no_store = true;
            } else if is(name, b"no-cache") {
                d.no_cache = true;
            } else if is(name, b"private") {
                d.private = true;
            } else if is(name, b"public") {
                d.public = true;
            } else if is(name, b"max-age") {
                first_valid(&mut d.max_age, arg);
            } else if is(name, b"s-maxage") {
                first_valid(&mut d.s_maxage, arg);
            } else if is(name, b"must-revalidate") {
                d.must_revalidate = true;
            } else if is(name, b"proxy-revalidate") {
                d.proxy_revalidate = true;
            } else if is(name, b"stale-if-error") {
                first_valid(&mut d.stale_if_error, arg);
            }
        });
        d
    }
}

impl RequestDirectives {
    pub(crate) fn parse(values: &[&[u8]]) -> Self {
        let mut d = RequestDirectives::default();
        for_each_directive(values, |name, arg| {
            if is(name, b"no-cache") {
                d.no_cache = true;
            } else if is(name, b"no-store") {
                d.no_store = true;
            } else if is(name, b"max-age") {
                first_valid(&mut d.max_age, arg);
            }
        });
        d
    }

    /// Whether the request must skip the cache (`X-Cache: BYPASS`).
    pub(crate) fn bypasses(&self) -> bool {
        self.no_cache || self.no_store
    }
}

/// The freshness lifetime a response's `Expires` gives (RFC 9111 §4.2.1):
/// its time past the response's `Date` (or `now_unix_secs` without one),
/// zero when already past. An `Expires` that is not a valid HTTP-date
/// (`0` is common) means already expired (§5.3).
pub(crate) fn expires_lifetime(
    expires: &[u8],
    date: Option<&[u8]>,
    now_unix_secs: u64,
) -> Duration {
    let Some(at) = shardline_protocol::date::parse_http_date(expires) else {
        return Duration::ZERO;
    };
    let base = date
        .and_then(shardline_protocol::date::parse_http_date)
        .unwrap_or(now_unix_secs);
    Duration::from_secs(at.saturating_sub(base))
}

/// Whether a request with these `Cache-Control` values skips the cache:
/// it carries `no-cache` (RFC 9111 §5.2.1.4) or `no-store` (§5.2.1.5).
#[cfg(test)]
fn request_bypasses(cache_control: &[&[u8]]) -> bool {
    RequestDirectives::parse(cache_control).bypasses()
}

/// Parses the values of every `Vary` field line.
pub(crate) fn parse_vary(values: &[&[u8]]) -> Vary {
    let mut vary = Vary::default();
    for value in values {
        // Field names cannot contain quotes, so a plain split is exact.
        for member in value.split(|&b| b == b',') {
            let member = trim_ows(member);
            if member.is_empty() {
                // RFC 9110 §5.6.1: empty list elements are ignored.
                continue;
            }
            if member == b"*" || !is_token(member) {
                vary.any = true;
                continue;
            }
            // A token is ASCII, so this always succeeds.
            if let Ok(name) = std::str::from_utf8(member) {
                vary.names.push(name.to_ascii_lowercase().into_boxed_str());
            }
        }
    }
    vary.names.sort_unstable();
    vary.names.dedup();
    vary
}

/// A directive's argument as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arg<'a> {
    /// `name` alone.
    Absent,
    /// `name=token`, or the inside of `name="quoted"` (escapes left as
    /// written: no argument this module reads may contain one).
    Value(&'a [u8]),
    /// `name=` followed by something that is neither.
    Invalid,
}

/// Sets `slot` from `arg` unless it already holds a value; an argument that
/// is not delta-seconds leaves it alone.
fn first_valid(slot: &mut Option<Duration>, arg: Arg<'_>) {
    if slot.is_none() {
        *slot = delta_seconds(arg);
    }
}

/// A directive argument as delta-seconds.
fn delta_seconds(arg: Arg<'_>) -> Option<Duration> {
    match arg {
        Arg::Value(digits) => parse_delta_seconds(digits),
        Arg::Absent | Arg::Invalid => None,
    }
}

/// `delta-seconds = 1*DIGIT` (RFC 9111 §1.2.2), saturating at
/// [`DELTA_SECONDS_MAX`]; also the syntax of `Age` (§5.1).
pub(crate) fn parse_delta_seconds(digits: &[u8]) -> Option<Duration> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        n = n
            .saturating_mul(10)
            .saturating_add(u64::from(d - b'0'))
            .min(DELTA_SECONDS_MAX);
    }
    Some(Duration::from_secs(n))
}

/// Calls `f(name, argument)` for every directive whose name is a token,
/// across all field values, in order.
fn for_each_directive<'a>(values: &[&'a [u8]], mut f: impl FnMut(&'a [u8], Arg<'a>)) {
    for value in values {
        for element in QuotedList(value) {
            let element = trim_ows(element);
            if element.is_empty() {
                continue;
            }
            let (name, arg) = match element.iter().position(|&b| b == b'=') {
                None => (element, Arg::Absent),
                Some(eq) => (
                    trim_ows(&element[..eq]),
                    argument(trim_ows(&element[eq + 1..])),
                ),
            };
            if is_token(name) {
                f(name, arg);
            }
        }
    }
}

/// `token / quoted-string` (RFC 9110 §5.6.2, §5.6.4), already trimmed.
fn argument(raw: &[u8]) -> Arg<'_> {
    if let Some(inner) = raw.strip_prefix(b"\"") {
        // The closing quote must be the last byte and not escaped.
        let mut i = 0;
        while i < inner.len() {
            match inner[i] {
                b'\\' => i += 2,
                b'"' => {
                    return if i + 1 == inner.len() {
                        Arg::Value(&inner[..i])
                    } else {
                        Arg::Invalid
                    };
                }
                _ => i += 1,
            }
        }
        Arg::Invalid
    } else if is_token(raw) {
        Arg::Value(raw)
    } else {
        Arg::Invalid
    }
}

/// Splits one field value at commas that are outside quoted strings
/// (RFC 9110 §5.6.1, §5.6.4). Yields empty elements too; callers skip them.
struct QuotedList<'a>(&'a [u8]);

impl<'a> Iterator for QuotedList<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.0;
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let mut i = 0;
        while i < rest.len() {
            match rest[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    self.0 = &rest[i + 1..];
                    return Some(&rest[..i]);
                }
                _ => {}
            }
            i += 1;
        }
        // An unterminated quote runs to the end of the value.
        self.0 = &[];
        Some(rest)
    }
}

/// ASCII case-insensitive name comparison (RFC 9111 §5.2).
fn is(name: &[u8], directive: &[u8]) -> bool {
    name.eq_ignore_ascii_case(directive)
}

/// Strips optional whitespace (SP / HTAB, RFC 9110 §5.6.3) from both ends.
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `tchar` (RFC 9110 §5.6.2).
const fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' |
        b'^' | b'_' | b'`' | b'|' | b'~' | b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z')
}

/// `token = 1*tchar` (RFC 9110 §5.6.2).
fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn resp(values: &[&str]) -> ResponseDirectives {
        let v: Vec<&[u8]> = values.iter().map(|s| s.as_bytes()).collect();
        ResponseDirectives::parse(&v)
    }

    fn req(values: &[&str]) -> RequestDirectives {
        let v: Vec<&[u8]> = values.iter().map(|s| s.as_bytes()).collect();
        RequestDirectives::parse(&v)
    }

    fn secs(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    #[test]
    fn empty_is_default() {
        assert_eq!(resp(&[]), ResponseDirectives::default());
        assert_eq!(resp(&["", " , ,"]), ResponseDirectives::default());
        assert_eq!(req(&[]), RequestDirectives::default());
    }

    #[test]
    fn response_flags() {
        let d = resp(&["no-store"]);
        assert!(d.no_store && !d.no_cache && !d.private);
        assert!(resp(&["no-cache"]).no_cache);
        assert!(resp(&["private"]).private);
        assert!(resp(&["public"]).public);
        assert!(resp(&["must-revalidate"]).must_revalidate);
        assert!(resp(&["proxy-revalidate"]).proxy_revalidate);
    }

    #[test]
    fn max_age_and_s_maxage() {
        let d = resp(&["max-age=60, s-maxage=300"]);
        assert_eq!(d.max_age, secs(60));
        assert_eq!(d.s_maxage, secs(300));
        assert_eq!(resp(&["max-age=0"]).max_age, secs(0));
    }

    #[test]
    fn stale_if_error_directive() {
        assert_eq!(
            resp(&["max-age=5, stale-if-error=120"]).stale_if_error,
            secs(120)
        );
        assert_eq!(resp(&["stale-if-error"]).stale_if_error, None);
    }

    #[test]
    fn names_are_case_insensitive() {
        let d = resp(&["No-Store, MAX-AGE=10, S-MaxAge=20, Stale-If-Error=30, PRIVATE"]);
        assert!(d.no_store && d.private);
        assert_eq!(
            (d.max_age, d.s_maxage, d.stale_if_error),
            (secs(10), secs(20), secs(30))
        );
    }

    #[test]
    fn whitespace_tolerated() {
        let d = resp(&["  public ,\tmax-age = 42 ,must-revalidate\t"]);
        assert!(d.public && d.must_revalidate);
        assert_eq!(d.max_age, secs(42));
    }

    #[test]
    fn quoted_numbers_accepted() {
        assert_eq!(resp(&["max-age=\"60\""]).max_age, secs(60));
        assert_eq!(
            resp(&["s-maxage=\" 6\""]).s_maxage,
            None,
            "not digits inside"
        );
    }

    #[test]
    fn invalid_numbers_ignored() {
        for bad in [
            "max-age=",
            "max-age=-1",
            "max-age=1.5",
            "max-age=soon",
            "max-age=\"6",
            "max-age=6 7",
        ] {
            assert_eq!(resp(&[bad]).max_age, None, "{bad}");
        }
        // The rest of the list still counts.
        let d = resp(&["max-age=x, no-store, s-maxage=9"]);
        assert!(d.no_store);
        assert_eq!((d.max_age, d.s_maxage), (None, secs(9)));
    }

    #[test]
    fn huge_numbers_saturate() {
        assert_eq!(
            resp(&["max-age=99999999999999999999999999"]).max_age,
            secs(DELTA_SECONDS_MAX)
        );
        assert_eq!(
            resp(&["max-age=2147483649"]).max_age,
            secs(DELTA_SECONDS_MAX)
        );
        assert_eq!(resp(&["max-age=2147483647"]).max_age, secs(2_147_483_647));
    }

    #[test]
    fn first_valid_occurrence_wins() {
        assert_eq!(resp(&["max-age=10, max-age=20"]).max_age, secs(10));
        assert_eq!(resp(&["max-age=bad", "max-age=20"]).max_age, secs(20));
    }

    #[test]
    fn directives_across_field_lines() {
        let d = resp(&["max-age=10", "private"]);
        assert!(d.private);
        assert_eq!(d.max_age, secs(10));
    }

    #[test]
    fn qualified_forms_and_quoted_commas() {
        // The comma inside the quotes does not start a new directive.
        let d = resp(&["private=\"set-cookie, max-age=5\", s-maxage=7"]);
        assert!(d.private);
        assert_eq!((d.max_age, d.s_maxage), (None, secs(7)));
        assert!(resp(&["no-cache=\"Set-Cookie\""]).no_cache);
        // Escaped quote inside a quoted string.
        let d = resp(&[r#"ext="a\"b,c", max-age=3"#]);
        assert_eq!(d.max_age, secs(3));
    }

    #[test]
    fn flags_with_odd_arguments_still_count() {
        assert!(resp(&["no-store=\"oops"]).no_store);
        assert!(resp(&["private=a b"]).private);
    }

    #[test]
    fn unknown_and_malformed_names_ignored() {
        let d = resp(&["immutable, x-foo=1, max age=5, =3, max-age=8"]);
        assert_eq!(d.max_age, secs(8));
        assert!(!d.no_store);
    }

    #[test]
    fn request_directives() {
        let d = req(&["no-cache"]);
        assert!(d.no_cache && !d.no_store && d.bypasses());
        let d = req(&["No-Store"]);
        assert!(d.no_store && d.bypasses());
        let d = req(&["max-age=0"]);
        assert_eq!(d.max_age, secs(0));
        assert!(!d.bypasses());
        // Response-only directives mean nothing in a request.
        assert_eq!(req(&["private, s-maxage=5"]), RequestDirectives::default());
    }

    #[test]
    fn request_bypass_helper() {
        assert!(request_bypasses(&[b"no-cache"]));
        assert!(request_bypasses(&[b"max-age=5", b" NO-STORE "]));
        assert!(!request_bypasses(&[b"max-age=0, only-if-cached"]));
        assert!(!request_bypasses(&[]));
        assert!(!request_bypasses(&[b"no-cachex"]));
    }

    #[test]
    fn vary_names() {
        let v = parse_vary(&[
            b"Accept-Encoding, accept",
            b" User-Agent ,",
            b"accept-encoding",
        ]);
        assert!(!v.any);
        let names: Vec<&str> = v.names.iter().map(|n| &**n).collect();
        assert_eq!(names, ["accept", "accept-encoding", "user-agent"]);
        assert_eq!(
            parse_vary(&[b"accept, accept-encoding"]),
            parse_vary(&[b"Accept-Encoding,Accept"])
        );
    }

    #[test]
    fn vary_star_and_garbage() {
        assert!(parse_vary(&[b"*"]).any);
        assert!(parse_vary(&[b"accept", b" * "]).any);
        assert!(parse_vary(&[b"accept, bad name"]).any);
        assert!(!parse_vary(&[b""]).any);
        assert!(parse_vary(&[]).names.is_empty());
    }

    #[test]
    fn trim_ows_strips_sp_and_tab_only() {
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b"\r\n"), b"\r\n");
    }
}
