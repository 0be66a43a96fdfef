//! What the load generator sends: request templates rendered once to wire bytes,
//! weighted scenarios (`--scenario 'WEIGHT METHOD PATH [@bodyfile]'` or a
//! `--scenarios FILE` of such lines) and the cheap deterministic PRNG that picks
//! a scenario per request.

use std::path::{Path, PathBuf};

/// Body files larger than this are refused: every request is rendered in memory
/// and a larger body is not what a request-rate benchmark is for.
const MAX_BODY_BYTES: u64 = 64 << 20;
/// Lines read from a scenario file at most (a bound, not a realistic need).
const MAX_SCENARIOS: usize = 1_000;
/// Default seed of the scenario PRNG; each thread mixes its index into it.
pub const DEFAULT_SEED: u64 = 0x5eed_5ca1_ab1e_0001;

/// One header field given with `--header "Name: value"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A request as the user described it, before rendering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioSpec {
    pub weight: u32,
    pub method: String,
    /// Path and query, starting with '/' (or `*` for OPTIONS).
    pub path: String,
    pub body: Vec<u8>,
    /// Where the body came from (`@file`), for the label.
    pub body_source: Option<String>,
}

/// A rendered scenario: the exact bytes sent for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// `METHOD PATH [@bodyfile]`, used in reports.
    pub label: String,
    pub weight: u32,
    /// A HEAD request: its response has a Content-Length but no body.
    pub head: bool,
    pub bytes: Vec<u8>,
}

fn is_tchar(b: u8) -> bool {
    // RFC 9110 §5.6.2 token characters.
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Validates a method (an RFC 9110 token, e.g. GET, POST, PURGE).
pub fn parse_method(text: &str) -> Result<String, String> {
    if is_token(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "invalid method {text:?}: expected a token such as GET or POST"
        ))
    }
}

/// Validates a request target: origin form (`/path?query`) or `*`.
pub fn check_path(path: &str) -> Result<(), String> {
    let printable = path.bytes().all(|b| b.is_ascii_graphic());
    if printable && (path.starts_with('/') || path == "*") {
        Ok(())
    } else {
        Err(format!(
            "invalid path {path:?}: expected /PATH[?QUERY] without spaces or control characters"
        ))
    }
}

/// Parses `Name: value`. `Content-Length` and `Transfer-Encoding` are refused:
/// the harness frames the body itself.
pub fn parse_header(text: &str) -> Result<Header, String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("invalid header {text:?}: expected \"Name: value\""))?;
    let value = value.trim_matches([' ', '\t']);
    if !is_token(name) {
        return Err(format!("invalid header name {name:?} in {text:?}"));
    }
    if value
        .bytes()
        .any(|b| (b.is_ascii_control() && b != b'\t') || b == 0x7f)
    {
        return Err(format!("header value in {text:?} has control characters"));
    }
    if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
    {
        return Err(format!(
            "header {name} is set by shardline-perf from the body; do not give it"
        ));
    }
    Ok(Header {
        name: name.to_owned(),
        value: value.to_owned(),
    })
}

/// Reads a body file, bounded by [`MAX_BODY_BYTES`].
pub fn read_body_file(path: &Path) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read body file {}: {e}", path.display()))?
        .len();
    if len > MAX_BODY_BYTES {
        return Err(format!(
            "body file {} is {len} bytes; the limit is {MAX_BODY_BYTES}",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read body file {}: {e}", path.display()))
}

/// `--body`: `@FILE` reads the file, anything else is the body itself.
pub fn parse_body_arg(arg: &str) -> Result<(Vec<u8>, Option<String>), String> {
    match arg.strip_prefix('@') {
        Some(file) => Ok((read_body_file(Path::new(file))?, Some(arg.to_owned()))),
        None => Ok((arg.as_bytes().to_vec(), None)),
    }
}

/// Parses one scenario, `WEIGHT METHOD PATH [@bodyfile]`; a relative body file is
/// looked up under `base_dir` (the scenario file's folder) when given.
pub fn parse_scenario(text: &str, base_dir: Option<&Path>) -> Result<ScenarioSpec, String> {
    let bad = |why: &str| {
        format!("invalid scenario {text:?}: {why} (expected 'WEIGHT METHOD PATH [@bodyfile]')")
    };
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [weight, method, path, rest @ ..] = fields.as_slice() else {
        return Err(bad("too few fields"));
    };
    let weight: u32 = weight
        .parse()
        .ok()
        .filter(|&w| w > 0)
        .ok_or_else(|| bad("WEIGHT must be a whole number from 1 to 4294967295"))?;
    let method = parse_method(method).map_err(|e| bad(&e))?;
    check_path(path).map_err(|e| bad(&e))?;
    let (body, body_source) = match rest {
        [] => (Vec::new(), None),
        [file] => {
            let name = file
                .strip_prefix('@')
                .ok_or_else(|| bad("the fourth field must be @bodyfile"))?;
            let mut full = PathBuf::from(name);
            if let (Some(dir), true) = (base_dir, full.is_relative()) {
                full = dir.join(full);
            }
            (read_body_file(&full)?, Some((*file).to_owned()))
        }
        _ => return Err(bad("too many fields")),
    };
    Ok(ScenarioSpec {
        weight,
        method,
        path: (*path).to_owned(),
        body,
        body_source,
    })
}

/// Parses a scenario file: one scenario per line, blank lines and lines starting
/// with `#` ignored; body files are relative to the scenario file's folder.
pub fn parse_scenario_file(path: &Path) -> Result<Vec<ScenarioSpec>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read scenario file {}: {e}", path.display()))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let mut specs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if specs.len() == MAX_SCENARIOS {
            return Err(format!(
                "{}: more than {MAX_SCENARIOS} scenarios",
                path.display()
            ));
        }
        specs.push(
            parse_scenario(line, dir).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?,
        );
    }
    if specs.is_empty() {
        return Err(format!("scenario file {} has no scenario", path.display()));
    }
    Ok(specs)
}

/// Renders a request to wire bytes: request line, `Host` (unless a `Host` header
/// was given), the extra headers, `Content-Length` when there is a body or the
/// method usually has one, then the body.
pub fn render(spec: &ScenarioSpec, authority: &str, headers: &[Header]) -> Scenario {
    let mut head = format!("{} {} HTTP/1.1\r\n", spec.method, spec.path);
    if !headers.iter().any(|h| h.name.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {authority}\r\n"));
    }
    for h in headers {
        head.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    let body_method = matches!(spec.method.as_str(), "POST" | "PUT" | "PATCH");
    if !spec.body.is_empty() || body_method {
        head.push_str(&format!("Content-Length: {}\r\n", spec.body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&spec.body);
    let mut label = format!("{} {}", spec.method, spec.path);
    if let Some(src) = &spec.body_source {
        label.push(' ');
        label.push_str(src);
    }
    Scenario {
        label,
        weight: spec.weight,
        head: spec.method == "HEAD",
        bytes,
    }
}

/// SplitMix64: a tiny, fast, deterministic generator (statistical quality is
/// ample for picking scenarios; it is not for anything secret).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Picks a scenario index with probability weight / total weight.
#[derive(Clone, Debug)]
pub struct Picker {
    /// Running sums of the weights: scenario i covers [cumulative[i-1], cumulative[i]).
    cumulative: Vec<u64>,
}

impl Picker {
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let mut sum = 0u64;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                sum += u64::from(w);
                sum
            })
            .collect();
        Picker { cumulative }
    }

    /// The scenario for a random value `r` (uniform over u64).
    pub fn pick(&self, r: u64) -> usize {
        match self.cumulative.as_slice() {
            [] | [_] => 0,
            all => {
                let total = all[all.len() - 1];
                // Multiply-shift maps r uniformly onto 0..total without a division.
                let x = ((u128::from(r) * u128::from(total)) >> 64) as u64;
                all.partition_point(|&c| c <= x)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> ScenarioSpec {
        parse_scenario(text, None).expect(text)
    }

    #[test]
    fn parses_scenarios() {
        let s = spec("3 GET /plaintext?x=1");
        assert_eq!(s.weight, 3);
        assert_eq!(s.method, "GET");
        assert_eq!(s.path, "/plaintext?x=1");
        assert!(s.body.is_empty());
        let s = spec("  1\tOPTIONS   *  ");
        assert_eq!((s.weight, s.path.as_str()), (1, "*"));
        for bad in [
            "",
            "1 GET",
            "0 GET /",
            "-1 GET /",
            "x GET /",
            "1 G:T /",
            "1 GET plaintext",
            "1 GET / body",
            "1 GET / @a @b",
            "1 POST / @/definitely/not/here",
        ] {
            assert!(parse_scenario(bad, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scenario_file_with_relative_body() {
        let dir = std::env::temp_dir().join(format!("shardline-perf-scn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("body.json"), b"{\"a\":1}").unwrap();
        let file = dir.join("mix.txt");
        std::fs::write(
            &file,
            "# a mix\n\n9 GET /plaintext\n1 POST /echo @body.json\n",
        )
        .unwrap();
        let specs = parse_scenario_file(&file).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[1].body, b"{\"a\":1}");
        assert_eq!(specs[1].body_source.as_deref(), Some("@body.json"));
        std::fs::write(&file, "9 GET /plaintext\nnonsense\n").unwrap();
        let err = parse_scenario_file(&file).unwrap_err();
        assert!(err.contains("mix.txt:2"), "{err}");
        std::fs::write(&file, "# nothing\n").unwrap();
        assert!(parse_scenario_file(&file).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("X-Test:  a b\t").unwrap(),
            Header {
                name: "X-Test".into(),
                value: "a b".into()
            }
        );
        assert_eq!(parse_header("Accept:").unwrap().value, "");
        for bad in [
            "NoColon",
            ": v",
            "Bad Name: v",
            "X: a\r\nInjected: b",
            "content-length: 5",
            "Transfer-Encoding: chunked",
        ] {
            assert!(parse_header(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn renders_requests() {
        let get = render(&spec("1 GET /p"), "127.0.0.1:80", &[]);
        assert_eq!(get.bytes, b"GET /p HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n");
        assert_eq!(get.label, "GET /p");
        assert!(!get.head);
        let post = ScenarioSpec {
            body: b"hello".to_vec(),
            body_source: Some("@b".into()),
            ..spec("2 POST /echo")
        };
        let headers = [
            parse_header("Host: example").unwrap(),
            parse_header("X-A: 1").unwrap(),
        ];
        let r = render(&post, "127.0.0.1:80", &headers);
        assert_eq!(
            r.bytes,
            b"POST /echo HTTP/1.1\r\nHost: example\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhello"
        );
        assert_eq!((r.label.as_str(), r.weight), ("POST /echo @b", 2));
        let empty_post = render(&spec("1 PUT /x"), "h", &[]);
        assert!(empty_post.bytes.ends_with(b"Content-Length: 0\r\n\r\n"));
        assert!(render(&spec("1 HEAD /"), "h", &[]).head);
    }

    #[test]
    fn rng_is_deterministic() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let mut r = Rng::new(7);
        assert!(a.iter().all(|&x| x == r.next_u64()));
        assert_ne!(Rng::new(8).next_u64(), a[0]);
        // Not stuck: all distinct.
        let mut sorted = a.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
    }

    #[test]
    fn picker_boundaries() {
        let p = Picker::new([1, 3]);
        assert_eq!(p.pick(0), 0);
        assert_eq!(p.pick(u64::MAX / 4 - 1), 0);
        assert_eq!(p.pick(u64::MAX / 4 + 1), 1);
        assert_eq!(p.pick(u64::MAX), 1);
        assert_eq!(Picker::new([5]).pick(u64::MAX), 0);
        assert_eq!(Picker::new([]).pick(3), 0);
    }

    #[test]
    fn picks_follow_weights() {
        let weights = [1u32, 2, 7];
        let p = Picker::new(weights);
        let mut rng = Rng::new(DEFAULT_SEED);
        let mut counts = [0u32; 3];
        let draws = 100_000;
        for _ in 0..draws {
            counts[p.pick(rng.next_u64())] += 1;
        }
        for (c, w) in counts.iter().zip(weights) {
            let expected = f64::from(draws) * f64::from(w) / 10.0;
            let off = (f64::from(*c) - expected).abs() / expected;
            assert!(off < 0.05, "{counts:?}");
        }
    }
}
