//! Rate-limit response fields (IETF draft-ietf-httpapi-ratelimit-headers):
//! `RateLimit-Policy: "NAME";q=LIMIT;w=WINDOW` says the policy, and
//! `RateLimit: "NAME";r=REMAINING;t=SECONDS` the state. The limit itself
//! (global, owner shard, local shares) is in `limiter`; `remaining` is this
//! shard's view (its share, or the whole budget on the owner shard).

/// The pre-formatted parts of one policy's fields.
pub(crate) struct Headers {
    /// `"NAME";q=…;w=…`
    policy: Vec<u8>,
    /// `"NAME"`
    name: Vec<u8>,
}

/// An RFC 8941 sf-string of `s` (quotes and backslashes escaped, other
/// non-printable characters dropped).
fn sf_string(s: &str) -> Vec<u8> {
    let mut out = vec![b'"'];
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push(b'\\');
                out.push(b);
            }
            0x20..=0x7e => out.push(b),
            _ => {}
        }
    }
    out.push(b'"');
    out
}

impl Headers {
    pub(crate) fn new(name: &str, limit: u64, window_secs: u64) -> Headers {
        let n = sf_string(name);
        let mut policy = n.clone();
        policy.extend_from_slice(format!(";q={limit};w={window_secs}").as_bytes());
        Headers { policy, name: n }
    }

    /// Lines for an admitted request.
    pub(crate) fn write_allowed(&self, out: &mut Vec<u8>, remaining: u64, reset_secs: u64) {
        out.extend_from_slice(b"RateLimit-Policy: ");
        out.extend_from_slice(&self.policy);
        out.extend_from_slice(b"\r\nRateLimit: ");
        self.state(out, remaining, reset_secs);
        out.extend_from_slice(b"\r\n");
    }

    fn state(&self, out: &mut Vec<u8>, remaining: u64, reset_secs: u64) {
        out.extend_from_slice(&self.name);
        out.extend_from_slice(b";r=");
        out.extend_from_slice(itoa::Buffer::new().format(remaining).as_bytes());
        out.extend_from_slice(b";t=");
        out.extend_from_slice(itoa::Buffer::new().format(reset_secs).as_bytes());
    }

    /// Fields of a 429.
    pub(crate) fn refusal(&self, headers: &mut Vec<(&'static str, Vec<u8>)>, retry_after: u64) {
        headers.push(("RateLimit-Policy", self.policy.clone()));
        let mut state = Vec::new();
        self.state(&mut state, 0, retry_after);
        headers.push(("RateLimit", state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let h = Headers::new("get \"x\"", 100, 1);
        let mut out = Vec::new();
        h.write_allowed(&mut out, 7, 2);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "RateLimit-Policy: \"get \\\"x\\\"\";q=100;w=1\r\nRateLimit: \"get \\\"x\\\"\";r=7;t=2\r\n"
        );
    }
}
