//! Parsing of the command-line values that clap does not know: durations, CPU
//! lists and target URLs. Targets must be loopback addresses: this tool is for
//! same-machine benchmarks and refuses to send load anywhere else.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Parses `500ms`, `10s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 10s, 2m"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "invalid duration unit {unit:?} in {text:?}: use ms, s, m or h"
            ))
        }
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("duration {text:?} must be positive and not absurdly large"))
}

/// A parsed CPU list, sorted and without duplicates. A newtype rather than a bare
/// `Vec` so that clap takes `--cpus 0-3` as one value, not as a repeated option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// Parses a CPU list like `1`, `0,2` or `0-3,6`.
pub fn parse_cpu_list(text: &str) -> Result<CpuList, String> {
    let bad = || format!("invalid CPU list {text:?}: expected e.g. 1, 0,2 or 0-3");
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if let Some((lo, hi)) = part.split_once('-') {
            let lo: usize = lo.trim().parse().map_err(|_| bad())?;
            let hi: usize = hi.trim().parse().map_err(|_| bad())?;
            if lo > hi {
                return Err(bad());
            }
            cpus.extend(lo..=hi);
        } else {
            cpus.push(part.parse().map_err(|_| bad())?);
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(CpuList(cpus))
}

/// A load target: where to connect and what to put in the request line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// The Host header value (authority as written in the URL).
    pub authority: String,
    /// Path and query, starting with '/'.
    pub path: String,
    /// `https://`: every connection speaks TLS (see `crate::tls`).
    pub tls: bool,
    /// The host alone (no port, no brackets): the TLS server name.
    pub host: String,
}

/// Parses `http://HOST[:PORT][/PATH]` or `https://...`; HOST must resolve to
/// loopback only.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (rest, tls) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, true)
    } else {
        return Err(format!(
            "unsupported URL {url:?}: only http:// and https:// URLs are supported"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "invalid URL {url:?}: expected http[s]://HOST:PORT/PATH"
        ));
    }
    // Default port 80 (443) unless one is given (bracketed IPv6 literals keep
    // their colons).
    let port_split = authority
        .rsplit_once(':')
        .filter(|(_, port)| !port.contains(']'));
    let with_port = match port_split {
        Some(_) => authority.to_owned(),
        None => format!("{authority}:{}", if tls { 443 } else { 80 }),
    };
    let host = port_split
        .map_or(authority, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addr = resolve_loopback(&with_port)?;
    Ok(Target {
        addr,
        authority: authority.to_owned(),
        path: path.to_owned(),
        tls,
        host,
    })
}

/// Resolves `HOST:PORT` and insists every address is loopback.
pub fn resolve_loopback(host_port: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = host_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host_port:?}: {e}"))?
        .collect();
    match addrs.first() {
        None => Err(format!("{host_port:?} resolves to no address")),
        Some(_) if addrs.iter().any(|a| !a.ip().is_loopback()) => Err(format!(
            "{host_port:?} is not a loopback address: shardline-perf only sends load to \
             this machine (127.0.0.0/8 or [::1])"
        )),
        Some(&first) => Ok(first),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        for bad in ["", "s", "10x", "-1s", "0s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1"), Ok(CpuList(vec![1])));
        assert_eq!(parse_cpu_list("0-3,6,2"), Ok(CpuList(vec![0, 1, 2, 3, 6])));
        for bad in ["", "a", "3-1", "1,,2"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/plaintext?x=1").expect("valid");
        assert_eq!(t.addr, "127.0.0.1:8080".parse().expect("literal"));
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/plaintext?x=1");
        let t = parse_url("http://[::1]:9000").expect("valid");
        assert_eq!(t.path, "/");
        assert_eq!(t.addr.port(), 9000);
        assert_eq!(
            parse_url("http://127.0.0.2").expect("valid").addr.port(),
            80
        );
        assert!(!t.tls);
        assert_eq!(t.host, "::1");
        let t = parse_url("https://localhost/x").expect("valid");
        assert!(t.tls);
        assert_eq!(t.addr.port(), 443);
        assert_eq!(t.host, "localhost");
        assert_eq!(t.authority, "localhost");
        let t = parse_url("https://127.0.0.1:8443/").expect("valid");
        assert_eq!((t.host.as_str(), t.addr.port()), ("127.0.0.1", 8443));
    }

    #[test]
    fn non_loopback_and_bad_urls_are_refused() {
        for bad in [
            "ftp://127.0.0.1/",
            "https://10.0.0.1/",
            "http://10.0.0.1:80/",
            "http://192.0.2.1/",
            "http://user@127.0.0.1/",
            "http:///x",
            "127.0.0.1:8080",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
